"""Bad state for tests/test_bad_inputs.py's case table (issue 29 item 4): the engine cache and `vggproto reproduce`.

Each case damages what a command finds on disk between two runs (a cache entry, a plan's outputs and markers) or
the disk itself (full, unwritable), then runs the command once through the CLI.  The command must either repair
it -- exit 0, the right result, at most a warning naming what it rebuilt -- or stop in one ``vggproto: error:``
line; a case with ``then`` also checks the result and, for reproduce, that the next run resumes correctly.

The engine cases run ``classify --engine onnxruntime|auto`` (and ``time-inference``) with ``VGGPROTO_CACHE`` set
to a folder of the case.  The tests run as root, for whom ``chmod`` does not make a folder read-only: a
read-only cache or ``--out`` is simulated by failing ``open``/``mkdir`` with EACCES under it (monkeypatched), and
a folder that cannot be created by a path under a regular file.  The reproduce cases run the plan with
tests/test_reproduce.py's fake step runner (each step writes its outputs, new bytes on every run); a ``kill -9``
in a step is an exception no code of the runner catches, raised after the step wrote half of its output.
"""
from __future__ import annotations

import builtins
import errno
import functools
import itertools
import json
import os
import random
from pathlib import Path
from typing import Callable
from unittest import mock

import pytest
from click.testing import CliRunner

import vggproto
import vggproto.cli
import vggproto.reproduce.run as reproduce_run
import vggproto.reproduce.runner as reproduce_runner
from vggproto.engine.cache import MAGIC

PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)
LABELS = "a\nb\nc\nd\ne\n"


# ---------------------------------------------------------------------------------------------------------------
# the engine cache: classify --engine onnxruntime with VGGPROTO_CACHE=<case>/cache
# ---------------------------------------------------------------------------------------------------------------

def _classify(d: Path, engine: str = "onnxruntime") -> list[str]:
    return ["classify", str(d / "img0.png"), "--model", str(d / "m.prototxt"), "--weights", str(d / "m.caffemodel"),
            "--engine", engine, "--top", "3", "--labels", str(d / "labels.txt")]


def _filled(d: Path, cache: str = "cache", gain: float = 0.05, name: str = "m", fc: int = 6) -> Path:
    """A small VGG-shaped net, one image, and the cache filled by one verified onnxruntime run; ``expected.txt``
    holds that run's output (the interpreter's numbers: the engine checks the first use of every graph)."""
    from eval_helpers import mini_deploy, write_images, write_model
    write_model(d, mini_deploy(classes=5, height=32, width=32, fc=fc), seed=2, gain=gain, name=name)
    if not (d / "img0.png").exists():
        write_images(d, [(40, 48)])
        (d / "labels.txt").write_text(LABELS)
    args = _classify(d)
    args[args.index("--weights") + 1] = str(d / f"{name}.caffemodel")
    args[args.index("--model") + 1] = str(d / f"{name}.prototxt")
    result = CliRunner().invoke(vggproto.cli.main, args, env={"VGGPROTO_CACHE": str(d / cache)})
    assert result.exit_code == 0, result.output
    (d / f"expected_{name}.txt").write_text(result.output)
    [entry] = (d / cache).glob("*.onnx-entry")
    return entry


def _use_cache(folder: str) -> Callable:
    return lambda patch, d: patch.setenv("VGGPROTO_CACHE", str(d / folder))


def _same_answer(d: Path, output: str) -> None:
    assert output == (d / "expected_m.txt").read_text(), output


def _rebuilt(d: Path, output: str) -> None:
    """The right answer, and the one entry in the cache is whole again (the bytes a fresh export writes)."""
    _same_answer(d, output)
    [entry] = (d / "cache").glob("*.onnx-entry")
    with open(entry, "rb") as handle:    # not Path.read_bytes: a case makes that fail for entries
        assert handle.read() == (d / "good.entry").read_bytes()


