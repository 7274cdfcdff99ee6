"""Caffe snapshots: ``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (binary) or ``.caffemodel.h5`` +
``.solverstate.h5`` (HDF5), read and written exactly as Caffe does, plus vggproto's sidecar.

Caffe's solverstate holds ``iter``, ``learned_net`` (the model file name as written), ``current_step`` and the history
blobs (N, or 2N for AdaDelta/Adam).  It does not hold the data position, so a resumed Caffe run restarts its data
layers at record 0.  vggproto writes a small JSON sidecar ``<solverstate>.vggproto.json`` with the data cursors, the
plateau-schedule state and the RNG state, which makes a vggproto→vggproto resume reproduce the straight run bitwise;
a Caffe solverstate (no sidecar) resumes exactly as Caffe would.

The caffemodel, sidecar and solverstate of one iteration are a pair (:func:`write_pair`): all are written to
temporaries beside their targets first, then renamed caffemodel first and solverstate last, so a solverstate on disk
always has its complete caffemodel and a crash (even ``kill -9``) mid-snapshot never destroys the previous
snapshot.  Temporaries a killed run left behind are removed at the next start (:func:`remove_stale_temporaries`);
a full disk ends training with one line naming the file and the free space (:func:`disk_full_error`).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vggproto.caffe.files import atomic_path, atomic_write_bytes, process_alive, temporary_path
from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import SolverError, VGGProtoError

log = logging.getLogger("vggproto.train.snapshot")

SIDECAR_SUFFIX = ".vggproto.json"


@dataclass
class SolverStateData:
    """A solverstate in memory: the fields of Caffe's ``SolverState`` with history as float32 arrays."""

    iter: int
    learned_net: str
    current_step: int = 0
    history: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class Sidecar:
    """What Caffe's solverstate lacks for a bitwise resume, kept in ``<solverstate>.vggproto.json``: the data
    cursors of the train net (one dict per process) and of each test net, the plateau schedule's state and the
    torch RNG state (hex).  A field missing from an older sidecar takes its default."""

    iter: int = 0
    world_size: int = 1
    train_cursors: list[dict] = field(default_factory=list)
    test_cursors: list[dict] = field(default_factory=list)
    plateau: dict = field(default_factory=dict)
    torch_rng: str = ""

    def cursors_of(self, rank: int, world: int) -> dict:
        """Process ``rank``'s train cursors; none (data restarts at record 0) when the process count changed."""
        if len(self.train_cursors) == world:
            return self.train_cursors[rank]
        log.warning("Snapshot was taken with %d processes, this run has %d: data cursors restart at 0",
                    len(self.train_cursors), world)
        return {}


# ------------------------------------------------------------------------------------------------------------------
# Names and permissions
# ------------------------------------------------------------------------------------------------------------------

def snapshot_paths(prefix: str, it: int, hdf5: bool) -> tuple[str, str]:
    """``(model, state)`` file names as Caffe builds them (N not zero-padded)."""
    base = f"{prefix}_iter_{it}"  # Caffe: solver.cpp SnapshotFilename
    if hdf5:
        return base + ".caffemodel.h5", base + ".solverstate.h5"
    return base + ".caffemodel", base + ".solverstate"


def check_write_permission(prefix: str) -> None:
    """Probe ``<prefix>_iter_0.tempfile`` at start-up as Caffe does, so a bad prefix fails before training."""
    probe = f"{prefix}_iter_0.tempfile"  # Caffe: solver.cpp CheckSnapshotWritePermissions
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise SolverError(f"cannot write snapshots with snapshot_prefix '{prefix}' (probe file {probe}: "
                          f"{exc.strerror}); make sure the directory exists and is writable") from None


def is_hdf5_state(path: str) -> bool:
    """Caffe picks the HDF5 reader when the solverstate name ends in ``.h5``."""
    return str(path).endswith(".h5")  # Caffe: solver.cpp Restore


# ------------------------------------------------------------------------------------------------------------------
# The snapshot pair, stale temporaries, full disks
# ------------------------------------------------------------------------------------------------------------------

def pair_temporary(target: str) -> Path:
    """The temporary a pair member is written to: the atomic writer's ``.NAME.PID.tmp``, plus ``.h5`` for HDF5
    files (the writers pick the format from the suffix)."""
    tmp = temporary_path(target)
    return tmp.with_name(tmp.name + ".h5") if str(target).endswith(".h5") else tmp


