"""Key/value databases Caffe's Data layer reads: LMDB (via the ``lmdb`` package) and LevelDB (via ``plyvel``,
optional).

Readers list the keys once, in the database's byte order (the order Caffe's cursor walks), and then fetch
values by index, so a record position maps to one key for any worker process.  Handles are opened lazily and
dropped on pickling, so a reader can be sent to worker processes.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from vggproto.errors import DataError

log = logging.getLogger("vggproto.data.db")

LMDB_MAP_SIZE = 1 << 40   # Caffe: src/caffe/util/db_lmdb.hpp LMDB_MAP_SIZE (1 TB, sparse)
BACKENDS = ("lmdb", "leveldb")

# The lmdb package refuses to open one environment twice in a process, yet TRAIN and TEST nets routinely read
# the same database: read-only environments are shared per (process, real path).  Process-wide by necessity.
_SHARED_ENVS: dict[tuple[int, str, int], object] = {}


def _forget_inherited_envs() -> None:
    """In a forked worker, close the copies of the parent's environments (lmdb forbids using them after fork and
    would refuse to open the same path again while they exist); the parent's own handles are unaffected."""
    for key in [k for k in _SHARED_ENVS if k[0] != os.getpid()]:
        try:
            _SHARED_ENVS.pop(key).close()
        except Exception:  # a handle that is already unusable is just dropped
            pass


def _shared_lmdb_env(path: str):
    import lmdb
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    stat = os.stat(data_file) if os.path.exists(data_file) else None
    # the inode tells a re-created database at the same path apart from the one cached
    key = (os.getpid(), os.path.realpath(path), stat.st_ino if stat else 0)
    env = _SHARED_ENVS.get(key)
    if env is None:
        _forget_inherited_envs()
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=os.path.isdir(path),
                            max_readers=512)
        except lmdb.Error as exc:
            raise DataError(f"cannot open LMDB '{path}': {exc}") from None
        _SHARED_ENVS[key] = env
    return env


def detect_backend(path: str, requested: str) -> str:
    """The backend to open ``path`` with; an LMDB directory wins over a (default) LEVELDB request, with a warning."""
    if not os.path.exists(path):
        raise DataError(f"database '{path}' does not exist (paths are relative to the working directory "
                        f"'{os.getcwd()}', as in Caffe)")
    is_lmdb = os.path.isfile(os.path.join(path, "data.mdb")) or os.path.isfile(path)
    if requested == "leveldb" and is_lmdb:
        log.warning("%s is an LMDB database but backend is LEVELDB (Caffe's default); reading it as LMDB", path)
        return "lmdb"
    return requested


class DBReader:
    """Random access by position to the records of an LMDB or LevelDB database, in key order."""

    def __init__(self, path: str, backend: str = "lmdb"):
        self.path = path
        self.backend = detect_backend(path, backend)
        self._handle = None
        self._txn = None
        self._pid = os.getpid()
        self.keys: list[bytes] = self._list_keys()
        if not self.keys:
            raise DataError(f"database '{path}' is empty")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = state["_txn"] = None
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def _open(self):
        if self._pid != os.getpid():   # a forked worker: LMDB handles must not cross fork()
            self._handle = self._txn = None
            self._pid = os.getpid()
        if self._handle is not None:
            return self._handle
        if self.backend == "lmdb":
            self._handle = _shared_lmdb_env(self.path)
            self._txn = self._handle.begin(buffers=False)
        elif self.backend == "leveldb":
            try:
                import plyvel
            except ImportError:
                raise DataError(f"'{self.path}': LevelDB databases need the 'plyvel' package (pip install plyvel); "
                                f"or convert with `vggproto convert-imageset` to LMDB (backend: LMDB)") from None
            try:
                self._handle = plyvel.DB(self.path, create_if_missing=False)
            except Exception as exc:
                raise DataError(f"cannot open LevelDB '{self.path}': {exc}") from None
        else:
            raise DataError(f"database '{self.path}': unknown backend '{self.backend}'; supported: "
                            + ", ".join(BACKENDS))
        return self._handle

    def _list_keys(self) -> list[bytes]:
        handle = self._open()
        if self.backend == "lmdb":
            return [bytes(k) for k in self._txn.cursor().iternext(keys=True, values=False)]
        return list(handle.iterator(include_value=False))

    def get(self, index: int) -> bytes:
        """The value of the ``index``-th key."""
        key = self.keys[index]
        handle = self._open()
        value = self._txn.get(key) if self.backend == "lmdb" else handle.get(key)
        if value is None:
            raise DataError(f"database '{self.path}': key {key!r} vanished while reading")
        return bytes(value)

    def close(self) -> None:
        """Release this reader's transaction (a shared LMDB environment stays open for other readers)."""
        if self._txn is not None:
            self._txn.abort()
        elif self._handle is not None:
            self._handle.close()
        self._handle = self._txn = None


