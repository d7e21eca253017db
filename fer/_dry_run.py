"""The dry run (``python -m fer.book run --dry-run``): the whole path, in minutes.

``FER_DRY_RUN=1`` makes :func:`fer.train.fit` train each stage of a run for
:data:`STEPS` optimiser steps of at most :data:`BATCH` faces, and :func:`fer.train.evaluate`
score :data:`EVAL_BATCHES` batches of :data:`BATCH`; a chapter explains :data:`EXPLAIN` faces,
and the book runner caps each page's face counts (:data:`PAGE_CAPS`, :func:`cap_page_parameters`);
repetitions of the same code path are capped (:func:`cap_repetitions`: one seed, one fold, a
sweep's two ends), since the second seed of a run exercises nothing the first did not;
the pretrained-weight loaders go on
without a missing file and record it here (:func:`note_missing_weights`, :func:`missing_weights`),
so the page's banner and the book report list it. Everything else (models at full
width, input size, optimiser, schedule, losses, loaders) is the profile's own.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DRY_RUN_ENV", "STEPS", "BATCH", "EVAL_BATCHES", "EXPLAIN", "PAGE_CAPS", "REPEATED", "SWEPT", "dry_run",
           "cap_repetitions", "cap_page_parameters", "note_missing_weights", "missing_weights"]

#: Environment variable that turns the dry run on (``1``).
DRY_RUN_ENV = "FER_DRY_RUN"
#: Optimiser steps per training stage.
STEPS = 2
#: Largest training and evaluation batch (2: batch norm still sees a batch).
BATCH = 2
#: Batches per evaluation (scored once, at the end of a run).
EVAL_BATCHES = 2
#: Faces in a chapter's explanation set (Grad-CAM, attention maps, localisation scores).
EXPLAIN = 4
#: Page knobs (``parameters`` cell names) that only set how many faces a page draws, explains
#: or times, and their dry-run caps (:func:`cap_page_parameters`): a Grad-CAM of 200 faces
#: through full-size VGG16 proves nothing that one of 4 does not, and costs the dry run minutes.
PAGE_CAPS: dict[str, int] = {
    "n_explain": EXPLAIN, "n_show": 2, "n_people": 1, "n_per_class": 2, "n_accuracy": 4,
    "n_stats": 50, "n_speed": 10, "erf_n": 2,
}

#: Setup fields that repeat one run over seeds or folds: a dry run keeps their first value.
REPEATED = ("seeds", "sweep_seeds", "affectnet_seeds", "folds")
#: Setup fields that sweep a hyper-parameter: a dry run keeps their first and last values.
SWEPT = ("blocks_values", "alpha_values")


def dry_run() -> bool:
    """``True`` when ``$FER_DRY_RUN`` is ``1``."""
    return os.environ.get(DRY_RUN_ENV) == "1"


def cap_repetitions(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (a chapter ``Setup``'s field values) with its repetitions capped for a dry run.

    Fields in :data:`REPEATED` keep their first value and those in :data:`SWEPT` their
    first and last; other fields, and ``None`` or empty values, are left as they are.
    Every other setting stays the profile's own, so each code path still runs once.
    """
    out = dict(params)
    for name in REPEATED + SWEPT:
        values = out.get(name)
        if isinstance(values, (list, tuple)) and len(values) > 1:
            kept = values[:1] if name in REPEATED else [values[0], values[-1]]
            out[name] = type(values)(kept)
    return out


def cap_page_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A page's injected ``params`` with each knob of :data:`PAGE_CAPS` capped (integers only;
    every other parameter, and a value under its cap, is left as it is)."""
    out = dict(params)
    for name, cap in PAGE_CAPS.items():
        value = out.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            out[name] = cap
    return out


#: Messages about weight files a dry run went without, in the order met (one per file).
_MISSING: dict[str, str] = {}


def note_missing_weights(file: Path | str, message: str) -> None:
    """Record that a dry run goes on without ``file`` (random initialisation), and warn."""
    if str(file) not in _MISSING:
        _MISSING[str(file)] = message
        warnings.warn(f"dry run: using random initialisation instead of {file}. {message}", stacklevel=3)


def missing_weights() -> dict[str, str]:
    """``{file: message}`` for every weight file this process's dry run went without."""
    return dict(_MISSING)
