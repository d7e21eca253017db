"""Classification metrics as the papers report them, from torchmetrics' confusion counts.

The papers quote two numbers: **accuracy** (share of correctly classified test
images, what torchmetrics calls ``MulticlassAccuracy(average="micro")``) and **average
accuracy** (the mean over classes of each class's accuracy, i.e. of its recall;
also called mean class accuracy or balanced accuracy). Both, the per-class
accuracies, and the confusion matrix (counts and row-normalised) are here, and
:func:`classification_report` bundles them into the JSON-serialisable dict that
a run writes to ``metrics.json``.

Every function accepts either predicted class indices (``N`` integers) or
scores (``N x C`` logits or probabilities; the arg-max is the prediction), as
torch tensors, numpy arrays or lists, and integer targets (``N``).

Classes absent from the targets
-------------------------------
A class with no target sample has no defined accuracy (0 of 0). Here:

* :func:`per_class_accuracy` gives it ``nan`` (``None`` in the report);
* :func:`mean_class_accuracy` averages over the classes **present** in the
  targets only, as scikit-learn's ``balanced_accuracy_score`` does. This
  deliberately differs from torchmetrics' ``average="macro"``, which counts a
  class that is absent but *predicted* as accuracy 0 (and drops one that is
  neither). On a full test set every class is present and the two agree;
* its row of the row-normalised confusion matrix is ``nan`` (``None`` in the
  report), while its column still counts the samples wrongly predicted as it.

One implementation
------------------
The counts come from torchmetrics (``MulticlassConfusionMatrix``); every rate is then
computed from them in float64 (torchmetrics' own rates are float32), so
:func:`accuracy`, :func:`mean_class_accuracy`, :func:`classification_report` and
:func:`fer.train.evaluate` (through :func:`evaluation_metrics`) give the same numbers to
the last bit.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = [
    "accuracy",
    "mean_class_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "classification_report",
    "evaluation_metrics",
]


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(x))
    if t.ndim == 0:
        raise ValueError(f"{name} must be a sequence of samples, got a scalar")
    return t


def _prepare(preds_or_logits: Any, targets: Any, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Class-index predictions, targets and the number of classes, validated."""
    preds = _as_tensor(preds_or_logits, "preds_or_logits")
    tgt = _as_tensor(targets, "targets")
    if tgt.numel() == 0:
        raise ValueError("no samples: metrics of an empty set are undefined")
    if tgt.ndim != 1 or tgt.is_floating_point() or tgt.dtype == torch.bool:
        raise ValueError(f"targets must be N integer class indices, got dtype {tgt.dtype} and shape {tuple(tgt.shape)}")
    if preds.ndim == 2:
        if num_classes is not None and preds.shape[1] != num_classes:
            raise ValueError(f"scores have {preds.shape[1]} columns but num_classes={num_classes} "
                             f"(or len(classes)); they must match")
        num_classes = int(preds.shape[1])
        preds = preds.float().argmax(dim=1)
    elif preds.ndim == 1:
        if preds.is_floating_point():
            raise ValueError("1-D predictions must be integer class indices; pass N x C scores to take their arg-max")
        if num_classes is None:
            raise ValueError("num_classes (or classes) is required when predictions are class indices, "
                             "not N x C scores")
    else:
        raise ValueError(f"preds_or_logits must be N class indices or N x C scores, got shape {tuple(preds.shape)}")
    if len(preds) != len(tgt):
        raise ValueError(f"{len(preds)} predictions but {len(tgt)} targets")
    preds, tgt = preds.long(), tgt.long()
    for name, t in (("targets", tgt), ("predictions", preds)):
        bad = (t < 0) | (t >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"{name} hold {sorted(set(t[bad].tolist()))[:5]} outside 0..{num_classes - 1} "
                             f"(num_classes={num_classes})")
    return preds, tgt, num_classes


def _counts(preds: torch.Tensor, tgt: torch.Tensor, k: int) -> torch.Tensor:
    """``k x k`` int64 confusion counts (rows true, columns predicted) of valid class indices."""
    if len(tgt) == 0:
        return torch.zeros((k, k), dtype=torch.int64)
    return MulticlassConfusionMatrix(num_classes=k)(preds, tgt).long()


def _rates(counts: torch.Tensor, n: int) -> tuple[float, torch.Tensor, float]:
    """Accuracy over ``n`` samples, per-class accuracy (float64, ``nan`` where a class has no sample)
    and their mean over the classes present, all from ``counts``."""
    support = counts.sum(1)
    per_class = counts.diagonal().double() / support.clamp(min=1).double()
    present = support > 0
    acc = float(counts.diagonal().sum().double() / n) if n else float("nan")
    mean = float(per_class[present].mean()) if present.any() else float("nan")
    return acc, torch.where(present, per_class, torch.full_like(per_class, float("nan"))), mean


