"""What every real-dataset loader shares: errors, safe paths, decoding, the item dict.

A loader lists its samples at construction (labels, image paths, landmark
pointers) without decoding any image, so ``targets`` and ``class_counts`` are
cheap. Images are decoded on access, like :class:`fer.data.SynFER`, and each
item is the same dict: ``image`` (uint8 3 x H x W, RGB; grey images repeat the
channel), ``label`` (an index into ``classes``, which keep the canonical order of
:data:`fer.data.CLASSES`), ``landmarks`` (float32 K x 2, pixel x, y in the
returned image; only when the dataset ships them) and ``meta`` (strings, ints and
floats only, so that batches collate).

Bad input is an error, never a silent skip:

* a missing root, label file or image folder raises :class:`DatasetLayoutError`
  (a :class:`FileNotFoundError`) with the expected tree (the one in
  ``data/README.md``) and the first missing paths;
* a label file with a wrong header, an unknown label code or a path that leaves
  the root raises :class:`DatasetFormatError` (a :class:`ValueError`) naming
  the file and line;
* an image that cannot be decoded raises :class:`ImageDecodeError` (an
  :class:`OSError`) naming the file.

``on_error="skip"`` turns the last two kinds of *per-sample* failure into
counted, reported skips (``warnings.warn`` with the count and the first files,
and the ``skipped`` list):

* **at construction**: listed images (and landmark files) that do not exist are
  dropped from the dataset, so ``targets`` and ``len`` stay exact;
* **at access**: an image that exists but cannot be decoded is replaced by the
  next decodable sample (``len`` and ``targets`` still count it). Call
  :meth:`RealFERDataset.verify` once to decode everything up front and drop
  undecodable samples for good.

Missing roots, label files and folders, and malformed label files, always raise.
With ``DataLoader`` workers, each worker process keeps its own ``skipped`` list
(the warnings still print); run :meth:`RealFERDataset.verify` in the main process
for one authoritative list.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..._progress import bar_disabled
from ..labels import CLASSES, LabelCounts

__all__ = [
    "DatasetLayoutError",
    "DatasetFormatError",
    "ImageDecodeError",
    "Published",
    "Sample",
    "RealFERDataset",
    "IMG_EXTENSIONS",
    "ON_ERROR",
    "safe_join",
    "decode_image",
    "label_table",
    "label_code",
    "list_images",
    "read_points",
]

#: File endings read as images in folder-per-class layouts (case-insensitive).
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Accepted values of ``on_error``.
ON_ERROR: tuple[str, ...] = ("raise", "skip")
#: Files that operating systems drop into folders; ignored without a report.
_JUNK = {"thumbs.db", "desktop.ini"}
_SHOW = 5  # how many paths an error or warning lists


def _first(paths: Sequence[Any], k: int = _SHOW) -> str:
    shown = "\n".join(f"  {p}" for p in paths[:k])
    more = f"\n  ... and {len(paths) - k} more" if len(paths) > k else ""
    return shown + more


class DatasetLayoutError(FileNotFoundError):
    """The dataset's root, label files or folders are not where the loader expects them.

    The message names the dataset, reproduces the expected tree (as in
    ``data/README.md``) and lists the first missing paths.
    """

    def __init__(self, dataset: str, root: str | os.PathLike, tree: str, missing: Sequence[Any],
                 hint: str = "") -> None:
        self.dataset = dataset
        self.root = Path(root)
        self.tree = tree
        self.hint = hint
        self.missing = [str(m) for m in missing]
        msg = (f"{dataset}: the dataset is not laid out as expected under {self.root}.\n"
               f"Missing ({len(self.missing)}):\n{_first(self.missing)}\n"
               f"Expected tree (see data/README.md):\n{tree.rstrip()}")
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)

    def __reduce__(self):  # picklable across DataLoader workers
        return (DatasetLayoutError, (self.dataset, self.root, self.tree, self.missing, self.hint))


class DatasetFormatError(ValueError):
    """A label or annotation file is malformed: wrong header, unknown label code, bad
    line, unsafe path. ``path`` names the file (with ``:line`` where known)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None

    def __reduce__(self):
        return (DatasetFormatError, (self.args[0], self.path))


