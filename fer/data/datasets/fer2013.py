"""FER2013, from Kaggle's ``fer2013.csv`` or from the common folder-per-class copy.

Paper: I. J. Goodfellow et al., "Challenges in Representation Learning: A report on
three machine learning contests", ICONIP 2013 (arXiv:1307.0414).
Download: https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge
(``fer2013.tar.gz`` holds ``fer2013.csv``). The folder copy (``train/`` and ``test/``
with one folder per class) circulates as https://www.kaggle.com/datasets/msambare/fer2013 .

35,887 grey 48x48 faces, 7 expressions. The CSV's ``emotion`` column uses
0=Angry, 1=Disgust, 2=Fear, 3=Happy, 4=Sad, 5=Surprise, 6=Neutral
(:data:`LABEL_MAP`), its ``Usage`` column the official protocol: ``Training``
(28,709; our ``train``), ``PublicTest`` (3,589; our ``val``), ``PrivateTest``
(3,589; our ``test``). The folder copy has only ``train`` and ``test``, and its
``test`` holds PublicTest *and* PrivateTest (7,178 images); its class folders
map through :data:`FOLDER_MAP`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..labels import resolve_classes
from .base import (
    DatasetFormatError,
    ImageDecodeError,
    Published,
    RealFERDataset,
    Sample,
    decode_image,
    label_code,
    list_images,
)

__all__ = ["FER2013", "LABEL_MAP", "FOLDER_MAP", "USAGE", "TREE", "SOURCE", "HEADER", "PUBLISHED"]

#: FER2013's ``emotion`` codes -> canonical names (:data:`fer.data.CLASSES`).
LABEL_MAP: dict[int, str] = {
    0: "anger",
    1: "disgust",
    2: "fear",
    3: "happy",
    4: "sad",
    5: "surprise",
    6: "neutral",
}
#: Class folder names of the folder copy -> canonical names (case-insensitive).
FOLDER_MAP: dict[str, str] = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprise": "surprise",
}
#: Our split names -> the CSV's ``Usage`` values.
USAGE: dict[str, str] = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
HEADER = "emotion,pixels,Usage"
CSV_FILE = "fer2013.csv"
SIDE = 48
SOURCE = ("https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge "
          "(Kaggle account; competition rules)")
#: The trees :class:`FER2013` expects (also in ``data/README.md``).
TREE = """\
data/fer2013/
└── fer2013.csv            layout="csv" (preferred): header "emotion,pixels,Usage", 35,887 rows;
                           emotion 0=Angry ... 6=Neutral, pixels = 2304 grey values (48x48),
                           Usage Training (train) / PublicTest (val) / PrivateTest (test)
