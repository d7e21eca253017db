"""RAF-DB, basic (single-label) subset, with the official train/test partition.

Paper: S. Li, W. Deng, J. Du, "Reliable Crowdsourcing and Deep Locality-Preserving
Learning for Expression Recognition in the Wild", CVPR 2017.
Download: http://www.whdeng.cn/RAF/model1.html (academic e-mail agreement; the
download is ``basic.zip``; its contents go under ``data/rafdb/``).

12,271 train and 3,068 test images, 7 expressions. ``EmoLabel/list_patition_label.txt``
(sic) lists ``train_00001.jpg 5`` per line, labels 1=Surprise, 2=Fear, 3=Disgust,
4=Happiness, 5=Sadness, 6=Anger, 7=Neutral (:data:`LABEL_MAP`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..labels import resolve_classes
from .base import (
    DatasetFormatError,
    Published,
    RealFERDataset,
    Sample,
    _DirCache,
    label_code,
    read_points,
    safe_join,
)

__all__ = ["RAFDB", "LABEL_MAP", "TREE", "SOURCE", "ATTRIBUTES", "PUBLISHED"]

#: RAF-DB's own label codes -> canonical names (:data:`fer.data.CLASSES`).
LABEL_MAP: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happy",
    5: "sad",
    6: "anger",
    7: "neutral",
}
#: Codes of the attribute lines in ``Annotation/manual/*_manu_attri.txt`` (RAF-DB README).
ATTRIBUTES: dict[str, dict[int, str]] = {
    "gender": {0: "male", 1: "female", 2: "unsure"},
    "race": {0: "caucasian", 1: "african-american", 2: "asian"},
    "age": {0: "0-3", 1: "4-19", 2: "20-39", 3: "40-69", 4: "70+"},
}
SOURCE = "http://www.whdeng.cn/RAF/model1.html (academic e-mail agreement)"
#: The official partition of the basic subset, images per split and class (12,271 / 3,068).
PUBLISHED = Published(
    source="EmoLabel/list_patition_label.txt of RAF-DB basic as released (Li, Deng & Du, CVPR 2017); the totals "
           "12,271 / 3,068 are also MANet's section IV.A and MAPNet's 3.2 (MSA-Net's 3.1 states 12,264 / 3,061)",
    counts={
        "train": {"surprise": 1290, "fear": 281, "disgust": 717, "happy": 4772, "sad": 1982, "anger": 705,
                  "neutral": 2524},
        "test": {"surprise": 329, "fear": 74, "disgust": 160, "happy": 1185, "sad": 478, "anger": 162,
                 "neutral": 680},
    },
)
#: The tree :class:`RAFDB` expects (also in ``data/README.md``).
TREE = """\
data/rafdb/                       (the contents of RAF-DB's basic/ folder)
├── EmoLabel/
│   └── list_patition_label.txt   "train_00001.jpg 5" per line (1=Surprise ... 7=Neutral)
├── Image/
│   ├── aligned/                  train_00001_aligned.jpg ... test_3068_aligned.jpg (100x100; default)
│   └── original/                 train_00001.jpg ... (only for images="original")
└── Annotation/                   (optional: landmarks and attributes, original-image pixels)
    ├── manual/                   train_00001_manu_attri.txt: 5 lines "x y", then gender, race, age
    └── auto/                     train_00001_auto_attri.txt: 37 lines "x y"
"""
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
_NAME = re.compile(r"^(train|test)_\d+\.jpg$")
_SPLITS = ("train", "test")
_LANDMARKS = ("manual", "auto", "none")
_POINTS = {"manual": 5, "auto": 37}


class RAFDB(RealFERDataset):
    """RAF-DB basic, official partition (``split`` ``train`` or ``test``).

    Args:
        root: the folder holding ``EmoLabel/`` and ``Image/`` (RAF-DB's ``basic/``;
            a root that contains ``basic/`` is accepted too).
        split: ``train`` (12,271 images) or ``test`` (3,068).
        images: ``aligned`` (the official 100x100 aligned faces, what the papers
            use) or ``original`` (the full images, sizes vary).
        landmarks: ``manual`` (5 points: eye centres, nose tip, mouth corners),
            ``auto`` (37 points), ``none``, or ``None``: ``manual`` for original
            images when ``Annotation/manual/`` exists, else ``none``. RAF-DB's
            points are in *original*-image pixels; RAF-DB does not publish the
            transform that made the aligned faces, so asking for landmarks with
            ``images="aligned"`` is refused rather than returning points that do
            not lie on the face.
        num_classes: 7 (RAF-DB has no contempt).
        classes: an expression subset (e.g. the masked-FER paper's four);
            samples of other classes are left out and counted in ``excluded``.
        image_size: resize every image to ``image_size`` x ``image_size`` (landmarks follow).
        transform: applied to the uint8 3 x H x W image tensor.
        on_error: ``raise`` or ``skip`` (see :mod:`fer.data.datasets.base`).

    ``meta`` has ``path``, ``file``, ``name`` (as in the label file), ``code``
    (RAF-DB's label), and ``gender``, ``race``, ``age`` (RAF-DB's codes, see
    :data:`ATTRIBUTES`; -1 when ``Annotation/manual/`` is absent).
    """

    name = "rafdb"
    tree = TREE
    source = SOURCE
    splits = _SPLITS
    published = PUBLISHED

    def __init__(self, root: str | os.PathLike, split: str = "train", *, images: str = "aligned",
                 landmarks: str | None = None, num_classes: int = 7, classes: Sequence[str] | None = None,
                 image_size: int | None = None, transform: Callable[[torch.Tensor], Any] | None = None,
                 on_error: str = "raise") -> None:
        if split not in _SPLITS:
            raise ValueError(f"rafdb: unknown split {split!r}; RAF-DB's official partition has {_SPLITS}")
        if images not in ("aligned", "original"):
            raise ValueError(f"rafdb: images must be 'aligned' or 'original', got {images!r}")
        if landmarks is not None and landmarks not in _LANDMARKS:
            raise ValueError(f"rafdb: landmarks must be one of {_LANDMARKS} or None, got {landmarks!r}")
        if images == "aligned" and landmarks in ("manual", "auto"):
            raise ValueError("rafdb: RAF-DB's landmarks are in original-image pixels and the alignment transform "
                             "is not published; use images='original' to get landmarks")
        if num_classes > 7 and classes is None:
            raise ValueError("rafdb: RAF-DB basic has 7 classes (no contempt); num_classes must be <= 7")
        root = Path(root).expanduser()
        if not (root / LABEL_FILE).exists() and (root / "basic" / LABEL_FILE).exists():
            root = root / "basic"
        super().__init__(root, split, classes=resolve_classes(classes, num_classes), image_size=image_size,
                         transform=transform, on_error=on_error)
        self.images = images
        self._require(self.root / LABEL_FILE, self.root / "Image" / images)
        if landmarks is None:
            landmarks = "manual" if images == "original" and (self.root / "Annotation" / "manual").is_dir() \
                else "none"
        if landmarks != "none":
            self._require(self.root / "Annotation" / landmarks)
        self.landmark_kind = landmarks
        self._manual_dir = self.root / "Annotation" / "manual"
        samples = self._check_files(self._parse_labels(), self._needed)
        cache = _DirCache()
        for s in samples:  # attributes only when the manual file is there
            s.info = s.info + (cache.exists(self._manual_file(s.info[0])),)
        self._setup(samples)

    # ------------------------------------------------------------------ listing
    def _parse_labels(self) -> list[Sample]:
        path = self.root / LABEL_FILE
        samples: list[Sample] = []
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise DatasetFormatError(f"{path}, line {lineno}: expected '<name>.jpg <label>', got {line!r}",
                                         f"{path}:{lineno}")
            name, code_text = fields
            safe_join(self.root, name, source=path, line=lineno)  # refuses absolute paths and '..'
            if not _NAME.match(name):
                raise DatasetFormatError(f"{path}, line {lineno}: image name {name!r} is not of the form "
                                         f"train_00001.jpg / test_0001.jpg", f"{path}:{lineno}")
            code = label_code(code_text, LABEL_MAP, what="RAF-DB label", uses="RAF-DB", path=path, lineno=lineno)
            if not name.startswith(self.split + "_"):
                continue
            label = self._class_index(LABEL_MAP[code])
            if label is None:
                continue
            stem = name[:-4]
            image = self.root / "Image" / self.images / (f"{stem}_aligned.jpg" if self.images == "aligned" else name)
            lm = None
            if self.landmark_kind != "none":
                suffix = "manu" if self.landmark_kind == "manual" else "auto"
                lm = self.root / "Annotation" / self.landmark_kind / f"{stem}_{suffix}_attri.txt"
            samples.append(Sample(image, label, lm, (stem, code)))
        if not samples and not self.excluded:
            raise DatasetFormatError(f"{path}: no {self.split} images listed (names start with "
                                     f"'{self.split}_')", str(path))
        return samples

    @staticmethod
    def _needed(s: Sample) -> tuple[Path, ...]:
        return (s.ref,) if s.ref is not None else ()

    def _manual_file(self, stem: str) -> Path:
        return self._manual_dir / f"{stem}_manu_attri.txt"

    # ------------------------------------------------------------------ access
    def _landmarks(self, s: Sample) -> np.ndarray | None:
        if s.ref is None:
            return None
        return read_points(s.ref, _POINTS[self.landmark_kind], first=True)

    def attributes(self, i: int) -> dict[str, int]:
        """Sample ``i``'s gender, race and age codes (-1 when unknown), from the manual annotation."""
        stem, _, has_manual = self.samples[i].info
        return _read_attributes(self._manual_file(stem)) if has_manual else {k: -1 for k in ATTRIBUTES}

    def _meta(self, s: Sample) -> dict[str, Any]:
        stem, code, has_manual = s.info
        attrs = _read_attributes(self._manual_file(stem)) if has_manual else {k: -1 for k in ATTRIBUTES}
        return {"name": f"{stem}.jpg", "code": code} | attrs


def _read_attributes(path: Path) -> dict[str, int]:
    """gender, race, age: the three lines after the 5 points of a manual annotation file
    (-1 for lines the file does not have)."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    out = {}
    for key, text in zip(ATTRIBUTES, (lines[5:8] + ["-1"] * 3)[:3], strict=True):
        try:
            out[key] = int(float(text))
        except ValueError:
            raise DatasetFormatError(f"{path}: the {key} line must be a number, got {text!r}", path) from None
    return out