class ImageDecodeError(OSError):
    """An image cannot be decoded; ``path`` names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        return (ImageDecodeError, (self.path, self.reason))


def safe_join(root: Path, rel: str, *, source: str | os.PathLike, line: int | None = None) -> Path:
    """``root / rel`` for a path read from a label file, refusing paths that leave ``root``.

    Absolute paths (POSIX or Windows, drive letters included), ``..`` components and
    empty names raise :class:`DatasetFormatError` naming ``source`` and ``line``.
    The check is lexical, so a root that is itself a symlink keeps working.
    """
    where = f"{source}" + (f", line {line}" if line is not None else "")
    text = rel.strip()
    posix, win = PurePosixPath(text.replace("\\", "/")), PureWindowsPath(text)
    if not text or posix.is_absolute() or win.is_absolute() or win.drive or text.startswith(("/", "\\")):
        raise DatasetFormatError(f"{where}: refused path {rel!r}: label files must give paths relative to "
                                 f"the dataset root {root}", where)
    if any(part == ".." for part in posix.parts):
        raise DatasetFormatError(f"{where}: refused path {rel!r}: '..' would leave the dataset root {root}",
                                 where)
    return root.joinpath(*[p for p in posix.parts if p not in ("", ".")])


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 H x W x 3 (grey images repeat the channel).

    Raises:
        ImageDecodeError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:  # PIL's ways of failing
        raise ImageDecodeError(path, f"{type(err).__name__}: {err}") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(path, f"decoded to an empty array of shape {arr.shape}")
    return arr


def label_table(label_map: dict[Any, str], classes: Sequence[str] = CLASSES[:7],
                source_header: str = "code") -> str:
    """A markdown table of a dataset's label map: its code, the canonical name, and the
    ``label`` it gets with the loader's default ``classes`` (``-`` where left out)."""
    lines = [f"| {source_header} | canonical | label |", "|---|---|---|"]
    for code, name in label_map.items():
        label = str(list(classes).index(name)) if name in classes else "- (left out)"
        lines.append(f"| `{code}` | {name} | {label} |")
    return "\n".join(lines)


def label_code(text: str, codes: Mapping[int, str], *, what: str, uses: str, path: Path, lineno: int,
               parse: Callable[[str], int] = int) -> int:
    """A dataset's own label code from one field of its list file, checked against ``codes``.

    ``parse`` turns the text into an int (raising ``ValueError`` when it cannot); an
    unparsable or unknown code raises :class:`DatasetFormatError` naming the file, the
    line, the text (``unknown <what> '...'``) and every valid code (``<uses> uses 0=..``).
    """
    try:
        code = parse(text)
    except ValueError:
        code = None
    if code not in codes:
        known = ", ".join(f"{k}={v}" for k, v in codes.items())
        raise DatasetFormatError(f"{path}, line {lineno}: unknown {what} {text!r}; {uses} uses {known}",
                                 f"{path}:{lineno}")
    return code