def _damaged(damage: Callable[[Path, bytes], bytes | None]) -> Callable[[Path], list[str]]:
    """Fill the cache, keep the good entry aside, replace it by ``damage(folder, its bytes)``."""
    def build(d: Path) -> list[str]:
        entry = _filled(d)
        good = entry.read_bytes()
        (d / "good.entry").write_bytes(good)
        damaged = damage(d, good)
        if damaged is not None:
            entry.write_bytes(damaged)
        return _classify(d)
    return build


def _other_nets_graph(d: Path, good: bytes, fc: int = 6) -> bytes:
    """Another net's graph (other weights; other widths with ``fc``) under this entry's header, its checksum
    right: a foreign graph that reads back whole (a cache copied from elsewhere, another build of one version)."""
    other = _filled(d, cache="other", gain=0.5, name="other", fc=fc)
    key_end = len(MAGIC) + 64
    return good[:key_end] + other.read_bytes()[key_end:]


def _entry_folder(d: Path, good: bytes) -> None:
    [entry] = (d / "cache").glob("*.onnx-entry")
    entry.unlink()
    entry.mkdir()
    (entry / "x").write_text("a folder where the entry belongs")


def _read_only(patch: pytest.MonkeyPatch, d: Path) -> None:
    """A cache folder root cannot write to: every file opened for writing under it fails with EACCES."""
    patch.setenv("VGGPROTO_CACHE", str(d / "cache"))
    (d / "cache").mkdir(exist_ok=True)
    real_open = builtins.open

    def guarded(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(d / "cache")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *args, **kwargs)
    patch.setattr(builtins, "open", guarded)


def _unreadable_entry(patch: pytest.MonkeyPatch, d: Path) -> None:
    """The entry is there but reading it fails (EACCES): rebuilt, and written over."""
    patch.setenv("VGGPROTO_CACHE", str(d / "cache"))
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.suffix == ".onnx-entry":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)
    patch.setattr(Path, "read_bytes", read_bytes)


def _other_version(d: Path) -> list[str]:
    """An entry written by another vggproto version: a different key, so a miss (the old entry stays)."""
    with mock.patch.object(vggproto, "__version__", "0.0.1-other"):
        _filled(d)
    return _classify(d)


def _two_entries(d: Path, output: str) -> None:
    _same_answer(d, output)
    assert len(list((d / "cache").glob("*.onnx-entry"))) == 2


def _no_cache_written(folder: str) -> Callable[[Path, str], None]:
    def check(d: Path, output: str) -> None:
        _same_answer(d, output)
        assert not list((d / folder).glob("*.onnx-entry")) if (d / folder).is_dir() else True
    return check


def _time_inference(d: Path) -> list[str]:
    """``time-inference --engine auto`` (its own entry: the net it times is built its own way) over a truncated
    entry."""
    _filled(d, cache="first")
    args = ["time-inference", str(d / "m.prototxt"), "--weights", str(d / "m.caffemodel"), "--engine", "auto",
            "--iterations", "1", "--json"]
    result = CliRunner().invoke(vggproto.cli.main, args, env={"VGGPROTO_CACHE": str(d / "cache")})
    assert result.exit_code == 0, result.output
    [entry] = (d / "cache").glob("*.onnx-entry")
    entry.write_bytes(entry.read_bytes()[:100])
    return args


def _onnxruntime_ran(d: Path, output: str) -> None:
    """The rebuilt graph ran: auto races it against ncnn on the first pass and keeps either."""
    assert json.loads(output.splitlines()[-1])["engine"] in ("onnxruntime", "ncnn"), output
    assert len(list((d / "cache").glob("*.onnx-entry"))) == 1, output


REBUILT = "damaged or not a vggproto entry; rebuilding it"
NO_CACHE = "running without a cache"


