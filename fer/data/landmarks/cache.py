"""A cached, resumable landmark pass over a whole dataset, and the file it writes.

:func:`annotate_dataset` runs :func:`~fer.data.landmarks.detect` over every item of
a dataset once and writes ``landmarks68[-<split>].npz`` next to the data
(:func:`landmarks_path`). The file is written atomically (temporary file, then
``os.replace``), with a checkpoint ``<name>.partial.npz`` every
``checkpoint_every`` images, so an interrupted pass resumes where it stopped.
:func:`read_landmarks` gives a :class:`LandmarkTable` that loaders query by the
image path (``meta["path"]``) or, for generated data, by index.

File format (``numpy.savez``, no pickles): ``keys`` (str N), ``indices`` (int64 N,
dataset indices), ``landmarks`` (float32 N x 68 x 2, NaN where failed), ``ok``,
``detected`` (bool N), ``boxes`` (float32 N x 4), ``sizes`` (int64 N x 2: the H, W
of the image the points are in), ``messages`` (str N) and ``info`` (a JSON string:
format, backend, n, fingerprint, complete).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .backends import LandmarkResult, detect

__all__ = ["FORMAT", "LandmarkTable", "annotate_dataset", "read_landmarks", "landmarks_path", "item_key"]

FORMAT = "fer.landmarks68/1"


def landmarks_path(root: str | os.PathLike, split: str | None = None) -> Path:
    """Where a dataset's landmark cache lives: ``<root>/landmarks68-<split>.npz``
    (or ``<root>/landmarks68.npz`` without a split)."""
    name = "landmarks68.npz" if not split else f"landmarks68-{split}.npz"
    return Path(root).expanduser() / name


def _rel_key(path: str, base_dir: Path | None) -> str:
    p = Path(path)
    if base_dir is not None:
        try:
            return p.resolve().relative_to(base_dir.resolve()).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def item_key(meta: dict[str, Any] | None, index: int, base_dir: str | os.PathLike | None = None) -> str:
    """The cache key of one item: its ``meta["path"]`` (relative to ``base_dir``
    when inside it), else ``meta["index"]``, else ``index``."""
    meta = meta or {}
    path = meta.get("path")
    if path not in (None, "", "none"):
        return _rel_key(str(path), Path(base_dir) if base_dir is not None else None)
    return str(int(meta.get("index", index)))


@dataclass
class LandmarkTable:
    """Landmarks of a dataset, as read from a cache file (see :func:`read_landmarks`)."""

    keys: list[str]
    indices: np.ndarray
    landmarks: np.ndarray
    ok: np.ndarray
    detected: np.ndarray
    boxes: np.ndarray
    sizes: np.ndarray
    messages: list[str]
    info: dict[str, Any]
    path: Path | None = None
    _pos: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._pos = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Any) -> bool:
        return self._find(key) is not None

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete", False))

    def _find(self, key: Any) -> int | None:
        if isinstance(key, (int, np.integer)):
            key = str(int(key))
        key = str(key)
        if key in self._pos:
            return self._pos[key]
        base = self.path.parent if self.path is not None else None
        rel = _rel_key(key, base)
        return self._pos.get(rel, self._pos.get(Path(key).as_posix()))

    def get(self, key: Any, size: Sequence[int] | None = None) -> np.ndarray | None:
        """The 68 x 2 landmarks of the item with this path (or index), or ``None``
        when it is not in the table or its detection failed.

        ``size`` (H, W): the size of the image the caller has (a loader that resizes);
        the points are rescaled from the size they were detected at.
        """
        i = self._find(key)
        if i is None or not self.ok[i]:
            return None
        pts = self.landmarks[i]
        if size is not None and (self.sizes[i] > 0).all():
            h, w = (int(v) for v in size)
            k = np.array([w, h], np.float64) / self.sizes[i][::-1]
            if not np.allclose(k, 1.0):  # pixel centres: x' = (x + 0.5) k - 0.5
                pts = ((pts.astype(np.float64) + 0.5) * k - 0.5).astype(np.float32)
        return pts

    def summary(self) -> dict[str, Any]:
        return {"n": len(self), "ok": int(self.ok.sum()), "detected": int(self.detected.sum()),
                "backend": self.info.get("backend"), "complete": self.complete,
                "path": str(self.path) if self.path else None}


def _write_npz(path: Path, table: LandmarkTable) -> None:
    """Atomic write: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(table.keys, dtype=str), indices=table.indices.astype(np.int64),
                     landmarks=table.landmarks.astype(np.float32), ok=table.ok.astype(bool),
                     detected=table.detected.astype(bool), boxes=table.boxes.astype(np.float32),
                     sizes=table.sizes.astype(np.int64),
                     messages=np.array(table.messages, dtype=str), info=np.array(json.dumps(table.info)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_landmarks(path: str | os.PathLike) -> LandmarkTable:
    """Read a cache written by :func:`annotate_dataset` (or its ``.partial.npz`` checkpoint).

    Raises:
        FileNotFoundError: the file is missing (says how to make it).
        ValueError: the file is not a landmark cache.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no landmark cache; make it with "
                                f"`python -m fer.data.landmarks --dataset <name> --root {path.parent}` "
                                "or fer.data.landmarks.annotate_dataset(dataset, path)")
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            table = LandmarkTable([str(k) for k in z["keys"]], z["indices"].astype(np.int64),
                                  z["landmarks"].astype(np.float32), z["ok"].astype(bool),
                                  z["detected"].astype(bool), z["boxes"].astype(np.float32),
                                  z["sizes"].astype(np.int64),
                                  [str(m) for m in z["messages"]], info, path)
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a landmark cache written by fer.data.landmarks ({e}); delete it and "
                         "rerun the annotation") from e
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown landmark cache format {info.get('format')!r} (expected {FORMAT!r}); "
                         "delete it and rerun the annotation")
    return table


def _cheap_meta(dataset: Any, i: int) -> dict[str, Any] | None:
    """``meta`` of item ``i`` without decoding its image, when the dataset can."""
    for name in ("meta", "describe"):
        fn = getattr(dataset, name, None)
        if callable(fn):
            try:
                return fn(i)
            except (TypeError, IndexError, KeyError):
                return None
    return None


def _fingerprint(dataset: Any) -> str | None:
    fn = getattr(dataset, "fingerprint", None)
    try:
        return str(fn()) if callable(fn) else None
    except Exception:  # a fingerprint is a convenience; never fail a pass over it
        return None


def _collate_items(batch: list[Any]) -> list[Any]:
    return batch


class _Indexed(Dataset):
    """Yields (index, item) so keys fall back to the dataset index."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, Any]:
        i = self.indices[j]
        return i, self.dataset[i]


def _empty_table(info: dict[str, Any]) -> LandmarkTable:
    return LandmarkTable([], np.zeros(0, np.int64), np.zeros((0, 68, 2), np.float32), np.zeros(0, bool),
                         np.zeros(0, bool), np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64), [], info)


