"""A dataset cache on disk: fixed-shape arrays in ``.npy`` files, filled once, read by rows.

AffectNet's training list decoded at 224 px is 43 GB of uint8; a workstation cannot
hold it (twice) in memory. :class:`ArrayStore` keeps such a cache on disk instead:
one ``<key>.npy`` per item key (``image`` uint8 N x 3 x H x W, ``label`` int64 N,
``mask`` uint8 N x 1 x H x W, ...), written in row chunks as batches are decoded, and
read back by rows with ``os.preadv`` (so the pages read are page cache, not process
memory: the reader's RSS stays at a few batches whatever N is). The files are plain
``.npy`` (``numpy.load(path, mmap_mode="r")`` opens them).

Filling is atomic: rows go into ``<name>.part-<pid>-<random>/``; only when every row is
written and synced does ``complete.json`` appear and the folder get its final name. A
folder without ``complete.json`` (a crash, an exception half way, a kill) is never
opened as a cache; a later fill removes parts whose process is gone and starts over.
Two processes filling the same key at once both finish; the first rename wins.

The folder's name is a hash of what is stored (the source dataset's fingerprint, the
keys, any per-batch derivation), so a second request for the same data, from the same
or another process, opens the files instead of decoding again.

:func:`cache_root` and :func:`memory_budget` give the defaults that
:func:`fer.data.cache_dataset` uses to choose between memory and disk:

* ``FER_CACHE`` (or ``cache_dir=``): where stores live; default
  ``$XDG_CACHE_HOME/fer/datasets`` (``~/.cache/fer/datasets``);
* ``FER_MEMORY_BUDGET`` (or ``memory_budget=``): bytes a dataset may take in memory,
  like ``8G``, ``500M`` or ``0`` (always stream); default half the physical memory.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArrayStore", "StoreWriter", "store_key", "cache_root", "memory_budget", "parse_bytes",
           "COMPLETE", "FORMAT"]

#: The marker written last: a store folder without it is not a cache.
COMPLETE = "complete.json"
#: Format tag, part of every store key (bump it when the layout changes).
FORMAT = "fer.data.stream/1"
#: Keys whose whole column is at most this many bytes are held in memory when read.
SMALL_COLUMN = 64 << 20


def parse_bytes(text: str | int | float) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (binary units)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size in bytes; write e.g. 8G, 512M, 1.5GiB or 1000000")
    return int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))


def memory_budget(budget: str | int | None = None) -> int:
    """Bytes a cached dataset may take in memory: ``budget``, else ``$FER_MEMORY_BUDGET``,
    else half the physical memory."""
    if budget is not None:
        return parse_bytes(budget)
    env = os.environ.get("FER_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf: a conservative 8 GiB
        return 8 << 30


def cache_root(cache_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The store folder and whether the user named it (``cache_dir=`` or ``$FER_CACHE``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser(), True
    env = os.environ.get("FER_CACHE")
    if env:
        return Path(env).expanduser(), True
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "fer" / "datasets", False


def store_key(*parts: Any) -> str:
    """A short hash of what a store holds (JSON of ``parts`` with :data:`FORMAT`)."""
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True, default=str).encode()).hexdigest()[:20]


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreWriter:
    """Fills one store in a ``.part`` folder; :meth:`commit` makes it a cache.

    ``write(start, batch)`` writes rows ``start ..`` of every key (each batch value an
    array whose first axis is the rows); columns are created on the first batch from its
    dtypes and row shapes. Use as a context manager: leaving on an exception removes the
    part folder.
    """

    def __init__(self, final: Path, n: int, info: Mapping[str, Any]) -> None:
        self.final, self.n, self.info = final, int(n), dict(info)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._clean_stale(final)
        self.part = final.with_name(f"{final.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.part.mkdir()
        self.columns: dict[str, tuple[int, int, np.dtype, tuple[int, ...]]] = {}  # fd, offset, dtype, row shape
        self.rows_written = 0

    @staticmethod
    def _clean_stale(final: Path) -> None:
        if final.is_dir() and not (final / COMPLETE).is_file():  # not a store (the marker comes before the rename)
            shutil.rmtree(final, ignore_errors=True)
        for p in final.parent.glob(f"{final.name}.part-*"):
            m = re.match(r".*\.part-(\d+)-", p.name)
            if m and not _alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)

    def _open(self, key: str, value: np.ndarray) -> tuple[int, int, np.dtype, tuple[int, ...]]:
        path = self.part / f"{key}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=value.dtype, shape=(self.n, *value.shape[1:]))
        col = (os.open(path, os.O_RDWR), int(mm.offset), value.dtype, tuple(value.shape[1:]))
        del mm  # header and (sparse) size written; rows go in with pwrite
        self.columns[key] = col
        return col

    def write(self, start: int, batch: Mapping[str, np.ndarray]) -> None:
        for key, value in batch.items():
            value = np.ascontiguousarray(value)
            fd, offset, dtype, shape = self.columns.get(key) or self._open(key, value)
            if value.dtype != dtype or tuple(value.shape[1:]) != shape:
                raise ValueError(f"store {self.final.name}: {key!r} rows {start}.. are {value.dtype} "
                                 f"{tuple(value.shape[1:])}, earlier rows {dtype} {shape}")
            if start + len(value) > self.n:
                raise ValueError(f"store {self.final.name}: rows {start}..{start + len(value)} exceed n={self.n}")
            row = value[0].nbytes if len(value) else 0
            buf = memoryview(value).cast("B")
            done = 0
            while done < len(buf):
                done += os.pwrite(fd, buf[done:], offset + start * row + done)
        self.rows_written = max(self.rows_written, start + (len(next(iter(batch.values()))) if batch else 0))

    def _close(self) -> None:
        for fd, *_ in self.columns.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.columns = {}

    def commit(self) -> Path:
        """Sync every column, write :data:`COMPLETE`, rename to the final name; return it."""
        if self.rows_written != self.n:
            raise RuntimeError(f"store {self.final.name}: {self.rows_written} of {self.n} rows written")
        for fd, *_ in self.columns.values():
            os.fsync(fd)
        cols = {k: {"dtype": dt.str, "shape": list(shape)} for k, (_, _, dt, shape) in self.columns.items()}
        self._close()
        marker = self.part / COMPLETE
        with open(marker, "w") as f:
            json.dump({"format": FORMAT, "n": self.n, "columns": cols, **self.info}, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        _fsync(self.part)
        try:
            os.rename(self.part, self.final)
        except OSError:  # another process finished the same store first: keep theirs
            if not (self.final / COMPLETE).is_file():
                raise
            shutil.rmtree(self.part, ignore_errors=True)
        _fsync(self.final.parent)
        return self.final

    def abort(self) -> None:
        self._close()
        shutil.rmtree(self.part, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


class ArrayStore:
    """A complete store, read by rows (see the module docstring).

    ``ArrayStore.open(folder)`` returns ``None`` unless the folder holds
    :data:`COMPLETE` with matching columns. Reads use ``os.preadv`` on descriptors
    opened lazily in each process (safe across ``DataLoader`` workers, fork or spawn);
    columns of at most :data:`SMALL_COLUMN` bytes (labels, landmarks) are held in memory.
    """

    def __init__(self, folder: Path, info: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.info = dict(info)
        self.n = int(info["n"])
        self.columns: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
            k: (np.dtype(c["dtype"]), tuple(c["shape"])) for k, c in info["columns"].items()}
        self._small: dict[str, np.ndarray] = {}
        self._offsets: dict[str, int] = {}
        self._fds: dict[str, int] = {}
        self._pid = -1
        for k, (dt, shape) in self.columns.items():
            path = self.path(k)
            mm = np.load(path, mmap_mode="r")  # reads the header; no data is touched
            hshape, hdt, self._offsets[k] = mm.shape, mm.dtype, int(mm.offset)
            del mm
            if tuple(hshape) != (self.n, *shape) or np.dtype(hdt) != dt:
                raise ValueError(f"{path}: holds {hdt} {hshape}, {COMPLETE} says {dt} {(self.n, *shape)}; "
                                 f"delete {self.folder} to rebuild it")
            if self.row_bytes(k) * self.n <= SMALL_COLUMN:
                self._small[k] = np.load(path)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> ArrayStore | None:
        folder = Path(folder)
        try:
            info = json.loads((folder / COMPLETE).read_text())
        except (OSError, ValueError):
            return None
        if info.get("format") != FORMAT:
            return None
        return cls(folder, info)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def row_bytes(self, key: str) -> int:
        dt, shape = self.columns[key]
        return int(dt.itemsize * int(np.prod(shape, dtype=np.int64)))

    @property
    def nbytes(self) -> int:
        return sum(self.row_bytes(k) for k in self.columns) * self.n

    def _fd(self, key: str) -> int:
        if self._pid != os.getpid():  # a new process (DataLoader worker): own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(self.path(key), os.O_RDONLY)
        return fd

    def read(self, key: str, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows ``rows`` (in that order) of column ``key`` as a new array."""
        rows = np.asarray(rows, dtype=np.int64)
        if key in self._small:
            return self._small[key][rows]
        dt, shape = self.columns[key]
        out = np.empty((len(rows), *shape), dtype=dt)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise IndexError(f"store {self.folder.name}: rows outside 0..{self.n - 1}")
        fd, off, rb = self._fd(key), self._offsets[key], self.row_bytes(key)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for j, r in enumerate(rows.tolist()):
            got = os.preadv(fd, [flat[j]], off + r * rb)
            if got != rb:
                raise OSError(f"{self.path(key)}: short read at row {r} ({got} of {rb} bytes); the file is "
                              f"damaged, delete {self.folder} to rebuild it")
        return out

    def read_all(self, key: str) -> np.ndarray:
        """Column ``key`` whole, in memory (one copy, read with ``readinto``)."""
        if key in self._small:
            return self._small[key].copy()
        dt, shape = self.columns[key]
        out = np.empty((self.n, *shape), dtype=dt)
        with open(self.path(key), "rb", buffering=0) as f:
            f.seek(self._offsets[key])
            view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
            while done < len(view):
                got = f.readinto(view[done:done + (64 << 20)])
                if not got:
                    raise OSError(f"{self.path(key)}: ends early; delete {self.folder} to rebuild it")
                done += got
        return out

    def memmap(self, key: str) -> np.ndarray:
        """Column ``key`` as a copy-on-write ``numpy.memmap`` (pages read stay mapped)."""
        return np.load(self.path(key), mmap_mode="c")

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, -1
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", -1) == os.getpid():
            self.close()

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}={dt}{shape}" for k, (dt, shape) in self.columns.items())
        return f"ArrayStore({str(self.folder)!r}, n={self.n}, {cols})"
