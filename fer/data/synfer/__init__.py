"""SynFER: the procedural face-expression dataset every chapter runs on by default.

See :class:`SynFER` and the book page ``book/datasets/synfer.ipynb``.
"""
from __future__ import annotations

from .dataset import GENERATOR_VERSION, MASK_CLASSES, SampleSpec, SynFER
from .face import ACTION_UNITS, AU_NAMES, PROTOTYPES
from .nuisances import FACE_MASK_COLOURS, OCCLUDERS
from .regions import AU_REGIONS, REGIONS, class_regions, describe_expressions
from .render import FACE_MASK_STYLES
from .speed import throughput
from .variants import VARIANTS, Variant, describe_variants, get_variant

__all__ = [
    "SynFER",
    "SampleSpec",
    "GENERATOR_VERSION",
    "MASK_CLASSES",
    "VARIANTS",
    "Variant",
    "get_variant",
    "describe_variants",
    "throughput",
    "ACTION_UNITS",
    "AU_NAMES",
    "PROTOTYPES",
    "OCCLUDERS",
    "FACE_MASK_COLOURS",
    "FACE_MASK_STYLES",
    "REGIONS",
    "AU_REGIONS",
    "class_regions",
    "describe_expressions",
]