class _DirCache:
    """File-existence checks by listing each folder once (fast on 10^5 files)."""

    def __init__(self) -> None:
        self._entries: dict[Path, set[str] | None] = {}

    def exists(self, path: Path) -> bool:
        parent = path.parent
        if parent not in self._entries:
            try:
                self._entries[parent] = set(os.listdir(parent))
            except OSError:
                self._entries[parent] = None
        names = self._entries[parent]
        return names is not None and path.name in names


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files in ``folder`` (sorted) and other, non-hidden files (reported by callers)."""
    images, other = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name.lower() in _JUNK or not entry.is_file():
            continue
        (images if entry.name.lower().endswith(IMG_EXTENSIONS) else other).append(Path(entry.path))
    return images, other


@dataclass(frozen=True)
class Published:
    """A dataset's published size, kept as data next to its loader (``PUBLISHED`` in each
    loader module, the loader's ``published``); ``python -m fer.data check`` prints a copy's
    counts beside it and SynFER's stand-ins draw their class proportions from it.

    Attributes:
        source: where the numbers come from.
        counts: split -> canonical class -> count (in ``unit``); a split that is missing
            here has no published per-class counts.
        totals: split -> total, for splits whose per-class counts are not published.
        unit: what is counted: ``images``, or ``sequences`` (CK+: each labelled sequence
            gives the loader's ``frames`` images).
        notes: other published facts, printed by the check.
    """

    source: str
    counts: Mapping[str, dict[str, int]] = field(default_factory=dict)
    totals: Mapping[str, int] = field(default_factory=dict)
    unit: str = "images"
    notes: str = ""


@dataclass(slots=True)
class Sample:
    """One listed sample, before decoding.

    Attributes:
        path: the image file (or the label file for images stored inside one).
        label: index into the dataset's ``classes``.
        ref: where the rest of the sample lives: its landmark file, or the byte offset
            of its row in a CSV list (``None`` when there is nothing more).
        info: dataset-specific fields (tuple), read by the loader's ``_meta`` and ``_load``.
    """

    path: Path
    label: int
    ref: Any = None
    info: tuple = ()


def _resize(img: np.ndarray, lm: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img, lm
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    if lm is not None:  # pixel centres: x_out = (x_in + 0.5) * k - 0.5, as in SynFER
        k = np.array([size / w, size / h], dtype=np.float64)
        lm = (lm + 0.5) * k - 0.5
    return out, lm


class RealFERDataset(LabelCounts, Dataset):
    """Base class of the real-dataset loaders (not used directly).

    Subclasses list their samples in ``__init__`` (:class:`Sample`), then call
    :meth:`_setup`; they may override :meth:`_load` (image and landmarks of one
    sample, before resizing) and :meth:`_meta` (per-sample facts).

    Attributes:
        name: the registry name (``rafdb``, ``fer2013``, ...).
        root: the dataset folder.
        split: the split this object holds.
        classes: expression names, canonical order; ``label`` indexes them.
        skipped: files left out under ``on_error="skip"`` (construction and access).
        excluded: samples left out by the protocol, by reason (e.g. AffectNet's
            ``none``/``uncertain``/``non-face`` codes, or classes not in ``classes``).
    """

    name: str = ""
    #: The folder tree the loader expects, as in ``data/README.md``.
    tree: str = ""
    #: Where to request the data (also in ``data/README.md``).
    source: str = ""
    #: ``classes`` with the default ``num_classes`` (labels index these).
    default_classes: tuple[str, ...] = CLASSES[:7]
    #: The splits that together cover the release (what ``python -m fer.data check`` reads).
    splits: tuple[str, ...] = ()
    #: The published counts (:class:`Published`), or ``None``.
    published: Published | None = None

    def __init__(self, root: str | os.PathLike, split: str, *, classes: Sequence[str],
                 image_size: int | None = None, transform: Callable[[torch.Tensor], Any] | None = None,
                 on_error: str = "raise") -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if image_size is not None and int(image_size) < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        self.root = Path(root).expanduser()
        self.split = split
        self.classes: tuple[str, ...] = tuple(classes)
        self.image_size = int(image_size) if image_size is not None else None
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[str] = []
        self.excluded: dict[str, int] = {}
        self.samples: list[Sample] = []
        # Landmark cache (landmarks68-<split>.npz in the root), read on first access.
        self._landmark_table: Any = None

    # ------------------------------------------------------------------ construction helpers
    def _layout_error(self, missing: Sequence[Any], hint: str = "") -> DatasetLayoutError:
        return DatasetLayoutError(self.name, self.root, self.tree, missing,
                                  hint or f"Request the data from {self.source}")

    def _require(self, *paths: Path, hint: str = "") -> None:
        """Raise :class:`DatasetLayoutError` unless the root and every path exist."""
        if not self.root.is_dir():
            raise self._layout_error([self.root], hint)
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise self._layout_error(missing, hint)

    def _exclude(self, reason: str, k: int = 1) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + k

    def _class_index(self, canonical: str) -> int | None:
        """Index of a canonical name in ``classes``, or ``None`` (counted in ``excluded``)."""
        if canonical in self.classes:
            return self.classes.index(canonical)
        self._exclude(canonical)
        return None

    def _check_files(self, samples: list[Sample], extra: Callable[[Sample], Iterable[Path]] | None = None
                     ) -> list[Sample]:
        """Keep samples whose image (and ``extra`` files) exist; raise or skip the others."""
        cache = _DirCache()
        kept, missing = [], []
        for s in samples:
            need = [s.path, *(extra(s) if extra else ())]
            gone = [p for p in need if not cache.exists(p)]
            if gone:
                missing.extend(gone)
            else:
                kept.append(s)
        if samples and not kept:
            raise self._layout_error(missing, "Every listed file is missing: check the root and the tree.")
        if missing and self.on_error == "raise":
            raise self._layout_error(missing, "Listed files are missing; pass on_error='skip' to leave those "
                                              "samples out (counted in .skipped and reported).")
        if missing:
            self._report_skips([str(p) for p in missing],
                               f"{len(samples) - len(kept)} sample(s) left out, listed file(s) missing")
        return kept

    def _report_skips(self, paths: list[str], why: str) -> None:
        self.skipped.extend(paths)
        warnings.warn(f"{self.name} ({self.split}): on_error='skip': {why}; {len(paths)} file(s), first:\n"
                      f"{_first(paths)}", stacklevel=3)

    def _setup(self, samples: list[Sample]) -> None:
        self.samples = samples
        self._targets = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    # ------------------------------------------------------------------ per-sample hooks
    def _load(self, s: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (RGB uint8 H x W x 3) and landmarks (K x 2 or ``None``) of one sample."""
        return decode_image(s.path), self._landmarks(s)

    def _landmarks(self, s: Sample) -> np.ndarray | None:
        return None

    def _meta(self, s: Sample) -> dict[str, Any]:
        return {}

    def describe(self, i: int) -> dict[str, Any]:
        """Sample ``i``'s ``meta`` dict, without decoding (as :meth:`fer.data.SynFER.describe`)."""
        s = self.samples[i]
        base = {"dataset": self.name, "split": self.split, "index": int(i), "path": str(s.path),
                "file": _relative(s.path, self.root)}
        return base | self._meta(s)

    # ------------------------------------------------------------------ access
    def _cached_landmarks(self, i: int, size: tuple[int, int]) -> np.ndarray | None:
        """68 landmarks for sample ``i`` from the dataset's landmark cache, if one was
        written (``python -m fer.data.landmarks --dataset NAME --root ROOT``)."""
        if self._landmark_table is None:
            from ..landmarks import landmarks_path, read_landmarks

            path = landmarks_path(self.root, self.split)
            self._landmark_table = read_landmarks(path) if path.is_file() else False
        if self._landmark_table is False:
            return None
        from ..landmarks import item_key

        return self._landmark_table.get(item_key({"path": str(self.samples[i].path)}, i, self.root), size=size)

    def _item(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        img, lm = self._load(s)
        if lm is None:
            lm = self._cached_landmarks(i, img.shape[:2])
        if self.image_size is not None:
            img, lm = _resize(img, lm, self.image_size)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if self.transform is not None:
            image = self.transform(image)
        item: dict[str, Any] = {"image": image, "label": int(s.label)}
        if lm is not None:
            item["landmarks"] = torch.from_numpy(np.asarray(lm, dtype=np.float32))
        item["meta"] = self.describe(i)
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, (np.integer, torch.Tensor)):
            i = int(i)
        n = len(self.samples)
        if not -n <= i < n:
            raise IndexError(f"{self.name} index {i} out of range for {n} samples")
        i %= n
        if self.on_error == "raise":
            return self._item(i)
        for step in range(n):  # on_error="skip": the next decodable sample stands in
            j = (i + step) % n
            try:
                return self._item(j)
            except (ImageDecodeError, DatasetFormatError) as err:
                path = str(getattr(err, "path", None) or self.samples[j].path)
                if path not in self.skipped:
                    self.skipped.append(path)
                    warnings.warn(f"{self.name} ({self.split}): skipped undecodable sample {path} ({err}); "
                                  f"{len(self.skipped)} skipped so far, first:\n{_first(self.skipped)}",
                                  stacklevel=2)
        raise ImageDecodeError(self.root, f"no sample of {self.name} ({self.split}) could be decoded")

    def subset(self, indices: Iterable[int]) -> RealFERDataset:
        """A copy holding only the samples at ``indices`` (in that order): ``len``, ``targets``,
        ``class_counts`` and :meth:`fingerprint` follow. Nothing is decoded."""
        import copy

        out = copy.copy(self)
        out.skipped, out.excluded = list(self.skipped), dict(self.excluded)
        out._setup([self.samples[int(i)] for i in indices])
        return out

    def _published_split(self) -> tuple[Mapping[str, int] | None, int | None]:
        """This split's published per-class counts and total, in ``published.unit``."""
        p = self.published
        if p is None:
            return None, None
        return p.counts.get(self.split), p.totals.get(self.split)

    def published_counts(self) -> dict[str, int] | None:
        """The published release's images of this split per class of ``classes`` (``None``
        when they are not published), to compare with :attr:`class_counts`."""
        counts, _ = self._published_split()
        if counts is None:
            return None
        k = int(getattr(self, "frames", 1)) if self.published.unit == "sequences" else 1
        return {c: int(counts.get(c, 0)) * k for c in self.classes}

    def published_total(self) -> int | None:
        """The published release's images of this split (for ``classes``), or ``None``."""
        counts = self.published_counts()
        if counts is not None:
            return sum(counts.values())
        _, total = self._published_split()
        return total if total is not None and tuple(self.classes) == tuple(self.default_classes) else None

    def fingerprint(self) -> str:
        """A short hash of what this dataset yields: name, split, classes, image size
        and every listed sample (path relative to the root, label, extra fields).

        Runs (:mod:`fer.runs`) key their cache on it. File contents are not read, so
        replacing an image in place keeps the fingerprint: rerun with ``retrain``.
        """
        import hashlib

        h = hashlib.sha256()
        h.update(repr((self.name, self.split, self.classes, self.image_size)).encode())
        for s in self.samples:
            h.update(f"{_relative(s.path, self.root)}\t{s.label}\t{s.ref}\t{s.info}\n".encode())
        return h.hexdigest()[:16]

    def meta_frame(self, progress: bool = False):
        """A pandas DataFrame of every sample's ``meta`` plus ``label`` (no decoding)."""
        import pandas as pd
        from tqdm.auto import tqdm

        rows = [self.describe(i) | {"label": int(self._targets[i])}
                for i in tqdm(range(len(self)), disable=bar_disabled(progress), desc=f"{self.name} meta")]
        return pd.DataFrame(rows)

    def decode_errors(self, indices: Iterable[int] | None = None, *, progress: bool = True,
                      first_only: bool = False) -> list[tuple[int, ImageDecodeError | DatasetFormatError]]:
        """Decode the samples at ``indices`` (default: all) as access does, without changing
        the dataset; return ``(index, error)`` for each that fails (``error.path`` names the
        file). ``first_only``: stop at the first failure."""
        from tqdm.auto import tqdm

        todo = range(len(self.samples)) if indices is None else [int(i) for i in indices]
        out: list[tuple[int, ImageDecodeError | DatasetFormatError]] = []
        for i in tqdm(todo, disable=bar_disabled(progress), desc=f"decode {self.name} ({self.split})"):
            try:
                self._load(self.samples[i])
            except (ImageDecodeError, DatasetFormatError) as err:
                out.append((i, err))
                if first_only:
                    break
        return out

    def verify(self, progress: bool = True) -> list[str]:
        """Decode every sample now; return the files that failed.

        With ``on_error="raise"`` the first failure raises. With ``"skip"`` the
        failures are dropped from the dataset (``len``, ``targets`` and
        ``class_counts`` follow), added to ``skipped`` and reported once.
        """
        errors = self.decode_errors(progress=progress, first_only=self.on_error == "raise")
        if errors and self.on_error == "raise":
            raise errors[0][1]
        bad = [i for i, _ in errors]
        paths = [str(getattr(err, "path", None) or self.samples[i].path) for i, err in errors]
        if bad:
            drop = set(bad)
            self._setup([s for k, s in enumerate(self.samples) if k not in drop])
            new = [p for p in paths if p not in self.skipped]
            self.skipped.extend(new)
            warnings.warn(f"{self.name} ({self.split}): verify() dropped {len(bad)} undecodable sample(s); "
                          f"first:\n{_first(paths)}", stacklevel=2)
        return paths

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, classes={self.classes})")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def read_points(path: Path, count: int, *, first: bool = False) -> np.ndarray:
    """Read ``count`` lines of ``x y`` (whitespace-separated floats) from a text file.

    Args:
        path: the file.
        count: how many points it must give.
        first: read only the first ``count`` non-empty lines (files that continue with
            other fields, like RAF-DB's manual annotations); default: exactly ``count`` lines.

    Raises:
        DatasetFormatError: naming the file, when it has the wrong number of points or
            a line that is not two numbers.
    """
    try:
        lines = [ln.split() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError as err:
        raise DatasetFormatError(f"cannot read landmark file {path}: {err}", path) from None
    rows = lines[:count] if first else lines
    if len(rows) != count:
        raise DatasetFormatError(f"{path}: expected {count} lines of 'x y', found {len(lines)}", path)
    try:
        pts = np.array([[float(r[0]), float(r[1])] for r in rows], dtype=np.float64)
    except (ValueError, IndexError):
        raise DatasetFormatError(f"{path}: landmark lines must be two numbers 'x y'", path) from None
    if not np.isfinite(pts).all():
        raise DatasetFormatError(f"{path}: landmarks are not finite numbers", path)
    return pts
