"""fer.experiments.probes: faces drawn for trained models, one nuisance at a time, and the
SynFER profiles' pose subsets of the MSA-Net chapter."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fer.experiments import claims
from fer.experiments import probes as P
from fer.train import TrainConfig


def probe_faces_for(chapter: str) -> P.Probe:
    import importlib

    from fer.experiments import compare as K

    return K.probe_for(chapter, importlib.import_module(f"fer.experiments.{chapter}").Setup())


def test_yaw_levels_turn_every_face_by_that_angle():
    from fer.data import SynFER

    for level in (0.0, 40.0):
        ds = SynFER("wild", "test", n=12, seed=3, **P.yaw_overrides(level))
        yaws = [abs(ds.describe(i)["yaw"]) for i in range(len(ds))]
        assert yaws == pytest.approx([level] * 12)
        assert all(ds.describe(i)["occluder"] == "none" for i in range(len(ds)))


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).any(dim=1)


def test_occluders_grow_in_place_and_stay_grey_on_grey_faces():
    pr = probe_faces_for("cbam_vgg")
    t = P.probe_faces(pr, 6, occluder_prob=0.0).tensors
    img, lm = t["image"], t["landmarks"]
    assert torch.equal(P.occlude(img, lm, side=0.0, seed=1), img)
    small, big = (P.occlude(img, lm, side=s, seed=1) for s in (0.2, 0.5))
    ds, db = _changed(small, img), _changed(big, img)
    assert (ds & ~db).sum() == 0 and db.sum() > ds.sum() > 0  # same centre: the big patch covers the small one
    assert (big[:, 0] == big[:, 1]).all() and (big[:, 1] == big[:, 2]).all()  # grey stays grey
    assert torch.equal(P.occlude(img, lm, side=0.5, seed=1), big)  # deterministic


def test_mask_coverage_keeps_the_lowest_share_of_the_pasted_mask():
    from fer.data.masks import paste_face_mask

    pr = probe_faces_for("msanet")
    t = P.probe_faces(pr, 4, occluder_prob=0.0).tensors
    img, lm = t["image"], t["landmarks"]
    assert torch.equal(P.cover_with_mask(img, lm, coverage=0.0, seed=2), img)
    cover = {c: _changed(P.cover_with_mask(img, lm, coverage=c, seed=2), img).sum(dim=(1, 2)) for c in (0.5, 0.75, 1.0)}
    assert ((0 < cover[0.5]) & (cover[0.5] < cover[0.75]) & (cover[0.75] <= cover[1.0])).all()
    full = P.cover_with_mask(img, lm, coverage=1.0, seed=2)
    want, _ = paste_face_mask(img[0], lm[0], "surgical", "white", np.random.default_rng([2, 0]))
    assert torch.equal(full[0], want)
    half = _changed(P.cover_with_mask(img, lm, coverage=0.5, seed=2), img)[0]
    rows = torch.nonzero(half.any(dim=1)).flatten()
    whole = torch.nonzero(_changed(full, img)[0].any(dim=1)).flatten()
    assert rows.min() > whole.min() and rows.max() <= whole.max()  # the top of the mask is cut, not the bottom
    with pytest.raises(ValueError, match="coverage"):
        P.cover_with_mask(img, lm, coverage=1.5, seed=2)


def test_lower_resolution_removes_detail_and_keeps_flat_faces():
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 255).to(torch.uint8)
    img = checker.expand(2, 3, 16, 16).clone()
    assert torch.equal(P.lower_resolution(img, scale=1.0), img)
    low = P.lower_resolution(img, scale=0.5)
    assert low.shape == img.shape and low.dtype == torch.uint8
    assert int(low.max()) - int(low.min()) <= 1  # the checkerboard averages out
    flat = torch.full((1, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(P.lower_resolution(flat, scale=0.25), flat)


class _Constant(nn.Module):
    """Always class ``k``."""

    def __init__(self, k: int, classes: int = 7) -> None:
        super().__init__()
        self.fc = nn.Linear(3, classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.bias[k] = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def test_pose_subsets_turn_their_faces_by_their_yaws():
    probe = P.Probe("msanet", "wild", 32, None, 5)
    x, y, lm = P.turned_faces(probe, "pose45", 8)
    assert x.shape == (8, 3, 32, 32) and len(y) == len(lm) == 8
    from fer.data import SynFER

    for k, level in enumerate(P.POSE_LEVELS["pose45"]):  # each share: its own faces at its yaw
        ds = SynFER("wild", "test", n=2, seed=5 + 100 * k + P.PROBE_SEED_OFFSET, image_size=32,
                    class_balance="uniform", with_relevance=False, **P.yaw_overrides(level))
        assert [abs(ds.describe(i)["yaw"]) for i in range(2)] == pytest.approx([level] * 2)
        assert torch.equal(ds[0]["image"], x[2 * k])
    assert min(P.POSE_LEVELS["pose30"]) == 30 and min(P.POSE_LEVELS["pose45"]) == 45
    with pytest.raises(ValueError, match="pose subset"):
        P.turned_faces(probe, "pose90", 4)


def test_msanet_pose_scores_the_raf_like_runs_and_replaces_the_pose_columns():
    def run(k: int, seed: int) -> SimpleNamespace:
        return SimpleNamespace(model=_Constant(k), run=SimpleNamespace(config=TrainConfig(seed=seed)))

    results = {("baseline", "raf", 0): run(0, 0), ("as", "raf", 0): run(1, 0), ("as", "affectnet", 0): run(2, 0)}
    setup = SimpleNamespace(input_size=32, data_seed=0)
    pose = P.msanet_pose(results, setup, 8)
    assert sorted(set(zip(pose["row"], pose["column"]))) == [("as", "pose30"), ("as", "pose45"),
                                                            ("baseline", "pose30"), ("baseline", "pose45")]
    _, y, _ = P.turned_faces(P.Probe("msanet", "wild", 32, None, 0), "pose30", 8)
    base = pose[(pose["row"] == "baseline") & (pose["column"] == "pose30")].iloc[0]
    assert base["accuracy"] == pytest.approx(100 * float((y == 0).float().mean())) and base["n"] == 8
    frame = pd.DataFrame([{"row": "as", "column": c, "seed": 0, "accuracy": 1.0, "mean_class_accuracy": 1.0, "n": 3}
                          for c in ("raf", "affectnet", "pose30", "pose45")])
    both = P.with_pose(frame, pose)
    assert (both[both["column"] == "raf"]["n"] == 3).all() and (both[both["column"] == "pose45"]["n"] == 8).all()
    assert len(both) == 2 + len(pose)
    # the claims say what the pose faces are
    rows = claims.msanet_claims(both.assign(accuracy=1.0), pose_data=claims.MSANET_POSE_DATA["synfer"])
    assert any("|yaw| >= 45 (SynFER wild, turned)" in r["claim"] for r in rows)
    assert "AffectNet" in P.msanet_pose_text(False, 8) and "turned" in P.msanet_pose_text(True, 280)


def test_pose_labels_name_ours_in_the_synfer_profiles():
    t = pd.DataFrame({"column": ["RAF-DB", "Pose-AffectNet >= 45°"]})
    assert P.pose_labels(t, False).equals(t)
    assert list(P.pose_labels(t, True)["column"]) == [
        "RAF-DB", "|yaw| >= 45° (paper: Pose-AffectNet; ours: SynFER wild, turned)"]
