"""The dry run (``python -m fer.book run --dry-run``): the whole path, in minutes.

``FER_DRY_RUN=1`` makes :func:`fer.train.fit` train each stage of a run for
:data:`STEPS` optimiser steps of at most :data:`BATCH` faces, and :func:`fer.train.evaluate`
score :data:`EVAL_BATCHES` batches of :data:`BATCH`; a chapter explains :data:`EXPLAIN` faces;
the pretrained-weight loaders go on
without a missing file (:func:`fer.models.missing_weights`). Everything else (models at full
width, input size, optimiser, schedule, losses, loaders) is the profile's own.
"""
from __future__ import annotations

import os

__all__ = ["DRY_RUN_ENV", "STEPS", "BATCH", "EVAL_BATCHES", "EXPLAIN", "dry_run"]

#: Environment variable that turns the dry run on (``1``).
DRY_RUN_ENV = "FER_DRY_RUN"
#: Optimiser steps per training stage.
STEPS = 2
#: Largest training and evaluation batch (2: batch norm still sees a batch).
BATCH = 2
#: Batches per evaluation (scored once, at the end of a run).
EVAL_BATCHES = 2
#: Faces in a chapter's explanation set (Grad-CAM, attention maps, localisation scores).
EXPLAIN = 16


def dry_run() -> bool:
    """``True`` when ``$FER_DRY_RUN`` is ``1``."""
    return os.environ.get(DRY_RUN_ENV) == "1"
