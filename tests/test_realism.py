"""fer.experiments.realism: the FER judge's agreement table on hand-made frames, and one small run."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fer.data.labels import CLASSES_7
from fer.data.synfer import SynFER
from fer.experiments.realism import (
    PROB_COLUMNS,
    balanced_indices,
    judge_confusion,
    judge_synfer,
    judged_faces,
    mean_recall,
    realism_table,
    recall_by_intensity,
    top_k,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["true", "pred", "intensity"])


@pytest.fixture
def hand_made() -> pd.DataFrame:
    """happy: 4 faces, 3 right (2 of its 3 apex faces); sad: 4 faces, 1 right, read twice as neutral
    and once as anger; anger: 2 faces, both read as sad, no apex face; fear: 3 faces, 1 right (its
    only apex face), once sad and once disgust (a tie: sad comes first in canonical order)."""
    return _frame([
        ("happy", "happy", 0.9), ("happy", "happy", 0.8), ("happy", "neutral", 0.7), ("happy", "happy", 0.2),
        ("sad", "neutral", 0.9), ("sad", "neutral", 0.3), ("sad", "anger", 0.75), ("sad", "sad", 0.71),
        ("anger", "sad", 0.5), ("anger", "sad", 0.1),
        ("fear", "fear", 0.95), ("fear", "disgust", 0.2), ("fear", "sad", 0.3),
    ])


def test_table_known_answers(hand_made):
    t = realism_table(hand_made)
    assert list(t.index) == ["happy", "sad", "fear", "anger", "mean"]  # canonical order, then the mean
    assert list(t.columns) == ["n", "recall", "n_apex", "recall_apex", "confused_with", "confusion_share"]
    assert t.loc["happy", ["n", "n_apex"]].tolist() == [4, 3]  # 0.7 counts as apex
    assert t.loc["happy", "recall"] == pytest.approx(3 / 4) and t.loc["happy", "recall_apex"] == pytest.approx(2 / 3)
    assert t.loc["happy", "confused_with"] == "neutral" and t.loc["happy", "confusion_share"] == pytest.approx(1 / 4)
    assert t.loc["sad", "recall"] == pytest.approx(1 / 4) and t.loc["sad", "recall_apex"] == pytest.approx(1 / 3)
    assert t.loc["sad", "confused_with"] == "neutral" and t.loc["sad", "confusion_share"] == pytest.approx(2 / 4)
    assert t.loc["anger", "recall"] == 0.0 and t.loc["anger", "n_apex"] == 0
    assert math.isnan(t.loc["anger", "recall_apex"])
    assert t.loc["anger", "confused_with"] == "sad" and t.loc["anger", "confusion_share"] == 1.0
    assert t.loc["fear", "confused_with"] == "sad"  # tie with disgust: canonical order decides
    assert t.loc["fear", "recall"] == pytest.approx(1 / 3) and t.loc["fear", "recall_apex"] == 1.0
    # mean row: unweighted over classes; the apex mean leaves out anger (no apex face)
    assert t.loc["mean", "recall"] == pytest.approx((3 / 4 + 1 / 4 + 0 + 1 / 3) / 4)
    assert t.loc["mean", "recall_apex"] == pytest.approx((2 / 3 + 1 / 3 + 1.0) / 3)
    assert t.loc["mean", ["n", "n_apex"]].tolist() == [13, 7]
    assert mean_recall(hand_made) == pytest.approx(t.loc["mean", "recall"])
    assert mean_recall(hand_made, apex=0.7) == pytest.approx(t.loc["mean", "recall_apex"])


def test_table_mean_is_per_class_not_per_face():
    """100 right neutral faces and 1 wrong fear face: per-face accuracy ~0.99, per-class mean 0.5."""
    df = _frame([("neutral", "neutral", 0.5)] * 100 + [("fear", "surprise", 0.9)])
    t = realism_table(df)
    assert t.loc["mean", "recall"] == pytest.approx(0.5)
    assert t.loc["neutral", "confused_with"] == "" and t.loc["neutral", "confusion_share"] == 0.0


def test_table_apex_threshold_argument(hand_made):
    t = realism_table(hand_made, apex=0.9)
    assert t.loc["happy", "n_apex"] == 1 and t.loc["happy", "recall_apex"] == 1.0
    assert t.loc["sad", "n_apex"] == 1 and t.loc["sad", "recall_apex"] == 0.0


def test_table_errors():
    with pytest.raises(ValueError, match="missing \\['intensity'\\]"):
        realism_table(pd.DataFrame({"true": ["happy"], "pred": ["happy"]}))
    with pytest.raises(ValueError, match="unknown class name"):
        realism_table(_frame([("joy", "happy", 1.0)]))


def test_balanced_indices_reads_labels_without_drawing():
    ds = SynFER("clean", split="test", n=60, classes=CLASSES_7, class_balance="uniform", with_relevance=False)
    idx = balanced_indices(ds, 3)
    targets = np.asarray(ds.targets)
    assert len(idx) == 21 and np.bincount(targets[idx], minlength=7).tolist() == [3] * 7
    with pytest.raises(ValueError, match="fewer than n_per_class"):
        balanced_indices(ds, 1000)


def test_judge_synfer_end_to_end():
    df = judge_synfer("clean", n_per_class=2, seed=3, size=96, progress=False)
    assert len(df) == 14 and df["true"].value_counts().to_dict() == {c: 2 for c in CLASSES_7}
    assert list(df["true"]) == [c for c in CLASSES_7 for _ in range(2)]
    assert (df["label"] == df["true"].map(CLASSES_7.index)).all()
    probs = df[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (df["pred"] == [CLASSES_7[k] for k in probs.argmax(1)]).all()
    assert (df["correct"] == (df["pred"] == df["true"])).all()
    assert df["intensity"].between(0, 1).all()
    # the frame describes the same faces that SynFER draws for these indices
    ds = SynFER("clean", split="test", n=10_000, seed=3, image_size=96, classes=CLASSES_7,
                class_balance="uniform", with_relevance=False)
    row = df.iloc[5]
    assert ds.describe(int(row["index"]))["expression"] == row["true"]
    assert ds.describe(int(row["index"]))["intensity"] == pytest.approx(row["intensity"])
    assert df.attrs["variant"] == "clean" and df.attrs["n_per_class"] == 2
    t = realism_table(df)
    assert list(t.index) == [*CLASSES_7, "mean"] and t["n"].tolist()[:7] == [2] * 7


def test_confusion_and_recall_by_intensity(hand_made):
    cm, names = judge_confusion(hand_made)
    assert cm.sum() == len(hand_made) and names[:3] == ["neutral", "happy", "sad"]  # canonical order
    assert cm[names.index("sad"), names.index("neutral")] == 2 and cm[names.index("happy"), names.index("happy")] == 3
    curve = recall_by_intensity(hand_made)
    happy = curve[curve["class"] == "happy"].set_index("bin")
    assert happy.loc["0.7–1.0", "n"] == 3 and happy.loc["0.7–1.0", "recall"] == pytest.approx(2 / 3)
    assert happy.loc["0.0–0.3", "recall"] == 1.0 and "0.3–0.5" not in happy.index  # no face there: no point
    assert list(dict.fromkeys(curve["class"])) == ["happy", "sad", "fear", "anger"]  # canonical order
    row = pd.Series({c: 0.0 for c in PROB_COLUMNS} | {"p_anger": 0.6, "p_neutral": 0.3, "p_sad": 0.1})
    assert top_k(row) == "anger 0.60, neutral 0.30"


def test_judged_faces_are_the_judged_ones():
    df = judge_synfer("clean", n_per_class=1, seed=3, size=64, progress=False)
    faces = judged_faces(df, [0, 6])
    ds = SynFER("clean", split="test", n=10_000, seed=3, image_size=64, classes=CLASSES_7,
                class_balance="uniform", with_relevance=False)
    assert len(faces) == 2 and faces[0].shape == (3, 64, 64)
    assert (faces[1] == ds[int(df["index"].iloc[6])]["image"]).all()


def _table(apex: dict[str, float], mean: float, mean_apex: float, confused: str = "neutral") -> pd.DataFrame:
    rows = {c: {"recall": r, "recall_apex": r, "confused_with": confused} for c, r in apex.items()}
    rows["mean"] = {"recall": mean, "recall_apex": mean_apex, "confused_with": None}
    return pd.DataFrame.from_dict(rows, orient="index")


def test_targets_and_text_on_known_tables():
    from fer.experiments.realism import TARGETS, realism_text, targets_met

    weak = _table({"neutral": 0.95, "happy": 0.8, "sad": 0.1, "fear": 0.05}, mean=0.4, mean_apex=0.5)
    met = targets_met(weak)
    assert list(met.index) == ["apex_each", "apex_mean", "clean_mean"]  # no wild table: no wild target
    assert met.loc["apex_each", "value"] == pytest.approx(0.05) and not met["met"].any()
    text = realism_text(weak)
    assert "reads neutral and happy as intended at least 60%" in text
    assert "sad (10%, most often read as neutral) and fear (5%, most often read as neutral) fall short" in text
    assert text.endswith("None of SynFER's targets is met yet: every class at least 60% at the apex, "
                         "a mean of 80% at the apex and 65% over all intensities.")
    strong = _table({"neutral": 0.95, "happy": 0.9, "sad": 0.7}, mean=0.7, mean_apex=0.85)
    wild = _table({"neutral": 0.5}, mean=0.5, mean_apex=0.5)
    met = targets_met(strong, wild)
    assert met["met"].tolist() == [True, True, True, False]
    assert met.loc["wild_mean", "target"] == TARGETS["wild_mean"]
    text = realism_text(strong, wild)
    assert "fall short" not in text and "falls short" not in text
    assert text.endswith("55% on wild is not.")


def test_synfer_reads_as_real_on_a_fixed_seed_set():
    """The FER judge on 60 class-balanced `clean` and `wild` test faces per class (seed 0): what
    SynFER reaches, so that a drawing change that makes the expressions read less like real
    ones fails here. Measured at GENERATOR_VERSION 4 (clean: mean 0.51, apex 0.55; neutral,
    happy and surprise at least 0.82 at the apex, anger 0.65, sad 0.24, disgust 0.26; wild mean
    0.42); the floors sit a few faces below. Anger's floor is lower than the other three's: on
    these 46 apex faces it read 0.72 under version 3's skin texture and 0.65 under version 4's,
    a new draw of the same texture (on 200 faces a class of seed 3: 0.58 and 0.59). SynFER's own
    targets (``TARGETS``) are higher and not all met yet."""
    from fer.data.synfer import GENERATOR_VERSION

    clean = realism_table(judge_synfer("clean", n_per_class=60, seed=0, progress=False))
    wild = realism_table(judge_synfer("wild", n_per_class=60, seed=0, progress=False))
    report = f"GENERATOR_VERSION {GENERATOR_VERSION}\n{clean}\nwild mean {wild.loc['mean', 'recall']:.3f}"
    for name in ("neutral", "happy", "surprise"):
        assert clean.loc[name, "recall_apex"] >= 0.65, report
    assert clean.loc["anger", "recall_apex"] >= 0.55, report
    for name in ("sad", "disgust"):
        assert clean.loc[name, "recall_apex"] >= 0.15, report
    assert clean.loc["mean", "recall_apex"] >= 0.51, report
    assert clean.loc["mean", "recall"] >= 0.47, report
    assert wild.loc["mean", "recall"] >= 0.37, report
