"""Datasets decoded once: in-memory (:class:`CachedDataset`) or on disk (:class:`StreamedDataset`), and their loaders.

:func:`cache_dataset` renders or decodes a dataset once into stacked tensors (uint8
images, int64 labels, any other fixed-shape keys); over the memory budget the rows go
to an :class:`fer.data.stream.ArrayStore` read by rows instead. Training and evaluation
then read a batch with one indexing operation (``__getitems__``), so rendering SynFER
faces or decoding JPEGs happens once, not once per epoch. :func:`collate_items` turns
item dicts into a batch dict, and :func:`make_loader` gives the ``DataLoader`` that
:func:`fer.train.fit` and :func:`fer.train.evaluate` read, in an order fixed by
``(seed, epoch)`` (:class:`EpochSampler`) so that a resumed run sees the same batches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .._progress import bar_disabled
from .stream import ArrayStore, StoreWriter, cache_root, memory_budget as _budget, store_key

__all__ = [
    "CachedDataset",
    "StreamedDataset",
    "ConcatCachedDataset",
    "cache_dataset",
    "cached_fingerprint",
    "collate_items",
    "as_item",
    "EpochSampler",
    "make_loader",
    "derive_seed",
    "bar_kwargs",
]

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    blob = json.dumps([str(p) for p in parts]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def bar_kwargs() -> dict[str, Any]:
    """Quieter bars in logs (no terminal, no notebook): shown only after 5 s, then every 30 s at most."""
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return {} if interactive else {"mininterval": 30.0, "delay": 5.0}


def as_item(x: Any) -> Mapping[str, Any]:
    """A dataset item as a dict: dicts pass through, ``(image, label)`` pairs become ``{"image", "label"}``."""
    if isinstance(x, Mapping):
        return x
    if isinstance(x, (tuple, list)) and len(x) == 2:  # torchvision-style (image, label)
        return {"image": x[0], "label": x[1]}
    raise TypeError(f"dataset items must be dicts with 'image' (uint8 3 x H x W) and 'label' (int), "
                    f"or (image, label) pairs; got {type(x).__name__}")


def _collate_values(values: list[Any]) -> Any:
    v0 = values[0]
    if isinstance(v0, np.ndarray):
        values = [torch.from_numpy(np.asarray(v)) for v in values]
        v0 = values[0]
    if isinstance(v0, torch.Tensor):
        if all(isinstance(v, torch.Tensor) and v.shape == v0.shape for v in values):
            return torch.stack(values)
        return list(values)
    if isinstance(v0, (bool, int, float, np.integer, np.floating)) and \
            all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in values):
        return torch.tensor(np.asarray(values))
    if isinstance(v0, Mapping):
        keys = [k for k in v0 if all(isinstance(v, Mapping) and k in v for v in values)]
        return {k: _collate_values([v[k] for v in values]) for k in keys}
    return list(values)


def collate_items(items: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """Collate item dicts into a batch dict.

    Keys present in every item are kept: equal-shaped tensors are stacked, numbers
    become a tensor, dicts (``meta``) are collated key by key, anything else becomes a
    list. A batch that is already a dict (from :meth:`CachedDataset.__getitems__`)
    passes through. ``(image, label)`` pairs are accepted too.
    """
    if isinstance(items, Mapping):
        return dict(items)
    dicts = [as_item(x) for x in items]
    keys = [k for k in dicts[0] if all(k in d for d in dicts)]
    return {k: _collate_values([d[k] for d in dicts]) for k in keys}


def _subset_fingerprint(fingerprint: str, indices: Sequence[int] | np.ndarray) -> str:
    """The source fingerprint of the subset at ``indices`` of a dataset with ``fingerprint``
    (every cached dataset's :meth:`~CachedDataset.subset`, in memory, on disk or a view)."""
    return hashlib.sha256((fingerprint + ":" + ",".join(map(str, np.asarray(indices).tolist()))).encode()
                          ).hexdigest()[:16]


def _view_rows(indices: Any, n: int, index: np.ndarray | None) -> np.ndarray:
    """Rows behind ``indices`` of a view of ``n`` items that selects ``index`` (all rows when None);
    negative indices count from the end, as in a tensor."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range for {n} samples")
    idx = idx % n if n else idx
    return index[idx] if index is not None else idx


class CachedDataset(Dataset):
    """A dataset held in memory as stacked tensors (uint8 images, int64 labels, ...).

    Made by :func:`cache_dataset`. Items are dicts like the source's (only the cached
    keys); :meth:`__getitems__` returns a whole batch with one indexing operation, so
    a ``DataLoader`` over it costs next to nothing. ``targets``, ``classes``,
    ``class_counts`` and ``fingerprint()`` follow the source dataset.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], *, classes: Sequence[str] | None = None,
                 source_fingerprint: str | None = None, name: str = "") -> None:
        if "image" not in tensors or "label" not in tensors:
            raise ValueError(f"CachedDataset needs 'image' and 'label' tensors, got {sorted(tensors)}")
        n = len(tensors["label"])
        bad = {k: len(v) for k, v in tensors.items() if len(v) != n}
        if bad:
            raise ValueError(f"CachedDataset tensors differ in length: label has {n}, {bad}")
        self.tensors: dict[str, torch.Tensor] = dict(tensors)
        self.classes = tuple(classes) if classes is not None else None
        self.source_fingerprint = source_fingerprint
        self.name = name
        self._fingerprint: str | None = None

    @property
    def images(self) -> torch.Tensor:
        return self.tensors["image"]

    def tensors_keys(self) -> list[str]:
        """The keys an item has, without touching the data."""
        return list(self.tensors)

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors["label"]

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    @property
    def class_counts(self) -> dict[str, int]:
        k = len(self.classes) if self.classes is not None else int(self.labels.max()) + 1
        counts = torch.bincount(self.labels, minlength=k).tolist()
        names = self.classes if self.classes is not None else [str(i) for i in range(k)]
        return dict(zip(names, counts, strict=True))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self.tensors.items()}
        item["label"] = int(item["label"])
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> CachedDataset:
        """The samples at ``indices`` (e.g. a cross-validation fold), still cached."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        sub_fp = _subset_fingerprint(self.fingerprint(), idx.tolist())
        return CachedDataset({k: v[idx] for k, v in self.tensors.items()}, classes=self.classes,
                             source_fingerprint=sub_fp, name=self.name)

    def fingerprint(self) -> str:
        """The source's fingerprint and the cached keys; without one, a hash of the tensors."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(json.dumps(sorted(self.tensors)).encode())
            if self.source_fingerprint is not None:
                digest.update(self.source_fingerprint.encode())
            else:
                for k in sorted(self.tensors):
                    t = self.tensors[k].contiguous()
                    digest.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
                    digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}"
                           for k, v in self.tensors.items())
        return f"CachedDataset({self.name or 'cached'}, n={len(self)}, {shapes})"


