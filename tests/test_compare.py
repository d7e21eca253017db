"""fer.experiments.compare: the five papers' pairs side by side (issue 18, part 2)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fer.experiments import claims
from fer.experiments import compare as K


def fake_run(seed: int, acc: float, mca: float) -> SimpleNamespace:
    return SimpleNamespace(metrics={"test": {"accuracy": acc / 100, "mean_class_accuracy": mca / 100}},
                           run=SimpleNamespace(config=SimpleNamespace(seed=seed)))


def test_pairs_name_each_paper_and_its_numbers():
    assert [p.chapter for p in K.PAIRS] == ["cbam_vgg", "manet", "mapnet", "msanet", "masked"]
    # the papers' own numbers, as printed (CBAM: Figure 7 test; MAPNet: Table 2; masked: Table 3 total)
    cbam = K.pair("cbam_vgg").paper_accuracy
    assert (cbam["proposed"], cbam["baseline"]) == (71.43, 69.67)
    assert K.pair("mapnet").paper_gain == pytest.approx(87.26 - 84.48)
    assert K.pair("msanet").paper_gain == pytest.approx(86.32 - 82.59)
    assert K.pair("manet").paper_gain == pytest.approx(claims.manet_paper_gap("ours", "vgg"))
    assert K.pair("masked").paper_gain == pytest.approx(claims.masked_paper_gain("fecn", "vgg11"))
    assert K.pair("masked").num_classes == 4
    with pytest.raises(ValueError, match="choose from"):
        K.pair("vit")


def test_paper_frame_keeps_raf_db_in_its_own_column():
    f = K.paper_frame()
    raf = f.dropna(subset=["paper: RAF-DB"])
    assert sorted(set(raf["paper"])) == ["MANet", "MAPNet", "MSA-Net"]
    other = f.dropna(subset=["paper: other data"])
    assert sorted(set(other["paper"])) == ["Masked FER", "VGG16 + CBAM"]
    assert set(other["other data"]) == {"FER2013 (PrivateTest)", "RAF-DB with pasted masks (4 classes)"}
    assert f[["paper: RAF-DB", "paper: other data"]].notna().sum(axis=1).eq(1).all()  # never both


def test_accuracy_and_gain_frames_pair_by_seed_and_judge_by_the_book_rule():
    base = [fake_run(s, a, m) for s, a, m in ((0, 50, 40), (1, 52, 41), (2, 51, 45))]
    prop = [fake_run(s, a, m) for s, a, m in ((0, 55, 40), (1, 56, 43), (2, 56, 44))]
    runs = {"mapnet": {"baseline": base, "proposed": prop}}
    acc = K.accuracy_frame(runs, data={"mapnet": "SynFER wild"})
    row = acc.set_index("role").loc["proposed"]
    assert row["accuracy"] == pytest.approx(np.mean([55, 56, 56]))
    assert row["accuracy SE"] == pytest.approx(np.std([55, 56, 56], ddof=1) / np.sqrt(3))
    assert (row["seeds"], row["data"], row["model"]) == (3, "SynFER wild", "MAPNet")
    g = K.gain_frame(runs).iloc[0]
    want = claims.claim_verdict([55, 56, 56], [50, 52, 51])
    assert g["SE, accuracy"] == pytest.approx(want.se)
    assert g["our gain, accuracy"] == pytest.approx(want.gain) and g["verdict, accuracy"] == want.verdict == "holds"
    assert g["our gain, mean per-class"] == pytest.approx(np.mean([0, 2, -1]))
    assert g["verdict, mean per-class"] == "inconclusive"
    assert g["paper gain"] == pytest.approx(K.pair("mapnet").paper_gain)
    runs["mapnet"]["proposed"] = prop[::-1]  # seeds out of order cannot be paired
    with pytest.raises(ValueError, match="same seeds"):
        K.gain_frame(runs)


def test_flops_count_a_known_network():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    x = (torch.randn(4, 3, 16, 16),)
    conv = 2 * 3 * 8 * 9 * 16 * 16
    fc = 2 * 8 * 16 * 16 * 10
    assert K.flops_per_image(model, x) == pytest.approx(conv + fc)
    assert K.parameter_count(model) == 3 * 8 * 9 + 8 * 16 * 16 * 10 + 10
    assert K.latency_ms(model, x, repeats=2) > 0
    with pytest.raises(ValueError, match="repeats"):
        K.latency_ms(model, x, repeats=0)


def test_paper_scale_models_and_the_cost_frame():
    # the paper-scale builders: full-width VGG16 + CBAM adds the paper's ~66K parameters to row g
    gap, cbam = K.paper_scale_model("cbam_vgg", "baseline"), K.paper_scale_model("cbam_vgg", "proposed")
    assert K.parameter_count(cbam) - K.parameter_count(gap) == 66_130
    assert K.paper_scale_model("masked", "proposed").num_classes == 4
    # MSA-Net at the paper profile's settings: Res2Net's hierarchy in the proposed model only
    full, base = K.paper_scale_model("msanet", "proposed"), K.paper_scale_model("msanet", "baseline")
    assert {b.hierarchy for b in full.modules() if hasattr(b, "hierarchy")} == {"res2net"}
    assert not any(hasattr(b, "hierarchy") for b in base.modules())
    assert K.example_inputs("mapnet", 2, 32)[1].shape == (2, 1, 32, 32)
    assert len(K.example_inputs("msanet", 2, 32)) == 1
    # the cost frame on small models as the page builds it (MAPNet gets its mask)
    from fer.experiments import mapnet as E
    s = E.Setup()
    models = {("mapnet", role, "as trained"): (E.build_model(**E.row_model_kwargs(s, K.pair("mapnet").rows[role])),
                                               K.input_side(s)) for role in K.ROLES}
    f = K.cost_frame(models, batches=(1, 2), repeats=1, progress=False)
    assert list(f["input px"]) == [s.image_size] * 2
    assert {"parameters (M)", "MFLOPs / image", "latency ms, batch 1", "latency ms, batch 2",
            "images / s, largest batch", "device"} <= set(f)
    assert (f["MFLOPs / image"] > 0).all() and (f["latency ms, batch 2"] > 0).all()
    # MAPNet's two parallel trunks cost more than the single-trunk baseline
    by = f.set_index("role")
    assert by.loc["proposed", "MFLOPs / image"] > by.loc["baseline", "MFLOPs / image"]
    with pytest.raises(ValueError, match="neither"):
        K.input_side(SimpleNamespace())


def test_cost_ratios_put_each_proposed_model_over_its_baseline():
    import pandas as pd

    cost = pd.DataFrame([
        {"paper": "MAPNet", "role": "baseline", "scale": "paper scale", "MFLOPs / image": 4.0},
        {"paper": "MAPNet", "role": "proposed", "scale": "paper scale", "MFLOPs / image": 9.0},
        {"paper": "VGG16 + CBAM", "role": "baseline", "scale": "paper scale", "MFLOPs / image": 15.0},
        {"paper": "VGG16 + CBAM", "role": "proposed", "scale": "paper scale", "MFLOPs / image": 15.3},
    ])
    r = K.cost_ratios(cost)
    assert list(r.index) == ["VGG16 + CBAM", "MAPNet"]  # the book's chapter order
    assert r.loc["MAPNet", "paper scale"] == pytest.approx(2.25)
    assert K.ratio_text(r, "paper scale") == "VGG16 + CBAM 1.02×, MAPNet 2.25×"
    with pytest.raises(ValueError, match="no scale"):
        K.ratio_text(r, "as trained")
    with pytest.raises(ValueError, match="both roles"):
        K.cost_ratios(cost[cost["role"] == "baseline"])


def test_a_dry_run_times_one_small_pass(monkeypatch):
    from fer import _dry_run

    monkeypatch.setenv(_dry_run.DRY_RUN_ENV, "1")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    f = K.cost_frame({("msanet", "baseline", "as trained"): (model, 16)}, batches=(1, 32), repeats=9, progress=False)
    assert [c for c in f if c.startswith("latency")] == ["latency ms, batch 1", f"latency ms, batch {_dry_run.BATCH}"]