def engine_cases(case: Callable) -> None:
    """Register the engine-cache cases with test_bad_inputs.case."""
    damages: dict[str, Callable[[Path, bytes], bytes | None]] = {
        "truncated": lambda _, good: good[:len(good) // 2],
        "empty": lambda _, good: b"",
        "random": lambda _, good: random.Random(4).randbytes(len(good)),
        "png": lambda _, good: PNG,
        "bare-onnx": lambda _, good: good[len(MAGIC) + 64 + 33:],      # a foreign file: an ONNX graph, no header
        "flipped-byte": lambda _, good: good[:-20] + bytes([good[-20] ^ 0x40]) + good[-19:],
        "older-format": lambda _, good: b"VGGPROTO-ENGINE-0\n" + good[len(MAGIC):],
    }
    for name, damage in damages.items():
        case(f"engine-cache-{name}", REBUILT, code=0, then=_rebuilt, may_change=("cache/*",),
             patch=_use_cache("cache"))(_damaged(damage))
    case("engine-cache-other-nets-graph", "does not give this net's numbers", code=0, then=_rebuilt,
         may_change=("cache/*",), patch=_use_cache("cache"), says="rebuilding it")(_damaged(_other_nets_graph))
    case("engine-cache-other-nets-layers", "does not give this net's numbers", code=0, then=_rebuilt,
         may_change=("cache/*",), patch=_use_cache("cache"), says="rebuilding it")(
        _damaged(functools.partial(_other_nets_graph, fc=9)))
    case("engine-cache-entry-is-a-folder", NO_CACHE, code=0, then=_same_answer, patch=_use_cache("cache"))(
        _damaged(_entry_folder))
    case("engine-cache-unreadable-entry", "cannot read", code=0, then=_rebuilt, may_change=("cache/*",),
         patch=_unreadable_entry, says="rebuilding it")(_damaged(lambda _, good: None))
    case("engine-cache-other-version", "", code=0, then=_two_entries, patch=_use_cache("cache"))(_other_version)
    case("engine-cache-folder-is-a-file", NO_CACHE, code=0, then=_same_answer, patch=_use_cache("notes.txt"))(
        lambda d: (_filled(d, cache="first"), (d / "notes.txt").write_text("a file"), _classify(d, "auto"))[-1])
    case("engine-cache-folder-under-a-file", NO_CACHE, code=0, then=_no_cache_written("notes.txt/cache"),
         patch=_use_cache("notes.txt/cache"))(
        lambda d: (_filled(d, cache="first"), (d / "notes.txt").write_text("a file"), _classify(d))[-1])
    case("engine-cache-read-only", NO_CACHE, code=0, then=_no_cache_written("cache"), patch=_read_only)(
        lambda d: (_filled(d, cache="first"), _classify(d))[-1])
    case("engine-cache-time-inference-auto-truncated", REBUILT, code=0, then=_onnxruntime_ran,
         may_change=("cache/*",), patch=_use_cache("cache"))(_time_inference)


# ---------------------------------------------------------------------------------------------------------------
# vggproto reproduce: a 5-step plan (A, Table 3) run by the fake step runner, damaged between runs
# ---------------------------------------------------------------------------------------------------------------

_REPRODUCE = reproduce_run.reproduce
STEPS = ("convert-train", "convert-val", "seed1-generate-A", "seed1-train-A", "seed1-eval-A-dense-256")
SNAPSHOT, SUMMARY = "out/seed1/snapshots/A_iter_4.caffemodel", "out/seed1/evals/A-dense-256.json"


class Killed(BaseException):
    """``kill -9`` of the plan in a step: nothing of the runner after that point runs."""


_RUNS = itertools.count()


def _fake_step(step, out: Path) -> int:
    """tests/test_reproduce.py's fake step: its outputs with new bytes on every run (a summary for a JSON)."""
    from test_reproduce import write_outputs
    (out / "logs" / f"{step.name}.log").write_text("working\n")
    write_outputs(step, out, next(_RUNS))
    return 0


class Steps:
    """A fake step runner (as tests/test_reproduce.py's), recording the steps it runs in ``ran.txt``; ``at`` names a
    step that misbehaves once: ``half`` (writes half its output, then is killed), ``full`` (half its output, then
    fails on a full disk), ``log`` (its log cannot be opened: full disk), ``json`` (writes half a JSON summary)."""

    def __init__(self, folder: Path, at: str = "", how: str = "") -> None:
        self.folder, self.at, self.how = folder, at, how

    def __call__(self, step, out: Path) -> int:
        with open(self.folder / "ran.txt", "a") as log:
            log.write(step.name + "\n")
        how, self.how = (self.how, "") if step.name == self.at else ("", self.how)
        if how == "log":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "logs" / f"{step.name}.log"))
        status = _fake_step(step, out)
        if how in ("half", "full", "json"):
            for output in step.outputs:
                path = out / output
                path = path / "data.mdb" if path.is_dir() else path
                path.write_bytes(b"{half" if how == "json" else path.read_bytes()[:3])
        if how == "half":
            raise Killed()
        if how == "full":
            (out / "logs" / f"{step.name}.log").write_text(f"vggproto: error: {step.outputs[0]}: cannot write: "
                                                           f"{os.strerror(errno.ENOSPC)}\n")
            return 1
        return status


