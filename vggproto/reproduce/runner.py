"""Run a plan's steps so that a rerun continues where the last one stopped.

A step is skipped iff its done-marker (``DIR/steps/<name>.done``, written last, atomically) holds the digest of
what the step reads -- its command line, the files outside the plan it names (``inputs``), and the output
fingerprints of the steps it runs after -- and its outputs still have the fingerprints the marker recorded.  So a
changed input re-runs the step; a re-run whose outputs come out different re-runs the steps that read them; a
deleted or corrupted output re-runs its step; a step killed half-way has no marker and runs again.  The outputs
themselves are written atomically by the vggproto commands (snapshots, JSON, LMDBs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vggproto.caffe.files import atomic_write_bytes
from vggproto.errors import VGGProtoError
from vggproto.reproduce.plan import Step

log = logging.getLogger("vggproto.reproduce")

LARGE_FILE = 256 << 20   # fingerprint larger files by size and mtime (an ImageNet LMDB is not re-hashed per run)
Executor = Callable[[Step, Path], int]


def fingerprint(path: Path) -> str:
    """sha256 of a file (size and mtime for a large one), of a folder's files, or ``missing``."""
    if path.is_dir():
        digest = hashlib.sha256()
        # LMDB's lock.mdb changes when a reader opens the database: not content
        for child in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in ("lock.mdb", "LOCK")):
            digest.update(f"{child.relative_to(path)}={fingerprint(child)}\n".encode())
        return digest.hexdigest()
    if not path.is_file():
        return "missing"
    stat = path.stat()
    if stat.st_size > LARGE_FILE:
        return f"size {stat.st_size} mtime {stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def step_digest(step: Step, out: Path, markers: dict[str, dict]) -> str:
    """What the step reads, as one hash: command, working folder, outside inputs, the outputs it runs after."""
    what = {"argv": list(step.argv), "cwd": step.cwd,
            "inputs": {p: fingerprint(out / p) for p in step.inputs},
            "after": {name: markers[name]["outputs"] for name in step.after}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def marker_path(out: Path, step: Step) -> Path:
    return out / "steps" / f"{step.name}.done"


def read_marker(out: Path, step: Step) -> dict | None:
    """The step's marker, or None when it is missing or unreadable (then the step runs)."""
    try:
        marker = json.loads(marker_path(out, step).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not {"digest", "outputs"} <= set(marker):
        return None
    return marker if isinstance(marker["digest"], str) and isinstance(marker["outputs"], dict) else None


def is_done(step: Step, out: Path, digest: str) -> dict | None:
    """The marker if the step is complete and its inputs unchanged, else None."""
    marker = read_marker(out, step)
    if marker is None or marker["digest"] != digest or set(marker["outputs"]) != set(step.outputs):
        return None
    if any(fingerprint(out / o) != marker["outputs"][o] for o in step.outputs):
        return None
    return marker


def log_path(out: Path, step: Step) -> Path:
    return out / "logs" / f"{step.name}.log"


def subprocess_executor(step: Step, out: Path) -> int:
    """Run ``vggproto ARGV`` in ``DIR/cwd`` with its output in ``DIR/logs/<step>.log``; return its status."""
    with open(log_path(out, step), "wb") as fh:
        child = subprocess.Popen([sys.executable, "-m", "vggproto", *step.argv], cwd=out / step.cwd,
                                 stdout=fh, stderr=subprocess.STDOUT)
        try:
            return child.wait()
        except KeyboardInterrupt:  # the child got the same SIGINT: let it stop cleanly, then stop the plan
            child.wait()
            raise


@dataclass
class Progress:
    """What a run did: the steps run and skipped, and when it started."""

    total: int
    started: float = field(default_factory=time.monotonic)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def elapsed(self) -> str:
        seconds = time.monotonic() - self.started
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_plan(steps: list[Step], out: Path, execute: Executor = subprocess_executor) -> Progress:
    """Run ``steps`` in order, skipping the complete and unchanged ones; one failed step stops the plan with one
    line naming it and its log."""
    prepare(steps, out)
    progress, markers = Progress(len(steps)), {}
    for k, step in enumerate(steps, 1):
        digest = step_digest(step, out, markers)
        marker = is_done(step, out, digest)
        if marker is not None:
            log.info("step %d of %d, %s so far: %s: complete, inputs unchanged (skipped)", k, len(steps),
                     progress.elapsed(), step.name)
            progress.skipped.append(step.name)
            markers[step.name] = marker
            continue
        marker_path(out, step).unlink(missing_ok=True)  # a step killed from here on leaves no marker
        log.info("step %d of %d, %s so far: %s: %s", k, len(steps), progress.elapsed(), step.name, command(step))
        markers[step.name] = _run_one(step, out, execute, f"step {k} of {len(steps)} ({step.name})", digest)
        progress.ran.append(step.name)
    log.info("all %d steps complete (%d run, %d skipped) in %s", len(steps), len(progress.ran),
             len(progress.skipped), progress.elapsed())
    return progress


def _run_one(step: Step, out: Path, execute: Executor, where: str, digest: str) -> dict:
    try:
        status = execute(step, out)
    except KeyboardInterrupt:
        raise VGGProtoError(f"reproduce: interrupted in {where}; rerun the same command to continue") from None
    except OSError as exc:   # its log cannot be opened, the command cannot start: a full or read-only disk
        raise VGGProtoError(f"reproduce: {where} could not run: {os_reason(exc)}") from None
    if status != 0:
        raise VGGProtoError(f"reproduce: {where} failed with status {status}: {last_line(log_path(out, step))} "
                            f"(log: {log_path(out, step)})")
    missing = [o for o in step.outputs if not (out / o).exists()]
    if missing:
        raise VGGProtoError(f"reproduce: {where} finished but left no {missing[0]} (log: {log_path(out, step)})")
    for name in (o for o in step.outputs if o.endswith(".json")):   # a half-written summary is not done
        try:
            json.loads((out / name).read_text())
        except (OSError, ValueError) as exc:
            raise VGGProtoError(f"reproduce: {where} finished but its {name} is not JSON ({exc}) (log: "
                                f"{log_path(out, step)})") from None
    marker = {"digest": digest, "command": command(step), "outputs": {o: fingerprint(out / o) for o in step.outputs}}
    try:
        atomic_write_bytes(marker_path(out, step), (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:   # no marker: the step runs again next time
        raise VGGProtoError(f"reproduce: {where} finished but its marker cannot be written: {os_reason(exc)}; "
                            f"it runs again on the next run") from None
    return marker


def os_reason(exc: OSError) -> str:
    """An OSError in words, with the file it is about (an OutputError's message already names it)."""
    if exc.filename and os.fspath(exc.filename) not in str(exc.strerror):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc.strerror or exc)


def last_line(path: Path) -> str:
    """The log's last non-empty line (the failed command's own one-line error), or a note that there is none."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def command(step: Step) -> str:
    """The step as a shell line, run from DIR."""
    line = "vggproto " + shlex.join(step.argv)
    return f"(cd {shlex.quote(step.cwd)} && {line})" if step.cwd else line


def folders(steps: list[Step]) -> list[str]:
    """The folders the steps need before they run: each output's (Caffe does not create the snapshot folder)."""
    parents = sorted({str(Path(o).parent) for s in steps for o in s.outputs} - {"."})
    return ["logs", "steps", *parents]


def prepare(steps: list[Step], out: Path) -> None:
    """Create the folders and write ``DIR/plan.sh``: every step's command line, runnable as it is."""
    lines = ["#!/bin/sh", f"# vggproto reproduce: {len(steps)} steps; `vggproto reproduce` runs them, skipping the "
             "complete ones.", "set -e", 'cd "$(dirname "$0")"', "mkdir -p " + " ".join(folders(steps)),
             *(command(step) for step in steps)]
    path = out / "plan.sh"
    try:
        for folder in folders(steps):
            (out / folder).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        os.chmod(path, 0o755)
    except OSError as exc:
        raise VGGProtoError(f"reproduce: --out {out}: cannot prepare the plan's folders: {os_reason(exc)}") from None
