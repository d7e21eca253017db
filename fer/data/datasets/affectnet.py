"""AffectNet, manually annotated subset, from its CSV lists (7 or 8 expressions).

Paper: A. Mollahosseini, B. Hasani, M. H. Mahoor, "AffectNet: A Database for Facial
Expression, Valence, and Arousal Computing in the Wild", IEEE Trans. Affective
Computing 10(1), 2019.
Download: http://mohammadmahoor.com/affectnet/ (signed licence agreement).

``training.csv`` and ``validation.csv`` list one face per row under the header
``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
expression,valence,arousal``; ``facial_landmarks`` is 136 ``;``-separated numbers
``x1;y1;x2;y2;...`` (68 points, image pixels). ``expression`` uses 0=Neutral,
1=Happy, 2=Sad, 3=Surprise, 4=Fear, 5=Disgust, 6=Anger, 7=Contempt
(:data:`LABEL_MAP`); 8=None, 9=Uncertain, 10=Non-Face are not expressions and are
left out (:data:`DROPPED`, counted in ``excluded``). AffectNet's test set is not
public, so the official validation set (500 per class) is our ``test``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..labels import resolve_classes
from .base import DatasetFormatError, Published, RealFERDataset, Sample, decode_image, label_code, safe_join

__all__ = ["AffectNet", "LABEL_MAP", "DROPPED", "COLUMNS", "TREE", "SOURCE", "LIST_FILES", "PUBLISHED"]

#: AffectNet's ``expression`` codes -> canonical names (:data:`fer.data.CLASSES`).
LABEL_MAP: dict[int, str] = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
    7: "contempt",
}
#: Codes that are not expressions; rows with them are left out (and counted).
DROPPED: dict[int, str] = {8: "none", 9: "uncertain", 10: "non-face"}
#: The CSV columns the loader reads (AffectNet's header).
COLUMNS: tuple[str, ...] = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                            "facial_landmarks", "expression", "valence", "arousal")
#: Our split names -> AffectNet's list files.
LIST_FILES: dict[str, str] = {"train": "training.csv", "test": "validation.csv"}
IMAGES_DIR = "Manually_Annotated_Images"
LISTS_DIR = "Manually_Annotated_file_lists"
SOURCE = "http://mohammadmahoor.com/affectnet/ (signed licence agreement)"
#: The manually annotated lists, images per class: training.csv 287,651 with contempt (283,901
#: without), validation.csv 500 per class (3,500 for seven classes, 4,000 with contempt).
PUBLISHED = Published(
    source="the expression codes 0-7 of AffectNet's training.csv and validation.csv (Mollahosseini et al. "
           "2019); 283,901 seven-class training images is MSA-Net's section 3.1, 3,500 validation images "
           "MAPNet's section 3.2",
    counts={
        "train": {"neutral": 74874, "happy": 134415, "sad": 25459, "surprise": 14090, "fear": 6378,
                  "disgust": 3803, "anger": 24882, "contempt": 3750},
        "test": {c: 500 for c in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")},
    },
    notes="codes 8-10 (none, uncertain, non-face) are not counted; MAPNet trains on 33,803 of the training images",
)
#: The tree :class:`AffectNet` expects (also in ``data/README.md``).
TREE = """\
data/affectnet/
├── training.csv                  header: subDirectory_filePath,face_x,face_y,face_width,face_height,
├── validation.csv                        facial_landmarks,expression,valence,arousal  (validation = our test)
│                                 (the two lists may also sit in Manually_Annotated_file_lists/)
└── Manually_Annotated_Images/
    ├── 1/                        <subDirectory_filePath> as listed, e.g. 689/737db2483489148d783e....jpg
    └── ...