def _append(table: LandmarkTable, keys: list[str], idx: list[int], res: LandmarkResult,
            sizes: list[tuple[int, int]]) -> LandmarkTable:
    return LandmarkTable(table.keys + keys, np.concatenate([table.indices, np.asarray(idx, np.int64)]),
                         np.concatenate([table.landmarks, res.landmarks]), np.concatenate([table.ok, res.ok]),
                         np.concatenate([table.detected, res.detected]), np.concatenate([table.boxes, res.boxes]),
                         np.concatenate([table.sizes, np.asarray(sizes, np.int64).reshape(-1, 2)]),
                         table.messages + list(res.messages), table.info, table.path)


def _check_same_dataset(table: LandmarkTable, info: dict[str, Any], dataset: Any, base_dir: Path,
                        where: Path) -> None:
    fix = f"delete {where} (or pass overwrite=True) to annotate again"
    if table.info.get("n") != info["n"]:
        raise ValueError(f"{where} was made for {table.info.get('n')} items, the dataset has {info['n']}; {fix}")
    fp_old, fp_new = table.info.get("fingerprint"), info.get("fingerprint")
    if fp_old and fp_new and fp_old != fp_new:
        raise ValueError(f"{where} was made for dataset fingerprint {fp_old}, this one is {fp_new}; {fix}")
    if len(table):  # spot-check the last key (cheap when the dataset has meta(i) / describe(i))
        i = int(table.indices[-1])
        meta = _cheap_meta(dataset, i)
        if meta is None:
            item = dataset[i]
            meta = item.get("meta") if isinstance(item, dict) else None
        if item_key(meta, i, base_dir) != table.keys[-1]:
            raise ValueError(f"{where}: item {i} is {item_key(meta, i, base_dir)!r} now but "
                             f"{table.keys[-1]!r} in the file: the dataset changed; {fix}")