class LMDBWriter:
    """Writes key/value pairs into a new LMDB directory, committing every ``commit_every`` puts (Caffe: 1000)."""

    def __init__(self, path: str, commit_every: int = 1000):
        import lmdb
        if os.path.exists(path):
            raise DataError(f"database '{path}' already exists; remove it or choose another name")
        os.makedirs(path)
        self.path, self.commit_every = path, commit_every
        self._env = lmdb.open(path, map_size=LMDB_MAP_SIZE, subdir=True, meminit=False, map_async=True)
        self._txn = self._env.begin(write=True)
        self._pending = 0

    def put(self, key: bytes, value: bytes) -> None:
        with self._errors():
            self._txn.put(key, value)
        self._pending += 1
        if self._pending >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        with self._errors():
            self._txn.commit()
            self._txn = self._env.begin(write=True)
        self._pending = 0

    def close(self) -> None:
        with self._errors():
            self._txn.commit()
            self._env.sync()
            self._env.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """LMDB's own errors (a full disk, a full map) as one line naming the database, not a traceback."""
        import lmdb
        try:
            yield
        except lmdb.Error as exc:
            raise DataError(f"database '{self.path}': cannot write: {exc}") from None

    def __enter__(self) -> "LMDBWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LevelDBWriter:
    """Writes key/value pairs into a new LevelDB directory (``plyvel``) in batches of ``commit_every`` puts, with
    Caffe's options (db_leveldb.cpp: error if it exists, 256 MB write buffer)."""

    def __init__(self, path: str, commit_every: int = 1000):
        try:
            import plyvel
        except ImportError:
            raise DataError("--backend leveldb needs the 'plyvel' package (pip install 'vggproto[leveldb]'); "
                            "or write LMDB (--backend lmdb)") from None
        if os.path.exists(path):
            raise DataError(f"database '{path}' already exists; remove it or choose another name")
        try:
            self._db = plyvel.DB(path, create_if_missing=True, error_if_exists=True, write_buffer_size=256 << 20)
        except Exception as exc:
            raise DataError(f"cannot create LevelDB '{path}': {exc}") from None
        self.path, self.commit_every = path, commit_every
        self._batch, self._pending = self._db.write_batch(), 0

    def put(self, key: bytes, value: bytes) -> None:
        self._batch.put(key, value)
        self._pending += 1
        if self._pending >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        self._batch.write()
        self._batch, self._pending = self._db.write_batch(), 0

    def close(self) -> None:
        self._batch.write()
        self._db.close()

    def __enter__(self) -> "LevelDBWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writer(path: str, backend: str = "lmdb", commit_every: int = 1000) -> LMDBWriter | LevelDBWriter:
    """A new database of ``backend`` (lmdb or leveldb) to write records into, as Caffe's ``db::GetDB``."""
    backend = backend.lower()
    if backend == "lmdb":
        return LMDBWriter(path, commit_every)
    if backend == "leveldb":
        return LevelDBWriter(path, commit_every)
    raise DataError(f"unknown backend '{backend}'; supported: {', '.join(BACKENDS)}")
