"""CK+, the last frames of each emotion-labelled sequence, with person-independent folds.

Paper: P. Lucey, J. F. Cohn, T. Kanade, J. Saragih, Z. Ambadar, I. Matthews, "The
Extended Cohn-Kanade Dataset (CK+): A complete dataset for action unit and
emotion-specified expression", CVPR Workshops 2010.
Download: https://www.jeffcohn.net/Resources/ (signed agreement); the archives
``extended-cohn-kanade-images.zip``, ``Emotion_labels.zip`` and ``Landmarks.zip``
unpack to ``cohn-kanade-images/``, ``Emotion/`` and ``Landmarks/``.

327 of the 593 sequences (123 subjects; 118 with a labelled sequence) carry an
emotion label, in ``Emotion/S005/001/S005_001_00000011_emotion.txt``: one float
line naming the code of the sequence's last (peak) frame, 0=neutral, 1=anger,
2=contempt, 3=disgust, 4=fear, 5=happy, 6=sadness, 7=surprise (:data:`LABEL_MAP`).
Following MANet (Gan et al., IEEE Access 2020) and the works it compares with,
each labelled sequence gives its last three frames (981 images), 7 classes
(the six basic ones and contempt, no neutral), and a person-independent 10-fold
protocol: subject ids sorted ascending, subject ``k`` of that list in fold
``k % 10`` (sampling interval 10), see :func:`subject_folds`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..labels import resolve_classes
from .base import DatasetFormatError, Published, RealFERDataset, Sample, decode_image, list_images, read_points

__all__ = ["CKPlus", "LABEL_MAP", "CK_CLASSES", "TREE", "SOURCE", "PUBLISHED", "subject_folds"]

#: CK+'s emotion codes -> canonical names (:data:`fer.data.CLASSES`).
LABEL_MAP: dict[int, str] = {
    0: "neutral",
    1: "anger",
    2: "contempt",
    3: "disgust",
    4: "fear",
    5: "happy",
    6: "sad",
    7: "surprise",
}
#: The default 7 classes: CK+'s labelled expressions (contempt, no neutral), canonical order.
CK_CLASSES: tuple[str, ...] = resolve_classes(("anger", "contempt", "disgust", "fear", "happy", "sad", "surprise"), 7)
_BASIC_6: tuple[str, ...] = resolve_classes(("anger", "disgust", "fear", "happy", "sad", "surprise"), 6)
SOURCE = "https://www.jeffcohn.net/Resources/ (signed agreement)"
#: Labelled sequences per class (327; x3 frames = MANet's 981 images).
PUBLISHED = Published(
    source="the emotion files of the release (Lucey et al., CVPR Workshops 2010: 327 labelled sequences of 593, "
           "123 subjects); MANet's section IV.A (327 sequences, last three frames: 981 images)",
    counts={"all": {"anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sad": 28, "surprise": 83}},
    unit="sequences",
    notes="593 sequences from 123 subjects, 327 of them labelled",
)
#: The tree :class:`CKPlus` expects (also in ``data/README.md``).
TREE = """\
data/ckplus/
├── cohn-kanade-images/S005/001/      S005_001_00000001.png ... S005_001_00000011.png (all frames)
├── Emotion/S005/001/                 S005_001_00000011_emotion.txt: one line, e.g. "   3.0000000e+00"
│                                     (labelled sequences only; 1=anger ... 7=surprise, 2=contempt)
└── Landmarks/S005/001/               S005_001_00000011_landmarks.txt: 68 lines "x y" per frame
                                      (needed for crop_face=True, the default)
"""
_SPLITS = ("all", "train", "test")
_SUFFIX = "_emotion.txt"


def _subject_key(subject: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", subject)
    return (int(digits) if digits else -1, subject)


def subject_folds(subjects: Iterable[str], num_folds: int = 10) -> dict[str, int]:
    """Person-independent folds with a sampling interval: subject ids sorted ascending
    (by their number, ``S005`` < ``S010`` < ``S100``), the ``k``-th in fold ``k % num_folds``.

    Returns:
        subject id -> fold (0..num_folds-1).
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    ordered = sorted(set(subjects), key=_subject_key)
    return {s: k % num_folds for k, s in enumerate(ordered)}


