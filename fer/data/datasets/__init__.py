"""The papers' real datasets behind one call, :func:`load_dataset`.

``load_dataset(name, root, split, **kwargs)`` returns a ``torch.utils.data.Dataset``
whose items are the same dicts as :class:`fer.data.SynFER`'s (``image`` uint8 3 x H x W,
``label`` an index into ``ds.classes`` in canonical order, ``landmarks`` when the
dataset ships them, ``meta``), with ``targets``, ``class_counts`` and ``classes``.
``name="synfer"`` returns SynFER itself, so a chapter switches data with one parameter.

Each dataset's own label codes map to :data:`fer.data.CLASSES` through one table,
collected in :data:`LABEL_MAPS` and printed in ``data/README.md`` with the folder
tree each loader expects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from . import affectnet, ckplus, fedro, fer2013, rafdb
from .affectnet import AffectNet
from .base import (
    IMG_EXTENSIONS,
    DatasetFormatError,
    DatasetLayoutError,
    ImageDecodeError,
    RealFERDataset,
    label_table,
)
from .ckplus import CKPlus, subject_folds
from .fedro import FEDRO
from .fer2013 import FER2013
from .rafdb import RAFDB

__all__ = [
    "load_dataset",
    "DATASETS",
    "LABEL_MAPS",
    "SYNFER_STANDINS",
    "default_root",
    "DATA_ROOT_ENV",
    "RealFERDataset",
    "RAFDB",
    "FER2013",
    "AffectNet",
    "CKPlus",
    "FEDRO",
    "subject_folds",
    "DatasetLayoutError",
    "DatasetFormatError",
    "ImageDecodeError",
    "IMG_EXTENSIONS",
    "label_table",
]

#: Registry name -> loader class.
DATASETS: dict[str, type[RealFERDataset]] = {
    "rafdb": RAFDB,
    "fer2013": FER2013,
    "affectnet": AffectNet,
    "ckplus": CKPlus,
    "fedro": FEDRO,
}

#: Every dataset's own labels -> canonical names, one table per dataset (and per
#: layout where a dataset comes in two: FER2013's CSV codes and its class folders).
LABEL_MAPS: dict[str, dict[Any, str]] = {
    "rafdb": rafdb.LABEL_MAP,
    "fer2013": fer2013.LABEL_MAP,
    "fer2013_folders": fer2013.FOLDER_MAP,
    "affectnet": affectnet.LABEL_MAP,
    "ckplus": ckplus.LABEL_MAP,
    "fedro": fedro.FOLDER_MAP,
}

#: The SynFER variant that stands in for each real dataset.
SYNFER_STANDINS: dict[str, str] = {
    "rafdb": "wild",
    "fer2013": "fer2013",
    "affectnet": "affectnet",
    "ckplus": "ck",
    "fedro": "occluded",
}

#: Environment variable naming the folder that holds ``<name>/`` for each dataset.
DATA_ROOT_ENV = "FER_DATA_ROOT"


def default_root(name: str) -> Path:
    """``$FER_DATA_ROOT/<name>``, or ``data/<name>`` (relative to the working directory)."""
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser() / name


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str | None = None,
                 **kwargs: Any) -> Dataset:
    """Load a dataset by name: ``rafdb``, ``fer2013``, ``affectnet``, ``ckplus``, ``fedro`` or ``synfer``.

    Args:
        name: registry name (:data:`DATASETS`, or ``synfer``).
        root: the dataset's folder (see ``data/README.md``), or a folder holding
            ``<name>/`` (e.g. the ``--data-root`` of a chapter); default
            :func:`default_root`. Must be ``None`` for ``synfer``.
        split: ``train``/``val``/``test``/``all`` as the dataset offers; default:
            the loader's (``train``; ``test`` for FED-RO; ``all`` for CK+).
        **kwargs: the loader's keyword arguments (``image_size``, ``transform``,
            ``num_classes``, ``classes``, ``on_error``, ``fold``, ``variant`` for SynFER ...).

    Raises:
        ValueError: unknown name or split, or a ``root`` given for SynFER.
        DatasetLayoutError: the data is not where the loader expects it.
    """
    key = name.lower().replace("-", "").replace("_", "").replace("+", "plus")
    if key == "synfer":
        from ..synfer import SynFER

        if root is not None:
            raise ValueError("synfer is generated on the fly and takes no root; pass root=None")
        variant = kwargs.pop("variant", "wild")
        return SynFER(variant, split or "train", **kwargs)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS) + ['synfer']}")
    if root is None:
        root = default_root(key)
    else:
        root = Path(root).expanduser()
        if (root / key).is_dir():
            root = root / key
    cls = DATASETS[key]
    return cls(root, split, **kwargs) if split is not None else cls(root, **kwargs)
