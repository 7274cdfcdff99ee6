"""File handling shared by every reader and writer: the one atomic write and the one magic-byte sniff.

Caffe writes its outputs in place; vggproto never leaves a half-written net, caffemodel, snapshot or feature file
behind: every writer writes a hidden temporary file beside the target and renames it over the target only when
the whole file is written (``os.replace`` is atomic on POSIX and Windows within one directory).  Readers decide
what a file is from its first bytes, never from its name alone, so a PNG passed as a prototxt or a .pt passed
as a caffemodel gets one line saying what it really is.

Every command that writes checks its output first with :func:`check_output` (the folder exists and is
writable, the output is none of the inputs, an existing file of another kind is not replaced without
``force``), so a bad output path is one line before any work is done and no input is ever lost.
"""
from __future__ import annotations

import errno
import glob
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vggproto.errors import VGGProtoError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# first bytes -> (kind, what to call it in an error message)
_MAGIC: dict[bytes, tuple[str, str]] = {
    b"\xff\xd8\xff": ("jpeg", "a JPEG image"),
    b"\x89PNG": ("png", "a PNG image"),
    b"GIF8": ("gif", "a GIF image"),
    HDF5_SIGNATURE: ("hdf5", "an HDF5 file"),
    b"PK\x03\x04": ("zip", "a zip archive (a PyTorch .pt file?)"),
    b"\x80\x02": ("pickle", "a Python pickle (a legacy PyTorch .pt file?)"),
    b"\x1f\x8b": ("gzip", "a gzip file"),
    b"\x93NUMPY": ("npy", "a numpy .npy file"),
}


class OutputError(VGGProtoError, OSError):
    """An output path that cannot or must not be written (missing folder, read-only, full, an input, another
    kind).  Also an OSError (with ``errno`` when the system gave one), so code that retries or reports failed
    writes by catching OSError keeps working."""

    def __init__(self, message: str, code: int | None = None, strerror: str | None = None,
                 filename: str | None = None):
        super().__init__(message)
        self.message = message
        self.errno, self.strerror, self.filename = code, strerror or message, filename

    def __str__(self) -> str:
        return self.message


# errors without a file name (write(), h5py) that are about the place written to
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def file_kind(path: str | os.PathLike) -> str | None:
    """What an existing file is, for :func:`check_output`: a :func:`sniff` kind, 'pdf', 'text' (UTF-8 without
    NUL bytes: prototxt, JSON, lists, SVG) or 'binary' (a caffemodel, binaryproto, solverstate...); None when it
    does not exist or is empty."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if not head:
        return None
    if head.startswith(b"%PDF"):
        return "pdf"
    kind = sniff(head[:16]) or ("hdf5" if is_hdf5(head) else None)
    if kind is not None:
        return kind
    try:
        head[:-4].decode("utf-8")   # the sample may cut a multi-byte character at its end
    except UnicodeDecodeError:
        return "binary"
    return "binary" if b"\x00" in head else "text"


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


_SUFFIX_KINDS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".pdf": "pdf", ".h5": "hdf5",
                 ".hdf5": "hdf5", ".pt": "zip", ".pth": "zip", ".safetensors": "safetensors", ".npy": "npy",
                 ".caffemodel": "binary", ".binaryproto": "binary", ".solverstate": "binary", ".pb": "binary",
                 ".onnx": "binary"}


def output_kind(path: str | os.PathLike) -> str:
    """The :func:`file_kind` a writer makes of ``path``, from its extension (text when it names none)."""
    return _SUFFIX_KINDS.get(Path(path).suffix.lower(), "text")


def check_output(path: str | os.PathLike, inputs: tuple = (), kind: str | None = "auto",
                 force: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written or must not be: its folder missing, not a
    folder or not writable; the path a folder; the same file as one of ``inputs`` (writing it would destroy
    the input); or an existing file of another :func:`file_kind` than ``kind`` ('auto': from the extension,
    None: any) unless ``force``."""
    target = Path(path)
    kind = output_kind(target) if kind == "auto" else kind
    folder = target.parent
    if target.is_dir():
        raise OutputError(f"{target}: is a directory, expected an output file name")
    if not folder.exists():
        raise OutputError(f"{target}: the output directory {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{target}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: the output directory {folder} is not writable")
    for source in inputs:
        if source is not None and os.path.exists(source) and _same_file(target, source):
            raise OutputError(f"{target}: the output is also an input ({source}); choose another output name")
    existing = file_kind(target) if kind is not None and not force else None
    if existing is not None and existing != kind:
        raise OutputError(f"{target}: exists and is {_what(existing)}, not overwritten with {_what(kind)} "
                          f"(remove it or pass --force to replace it)")
    return target