class CKPlus(RealFERDataset):
    """CK+ (``split`` ``all``, or ``train``/``test`` of fold ``fold``).

    Args:
        root: the folder holding ``cohn-kanade-images/``, ``Emotion/`` (and ``Landmarks/``).
        split: ``all`` (every labelled frame), or ``test`` (the subjects of fold
            ``fold``) / ``train`` (the other folds' subjects).
        fold: 0..``num_folds``-1; required for ``train`` and ``test``.
        num_folds: 10 (MANet's protocol).
        frames: frames per labelled sequence, ending at the labelled (last) one; 3.
        num_classes: 7 (CK+'s labels: the six basic expressions and contempt;
            the default), 6 (without contempt) or 8 (adds neutral, which CK+'s
            emotion files do not use, so it stays empty).
        classes: an explicit subset (overrides ``num_classes``); other sequences are
            counted in ``excluded``. Folds are formed over every labelled subject
            before this filter, so a subject's fold never depends on ``classes``.
        crop_face: crop a square around the frame's 68 landmarks, enlarged by
            ``crop_margin`` (a fraction of its side) and clipped to the frame; needs
            ``Landmarks/``. MANet aligns with an affine transform from the landmarks
            before cropping; this loader crops without rotating.
        crop_margin: see ``crop_face``.
        landmarks: attach the 68 landmarks to each item (``None``: when ``Landmarks/``
            exists; ``crop_face`` reads them either way).
        image_size: resize to ``image_size`` x ``image_size`` after cropping.
        transform: applied to the uint8 3 x H x W image tensor.
        on_error: ``raise`` or ``skip`` (see :mod:`fer.data.datasets.base`).

    ``meta`` has ``path``, ``file``, ``subject`` (e.g. ``S005``), ``sequence``
    (``001``), ``frame`` (int), ``code`` (CK+'s emotion code) and ``fold`` (the
    fold whose test set holds this subject). ``subjects`` lists every sample's
    subject, ``folds`` maps subject -> fold, ``unlabelled_sequences`` counts the
    sequences without an emotion file (not part of the protocol).
    """

    name = "ckplus"
    tree = TREE
    source = SOURCE
    splits = ("all",)
    published = PUBLISHED
    default_classes = CK_CLASSES

    def __init__(self, root: str | os.PathLike, split: str = "all", *, fold: int | None = None,
                 num_folds: int = 10, frames: int = 3, num_classes: int = 7, classes: Sequence[str] | None = None,
                 crop_face: bool = True, crop_margin: float = 0.2, landmarks: bool | None = None,
                 image_size: int | None = None, transform: Callable[[torch.Tensor], Any] | None = None,
                 on_error: str = "raise") -> None:
        if split not in _SPLITS:
            raise ValueError(f"ckplus: unknown split {split!r}; choose from {_SPLITS}")
        if split != "all" and fold is None:
            raise ValueError("ckplus: CK+ has no official split; pass fold=0..9 with split='train'/'test' "
                             "(person-independent folds), or split='all'")
        if split == "all" and fold is not None:
            raise ValueError("ckplus: fold selects split='train' or 'test'; split='all' takes no fold")
        if fold is not None and not 0 <= fold < num_folds:
            raise ValueError(f"ckplus: fold must be in 0..{num_folds - 1}, got {fold}")
        if frames < 1:
            raise ValueError(f"ckplus: frames must be >= 1, got {frames}")
        if classes is None:
            by_count = {7: CK_CLASSES, 6: _BASIC_6, 8: resolve_classes(None, 8)}
            if num_classes not in by_count:
                raise ValueError(f"ckplus: num_classes must be 6, 7 or 8, got {num_classes}")
            resolved = by_count[num_classes]
        else:
            resolved = resolve_classes(classes, num_classes)
        super().__init__(root, split, classes=resolved, image_size=image_size, transform=transform,
                         on_error=on_error)
        self.fold, self.num_folds, self.frames = fold, num_folds, int(frames)
        self.crop_face, self.crop_margin = crop_face, float(crop_margin)
        self.images_dir = self.root / "cohn-kanade-images"
        self.emotion_dir = self.root / "Emotion"
        self.landmarks_dir = self.root / "Landmarks"
        need = [self.images_dir, self.emotion_dir] + ([self.landmarks_dir] if crop_face or landmarks else [])
        self._require(*need, hint="" if not crop_face else "crop_face=True reads Landmarks/; pass crop_face=False "
                                                           "to use the full frames without it.")
        self.return_landmarks = bool(landmarks if landmarks is not None else self.landmarks_dir.is_dir())
        self.with_landmarks = crop_face or self.return_landmarks  # read them (cropping needs them)
        self.unlabelled_sequences = 0
        self._labelled_subjects: set[str] = set()
        listed = self._list_sequences()
        self.folds: dict[str, int] = subject_folds(self._labelled_subjects, num_folds)
        if split != "all":
            keep = (lambda f: f == fold) if split == "test" else (lambda f: f != fold)
            listed = [s for s in listed if keep(self.folds[s.info[0]])]
        samples = self._check_files(listed, lambda s: (s.ref,) if s.ref is not None else ())
        self._setup(samples)

    @property
    def subjects(self) -> list[str]:
        """Every sample's subject id (e.g. ``S005``), without decoding."""
        return [s.info[0] for s in self.samples]

    # ------------------------------------------------------------------ listing
    def _list_sequences(self) -> list[Sample]:
        samples: list[Sample] = []
        for subject in _subdirs(self.emotion_dir):
            for sequence in _subdirs(self.emotion_dir / subject):
                seq_dir = self.emotion_dir / subject / sequence
                files = sorted(p for p in os.listdir(seq_dir) if p.endswith(_SUFFIX) and not p.startswith("."))
                if not files:
                    self.unlabelled_sequences += 1
                    continue
                if len(files) > 1:
                    raise DatasetFormatError(f"{seq_dir}: {len(files)} emotion files {files}; CK+ gives one per "
                                             f"labelled sequence", str(seq_dir))
                samples.extend(self._frames(subject, sequence, seq_dir / files[0]))
        if not samples and not self.excluded:
            raise self._layout_error([self.emotion_dir / "S005" / "001" / "S005_001_00000011_emotion.txt"],
                                     "No emotion files found under Emotion/<subject>/<sequence>/.")
        return samples

    def _frames(self, subject: str, sequence: str, emotion_file: Path) -> list[Sample]:
        """The last ``frames`` frames of a labelled sequence, ending at the labelled one.

        Frames come from the sequence's image folder; when the folder or the labelled
        frame is missing, the expected CK+ names (``S005_001_00000009.png`` ...) are
        listed instead, so that the construction-time file check reports them (or skips
        them with ``on_error="skip"``).
        """
        code = _read_code(emotion_file)
        stem = emotion_file.name[: -len(_SUFFIX)]
        image_dir = self.images_dir / subject / sequence
        images = list_images(image_dir)[0] if image_dir.is_dir() else []
        names = [p.stem for p in images]
        if stem in names:
            end = names.index(stem) + 1
            if end < self.frames:
                raise DatasetFormatError(f"{image_dir}: the labelled frame {stem} is frame {end} of the sequence; "
                                         f"frames={self.frames} needs at least {self.frames}", str(image_dir))
            chosen = images[end - self.frames:end]
        else:
            prefix, _, number = stem.rpartition("_")
            if not number.isdigit():
                raise DatasetFormatError(f"{emotion_file}: expected a name like S005_001_00000011_emotion.txt",
                                         str(emotion_file))
            last = int(number)
            if last < self.frames:
                raise DatasetFormatError(f"{emotion_file}: labelled frame {last} comes before frame "
                                         f"{self.frames} (frames={self.frames})", str(emotion_file))
            chosen = [image_dir / f"{prefix}_{n:0{len(number)}d}.png" for n in range(last - self.frames + 1, last + 1)]
        self._labelled_subjects.add(subject)
        label = self._class_index(LABEL_MAP[code])
        if label is None:
            self._exclude(LABEL_MAP[code], self.frames - 1)  # one count per frame
            return []
        out = []
        for path in chosen:
            lm = self.landmarks_dir / subject / sequence / f"{path.stem}_landmarks.txt" if self.with_landmarks else None
            frame = int(re.sub(r"\D", "", path.stem.rsplit("_", 1)[-1]) or -1)
            out.append(Sample(path, label, lm, (subject, sequence, frame, code)))
        return out

    # ------------------------------------------------------------------ access
    def _landmarks(self, s: Sample) -> np.ndarray | None:
        return read_points(s.ref, 68) if s.ref is not None else None

    def _load(self, s: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        img, lm = decode_image(s.path), self._landmarks(s)
        if not self.crop_face:
            return img, lm
        (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
        side = int(round(max(x1 - x0, y1 - y0) * (1.0 + self.crop_margin)))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        H, W = img.shape[:2]
        # One whole-pixel side for both axes (rounding each edge alone can give 87 x 86), then clipped.
        x_lo, y_lo = int(round(cx - side / 2)), int(round(cy - side / 2))
        left, top = max(x_lo, 0), max(y_lo, 0)
        right, bottom = min(x_lo + side, W), min(y_lo + side, H)
        if right - left < 2 or bottom - top < 2:
            raise DatasetFormatError(f"{s.ref}: the landmarks lie outside the {W}x{H} frame {s.path}",
                                     s.ref)
        lm = lm - np.array([left, top], dtype=np.float64) if self.return_landmarks else None
        return img[top:bottom, left:right], lm

    def _meta(self, s: Sample) -> dict[str, Any]:
        subject, sequence, frame, code = s.info
        return {"subject": subject, "sequence": sequence, "frame": frame, "code": code,
                "fold": self.folds[subject]}


def _subdirs(folder: Path) -> list[str]:
    return sorted((e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
                  key=_subject_key)


def _read_code(path: Path) -> int:
    text = path.read_text(errors="replace").strip()
    try:
        value = float(text)
        code = int(value) if value.is_integer() else None
    except ValueError:
        code = None
    if code not in LABEL_MAP:
        raise DatasetFormatError(f"{path}: unknown CK+ emotion {text!r}; CK+ uses "
                                 f"{', '.join(f'{k}={v}' for k, v in LABEL_MAP.items())}", str(path))
    return code