def write_pair(model_path: str, write_model: Callable[[str], None], state_path: str, state: SolverStateData,
               side: Sidecar | None, last_snapshot: str | None) -> None:
    """Write one iteration's snapshot so that its files appear together or not at all.

    Caffe (solver.cpp Snapshot) writes the caffemodel, then the solverstate, each in place: a crash between them
    leaves a solverstate-less model or a truncated file.  Here every file goes to a temporary first; only when all
    are complete are they renamed, the caffemodel first and the solverstate last, so a solverstate on disk means
    its caffemodel (and sidecar) are complete.  On any failure the temporaries are removed and the previous
    snapshot is untouched; a full disk becomes :func:`disk_full_error`.
    """
    jobs: list[tuple[str, Callable[[str], None]]] = [(model_path, write_model)]
    if side is not None:
        payload = json.dumps(asdict(side), indent=1, sort_keys=True).encode()
        jobs.append((state_path + SIDECAR_SUFFIX, lambda tmp: atomic_write_bytes(tmp, payload)))
    jobs.append((state_path, lambda tmp: write_solverstate(tmp, state)))
    temps: list[tuple[Path, str]] = []
    try:
        for target, write in jobs:
            tmp = pair_temporary(target)
            temps.append((tmp, target))
            try:
                write(str(tmp))
            except (OSError, VGGProtoError) as exc:
                if is_disk_full(exc):
                    raise disk_full_error(target, last_snapshot) from None
                raise
        for tmp, target in temps:  # the solverstate is the last job: renamed last
            os.replace(tmp, target)
        log.info("Wrote %d bytes of weights to %s", os.path.getsize(model_path), model_path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` is, or was raised while handling, an ENOSPC OSError (the atomic writer turns OSErrors
    into a one-line OutputError, keeping the original as its context)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_error(path: str, last_snapshot: str | None) -> SolverError:
    """One line for ENOSPC while writing ``path``: the file, the free space, and that the last snapshot is intact."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    kept = f"the previous snapshot {last_snapshot} is intact" if last_snapshot else "no earlier snapshot exists"
    return SolverError(f"disk full writing {path} ({free} in {folder}); training stopped, {kept}")


def remove_stale_temporaries(prefix: str) -> list[str]:
    """Remove the temporaries (``.NAME.PID.tmp``) a killed run left beside ``<prefix>_iter_N.*`` / the CSV log,
    skipping those of a process still alive (another run writing there now); returns the removed paths."""
    folder, base = os.path.dirname(prefix) or ".", os.path.basename(prefix)
    pattern = re.compile(rf"^\.+{re.escape(base)}_(iter_\d+\.|log\.csv).*\.(\d+)\.tmp(\.h5)?$")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in sorted(names):
        match = pattern.match(name)
        if match is None or process_alive(int(match.group(2))):
            continue
        path = os.path.join(folder, name)
        try:
            os.remove(path)
        except OSError:
            continue
        log.info("Removed %s, a temporary file left by an interrupted earlier run", path)
        removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------------------------
# Solverstate write / read
# ------------------------------------------------------------------------------------------------------------------

def write_solverstate(path: str, state: SolverStateData) -> None:
    """Write ``state`` in the format the file name selects (``.h5`` → HDF5), atomically."""
    if is_hdf5_state(path):
        _write_state_h5(path, state)
        return
    from vggproto.weights.blob import blob_part
    from vggproto.weights.caffemodel import write_parts
    # SolverState fields in canonical order: iter (1), learned_net (2), history (3, streamed blob by blob, no
    # per-value Python work: VGG-16's history is 553 MB), current_step (4)
    head = caffe_pb2.SolverState(iter=int(state.iter), learned_net=state.learned_net).SerializeToString()
    tail = caffe_pb2.SolverState(current_step=int(state.current_step)).SerializeToString()
    write_parts(path, [head, *(blob_part(array, 3) for array in state.history), tail])


def _write_state_h5(path: str, state: SolverStateData) -> None:
    import h5py
    # Caffe: sgd_solver.cpp SnapshotSolverStateToHDF5
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        handle.create_dataset("learned_net", data=np.bytes_(state.learned_net))
        handle.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        group = handle.create_group("history")
        for i, array in enumerate(state.history):
            group.create_dataset(str(i), data=np.ascontiguousarray(array, dtype=np.float32))


def read_solverstate(path: str) -> SolverStateData:
    """Read a Caffe (or vggproto) solverstate, binary or HDF5."""
    if not os.path.isfile(path):
        raise SolverError(f"{path}: solverstate file not found")
    if is_hdf5_state(path):
        return _read_state_h5(path)
    return _read_state_binary(path)


def _read_state_binary(path: str) -> SolverStateData:
    """Walk the SolverState wire format; history blobs become arrays without per-value Python work."""
    from vggproto.caffe.wire import iter_fields
    from vggproto.errors import WeightsError
    from vggproto.weights.blob import blob_array, blob_fields
    with open(path, "rb") as handle:
        data = handle.read()
    u8 = np.frombuffer(data, dtype=np.uint8)
    state = SolverStateData(iter=0, learned_net="")
    try:
        for raw in iter_fields(data, 0, len(data)):
            if raw.number in (1, 4) and raw.wire_type == 0:
                value = raw.value - (1 << 64) if raw.value >= 1 << 63 else raw.value
                if raw.number == 1:
                    state.iter = value
                else:
                    state.current_step = value
            elif raw.number == 2 and raw.wire_type == 2:
                state.learned_net = data[raw.data_start:raw.end].decode("utf-8")
            elif raw.number == 3 and raw.wire_type == 2:
                array = blob_array(blob_fields(data, u8, raw.data_start, raw.end))
                state.history.append(np.array(array, dtype=np.float32))
    except (WeightsError, ValueError, UnicodeDecodeError) as exc:
        raise SolverError(f"{path}: not a binary SolverState ({exc}); HDF5 solverstates must end in .h5") from None
    return state


def _read_state_h5(path: str) -> SolverStateData:
    import h5py
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise SolverError(f"{path}: not an HDF5 solverstate ({exc})") from None
    with handle:
        for key in ("iter", "history"):
            if key not in handle:
                raise SolverError(f"{path}: HDF5 solverstate has no '{key}' (has: {', '.join(handle)})")
        learned = ""
        if "learned_net" in handle:
            raw = handle["learned_net"][()]
            learned = raw.decode() if isinstance(raw, bytes) else str(raw)
        step = int(np.asarray(handle["current_step"][()]).ravel()[0]) if "current_step" in handle else 0
        group = handle["history"]
        history = [np.asarray(group[str(i)][()], dtype=np.float32) for i in range(len(group))]
        return SolverStateData(iter=int(np.asarray(handle["iter"][()]).ravel()[0]), learned_net=learned,
                               current_step=step, history=history)


def resolve_learned_net(state_path: str, learned_net: str) -> str:
    """Find ``learned_net``: as written (relative to the CWD, as Caffe opens it), else beside the solverstate."""
    if not learned_net:
        return ""
    if os.path.isfile(learned_net):
        return learned_net
    beside = Path(state_path).parent / Path(learned_net).name
    if beside.is_file():
        return str(beside)
    raise SolverError(f"{state_path}: incomplete snapshot: its caffemodel (learned_net '{learned_net}') is "
                      f"missing (looked in the current directory and beside the solverstate); resume from a "
                      f"snapshot whose .caffemodel and .solverstate are both present")


def check_history(path: str, history: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]],
                  solver_type: str) -> None:
    """Caffe's CHECK on the history length, plus a shape check naming the blob, before anything is copied."""
    if len(history) != len(shapes):
        raise SolverError(f"{path}: solverstate holds {len(history)} history blobs but a {solver_type} solver on "
                          f"this net needs {len(shapes)} (incorrect length of history blobs; was it written "
                          f"by another solver type or for another net?)")
    for i, (array, shape) in enumerate(zip(history, shapes)):
        if tuple(array.shape) != tuple(shape) and array.size != int(np.prod(shape)):
            raise SolverError(f"{path}: history blob {i} has shape {tuple(array.shape)}, the net needs "
                              f"{tuple(shape)}")


# ------------------------------------------------------------------------------------------------------------------
# vggproto sidecar
# ------------------------------------------------------------------------------------------------------------------

def read_sidecar(state_path: str) -> Sidecar | None:
    """The sidecar of ``state_path``, or None (e.g. a solverstate written by Caffe)."""
    path = state_path + SIDECAR_SUFFIX
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        known = {f.name for f in fields(Sidecar)}
        return Sidecar(**{k: v for k, v in data.items() if k in known and v is not None})
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise SolverError(f"{path}: unreadable vggproto sidecar ({exc}); delete it to resume as Caffe would "
                          f"(data restarting at record 0)") from None