"""


class AffectNet(RealFERDataset):
    """AffectNet manual subset (``split`` ``train`` = training.csv, ``test`` = validation.csv).

    Args:
        root: the folder holding the two CSV lists and ``Manually_Annotated_Images/``.
        split: ``train`` or ``test`` (AffectNet's validation set).
        num_classes: 7 (contempt left out; the first seven of :data:`fer.data.CLASSES`)
            or 8.
        classes: an expression subset; other rows are counted in ``excluded``.
        crop: crop each image to its listed face box (clipped to the image); the
            landmarks move with it.
        image_size: resize to ``image_size`` x ``image_size`` after cropping (face
            boxes are not all square: the aspect ratio is not kept).
        transform: applied to the uint8 3 x H x W image tensor.
        on_error: ``raise`` or ``skip`` (see :mod:`fer.data.datasets.base`).

    Items carry the 68 listed ``landmarks``. ``meta`` has ``path``, ``file``,
    ``row`` (CSV line), ``code``, ``valence``, ``arousal`` and the face box
    ``face_x``, ``face_y``, ``face_width``, ``face_height``.
    """

    name = "affectnet"
    tree = TREE
    source = SOURCE
    splits = tuple(LIST_FILES)
    published = PUBLISHED

    def __init__(self, root: str | os.PathLike, split: str = "train", *, num_classes: int = 7,
                 classes: Sequence[str] | None = None, crop: bool = True, image_size: int | None = None,
                 transform: Callable[[torch.Tensor], Any] | None = None, on_error: str = "raise") -> None:
        if split not in LIST_FILES:
            msg = " (AffectNet's validation set is our 'test'; hold out part of train for validation)" \
                if split == "val" else ""
            raise ValueError(f"affectnet: unknown split {split!r}; choose from {tuple(LIST_FILES)}{msg}")
        if classes is None and num_classes not in (7, 8):
            raise ValueError(f"affectnet: num_classes must be 7 or 8, got {num_classes}")
        super().__init__(root, split, classes=resolve_classes(classes, num_classes), image_size=image_size,
                         transform=transform, on_error=on_error)
        self.crop = crop
        self.list_file = self._find_list()
        self.images_dir = self.root / IMAGES_DIR
        self._require(self.list_file, self.images_dir)
        self._setup(self._check_files(self._index_csv(self.list_file)))

    def _find_list(self) -> Path:
        name = LIST_FILES[self.split]
        top, nested = self.root / name, self.root / LISTS_DIR / name
        return nested if not top.exists() and nested.exists() else top

    # ------------------------------------------------------------------ listing
    def _index_csv(self, path: Path) -> list[Sample]:
        samples: list[Sample] = []
        with open(path, "rb") as f:
            header = f.readline()
            names = [h.strip() for h in header.decode("utf-8", errors="replace").lstrip("\ufeff").strip().split(",")]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise DatasetFormatError(
                    f"{path}: wrong header {','.join(names)[:120]!r}, missing column(s) {missing}; AffectNet's "
                    f"lists start with {','.join(COLUMNS)!r} (if your copy has no header line, add that one)",
                    f"{path}:1")
            col = {c: names.index(c) for c in COLUMNS}
            self._landmark_col = col["facial_landmarks"]
            offset = len(header)
            for lineno, raw in enumerate(f, start=2):
                start, offset = offset, offset + len(raw)
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                fields = text.split(",")
                if len(fields) != len(names):
                    raise DatasetFormatError(f"{path}, line {lineno}: expected {len(names)} fields, found "
                                             f"{len(fields)}", f"{path}:{lineno}")
                code = label_code(fields[col["expression"]], LABEL_MAP | DROPPED, what="AffectNet expression",
                                  uses="AffectNet", path=path, lineno=lineno, parse=_integral)
                if code in DROPPED:
                    self._exclude(DROPPED[code])
                    continue
                image = safe_join(self.images_dir, fields[col["subDirectory_filePath"]], source=path, line=lineno)
                label = self._class_index(LABEL_MAP[code])
                if label is None:
                    continue
                try:
                    box = tuple(int(round(float(fields[col[c]]))) for c in COLUMNS[1:5])
                    va = (float(fields[col["valence"]]), float(fields[col["arousal"]]))
                except ValueError:
                    raise DatasetFormatError(f"{path}, line {lineno}: face box, valence and arousal must be "
                                             f"numbers", f"{path}:{lineno}") from None
                samples.append(Sample(image, label, start, (lineno, code, box, va)))
        return samples

    # ------------------------------------------------------------------ access
    def _landmarks(self, s: Sample) -> np.ndarray:
        where = f"{self.list_file}:{s.info[0]}"
        with open(self.list_file, "rb") as f:
            f.seek(s.ref)  # byte offset of this sample's CSV row
            fields = f.readline().decode("utf-8", errors="replace").strip().split(",")
        try:
            values = np.array([float(v) for v in fields[self._landmark_col].split(";")], dtype=np.float64)
        except (ValueError, IndexError):
            raise DatasetFormatError(f"{where}: facial_landmarks must be 136 ';'-separated numbers", where) from None
        if values.size != 136 or not np.isfinite(values).all():
            raise DatasetFormatError(f"{where}: facial_landmarks must be 136 numbers (68 x;y), got {values.size}",
                                     where)
        return values.reshape(68, 2)

    def _load(self, s: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        img, lm = decode_image(s.path), self._landmarks(s)
        if not self.crop:
            return img, lm
        x, y, w, h = s.info[2]
        H, W = img.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 - x0 < 2 or y1 - y0 < 2:
            where = f"{self.list_file}:{s.info[0]}"
            raise DatasetFormatError(f"{where}: face box (x={x}, y={y}, w={w}, h={h}) does not overlap the "
                                     f"{W}x{H} image {s.path}", where)
        return img[y0:y1, x0:x1], lm - np.array([x0, y0], dtype=np.float64)

    def _meta(self, s: Sample) -> dict[str, Any]:
        lineno, code, (x, y, w, h), (valence, arousal) = s.info
        return {"row": lineno, "code": code, "valence": valence, "arousal": arousal,
                "face_x": x, "face_y": y, "face_width": w, "face_height": h}


def _integral(text: str) -> int:
    """AffectNet's CSV writes codes as ints or as floats ("1.0"); other fractions are invalid."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)
