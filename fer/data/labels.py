"""The package's canonical expression labels.

Every dataset in :mod:`fer.data` returns labels in this order, so a model
trained on one can be evaluated on another without remapping. Seven-class
datasets use the first seven names; eight-class ones (AffectNet-8, CK+ with
contempt) use all eight.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["CLASSES", "CLASSES_7", "resolve_classes", "LabelCounts"]

CLASSES: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
CLASSES_7: tuple[str, ...] = CLASSES[:7]


def resolve_classes(classes: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """Return the class names a dataset uses, in canonical order.

    Args:
        classes: explicit subset of :data:`CLASSES` (any order; it is sorted into
            canonical order), or ``None`` for the first ``num_classes`` names.
        num_classes: used when ``classes`` is ``None``; 1..8.

    Raises:
        ValueError: unknown names, duplicates, or a bad ``num_classes``.
    """
    if classes is None:
        if not 1 <= num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {num_classes}")
        return CLASSES[:num_classes]
    names = [str(c).lower() for c in classes]
    unknown = [c for c in names if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown expression class(es) {unknown}; choose from {CLASSES}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in {list(classes)}")
    return tuple(c for c in CLASSES if c in names)


class LabelCounts:
    """Mixin for datasets that know every label up front.

    The class sets ``self._targets`` (int64 array of label indices) and
    ``self.classes``; it gets :attr:`targets` and :attr:`class_counts` without
    decoding or drawing any image.
    """

    _targets: np.ndarray
    classes: tuple[str, ...]

    @property
    def targets(self) -> list[int]:
        """All labels (indices into ``classes``), without decoding or drawing any image."""
        return self._targets.tolist()

    @property
    def class_counts(self) -> dict[str, int]:
        """Samples per class name, in ``classes`` order."""
        counts = np.bincount(self._targets, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts, strict=True)}