def _hw_of(image: Any) -> tuple[int, int]:
    """(H, W) of a 3 x H x W tensor or an H x W (x C) array."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    shape = np.shape(image)
    return int(shape[0]), int(shape[1])


def _image_of(item: Any) -> Any:
    if isinstance(item, dict):
        return item["image"]
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def annotate_dataset(
    dataset: Any,
    out_path: str | os.PathLike,
    *,
    backend: str | Callable[..., Any] = "dlib",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    checkpoint_every: int = 512,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    base_dir: str | os.PathLike | None = None,
    **detect_kwargs: Any,
) -> LandmarkTable:
    """Detect 68 landmarks for every item of ``dataset`` once and cache them in ``out_path``.

    Args:
        dataset: any map-style dataset whose items are dicts with ``image`` (uint8
            3 x H x W) and ``meta`` (with ``path`` for files on disk, or ``index``),
            e.g. :class:`fer.data.SynFER` or ``fer.data.load_dataset(...)``.
        out_path: the ``.npz`` to write (see :func:`landmarks_path`).
        backend, batch_size, device, **detect_kwargs: passed to
            :func:`~fer.data.landmarks.detect` (``fallback``, ``upsample``, ...).
        checkpoint_every: write ``<out>.partial.npz`` after this many new images.
        num_workers: DataLoader workers that decode images.
        overwrite: redo the pass even if ``out_path`` exists.
        progress: show a tqdm bar.
        base_dir: paths are stored relative to this folder (default: ``out_path``'s
            folder, i.e. the dataset root), so the cache survives moving the data.

    Returns:
        The :class:`LandmarkTable`. If ``out_path`` already holds a complete pass
        over a dataset of the same size (and fingerprint, when the dataset has
        :meth:`fingerprint`), it is read and returned without running anything.

    .. note::
        Keys are the items' ``meta["path"]`` when present, else ``meta["index"]``,
        else the position in the dataset. A resumed pass checks that the dataset
        still has the same size, fingerprint and last key.
    """
    out = Path(out_path).expanduser()
    partial = out.with_name(out.name[:-4] + ".partial.npz" if out.name.endswith(".npz") else out.name + ".partial")
    base = Path(base_dir).expanduser() if base_dir is not None else out.parent
    n = len(dataset)
    name = backend if isinstance(backend, str) else getattr(backend, "__name__", "callable")
    info = {"format": FORMAT, "backend": name, "n": n, "fingerprint": _fingerprint(dataset), "complete": False,
            "dataset": type(dataset).__name__}
    if overwrite:
        for p in (out, partial):
            if p.exists():
                p.unlink()
    if out.exists():
        table = read_landmarks(out)
        _check_same_dataset(table, info, dataset, base, out)
        if table.complete:
            return table
    table = read_landmarks(partial) if partial.exists() else _empty_table(info)
    if len(table):
        _check_same_dataset(table, info, dataset, base, partial)
    table.info, table.path = info, partial
    done = set(int(i) for i in table.indices)
    todo = [i for i in range(n) if i not in done]
    loader = DataLoader(_Indexed(dataset, todo), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate_items)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - len(todo), desc=f"landmarks ({name})", unit="img")
    since = 0
    try:
        for batch in loader:
            idx = [i for i, _ in batch]
            items = [it for _, it in batch]
            keys = [item_key(it.get("meta") if isinstance(it, dict) else None, i, base) for i, it in batch]
            images = [_image_of(it) for it in items]
            res = detect(images, backend, batch_size=batch_size, device=device, **detect_kwargs)
            table = _append(table, keys, idx, res, [_hw_of(im) for im in images])
            since += len(batch)
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(ok=int(table.ok.sum()), detected=int(table.detected.sum()))
            if since >= checkpoint_every:
                _write_npz(partial, table)
                since = 0
    except BaseException:
        if since:  # keep what was done (Ctrl-C, a crash in one batch)
            _write_npz(partial, table)
        raise
    finally:
        if bar is not None:
            bar.close()
    order = np.argsort(table.indices, kind="stable")
    final = LandmarkTable([table.keys[i] for i in order], table.indices[order], table.landmarks[order],
                          table.ok[order], table.detected[order], table.boxes[order], table.sizes[order],
                          [table.messages[i] for i in order], {**info, "complete": True}, out)
    _write_npz(out, final)
    if partial.exists():
        partial.unlink()
    return final