def _plan_args(d: Path, out: str = "out") -> list[str]:
    """The plan's command line; ``out`` relative to the case's folder."""
    return ["reproduce", "--list", f"{d}/train.txt,{d}/val.txt", "--root", str(d), "--out", str(d / out),
            "--configs", "A", "--tables", "3", "--crop", "28", "--iterations", "4"]


def _run_plan(d: Path, steps: Steps) -> str:
    with mock.patch.object(reproduce_run, "reproduce", functools.partial(_REPRODUCE, execute=steps)):
        try:
            return CliRunner().invoke(vggproto.cli.main, _plan_args(d)).output
        except Killed:
            return "killed"


def _ran(d: Path) -> list[str]:
    ran = d / "ran.txt"
    return ran.read_text().split() if ran.exists() else []


def _planned(damage: Callable[[Path], None], first: Callable[[Path], Steps] = lambda d: Steps(d)) -> Callable:
    """Lists, one run of the plan (``first``'s runner), ``damage``; the command line of the next run."""
    def build(d: Path) -> list[str]:
        (d / "train.txt").write_text("b.png 1\n")
        (d / "val.txt").write_text("a.png 0\n")
        _run_plan(d, first(d))
        damage(d)
        (d / "ran.txt").unlink(missing_ok=True)
        return _plan_args(d)
    return build


def _steps(how: str = "", at: str = "") -> Callable:
    """The runner the case's run uses (``at`` misbehaving once ``how``)."""
    def patch(monkeypatch: pytest.MonkeyPatch, d: Path) -> None:
        monkeypatch.setattr(reproduce_run, "reproduce", functools.partial(_REPRODUCE, execute=Steps(d, at, how)))
    return patch


def _resumed(*expected: str) -> Callable[[Path, str], None]:
    """The run went on with exactly ``expected`` (the damaged step and those reading its new outputs), every
    output is whole, and a run after it does nothing."""
    def check(d: Path, output: str) -> None:
        assert _ran(d) == list(expected), _ran(d)
        assert json.loads((d / SUMMARY).read_text())["top1_error"] > 0
        assert (d / SNAPSHOT).read_text().startswith("run ") and (d / "out/results.json").exists()
        (d / "ran.txt").unlink(missing_ok=True)
        assert "vggproto: error" not in _run_plan(d, Steps(d)) and _ran(d) == []
    return check


def _then_resumes(*expected: str) -> Callable[[Path, str], None]:
    """After the one-line stop: the next run (the disk has room again) runs the stopped step, never skips it."""
    def check(d: Path, output: str) -> None:
        (d / "ran.txt").unlink(missing_ok=True)
        assert "vggproto: error" not in _run_plan(d, Steps(d))
        _resumed(*expected)(d, "")
    return check


