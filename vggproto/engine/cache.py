"""The on-disk cache of exported graphs: one file per key, checked on every read, written atomically.

Key: a SHA-256 over the sub-net that was exported (its layers and input shapes), the bytes of its weights, the
outputs asked for and vggproto's version, so any change to one of them is a miss.  An entry is a header (magic,
the key, the payload's SHA-256, a flag for a batch-dynamic graph) and the ONNX bytes: a truncated, corrupt or
foreign file fails the check and is rebuilt, never trusted.  Writes go through
:func:`vggproto.caffe.files.atomic_write_bytes` (a per-process temporary name, then a rename), so two processes
filling the same entry at once each rename a whole file and a reader never sees half of one.  A folder that
cannot be created or written leaves the engine working without a cache, after one warning.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vggproto.engine")

MAGIC = b"VGGPROTO-ENGINE-1\n"
_DIGEST = 32


def cache_folder() -> Path:
    """$VGGPROTO_CACHE, else $XDG_CACHE_HOME/vggproto, else ~/.cache/vggproto (the XDG base directory rule)."""
    if os.environ.get("VGGPROTO_CACHE"):
        return Path(os.environ["VGGPROTO_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vggproto"


@dataclass(frozen=True)
class Entry:
    """A graph read back from (or about to go into) the cache."""

    payload: bytes
    dynamic: bool


class GraphCache:
    """Entries under one folder; ``None`` as the folder (or a folder that refuses writes) caches nothing."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._warned = False

    def path(self, key: str) -> Path | None:
        """Where the entry ``key`` lives (None without a cache)."""
        return None if self.folder is None else self.folder / f"{key}.onnx-entry"

    def read(self, key: str) -> Entry | None:
        """The entry ``key`` if it is there and whole; a damaged or foreign one is logged and ignored."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("engine cache: cannot read %s (%s); rebuilding it", path, exc.strerror or exc)
            return None
        head = len(MAGIC) + len(key) + _DIGEST + 1
        if (len(data) < head or not data.startswith(MAGIC) or data[len(MAGIC):len(MAGIC) + len(key)] != key.encode()
                or hashlib.sha256(data[head:]).digest() != data[head - 1 - _DIGEST:head - 1]):
            log.warning("engine cache: %s is damaged or not a vggproto entry; rebuilding it", path)
            return None
        return Entry(data[head:], data[head - 1] == 1)

    def discard(self, key: str, why: str) -> None:
        """Remove the entry ``key``: it reads back whole but its graph fails (``why``); it is exported again."""
        path = self.path(key)
        if path is None:
            return
        log.warning("engine cache: %s does not give this net's numbers (%s); rebuilding it", path, why)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass   # the rebuilt entry is written over it, or the cache turns itself off

    def write(self, key: str, entry: Entry) -> None:
        """Store ``entry`` under ``key`` atomically; a folder that refuses it turns the cache off (one warning)."""
        from vggproto.caffe.files import atomic_write_bytes
        path = self.path(key)
        if path is None:
            return
        data = MAGIC + key.encode() + hashlib.sha256(entry.payload).digest() + bytes([entry.dynamic]) + entry.payload
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as exc:
            if not self._warned:
                log.warning("engine cache: cannot write to %s (%s); running without a cache", path.parent,
                            getattr(exc, "strerror", None) or exc)
            self._warned = True
            self.folder = None


def digest(*parts: bytes) -> str:
    """The hex SHA-256 of ``parts``, each length-prefixed so that no two different lists collide."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()