def _fingerprint_of(ds: Any) -> str | None:
    fn = getattr(ds, "fingerprint", None)
    return str(fn()) if callable(fn) else None


def cached_fingerprint(keys: Iterable[str], source_fingerprint: str) -> str:
    """What ``fingerprint()`` of a :class:`CachedDataset` with these keys and source fingerprint is."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(keys)).encode())
    digest.update(source_fingerprint.encode())
    return digest.hexdigest()[:16]


class StreamedDataset(CachedDataset):
    """A :class:`CachedDataset` whose arrays stay on disk (:class:`fer.data.stream.ArrayStore`).

    Made by :func:`cache_dataset` when a dataset does not fit its memory budget. Items,
    batches (:meth:`__getitems__`), ``targets``, ``class_counts``, :meth:`subset` and
    :meth:`fingerprint` are those of the in-memory :class:`CachedDataset` of the same
    data; batches are read from the store's files by rows, so a training epoch's memory
    is a few batches whatever the dataset's size. ``tensors`` (and ``images``) map the
    files (``numpy.memmap``): fine for a look, but pages read that way stay resident.
    """

    def __init__(self, store: Any, *, classes: Sequence[str] | None = None, source_fingerprint: str | None = None,
                 name: str = "", index: np.ndarray | None = None) -> None:
        if "image" not in store.columns or "label" not in store.columns:
            raise ValueError(f"StreamedDataset needs 'image' and 'label' columns, {store} has {sorted(store.columns)}")
        self.store = store
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.classes = tuple(classes) if classes is not None else None
        self.source_fingerprint = source_fingerprint
        self.name = name
        self._fingerprint = None

    @property
    def tensors(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if self.index is None:
            return {k: torch.from_numpy(self.store.memmap(k)) for k in self.store.columns}
        return {k: torch.from_numpy(self.store.read(k, self.index)) for k in self.store.columns}

    @property
    def labels(self) -> torch.Tensor:
        rows = self.index if self.index is not None else np.arange(self.store.n)
        return torch.from_numpy(self.store.read("label", rows))

    def __len__(self) -> int:
        return self.store.n if self.index is None else len(self.index)

    def tensors_keys(self) -> list[str]:
        return list(self.store.columns)

    def _rows(self, indices: Any) -> np.ndarray:
        return _view_rows(indices, len(self), self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = self._rows([int(i)])
        item: dict[str, Any] = {k: torch.from_numpy(self.store.read(k, rows))[0] for k in self.store.columns}
        item["label"] = int(item["label"])
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self._rows(indices)
        return {k: torch.from_numpy(self.store.read(k, rows)) for k in self.store.columns}

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> StreamedDataset:
        """The samples at ``indices``, still on disk (fingerprint as :meth:`CachedDataset.subset`)."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        sub_fp = _subset_fingerprint(self.fingerprint(), idx)
        return StreamedDataset(self.store, classes=self.classes, source_fingerprint=sub_fp, name=self.name,
                               index=self._rows(idx))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.source_fingerprint is None:
                raise ValueError("a StreamedDataset needs a source fingerprint")
            self._fingerprint = cached_fingerprint(self.store.columns, self.source_fingerprint)
        return self._fingerprint

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}={(len(self), *shape)}:{dt}" for k, (dt, shape) in self.store.columns.items())
        return f"StreamedDataset({self.name or 'streamed'}, n={len(self)}, {cols}, store={str(self.store.folder)!r})"


