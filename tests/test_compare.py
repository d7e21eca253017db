"""fer.experiments.compare: the five papers' pairs side by side (issue 18, part 2)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fer.experiments import claims
from fer.experiments import compare as K
from fer.experiments import probes as P


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


# --------------------------------------------------------------------------- probes: where models look, robustness


def probe_faces_for(chapter: str) -> P.Probe:
    import importlib

    return K.probe_for(chapter, importlib.import_module(f"fer.experiments.{chapter}").Setup())


def test_each_pair_is_probed_on_its_chapters_test_variant():
    probes = {p.chapter: probe_faces_for(p.chapter) for p in K.PAIRS}
    assert {ch: pr.variant for ch, pr in probes.items()} == {
        "cbam_vgg": "fer2013", "manet": "wild", "mapnet": "wild", "msanet": "wild", "masked": "masked"}
    assert probes["cbam_vgg"].image_size == 48 and probes["masked"].classes == ("anger", "happy", "neutral", "surprise")
    from fer.experiments import msanet

    assert probes["msanet"].image_size == msanet.Setup().input_size
    faces = P.probe_faces(probes["masked"], 8, relevance=True, occluder_prob=0.0)
    assert set(faces.tensors) == {"image", "label", "landmarks", "relevance"}
    assert int(faces.tensors["label"].max()) < 4
    # its own seed: not the chapter's test faces
    other = P.probe_faces(P.Probe("masked", "masked", 64, probes["masked"].classes, probes["masked"].seed - 4000), 8)
    assert not torch.equal(other.tensors["image"], faces.tensors["image"])


class _Constant(nn.Module):
    """Always class ``k``; a conv layer for Grad-CAM."""

    def __init__(self, k: int, classes: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.bias[k] = 10.0

    @property
    def cam_layer(self) -> nn.Module:
        return self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def test_robustness_and_localisation_frames_score_every_model_seed_and_level():
    from fer.train import TrainConfig

    probe = P.Probe("msanet", "wild", 32, None, 0)
    models = {"baseline": [(s, _Constant(0), TrainConfig(seed=s)) for s in (0, 1)],
              "proposed": [(s, _Constant(1), TrainConfig(seed=s)) for s in (0, 1)]}
    pairs = {"msanet": K.TrainedPair("msanet", probe, models)}
    sweeps = {"|yaw| (degrees)": (0.0, 40.0), "resolution (% of the side)": (100.0, 50.0)}
    rob = K.robustness_frame(pairs, n=14, sweeps=sweeps, progress=False)
    assert len(rob) == 2 * 2 * 2 * 2  # nuisances x levels x roles x seeds
    y = K.sweep_faces(probe, "|yaw| (degrees)", (40.0,), 14)[40.0][1]
    got = rob[(rob["level"] == 40.0) & (rob["role"] == "proposed")]["accuracy"]
    assert got.tolist() == pytest.approx([100 * float((y == 1).float().mean())] * 2)
    gaps = K.robustness_gaps(rob)
    assert list(gaps["nuisance"]) == list(sweeps) and (gaps["seeds"] == 2).all()
    res = gaps.set_index("nuisance").loc["resolution (% of the side)"]
    assert (res["easiest"], res["hardest"]) == (100.0, 50.0)  # resolution is hardest at its smallest level
    assert (gaps["verdict"] == "inconclusive").all()  # two seeds cannot carry a verdict
    with pytest.raises(ValueError, match="unknown nuisance"):
        K.sweep_faces(probe, "rain", (1.0,), 4)
    loc = K.localisation_frame(pairs, n=7, progress=False)
    assert list(loc["map"]) == ["Grad-CAM", "Grad-CAM"] and (loc["seeds"] == 2).all()
    assert loc["energy (chance)"].between(0, 1).all() and "energy on evidence SE" in loc


def test_robustness_gaps_judge_the_drop_by_the_book_rule():
    import pandas as pd

    rows = []
    for seed, (b0, b1, p0, p1) in enumerate(((60, 40, 62, 58), (61, 42, 63, 57), (59, 40, 61, 58))):
        for role, (easy, hard) in (("baseline", (b0, b1)), ("proposed", (p0, p1))):
            rows += [{"paper": "MAPNet", "role": role, "seed": seed, "nuisance": "occluder side (% of face width)",
                      "level": lv, "accuracy": a} for lv, a in ((0.0, easy), (50.0, hard))]
    g = K.robustness_gaps(pd.DataFrame(rows)).iloc[0]
    want = claims.claim_verdict([58 - 62, 57 - 63, 58 - 61], [40 - 60, 42 - 61, 40 - 59])
    assert g["proposed loses less by"] == pytest.approx(want.gain) and g["verdict"] == want.verdict == "holds"
    assert (g["baseline, easiest"], g["proposed, hardest"]) == (pytest.approx(60), pytest.approx(173 / 3))


def test_localisation_text_counts_maps_clear_of_chance():
    import pandas as pd

    loc = pd.DataFrame({"map": ["Grad-CAM", "Grad-CAM", "own: CBAM spatial"],
                        "energy on evidence": [0.30, 0.16, 0.40], "energy on evidence SE": [0.01, 0.01, np.nan],
                        "energy (chance)": [0.15, 0.15, 0.15]})
    assert K.beats_chance(loc).tolist() == [True, False, False]  # no SE (one seed): not shown
    assert K.localisation_text(loc) == ("Grad-CAM does for 1 of the 2 models; the models' own attention maps, "
                                        "for 0 of 1")
