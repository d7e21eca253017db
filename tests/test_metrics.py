"""fer.metrics on hand-computed inputs, including a class absent from the targets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from fer import metrics

# 10 samples, 4 classes; class 3 never occurs in the targets but is predicted once.
TARGETS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDS = [0, 0, 0, 1, 1, 1, 3, 2, 0, 2]
# Confusion counts (rows true, columns predicted), by hand:
COUNTS = [[3, 1, 0, 0],
          [0, 2, 0, 1],
          [1, 0, 2, 0],
          [0, 0, 0, 0]]
CLASSES = ("neutral", "happy", "sad", "surprise")


def test_accuracy_counts_correct_samples():
    assert metrics.accuracy(PREDS, TARGETS, num_classes=4) == pytest.approx(7 / 10)


def test_per_class_accuracy_marks_absent_class_nan():
    acc = metrics.per_class_accuracy(PREDS, TARGETS, num_classes=4)
    np.testing.assert_allclose(acc[:3], [3 / 4, 2 / 3, 2 / 3])
    assert np.isnan(acc[3])


def test_mean_class_accuracy_averages_present_classes_only():
    expected = (3 / 4 + 2 / 3 + 2 / 3) / 3
    assert metrics.mean_class_accuracy(PREDS, TARGETS, num_classes=4) == pytest.approx(expected)
    # torchmetrics' macro counts the absent-but-predicted class as 0: documented difference.
    tm = float(MulticlassAccuracy(num_classes=4, average="macro")(torch.tensor(PREDS), torch.tensor(TARGETS)))
    assert tm == pytest.approx((3 / 4 + 2 / 3 + 2 / 3 + 0) / 4)


def test_mean_class_accuracy_equals_torchmetrics_macro_when_all_present():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(40) % 4
    logits = torch.randn(40, 4, generator=g)
    ours = metrics.mean_class_accuracy(logits, t)
    tm = float(MulticlassAccuracy(num_classes=4, average="macro")(logits.argmax(1), t))
    assert ours == pytest.approx(tm)


def test_confusion_matrix_counts_and_row_normalised():
    cm = metrics.confusion_matrix(PREDS, TARGETS, num_classes=4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, COUNTS)
    norm = metrics.confusion_matrix(PREDS, TARGETS, num_classes=4, normalise=True)
    np.testing.assert_allclose(norm[0], [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(norm[1], [0, 2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(norm[:3].sum(1), 1.0)
    assert np.isnan(norm[3]).all()


def test_logits_are_argmaxed_and_give_num_classes():
    logits = torch.full((10, 4), -1.0)
    logits[torch.arange(10), torch.tensor(PREDS)] = 2.0
    assert metrics.accuracy(logits, torch.tensor(TARGETS)) == pytest.approx(0.7)
    np.testing.assert_array_equal(metrics.confusion_matrix(logits.numpy(), np.array(TARGETS)), COUNTS)


def test_classification_report_is_json_and_hand_checked():
    rep = metrics.classification_report(PREDS, TARGETS, CLASSES)
    text = json.dumps(rep, allow_nan=False)  # no nan anywhere
    assert json.loads(text) == rep
    assert rep["num_samples"] == 10 and rep["classes"] == list(CLASSES)
    assert rep["accuracy"] == pytest.approx(0.7)
    assert rep["mean_class_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert rep["per_class_accuracy"]["neutral"] == pytest.approx(0.75)
    assert rep["per_class_accuracy"]["surprise"] is None
    assert rep["support"] == {"neutral": 4, "happy": 3, "sad": 3, "surprise": 0}
    assert rep["absent_classes"] == ["surprise"]
    assert rep["confusion_matrix"] == COUNTS
    assert rep["confusion_matrix_normalised"][3] == [None] * 4
    assert rep["confusion_matrix_normalised"][0] == pytest.approx([0.75, 0.25, 0.0, 0.0])


@pytest.mark.parametrize("preds, targets, kwargs, match", [
    ([0, 1], [0, 1, 1], {"num_classes": 2}, "2 predictions but 3 targets"),
    ([0, 1], [0, 1], {}, "num_classes"),
    ([0, 5], [0, 1], {"num_classes": 3}, "outside 0..2"),
    (np.zeros((2, 3)), [0, 1], {"num_classes": 4}, "must match"),
    ([0.2, 0.8], [0, 1], {"num_classes": 2}, "integer class indices"),
    ([], [], {"num_classes": 2}, "empty"),
])
def test_errors_are_clear(preds, targets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.accuracy(preds, targets, **kwargs)


def test_report_checks_classes_against_scores():
    with pytest.raises(ValueError, match="must match"):
        metrics.classification_report(np.zeros((3, 5)), [0, 1, 2], CLASSES)
