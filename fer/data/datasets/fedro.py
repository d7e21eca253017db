"""FED-RO: facial expressions with real occlusions (test only, 400 images, 7 classes).

Paper: Y. Li, J. Zeng, S. Shan, X. Chen, "Occlusion Aware Facial Expression
Recognition Using CNN With Attention Mechanism", IEEE Trans. Image Processing
28(5), 2019 (FED-RO is introduced there).
Download: on request from the authors (Yong Li et al., VIPL, ICT, Chinese Academy of
Sciences; contact details in the paper). The release is a folder per class.

MAPNet (Ju & Zhao) trains on RAF-DB + AffectNet and tests on FED-RO, which is why
this loader only has a ``test`` split.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..labels import resolve_classes
from .base import DatasetFormatError, Published, RealFERDataset, Sample, list_images

__all__ = ["FEDRO", "FOLDER_MAP", "TREE", "SOURCE", "PUBLISHED"]

#: Class folder names (case-insensitive) -> canonical names (:data:`fer.data.CLASSES`).
#: The first name of each class is the one the documented tree uses.
FOLDER_MAP: dict[str, str] = {
    "anger": "anger",
    "angry": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "happy": "happy",
    "happiness": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
}
SOURCE = ("the authors of Li et al., 'Occlusion aware facial expression recognition using CNN with attention "
          "mechanism', IEEE TIP 28(5), 2019 (on request)")
#: 400 test images; the per-class counts are not published.
PUBLISHED = Published(
    source="Li et al., IEEE TIP 28(5), 2019 (FED-RO, 400 images); MAPNet's section 3.2",
    totals={"test": 400},
)
#: The tree :class:`FEDRO` expects (also in ``data/README.md``).
TREE = """\
data/fedro/
├── anger/*.jpg        one folder per class (400 images in all): anger disgust fear happy
├── disgust/*.jpg      neutral sad surprise; synonyms are accepted (angry, disgusted,
├── ...                fearful, afraid, happiness, sadness, surprised; any letter case)
└── surprise/*.jpg     (.png, .jpeg, .bmp also read)
"""


class FEDRO(RealFERDataset):
    """FED-RO (``split="test"`` only).

    Args:
        root: the folder holding one sub-folder per class.
        split: ``test``.
        num_classes: 7.
        classes: an expression subset; other images are counted in ``excluded``.
        image_size: resize (FED-RO's images vary in size; set it to batch them).
        transform: applied to the uint8 3 x H x W image tensor.
        on_error: ``raise`` or ``skip`` (see :mod:`fer.data.datasets.base`).

    ``meta`` has ``path``, ``file`` and ``folder`` (the class folder's own name).
    Non-image files in class folders are listed in ``ignored`` and reported.
    """

    name = "fedro"
    tree = TREE
    source = SOURCE
    splits = ("test",)
    published = PUBLISHED

    def __init__(self, root: str | os.PathLike, split: str = "test", *, num_classes: int = 7,
                 classes: Sequence[str] | None = None, image_size: int | None = None,
                 transform: Callable[[torch.Tensor], Any] | None = None, on_error: str = "raise") -> None:
        if split != "test":
            raise ValueError(f"fedro: FED-RO is a test set only (split='test'), got {split!r}")
        if num_classes > 7 and classes is None:
            raise ValueError("fedro: FED-RO has 7 classes (no contempt); num_classes must be <= 7")
        super().__init__(root, split, classes=resolve_classes(classes, num_classes), image_size=image_size,
                         transform=transform, on_error=on_error)
        self._require()
        self.ignored: list[str] = []
        self._setup(self._list())

    def _list(self) -> list[Sample]:
        found: dict[str, Path] = {}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            canonical = FOLDER_MAP.get(entry.name.lower())
            if canonical is None:
                raise DatasetFormatError(f"{self.root}: unknown class folder {entry.name!r}; FED-RO class folders "
                                         f"are {sorted(set(FOLDER_MAP))} (any case)", entry.path)
            if canonical in found:
                raise DatasetFormatError(f"{self.root}: folders {found[canonical].name!r} and {entry.name!r} both "
                                         f"mean {canonical!r}", entry.path)
            found[canonical] = Path(entry.path)
        wanted = resolve_classes(None, 7)
        missing = [self.root / c for c in wanted if c not in found]
        if missing:
            raise self._layout_error(missing)
        samples: list[Sample] = []
        for canonical in wanted:
            images, other = list_images(found[canonical])
            self.ignored.extend(str(p) for p in other)
            if canonical not in self.classes:
                self._exclude(canonical, len(images))
                continue
            label = self.classes.index(canonical)
            samples.extend(Sample(p, label, None, (found[canonical].name,)) for p in images)
        if self.ignored:
            warnings.warn(f"fedro: ignored {len(self.ignored)} non-image file(s) in class folders, first: "
                          f"{self.ignored[:5]}", stacklevel=3)
        if not samples and not self.excluded:
            raise self._layout_error([self.root / "anger" / "*.jpg"], "The class folders hold no images.")
        return samples

    def _meta(self, s: Sample) -> dict[str, Any]:
        return {"folder": s.info[0]}
