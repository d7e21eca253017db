"""Datasets: SynFER (generated, the default) and the papers' real datasets.

Every dataset yields dicts with ``image`` (uint8 3 x H x W), ``label`` (an index
into the dataset's ``classes``, which follow :data:`CLASSES` order), ``landmarks``
(68 x 2, or the dataset's own points, when known) and ``meta``. Real datasets load
through :func:`load_dataset` (see ``data/README.md`` for the trees they expect).

:func:`cache_dataset` decodes a dataset once (:mod:`fer.data.cached`), and
:class:`InputTransform` turns its uint8 faces into model input (:mod:`fer.data.transforms`).
"""
from __future__ import annotations

from .cached import CachedDataset, StreamedDataset, cache_dataset, cached_fingerprint, collate_items
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
from .transforms import IMAGENET_MEAN, IMAGENET_STD, InputTransform, five_crop, model_batch, model_input

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
    "CachedDataset",
    "StreamedDataset",
    "cache_dataset",
    "cached_fingerprint",
    "collate_items",
    "InputTransform",
    "model_input",
    "model_batch",
    "five_crop",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