def _marker_on_full_disk(monkeypatch: pytest.MonkeyPatch, d: Path) -> None:
    """The disk fills while the step's done-marker is written (once): half of it reaches the temporary file."""
    from vggproto.caffe.files import atomic_path
    real, state = reproduce_runner.atomic_write_bytes, {"full": True}

    def write(path, data: bytes) -> None:
        if not str(path).endswith(".done") or not state["full"]:
            return real(path, data)
        state["full"] = False
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    _steps()(monkeypatch, d)
    monkeypatch.setattr(reproduce_runner, "atomic_write_bytes", write)


def _read_only_out(monkeypatch: pytest.MonkeyPatch, d: Path) -> None:
    """An existing --out root cannot write to: mkdir and open-for-writing under it fail with EACCES."""
    (d / "ro").mkdir()
    real_mkdir, real_open = Path.mkdir, builtins.open

    def refuse(path) -> None:
        if str(path).startswith(str(d / "ro") + os.sep):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def mkdir(self: Path, *args, **kwargs) -> None:
        refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def guarded(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", guarded)


def _lists(d: Path, out: str) -> list[str]:
    """Just the lists (no run yet): the command line into ``out``; a ``notes.txt`` file to put it in or under."""
    (d / "train.txt").write_text("b.png 1\n")
    (d / "val.txt").write_text("a.png 0\n")
    (d / "notes.txt").write_text("a file")
    return _plan_args(d, out)


def _marker(d: Path) -> None:
    """The step's marker edited: its digest right, its outputs a list of their names instead of fingerprints."""
    path = d / "out/steps/seed1-train-A.done"
    marker = json.loads(path.read_text())
    path.write_text(json.dumps({**marker, "outputs": list(marker["outputs"])}))


TRAIN_ON = ("seed1-train-A", "seed1-eval-A-dense-256")


def reproduce_cases(case: Callable) -> None:
    """Register the reproduce cases with test_bad_inputs.case."""
    resumed = {"code": 0, "may_change": ("out/*", "ran.txt"), "patch": _steps()}
    case("reproduce-summary-garbage-json", "claim 1:", then=_resumed("seed1-eval-A-dense-256"), **resumed)(
        _planned(lambda d: (d / SUMMARY).write_text("{garbage")))
    case("reproduce-snapshot-truncated", "claim 1:", then=_resumed(*TRAIN_ON), **resumed)(
        _planned(lambda d: (d / SNAPSHOT).write_bytes((d / SNAPSHOT).read_bytes()[:2])))
    case("reproduce-snapshot-deleted", "claim 1:", then=_resumed(*TRAIN_ON), **resumed)(
        _planned(lambda d: (d / SNAPSHOT).unlink()))
    case("reproduce-lmdb-deleted", "claim 1:", then=_resumed("convert-val", *TRAIN_ON), **resumed)(
        _planned(lambda d: __import__("shutil").rmtree(d / "out/data/val_lmdb")))
    case("reproduce-changed-train-list", "claim 1:", then=_resumed("convert-train", *TRAIN_ON), **resumed)(
        _planned(lambda d: (d / "train.txt").write_text("b.png 1\nc.png 0\n")))
    case("reproduce-marker-garbage", "claim 1:", then=_resumed(*TRAIN_ON), **resumed)(_planned(_marker))
    case("reproduce-killed-mid-step", "claim 1:", then=_resumed(*TRAIN_ON), **resumed)(
        _planned(lambda d: None, first=lambda d: Steps(d, "seed1-train-A", "half")))
    stopped = {"may_change": ("out/*", "ran.txt"), "then": _then_resumes("seed1-eval-A-dense-256")}
    damaged_summary = _planned(lambda d: (d / SUMMARY).write_text("{garbage"))
    case("reproduce-full-disk-writing-marker", "step 5 of 5 (seed1-eval-A-dense-256)", patch=_marker_on_full_disk,
         says="No space left on device; it runs again on the next run", **stopped)(damaged_summary)
    case("reproduce-full-disk-opening-log", "step 5 of 5 (seed1-eval-A-dense-256) could not run",
         patch=_steps("log", "seed1-eval-A-dense-256"), says="No space left on device", **stopped)(damaged_summary)
    case("reproduce-full-disk-in-step", "step 5 of 5 (seed1-eval-A-dense-256) failed with status 1",
         patch=_steps("full", "seed1-eval-A-dense-256"), says="cannot write: No space left on device",
         **stopped)(damaged_summary)
    case("reproduce-step-writes-half-json", "step 5 of 5 (seed1-eval-A-dense-256) finished but its",
         patch=_steps("json", "seed1-eval-A-dense-256"), says="is not JSON", **stopped)(damaged_summary)
    case("reproduce-out-under-a-file", "notes.txt/out", says="cannot create the folder: Not a directory",
         patch=_steps())(lambda d: _lists(d, "notes.txt/out"))
    case("reproduce-out-read-only", "--out", says="Permission denied", patch=_read_only_out)(
        lambda d: _lists(d, "ro"))
    case("reproduce-out-is-a-file", "notes.txt", code=2, patch=_steps())(lambda d: _lists(d, "notes.txt"))


def two_processes_repair_one_entry(d: Path) -> None:
    """Two ``classify --engine onnxruntime`` processes started at once over a truncated entry: both give the
    interpreter's numbers, and the entry is whole afterwards (each renames a complete file over it), no temporary
    file left."""
    import subprocess
    import sys
    args = _damaged(lambda _, good: good[:len(good) // 2])(d)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "VGGPROTO_CACHE": str(d / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "vggproto", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    for stdout, stderr in results:
        _same_answer(d, stdout)
        assert "Traceback" not in stderr
    _rebuilt(d, (d / "expected_m.txt").read_text())
    assert not [f.name for f in (d / "cache").iterdir() if not f.name.endswith(".onnx-entry")]


def killed_real_plan_resumes(d: Path) -> None:
    """``kill -9`` of a real ``vggproto reproduce`` (and its process group) while its first step, a real
    ``convert-imageset``, is reading an image (a FIFO, so the step is surely half-way): no marker and no database
    are left for it, the next run (the fake runner) runs it again, then the rest, and the next real conversion
    removes the killed one's temporary database (on ImageNet, tens of GB)."""
    import signal
    import subprocess
    import sys
    import time
    args = _lists(d, "out")
    os.mkfifo(d / "b.png")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    plan = subprocess.Popen([sys.executable, "-m", "vggproto", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer, deadline = None, time.monotonic() + 120
    while writer is None and plan.poll() is None and time.monotonic() < deadline:
        try:   # succeeds once the step has the image open for reading
            writer = os.open(d / "b.png", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)
    os.killpg(plan.pid, signal.SIGKILL)
    plan.wait()
    assert writer is not None, "the step never opened its image"
    os.close(writer)
    assert (d / "out/logs/convert-train.log").exists() and not list((d / "out/steps").glob("*.done"))
    assert not (d / "out/data/train_lmdb").exists()
    assert "vggproto: error" not in _run_plan(d, Steps(d))
    assert _ran(d) == list(STEPS)
    [half] = (d / "out/data").glob(".train_lmdb.*.tmp")     # the killed conversion's half database...
    from vggproto.caffe.files import process_alive
    while process_alive(int(half.suffixes[-2][1:])) and time.monotonic() < deadline:
        time.sleep(0.01)   # SIGKILL is delivered, and the orphan reaped, after killpg returns
    (d / "b.png").unlink()
    (d / "b.png").write_bytes((d / "out/tables.png").read_bytes())
    again = CliRunner().invoke(vggproto.cli.main, ["convert-imageset", f"{d}/", str(d / "train.txt"),
                                                   str(d / "out/data/train_lmdb"), "--force"])
    assert again.exit_code == 0, again.output
    assert not list((d / "out/data").glob(".train_lmdb.*"))     # ...is removed by the step's next real run