def _what(kind: str) -> str:
    return {"text": "a text file", "binary": "a binary file (a caffemodel or binaryproto?)",
            "pdf": "a PDF"}.get(kind) or describe(kind)


def write_error(exc: OSError, target: Path, tmp: Path) -> OutputError | None:
    """The one-line error for an OSError met while writing ``target`` (via ``tmp``), None if it is not one."""
    if isinstance(exc, OutputError):
        return exc
    names = {str(target), str(tmp), os.fspath(target.parent)}
    anonymous = exc.filename is None and (exc.errno in _WRITE_ERRNOS or str(tmp) in str(exc))
    if exc.filename not in names and not anonymous:   # an input that failed to read, say: not ours to rename
        return None
    # h5py's strerror is a paragraph naming the temporary file: the system's words for errno are enough
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc)).split(" (")[0][:200]
    return OutputError(f"{target}: cannot write: {reason}", exc.errno, reason, str(target))


def temporary_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name a write to ``path`` goes through (``.NAME.PID.tmp`` in the same folder)."""
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it over ``path`` when the block succeeds,
    remove it when the block raises (the target is then untouched).  A folder that is missing, read-only or
    full ends in one :class:`OutputError` naming the file; the clean-up never raises a second error."""
    target = Path(path)
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        error = write_error(exc, target, tmp) if isinstance(exc, OSError) else None
        if error is not None:
            raise error from None
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder name beside ``path`` (not yet created) to build a database in; rename it to
    ``path`` when the block succeeds, remove it when the block raises, so a failed or interrupted write never
    leaves half a database; the temporaries of runs killed before that (their process gone) are removed first.
    An existing ``path`` is refused unless ``replace`` (``--force``): then it is swapped out only once the new one
    is complete."""
    target = Path(path)
    if (target.exists() or target.is_symlink()) and not replace:
        raise OutputError(f"{target}: exists; remove it, choose another name or pass --force to replace it")
    tmp = temporary_path(target)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):   # left by killed runs
        pid = stale.name[len(target.name) + 2:-len(".tmp")]
        if stale == tmp or (pid.isdigit() and not process_alive(int(pid))):
            _remove_tree(stale)
    try:
        yield tmp
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(tmp, target)
        _remove_tree(old)
    except BaseException as exc:
        _remove_tree(tmp)
        error = write_error(exc, target, tmp) if isinstance(exc, OSError) else None
        if error is not None:
            raise error from None
        raise


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing its temporaries (False for this process: it has not started
    yet, so anything named with its id is older)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _remove_tree(path: Path) -> None:
    """Remove a file or folder that may not exist, never raising (clean-up must not hide the first error)."""
    import shutil
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def is_hdf5(buf: bytes | memoryview) -> bool:
    """True when the HDF5 superblock signature sits at 0, 512, 1024, 2048... (HDF5 spec: user block sizes)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= len(buf):
        if buf[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def is_safetensors(head: bytes) -> bool:
    """safetensors: a little-endian u64 header length, then a JSON object."""
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 1 << 30


def sniff(head: bytes) -> str | None:
    """The container kind of a file from its first bytes ('jpeg', 'png', 'gif', 'hdf5', 'zip', 'pickle',
    'gzip', 'npy', 'safetensors'), or None when the bytes name none of them (text or a protobuf, then)."""
    for magic, (kind, _) in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "safetensors" if is_safetensors(head) else None


def describe(kind: str) -> str:
    """How an error message names a container kind returned by :func:`sniff`."""
    for known, what in _MAGIC.values():
        if known == kind:
            return what
    return "a safetensors file" if kind == "safetensors" else kind