or the folder copy (layout="folders"; no val split, its test = PublicTest + PrivateTest):
data/fer2013/
├── train/<class>/*.png    class folders: angry disgust fear happy neutral sad surprise
└── test/<class>/*.png     (.jpg also read)
"""
_LAYOUTS = ("auto", "csv", "folders")
#: Images per split (Training, PublicTest, PrivateTest) and class: 28,709 / 3,589 / 3,589.
PUBLISHED = Published(
    source="the emotion and Usage columns of Kaggle's fer2013.csv (Goodfellow et al. 2013); the totals are "
           "Ghimire et al.'s section 4 and the class counts their Figure 6",
    counts={
        "train": {"anger": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830,
                  "surprise": 3171},
        "val": {"anger": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607, "sad": 653, "surprise": 415},
        "test": {"anger": 491, "disgust": 55, "fear": 528, "happy": 879, "neutral": 626, "sad": 594,
                 "surprise": 416},
    },
    notes="the folder copy's test/ is PublicTest + PrivateTest (7,178)",
)


class FER2013(RealFERDataset):
    """FER2013 (``split`` ``train``, ``val`` or ``test``; ``val`` only with the CSV).

    Args:
        root: the folder holding ``fer2013.csv`` (or ``train/`` and ``test/``).
        split: ``train`` (Training), ``val`` (PublicTest) or ``test`` (PrivateTest;
            with the folder copy, ``test`` is its whole ``test/`` folder).
        layout: ``csv``, ``folders``, or ``auto`` (the CSV when ``fer2013.csv`` exists).
        num_classes: 7.
        classes: an expression subset; other samples are counted in ``excluded``.
        image_size: resize (default: 48, the native size).
        transform: applied to the uint8 3 x H x W image tensor (grey, repeated to 3 channels).
        on_error: ``raise`` or ``skip`` (see :mod:`fer.data.datasets.base`). With the
            CSV, a row whose pixels are not 2304 values in 0..255 is an undecodable
            image, found at access (or by :meth:`verify`).

    ``meta`` has ``path``, ``file``, ``usage`` (the CSV's Usage, or the folder name),
    ``row`` (the CSV line number; -1 for folders) and ``code`` (FER2013's emotion code).
    FER2013 ships no landmarks.
    """

    name = "fer2013"
    tree = TREE
    source = SOURCE
    splits = tuple(USAGE)
    published = PUBLISHED

    def __init__(self, root: str | os.PathLike, split: str = "train", *, layout: str = "auto",
                 num_classes: int = 7, classes: Sequence[str] | None = None, image_size: int | None = None,
                 transform: Callable[[torch.Tensor], Any] | None = None, on_error: str = "raise") -> None:
        if split not in USAGE:
            raise ValueError(f"fer2013: unknown split {split!r}; choose from {tuple(USAGE)}")
        if layout not in _LAYOUTS:
            raise ValueError(f"fer2013: layout must be one of {_LAYOUTS}, got {layout!r}")
        if num_classes > 7 and classes is None:
            raise ValueError("fer2013: FER2013 has 7 classes (no contempt); num_classes must be <= 7")
        super().__init__(root, split, classes=resolve_classes(classes, num_classes), image_size=image_size,
                         transform=transform, on_error=on_error)
        if layout == "auto":
            layout = "csv" if (self.root / CSV_FILE).exists() or not (self.root / "train").is_dir() else "folders"
        self.layout = layout
        self.ignored: list[str] = []
        if layout == "csv":
            self._require(self.root / CSV_FILE)
            samples = self._index_csv(self.root / CSV_FILE)
        else:
            if split == "val":
                raise ValueError("fer2013: the folder copy has no val split (PublicTest is inside its test/); "
                                 "use fer2013.csv for the train/val/test protocol")
            samples = self._list_folders()
        self._setup(samples)

    # ------------------------------------------------------------------ CSV
    def _index_csv(self, path: Path) -> list[Sample]:
        """One pass over the CSV: labels, usage and each row's byte offset (pixels stay on disk)."""
        samples: list[Sample] = []
        want = USAGE[self.split].encode()
        with open(path, "rb") as f:
            header = f.readline()
            found = header.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
            if found != HEADER:
                raise DatasetFormatError(f"{path}: wrong header {found[:80]!r}; FER2013's fer2013.csv starts with "
                                         f"{HEADER!r}", f"{path}:1")
            offset = len(header)
            for lineno, raw in enumerate(f, start=2):
                start, offset = offset, offset + len(raw)
                text = raw.strip()
                if not text:
                    continue
                fields = text.split(b",")
                if len(fields) != 3:
                    raise DatasetFormatError(f"{path}, line {lineno}: expected 3 fields (emotion,pixels,Usage), "
                                             f"found {len(fields)}", f"{path}:{lineno}")
                code = label_code(fields[0].decode(errors="replace"), LABEL_MAP, what="FER2013 emotion", uses="FER2013",
                                  path=path, lineno=lineno)
                usage = fields[2].decode(errors="replace").strip()
                if usage not in USAGE.values():
                    raise DatasetFormatError(f"{path}, line {lineno}: unknown Usage {usage!r}; FER2013 uses "
                                             f"{tuple(USAGE.values())}", f"{path}:{lineno}")
                if usage.encode() != want:
                    continue
                label = self._class_index(LABEL_MAP[code])
                if label is not None:
                    samples.append(Sample(path, label, start, (lineno, code, usage)))
        return samples

    def _load(self, s: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        if self.layout == "folders":
            return decode_image(s.path), None
        lineno = s.info[0]
        where = f"{s.path}:{lineno}"
        fix = (f"; row {lineno} of {s.path.name} is damaged: restore the file from Kaggle's fer2013.tar.gz, "
               f"or pass on_error='skip' to leave the row out")
        with open(s.path, "rb") as f:
            f.seek(s.ref)  # byte offset of the sample's CSV row
            fields = f.readline().decode("utf-8", errors="replace").strip().split(",")
        try:
            values = np.array(fields[1].split(), dtype=np.int64)
        except (ValueError, IndexError):
            raise ImageDecodeError(where, "pixels must be space-separated integers" + fix) from None
        if values.size != SIDE * SIDE or values.min(initial=0) < 0 or values.max(initial=0) > 255:
            raise ImageDecodeError(where, f"pixels must be {SIDE * SIDE} values in 0..255, got {values.size} "
                                          f"in {values.min(initial=0)}..{values.max(initial=0)}" + fix)
        grey = values.astype(np.uint8).reshape(SIDE, SIDE)
        return np.repeat(grey[:, :, None], 3, axis=2), None

    # ------------------------------------------------------------------ folders
    def _list_folders(self) -> list[Sample]:
        split_dir = self.root / self.split
        self._require(split_dir, hint="Pass layout='csv' with fer2013.csv, or place the folder copy's "
                                      "train/ and test/ under the root.")
        found: dict[str, Path] = {}
        for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            key = entry.name.lower()
            if key not in FOLDER_MAP:
                raise DatasetFormatError(f"{split_dir}: unknown class folder {entry.name!r}; FER2013 class folders "
                                         f"are {tuple(FOLDER_MAP)}", entry.path)
            found[FOLDER_MAP[key]] = Path(entry.path)
        missing = [split_dir / f for f, c in FOLDER_MAP.items() if c not in found]
        if missing:
            raise self._layout_error(missing)
        samples: list[Sample] = []
        for canonical in LABEL_MAP.values():  # FER2013's own order, then sorted file names
            folder = found[canonical]
            images, other = list_images(folder)
            self.ignored.extend(str(p) for p in other)
            if canonical not in self.classes:
                self._exclude(canonical, len(images))
                continue
            label = self.classes.index(canonical)
            code = next(k for k, v in LABEL_MAP.items() if v == canonical)
            samples.extend(Sample(p, label, None, (-1, code, self.split)) for p in images)
        if self.ignored:
            warnings.warn(f"fer2013 ({self.split}): ignored {len(self.ignored)} non-image file(s) in class folders, "
                          f"first: {self.ignored[:5]}", stacklevel=3)
        return samples

    def _published_split(self):
        if self.layout == "folders" and self.split == "test":  # the folder copy's test/ = PublicTest + PrivateTest
            val, test = PUBLISHED.counts["val"], PUBLISHED.counts["test"]
            return {c: val[c] + test[c] for c in test}, None
        return super()._published_split()

    # ------------------------------------------------------------------ meta
    def _meta(self, s: Sample) -> dict[str, Any]:
        row, code, usage = s.info
        return {"usage": usage, "row": row, "code": code}