def accuracy(preds_or_logits: Any, targets: Any, *, num_classes: int | None = None) -> float:
    """Share of samples whose prediction equals the target (micro accuracy).

    Args:
        preds_or_logits: ``N`` class indices or ``N x C`` scores.
        targets: ``N`` class indices.
        num_classes: required with class indices; taken from the scores' width otherwise.
    """
    preds, tgt, k = _prepare(preds_or_logits, targets, num_classes)
    return _rates(_counts(preds, tgt, k), len(tgt))[0]


def per_class_accuracy(preds_or_logits: Any, targets: Any, *, num_classes: int | None = None) -> np.ndarray:
    """Accuracy (recall) of each class, a float array of length ``C``; ``nan`` for classes absent from ``targets``.

    The diagonal of the confusion counts over each class's support; torchmetrics'
    ``MulticlassAccuracy(average="none")`` reports absent classes as 0 instead.
    """
    preds, tgt, k = _prepare(preds_or_logits, targets, num_classes)
    return _rates(_counts(preds, tgt, k), len(tgt))[1].numpy()


def mean_class_accuracy(preds_or_logits: Any, targets: Any, *, num_classes: int | None = None) -> float:
    """The papers' *average accuracy*: mean of :func:`per_class_accuracy` over the classes present in ``targets``.

    With every class present this equals ``MulticlassAccuracy(average="macro")``;
    see the module docstring for absent classes.
    """
    preds, tgt, k = _prepare(preds_or_logits, targets, num_classes)
    return _rates(_counts(preds, tgt, k), len(tgt))[2]


def confusion_matrix(preds_or_logits: Any, targets: Any, *, num_classes: int | None = None,
                     normalise: bool = False) -> np.ndarray:
    """``C x C`` confusion matrix, rows = true class, columns = predicted class.

    Args:
        normalise: ``False`` for counts (int64, ``MulticlassConfusionMatrix``);
            ``True`` to divide each row by its class's sample count (float64, rows
            sum to 1; rows of classes absent from ``targets`` are ``nan``).
    """
    preds, tgt, k = _prepare(preds_or_logits, targets, num_classes)
    counts = _counts(preds, tgt, k).numpy()
    return _row_normalise(counts) if normalise else counts


def evaluation_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """The metrics of a :func:`fer.train.evaluate` result, from ``N x K`` scores and ``N`` targets.

    Returns ``accuracy``, ``mean_class_accuracy`` (over the classes present),
    ``per_class_accuracy`` (list of floats, ``None`` for an absent class), ``confusion``
    (``K x K`` int64 tensor, rows true) and ``predictions`` (the arg-max, int64). A
    target outside ``0..K-1`` counts as a wrong prediction and is left out of the
    confusion matrix; with no sample at all the rates are ``nan``.
    """
    k = logits.shape[1]
    preds = logits.argmax(1)
    valid = (targets >= 0) & (targets < k)
    counts = _counts(preds[valid], targets[valid], k)
    acc, per_class, mean = _rates(counts, len(targets))
    return {
        "accuracy": acc,
        "mean_class_accuracy": mean,
        "per_class_accuracy": [None if math.isnan(a) else float(a) for a in per_class.tolist()],
        "confusion": counts,
        "predictions": preds,
    }


def _row_normalise(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, counts / np.where(rows > 0, rows, 1.0), np.nan)


def _json_float(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def classification_report(preds_or_logits: Any, targets: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Every metric above in one JSON-serialisable dict (what a run writes to ``metrics.json``).

    Args:
        preds_or_logits: ``N`` class indices or ``N x C`` scores, ``C == len(classes)``.
        targets: ``N`` class indices.
        classes: class names in index order (e.g. :data:`fer.data.CLASSES_7`).

    Returns:
        A dict with keys

        * ``num_samples`` (int), ``classes`` (list of names),
        * ``accuracy``, ``mean_class_accuracy`` (floats in [0, 1]),
        * ``per_class_accuracy`` (name -> float, ``None`` for an absent class),
        * ``support`` (name -> number of target samples),
        * ``absent_classes`` (names with no target sample, excluded from the mean),
        * ``confusion_matrix`` (counts, list of rows; rows true, columns predicted),
        * ``confusion_matrix_normalised`` (row shares; an absent class's row is ``None`` s).

        Every value is a plain Python int, float, str, list, dict or ``None``
        (never ``nan``), so ``json.dumps(..., allow_nan=False)`` succeeds.
    """
    classes = [str(c) for c in classes]
    preds, tgt, k = _prepare(preds_or_logits, targets, len(classes))
    count_t = _counts(preds, tgt, k)
    acc, per_class_t, mean = _rates(count_t, len(tgt))
    counts, per_class = count_t.numpy(), per_class_t.numpy()
    support = counts.sum(axis=1)
    return {
        "num_samples": int(len(tgt)),
        "classes": classes,
        "accuracy": acc,
        "mean_class_accuracy": mean,
        "per_class_accuracy": {c: _json_float(a) for c, a in zip(classes, per_class.tolist())},
        "support": {c: int(s) for c, s in zip(classes, support.tolist())},
        "absent_classes": [c for c, s in zip(classes, support.tolist()) if s == 0],
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalised": [[_json_float(v) for v in row] for row in _row_normalise(counts).tolist()],
    }
