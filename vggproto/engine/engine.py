"""One object that runs a Caffe net on the fastest engine that gives the interpreter's numbers.

``engine="torch"`` is the interpreter itself (:class:`vggproto.net.interpreter.Net`: the reference, and the GPU
path).  ``"onnxruntime"`` runs the part of the net ONNX can hold (:mod:`vggproto.net.segments`; all of it for
most nets) in onnxruntime on the CPU, from vggproto's own export (:func:`vggproto.convert.onnx.export_onnx`) at
the shapes the caller feeds, and the rest in the interpreter; every exported graph is cached
(:mod:`vggproto.engine.cache`) and verified on its first use against the interpreter on the caller's own input
(at most 1e-4 relative on every output it gives).  ``"ncnn"`` does the same in ncnn
(:mod:`vggproto.engine.ncnn_runner`: Winograd 3×3 convolutions, VGG's fastest CPU path).  ``"auto"`` is torch on
CUDA; on the CPU it races ncnn and onnxruntime on the first pass (each verified) and keeps the faster, or takes
the one that holds more of the net.  Where an engine cannot run the net (no layer it holds,
an export failure, a verification mismatch) ``auto`` falls back to the other or to torch with one warning naming
the reason, while ``"onnxruntime"`` and ``"ncnn"`` make it an :class:`EngineError`.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from vggproto.engine.cache import Entry, GraphCache, cache_folder, digest
from vggproto.engine.ncnn_runner import NcnnRunner, NcnnUnavailable, reshaped
from vggproto.engine.sessions import open_session
from vggproto.errors import VGGProtoError
from vggproto.net.segments import OUT_SUFFIX, Segment, feeding_end, plan, segment_weights, sub_net, weights_bytes

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.engine")

ENGINES = ("auto", "torch", "onnxruntime", "ncnn")
#: Largest relative difference from the interpreter accepted on the first use of a graph.
TOLERANCE = 1e-4
#: Images ``auto`` races the engines on (the first ones of the first batch).
RACE_IMAGES = 4
Shapes = tuple[tuple[str, tuple[int, ...]], ...]
#: Part of every cache key; raised when the export's graph form changes without a new version (2: BatchNorm as a
#: multiply-add, LRN's power as Exp/Log), so cached graphs of the slower form are exported again, not reused.
EXPORT_FORM = b"2"


class EngineError(VGGProtoError):
    """``--engine onnxruntime`` cannot run the net (or the engine name is unknown)."""


class Engine:
    """``net`` (a TEST-phase :class:`Net`) run by ``engine``; the caller reads ``keep`` blobs besides the outputs.

    ``forward(**inputs)`` gives numpy arrays (the Python API); :meth:`run` gives tensors and fills ``blobs``
    and ``loss`` as :meth:`Net.forward` does, for the loops written against a Net
    (:class:`vggproto.engine.api.EngineNet`).  The graphs hold the weights the net had at their first use: after
    changing them, build a new Engine.
    """

    def __init__(self, net: Net, engine: str = "auto", *, keep: Sequence[str] = (),
                 cache: str | os.PathLike | bool = True, threads: int | None = None) -> None:
        if engine not in ENGINES:
            raise EngineError(f"unknown engine '{engine}'; supported: {', '.join(ENGINES)}")
        self.net, self.requested = net, engine
        self._threads = threads
        folder = cache_folder() if cache is True else (Path(cache) if cache else None)
        self.cache = GraphCache(folder)
        self.blobs: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.segment: Segment | None = None
        self._sessions: dict[Shapes, Any] = {}
        self._verified: set[Shapes] = set()
        self._pinned: set[Shapes] = set()     # shapes the batch-dynamic graph failed at: exported at them instead
        self._weights_key: str | None = None
        self._cached: dict[Shapes, str] = {}     # sessions read from the disk cache: their keys
        self._unsaved: dict[Shapes, tuple[str, Entry]] = {}   # exported, cached once they pass their first check
        self.ncnn: NcnnRunner | None = None
        self._ncnn_shapes: dict[Shapes, dict[str, tuple[int, ...]]] = {}   # verified shapes: outputs' shapes
        self.chosen = "torch"
        if engine == "torch" or (engine == "auto" and net.device.type != "cpu"):
            return
        if net.device.type != "cpu":
            raise EngineError(f"--engine {engine} runs on the CPU; the net is on {net.device} (use --engine "
                              f"torch or auto with a GPU)")
        if engine in ("auto", "ncnn"):
            self._start_ncnn(tuple(keep))
        if engine == "ncnn":
            return
        found = plan(net, keep)
        if isinstance(found, str):
            if self.ncnn is None:
                self._give_up(found)
            return
        self.segment = found
        if self.ncnn is not None and self.ncnn.segment.end < found.end:
            log.info("engine auto: onnxruntime holds more of the net than ncnn (%s)", found.describe(net))
            self.ncnn = None
        log.info("engine %s (%d thread%s): %s", "auto" if self.ncnn else "onnxruntime", self.threads,
                 "" if self.threads == 1 else "s", found.describe(net))

    def _start_ncnn(self, keep: tuple[str, ...]) -> None:
        """The ncnn segment (``--engine ncnn``: or an error; ``auto``: or onnxruntime alone)."""
        try:
            self.ncnn = NcnnRunner(self.net, self._fast_threads(), keep)
        except NcnnUnavailable as exc:
            if self.requested == "ncnn":
                raise EngineError(f"--engine ncnn: {exc}") from None
            log.debug("engine auto: not ncnn: %s", exc)
            return
        log.info("engine ncnn: %s", self.ncnn.segment.describe(self.net).replace("onnxruntime", "ncnn"))

    @property
    def threads(self) -> int:
        """The threads of the engine that runs the net: torch's own count for torch, else :meth:`_fast_threads`."""
        return torch.get_num_threads() if self.kind == "torch" else self._fast_threads()

    def _fast_threads(self) -> int:
        """onnxruntime's and ncnn's threads: as given, else the free CPUs (measured once, when first needed: it
        samples the CPUs' load for a moment)."""
        if self._threads is None:
            from vggproto.net.devices import usable_cpus
            self._threads = usable_cpus()
        return self._threads

    @property
    def kind(self) -> str:
        """The engine that ran the net's last pass ("ncnn" or "onnxruntime" for the part it holds, or "torch");
        before any pass, the one it will try first."""
        if self.chosen != "torch" or (self.segment is None and self.ncnn is None):
            return self.chosen
        return "ncnn" if self.ncnn is not None else "onnxruntime"

    def _give_up(self, reason: str) -> None:
        if self.requested == "onnxruntime":
            raise EngineError(f"--engine onnxruntime: {reason}")
        if self.ncnn is not None:
            log.warning("engine auto: not onnxruntime: %s", reason)
        elif self.segment is not None or self.requested == "auto":
            log.warning("engine auto: running the net in torch, not onnxruntime: %s", reason)
        self.segment = None

    def forward(self, **inputs: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """The net's outputs for ``inputs`` (keyed by input blob) as numpy arrays."""
        with torch.inference_mode():
            return {name: value.detach().cpu().numpy() for name, value in self.run(**inputs).items()}

    def run(self, **inputs: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The net's outputs as tensors; every blob the engine computed is in ``blobs``."""
        if self.segment is None and self.ncnn is None:
            out = self.net.forward(**inputs)
            self.blobs, self.loss, self.chosen = self.net.blobs, self.net.loss, "torch"
            return out
        start, count = (self.ncnn.segment if self.ncnn else self.segment).start, len(self.net.layer_list)
        blobs: dict[str, torch.Tensor] = {}
        self.blobs = {}
        self._layers(0, start, blobs, inputs)
        if inputs:
            from vggproto.errors import NetError
            raise NetError(f"unknown input(s) {', '.join(sorted(inputs))}; the net is fed through: "
                           f"{', '.join(self.net.input_names) or 'nothing'}", path=self.net.path)
        self._layers(self._run_fast(blobs), count, blobs, {})
        self.blobs = blobs
        self.loss = sum((w * blobs[name].sum() for name, w in self.net.loss_weights.items()), torch.zeros(()))
        return {name: blobs[name] for name in self.net.output_names}

    def _run_fast(self, blobs: dict[str, torch.Tensor]) -> int:
        """The fast engine's part of the net on ``blobs`` (its outputs added to them); the index of the first
        layer the interpreter runs after it.  ``auto`` with both engines holding the same layers races them on
        the first pass and keeps the faster only; a failing engine leaves the part to the other, or to the
        interpreter."""
        shapes: Shapes = tuple(sorted((name, tuple(value.shape)) for name, value in blobs.items()))
        if self.ncnn is not None and self.segment is not None:
            if self._race(shapes, blobs) == "ncnn":   # the loser is dropped: its memory, and no second race
                self.segment, self._sessions = None, {}
            else:
                self.ncnn = None
        if self.ncnn is not None and self._run_ncnn(shapes, blobs):
            self.chosen = "ncnn"
            return self.ncnn.segment.end
        segment = self.segment
        if segment is not None and self._run_segment(blobs):
            self.chosen = "onnxruntime"
            return segment.end
        self.chosen = "torch"
        return feeding_end(self.net)

    def _race(self, shapes: Shapes, blobs: dict[str, torch.Tensor]) -> str:
        """``auto``'s choice: each engine's pass on the first images (at most :data:`RACE_IMAGES`) verified, then
        timed once more; the faster.  (A race over a whole large batch would cost as much as the batch itself;
        the winner's first pass over the real batch is verified as usual.)"""
        import time
        if len({value.shape[0] for value in blobs.values() if value.dim()}) == 1:
            blobs = {name: value[:RACE_IMAGES] if value.dim() else value for name, value in blobs.items()}
            shapes = tuple(sorted((name, tuple(value.shape)) for name, value in blobs.items()))
        seconds = {}
        for name, run in (("ncnn", lambda: self._run_ncnn(shapes, dict(blobs))),
                          ("onnxruntime", lambda: self._run_segment(dict(blobs)))):
            if not run():
                continue
            begin = time.perf_counter()
            if run():
                seconds[name] = time.perf_counter() - begin
        if not seconds:
            return "torch"
        best = min(seconds, key=seconds.get)
        log.info("engine auto: %s at inputs %s (%s)", best, dict(shapes),
                 ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in seconds.items()))
        return best

    def _run_ncnn(self, shapes: Shapes, blobs: dict[str, torch.Tensor]) -> bool:
        """The ncnn segment on ``blobs`` (verified on the first pass at ``shapes``); False, after one warning
        (``auto``) or an :class:`EngineError` (``--engine ncnn``), when it fails or disagrees."""
        segment = self.ncnn.segment
        try:
            raw = self.ncnn.run(blobs)
            if shapes not in self._ncnn_shapes:
                reference = dict(blobs)
                self._layers(segment.start, segment.end, reference, {})
                wanted = {name: tuple(reference[name].shape) for name in segment.outputs}
                results = reshaped(raw, wanted)
                why = self._compare("ncnn", reference, results, shapes)
                if why is None:
                    self._ncnn_shapes[shapes] = wanted
            else:
                results, why = reshaped(raw, self._ncnn_shapes[shapes]), None
        except VGGProtoError as exc:
            why = str(exc)
        if why is None:
            blobs.update(results)
            return True
        if self.requested == "ncnn":
            raise EngineError(f"--engine ncnn: {why}")
        log.warning("engine auto: not ncnn: %s", why)
        self.ncnn = None
        return False

    def _layers(self, start: int, end: int, blobs: dict[str, torch.Tensor], inputs: dict) -> None:
        """Layers ``start``..``end`` in the interpreter, reading and writing ``blobs`` (Net.forward's loop)."""
        net = self.net
        for param, layer in zip(net.net_param.layer[start:end], net.layer_list[start:end]):
            if layer.feeds:
                tops = layer(*net.fed_tops(param, layer, inputs))
            else:
                tops = layer(*(blobs[b] for b in param.bottom))
            blobs.update(zip(param.top, tops))

    def _run_segment(self, blobs: dict[str, torch.Tensor]) -> bool:
        """The segment in onnxruntime, its outputs into ``blobs``; False when it fell back to torch.  A
        batch-dynamic graph that fails or disagrees at a batch it was not exported at is replaced, for these
        shapes, by one exported at them (a graph whose batch only looked dynamic); a graph from the disk cache
        that fails or disagrees is dropped from it and exported again (a foreign or stale entry)."""
        shapes: Shapes = tuple((name, tuple(blobs[name].shape)) for name in self.segment.inputs)
        tries = [shapes not in self._pinned, False]
        while tries:
            dynamic_ok, dynamic = tries.pop(0), False
            try:
                session, dynamic = self._session(shapes, dynamic_ok)
                results = self._results(session, blobs)
                why = None if shapes in self._verified else self._verify(shapes, blobs, results)
            except VGGProtoError as exc:
                why = str(exc)
            except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own types for every failure
                why = f"onnxruntime failed: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
            source = _batchless(shapes) if dynamic else shapes
            if why is None:
                self._save(source)
                self._cached.pop(source, None)   # proven this net's graph: a later failure is about a new batch
                blobs.update(results)
                return True
            if self._evict(source, why):
                tries.insert(0, dynamic_ok)
            elif not dynamic_ok or not dynamic:
                break
            else:
                self._pinned.add(shapes)
                self._unsaved.pop(source, None)   # a batch-dynamic graph that fails at some batch is never cached
        self._give_up(why)
        return False

    def _save(self, source: Shapes) -> None:
        """Store the graph for ``source`` shapes in the disk cache once it has passed its first check."""
        if source in self._unsaved:
            key, entry = self._unsaved.pop(source)
            self.cache.write(key, entry)

    def _evict(self, source: Shapes, why: str) -> bool:
        """Drop a graph read from the disk cache that failed (one warning); False if it was not from the cache."""
        key = self._cached.pop(source, None)
        if key is None:
            return False
        self._sessions.pop(source, None)
        self.cache.discard(key, why)
        return True

    def _results(self, session: Any, blobs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The segment's outputs from ``session`` fed with its inputs from ``blobs``."""
        used = {i.name for i in session.get_inputs()}   # the exporter drops inputs nothing reads
        feed = {name: np.ascontiguousarray(blobs[name].detach().cpu().numpy(), dtype=np.float32)
                for name in self.segment.inputs if name in used}
        got = session.run([name + OUT_SUFFIX for name in self.segment.outputs], feed)
        return {name: torch.from_numpy(array) for name, array in zip(self.segment.outputs, got)}

    def _verify(self, shapes: Shapes, blobs: dict[str, torch.Tensor], results: dict[str, torch.Tensor]) -> str | None:
        """First use at ``shapes``: the interpreter runs the segment on the same blobs; every output must agree
        (None), else the reason."""
        reference = dict(blobs)
        self._layers(self.segment.start, self.segment.end, reference, {})
        why = self._compare("onnxruntime", reference, results, shapes)
        if why is None:
            self._verified.add(shapes)
        return why

    @staticmethod
    def _compare(engine: str, reference: dict[str, torch.Tensor], results: dict[str, torch.Tensor],
                 shapes: Shapes) -> str | None:
        """None if every result is within :data:`TOLERANCE` of the interpreter's ``reference``, else why not."""
        from vggproto.convert.onnx import difference
        for name, value in results.items():
            want = reference[name].detach().float().cpu().numpy()
            gap = difference(want, value.numpy()) if want.shape == value.shape else float("inf")
            if not gap <= TOLERANCE:
                return (f"{engine}'s '{name}' differs from the interpreter by {gap:.3g} (relative, more than "
                        f"{TOLERANCE:g}) on inputs {dict(shapes)}")
        return None

    def _session(self, shapes: Shapes, dynamic_ok: bool) -> tuple[Any, bool]:
        """The onnxruntime session for inputs of ``shapes`` (from memory, the disk cache, or a new export) and
        whether it is the batch-dynamic one; ``dynamic_ok`` False asks for a graph exported at ``shapes``."""
        batchless = _batchless(shapes)
        candidates = (batchless, shapes) if dynamic_ok else (shapes,)
        for key_shapes in candidates:
            if key_shapes in self._sessions:
                return self._sessions[key_shapes], key_shapes is batchless
        keys = {s: self._key(s, s is batchless) for s in candidates}
        for key_shapes, key in keys.items():
            entry = self.cache.read(key)
            session = self._open(entry) if entry is not None else None
            if session is not None:
                self._sessions[key_shapes], self._cached[key_shapes] = session, key
                return session, key_shapes is batchless
        entry = self._export(shapes)
        session = self._open(entry)
        if session is None:
            raise EngineError("onnxruntime cannot load the exported graph")
        key_shapes = batchless if entry.dynamic and dynamic_ok else shapes
        self._unsaved[key_shapes] = (keys[key_shapes], Entry(entry.payload, key_shapes is batchless))
        self._sessions[key_shapes] = session
        return session, key_shapes is batchless

    def _key(self, shapes: Shapes, dynamic: bool) -> str:
        """The cache key of the segment at ``shapes`` (batch 0 and a flag for a batch-dynamic graph)."""
        # the package root ranks above every unit (its __init__ imports them); it is loaded before this module
        version = sys.modules["vggproto"].__version__
        if self._weights_key is None:
            self._weights_key = digest(*weights_bytes(segment_weights(self.net, self.segment)))
        sub = sub_net(self.net, self.segment, dict(shapes))
        return digest(b"vggproto-engine", EXPORT_FORM, version.encode(), sub.SerializeToString(deterministic=True),
                      self._weights_key.encode(), b"dynamic" if dynamic else b"fixed")

    def _export(self, shapes: Shapes) -> Entry:
        """Export the segment at ``shapes`` (verified by the exporter) and say whether its batch is dynamic: a
        batch-dynamic graph where the exporter makes one, else one at exactly these shapes."""
        from vggproto.convert.onnx import export_onnx
        sub = sub_net(self.net, self.segment, dict(shapes))
        weights = segment_weights(self.net, self.segment)
        exporter = logging.getLogger("vggproto.convert.onnx")
        level = exporter.level
        exporter.setLevel(logging.WARNING)   # its "Wrote <temporary file>" line would only confuse
        with tempfile.TemporaryDirectory(prefix="vggproto-engine-") as folder:
            path = Path(folder) / "segment.onnx"
            try:
                export_onnx(sub, weights, path)   # its onnxruntime check logs nothing (severity: fatal)
            except Exception:  # noqa: BLE001 — a graph that only looked batch-dynamic fails its own check
                export_onnx(sub, weights, path, dynamic_batch=False)
            finally:
                exporter.setLevel(level)
            payload = path.read_bytes()
        session = self._open(Entry(payload, False))
        dynamic = session is not None and all(isinstance(i.shape[0], str) for i in session.get_inputs() if i.shape)
        return Entry(payload, dynamic)

    def _open(self, entry: Entry) -> Any:
        """An onnxruntime session on ``entry`` with this engine's threads (None if the bytes are not a graph)."""
        tail = self.segment is not None and self.segment.end < len(self.net.layer_list)
        return open_session(entry.payload, self._fast_threads(), spinning=not tail)


def _batchless(shapes: Shapes) -> Shapes:
    """``shapes`` with batch 0: the key of a batch-dynamic graph."""
    return tuple((name, (0, *shape[1:])) for name, shape in shapes)
