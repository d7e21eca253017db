"""Datasets: SynFER (generated, the default) and the papers' real datasets.

Every dataset yields dicts with ``image`` (uint8 3 x H x W), ``label`` (an index
into the dataset's ``classes``, which follow :data:`CLASSES` order), ``landmarks``
(68 x 2, or the dataset's own points, when known) and ``meta``. Real datasets load
through :func:`load_dataset` (see ``data/README.md`` for the trees they expect).
"""
from __future__ import annotations

from .datasets import (
    DATASETS,
    LABEL_MAPS,
    DatasetFormatError,
    DatasetLayoutError,
    ImageDecodeError,
    load_dataset,
)
from .labels import CLASSES, CLASSES_7, resolve_classes
from .synfer import VARIANTS, SynFER

__all__ = [
    "CLASSES",
    "CLASSES_7",
    "resolve_classes",
    "SynFER",
    "VARIANTS",
    "load_dataset",
    "DATASETS",
    "LABEL_MAPS",
    "DatasetLayoutError",
    "DatasetFormatError",
    "ImageDecodeError",
]