class ConcatCachedDataset(CachedDataset):
    """Several cached datasets end to end, without copying them (a view).

    Items, batches, ``labels``, ``targets``, ``class_counts`` and :meth:`subset` are those
    of the ``torch.cat`` of the parts' tensors (the keys all parts have), but a batch is
    gathered from the parts by rows, so joining on-disk :class:`StreamedDataset` s (MAPNet's
    AffectNet + RAF-DB training set, 46K faces at 224 px) keeps them on disk instead of
    doubling them in memory. ``tensors`` (and ``images``) do make that copy: for a look
    at small sets only.

    ``source_fingerprint`` defaults to ``concat(<fingerprint>,...)`` of the parts, and
    :meth:`fingerprint` is then what the ``torch.cat`` :class:`CachedDataset` with that
    source fingerprint has, so a run keyed by the joined set keeps its key.
    """

    def __init__(self, parts: Sequence[CachedDataset], *, classes: Sequence[str] | None = None,
                 source_fingerprint: str | None = None, name: str = "", index: np.ndarray | None = None) -> None:
        if not parts:
            raise ValueError("ConcatCachedDataset needs at least one part")
        keys = [k for k in parts[0].tensors_keys() if all(k in p.tensors_keys() for p in parts[1:])]
        if "image" not in keys or "label" not in keys:
            raise ValueError(f"ConcatCachedDataset parts must all have 'image' and 'label', common keys: {keys}")
        self.parts = list(parts)
        self.keys = keys
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.classes = tuple(classes) if classes is not None else parts[0].classes
        self.source_fingerprint = source_fingerprint if source_fingerprint is not None else (
            "concat(" + ",".join(p.fingerprint() for p in self.parts) + ")")
        self.name = name
        self._fingerprint = None

    def tensors_keys(self) -> list[str]:
        return list(self.keys)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._gather(self._rows(np.arange(len(self))))

    @property
    def labels(self) -> torch.Tensor:
        labels = torch.cat([p.labels for p in self.parts])
        return labels if self.index is None else labels[torch.from_numpy(self.index)]

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.index is None else len(self.index)

    def _rows(self, indices: Any) -> np.ndarray:
        return _view_rows(indices, len(self), self.index)

    def _gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        part = np.searchsorted(self.offsets[1:], rows, side="right")
        pieces = [(np.flatnonzero(part == j), j) for j in np.unique(part)]
        batches = [(where, self.parts[j].__getitems__((rows[where] - self.offsets[j]).tolist())) for where, j in pieces]
        out: dict[str, torch.Tensor] = {}
        for k in self.keys:
            first = batches[0][1][k] if batches else self.parts[0].__getitems__([0])[k]
            out[k] = torch.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
            for where, batch in batches:
                out[k][torch.from_numpy(where)] = batch[k]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self._rows([int(i)])[0])
        j = int(np.searchsorted(self.offsets[1:], row, side="right"))
        item = self.parts[j][row - int(self.offsets[j])]
        return {k: item[k] for k in self.keys}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self._gather(self._rows(indices))

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ConcatCachedDataset:
        """The samples at ``indices``, still a view (fingerprint as :meth:`CachedDataset.subset`)."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        sub_fp = _subset_fingerprint(self.fingerprint(), idx)
        return ConcatCachedDataset(self.parts, classes=self.classes, source_fingerprint=sub_fp, name=self.name,
                                   index=self._rows(idx))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = cached_fingerprint(self.keys, self.source_fingerprint)
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"ConcatCachedDataset({self.name or 'concat'}, n={len(self)}, keys={self.keys}, "
                f"parts={[len(p) for p in self.parts]})")


def _batch_arrays(batch: Mapping[str, Any], keys: Sequence[str], derive: Callable[[dict], dict] | None,
                  what: str) -> dict[str, torch.Tensor]:
    for k in keys:
        if k not in batch:
            raise KeyError(f"cache_dataset: items of {what} have no {k!r} (they have {sorted(batch)}); drop it "
                           f"from keys=")
        if not isinstance(batch[k], torch.Tensor):
            raise ValueError(f"cache_dataset: {k!r} of {what} does not stack into one tensor (different shapes or "
                             f"non-numeric values); give the dataset a fixed image_size, or leave {k!r} out of keys=")
    out = {k: batch[k] for k in keys}
    if derive is not None:
        out = dict(derive(out))
    out["label"] = out["label"].long()
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40] or "dataset"


def cache_dataset(ds: Dataset, *, keys: Sequence[str] = ("image", "label"), batch_size: int = 256,
                  num_workers: int | None = 0, progress: bool = True, desc: str | None = None,
                  derive: Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]] | None = None,
                  source_fingerprint: str | None = None, cache_dir: str | os.PathLike | None = None,
                  memory_budget: int | str | None = None) -> CachedDataset:
    """Render or decode ``ds`` once (uint8 images, int64 labels, other ``keys``): in memory,
    or on disk when it does not fit.

    Training then reads batches with one tensor index, so rendering SynFER faces or
    decoding JPEGs happens once, not once per epoch. Every item's entries under ``keys``
    must be tensors of one shape (images: pass ``image_size`` to the dataset) or numbers.
    A :class:`CachedDataset` is returned as is.

    Memory or disk: the first decoded batch gives the bytes per item; when ``len(ds)``
    items would take more than ``memory_budget`` (bytes or ``"8G"``; default
    ``$FER_MEMORY_BUDGET``, else half the physical memory), the rows go to an
    :class:`fer.data.stream.ArrayStore` under ``cache_dir`` (default ``$FER_CACHE``, else
    ``~/.cache/fer/datasets``) and a :class:`StreamedDataset` reading them is returned.
    The store is keyed by the dataset's fingerprint, so a second call for the same data
    (in any process) reads the files instead of decoding. When ``cache_dir`` or
    ``$FER_CACHE`` is set, datasets within the budget are stored there too (and loaded
    into memory), so they are decoded once across processes as well.

    Args:
        num_workers: ``DataLoader`` workers that decode; ``None``: ``min(8, cores)`` from 2,048
            items on (none below: starting workers would cost more than they save).
        derive: applied to each decoded batch (a dict of the ``keys``' tensors); returns
            the batch to keep (e.g. face masks from ``landmarks``). Needs
            ``source_fingerprint``.
        source_fingerprint: the fingerprint the result derives from (default
            ``ds.fingerprint()``); must change whenever ``derive`` does.
    """
    if isinstance(ds, CachedDataset):
        return ds
    keys = list(keys)
    for k in ("image", "label"):
        if k not in keys:
            keys.insert(0 if k == "image" else 1, k)
    if derive is not None and source_fingerprint is None:
        raise ValueError("cache_dataset: derive= changes what is cached, so pass source_fingerprint= too (the "
                         "dataset's fingerprint plus a tag naming the derivation)")
    what = type(ds).__name__
    src_fp = source_fingerprint if source_fingerprint is not None else _fingerprint_of(ds)
    name = desc or f"cache {what}"
    label = repr(ds) if len(repr(ds)) < 200 else what
    classes = getattr(ds, "classes", None)
    budget = _budget(memory_budget)
    root, named = cache_root(cache_dir)
    folder = root / f"{_slug(name)}-{store_key(src_fp, keys, len(ds))}" if src_fp is not None else None

    store = ArrayStore.open(folder) if folder is not None else None
    mem: dict[str, torch.Tensor] | None = None
    if store is None:
        n = len(ds)
        workers = int(num_workers) if num_workers is not None else min(8, os.cpu_count() or 1) if n >= 2048 else 0
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_items,
                            persistent_workers=False)
        writer: Any = None
        start = 0
        try:
            for batch in tqdm(loader, desc=name, disable=bar_disabled(progress), leave=False, **bar_kwargs()):
                arrays = _batch_arrays(batch, keys, derive, what)
                if writer is None and mem is None:  # first batch: memory or disk?
                    need = n * sum(v[0].nbytes for v in arrays.values())
                    if (need > budget or named) and folder is not None:
                        if need > budget:
                            log.info("%s: %.1f GB exceeds the memory budget (%.1f GB): streaming from %s", name,
                                     need / 1e9, budget / 1e9, folder)
                        writer = StoreWriter(folder, n, {"source_fingerprint": src_fp, "keys": keys,
                                                         "dataset": label})
                        free = shutil.disk_usage(writer.part).free
                        if free < need:
                            raise OSError(f"{name}: its disk cache needs {need / 1e9:.1f} GB but {root} has "
                                          f"{free / 1e9:.1f} GB free. Fix: point FER_CACHE (or cache_dir=) at a "
                                          f"disk with room, or raise FER_MEMORY_BUDGET if it fits in memory")
                    else:
                        if need > budget:
                            log.warning("%s: %.1f GB exceeds the memory budget, but %s has no fingerprint() to "
                                        "key a disk cache with: caching in memory", name, need / 1e9, what)
                        mem = {k: torch.empty((n, *v.shape[1:]), dtype=v.dtype) for k, v in arrays.items()}
                b = len(arrays["label"])
                if writer is not None:
                    writer.write(start, {k: v.numpy() for k, v in arrays.items()})
                else:
                    for k, v in arrays.items():
                        mem[k][start:start + b] = v
                start += b
            if writer is None and mem is None:
                raise ValueError(f"cache_dataset: {what} is empty")
            if start != n:
                raise ValueError(f"cache_dataset: {what} yielded {start} items, len() says {n}")
            if writer is not None:
                store = ArrayStore.open(writer.commit())
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    if store is not None:
        if store.nbytes > budget:
            return StreamedDataset(store, classes=classes, source_fingerprint=src_fp, name=label)
        mem = {k: torch.from_numpy(store.read_all(k)) for k in store.columns}
    return CachedDataset(mem, classes=classes, source_fingerprint=src_fp, name=label)


class EpochSampler(Sampler[int]):
    """Indices in an order fixed by ``(seed, epoch)``: the same on every process and after a resume."""

    def __init__(self, n: int, *, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_loader(ds: Dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int, drop_last: bool,
                pin_memory: bool) -> DataLoader:
    """A ``DataLoader`` over ``ds`` in :class:`EpochSampler` order, collating with :func:`collate_items`."""
    if len(ds) == 0:
        raise ValueError(f"{type(ds).__name__} is empty: nothing to train or evaluate on")
    return DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(len(ds), seed=seed, shuffle=shuffle),
                      num_workers=num_workers, collate_fn=collate_items, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)
