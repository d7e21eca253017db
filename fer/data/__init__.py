"""Datasets: SynFER (generated, the default) and, later, the papers' real datasets.

Every dataset yields dicts with ``image`` (uint8 3 x H x W), ``label`` (an index
into the dataset's ``classes``, which follow :data:`CLASSES` order), ``landmarks``
(68 x 2 when known) and ``meta``.
"""
from __future__ import annotations

from .labels import CLASSES, CLASSES_7, resolve_classes
from .synfer import VARIANTS, SynFER

__all__ = ["CLASSES", "CLASSES_7", "resolve_classes", "SynFER", "VARIANTS"]
