"""fer.experiments.cbam_vgg: the VGG16 + CBAM chapter's protocol, data and runs.

The numbers checked here are the paper's and the architecture's; the runs use the
``smoke`` scale in a temporary runs folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fer.experiments import cbam_vgg as C
from fer.experiments import _common
from fer.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_numbers_are_the_papers():
    assert [r.key for r in C.FIGURE7] == ["a", "b", "c", "d", "e", "f", "g", "cbam"]
    proposed = C.FIGURE7[-1]
    assert (proposed.model, proposed.val, proposed.test) == ("vgg16_cbam", 70.78, 71.43)
    assert sum(C.FIGURE6["train"].values()) == 28_709
    assert sum(C.FIGURE6["val"].values()) == sum(C.FIGURE6["test"].values()) == 3_589
    assert C.KAGGLE_TOP == {"val": 69.76, "test": 71.16}


def test_cbam_adds_the_papers_66k_parameters():
    counts = C.cbam_parameter_check()
    assert counts["cbam"] == 66_130 == counts["cbam_channel"] + counts["cbam_spatial"]
    assert counts["conv_base"] == 14_714_688 and counts["classifier"] == 528_903
    assert abs(counts["cbam"] - counts["claim"]) / counts["claim"] < 0.01
    assert C.cbam_parameter_check(cbam_rd_ratio=1 / 16, cbam_mlp_bias=False, cbam_spatial_norm=True)["cbam"] == 32_788


def test_class_weight_table_is_equation_5():
    df = C.class_weight_table(C.FIGURE6["train"])
    assert df.loc["disgust", "weight (eq. 5)"] == pytest.approx(28_709 / (7 * 436), rel=1e-6)
    assert (df["images"] * df["weight (eq. 5)"]).to_numpy() == pytest.approx([28_709 / 7] * 7, rel=1e-6)


def test_setup_validation_and_profiles_yml():
    with pytest.raises(ValueError, match="profile"):
        C.Setup(profile="full")
    with pytest.raises(ValueError, match="stage_epochs"):
        C.Setup(stage_epochs=(1, 0))
    s = C.Setup.from_params(profile="demo", stage_epochs=[4, 2, 2, 2], rows=["a"], n_show=3)
    assert s.stage_epochs == (4, 2, 2, 2) and s.unfreeze == 3 and s.epochs == 10
    setups = C.profile_setups()
    assert set(setups) == {"smoke", "demo", "paper"}
    paper = setups["paper"]
    assert (paper.input_size, paper.width, paper.unfreeze, paper.lr) == (224, 1.0, 3, 1e-3)
    assert paper.n_train is None and not paper.synthetic and setups["demo"].synthetic
    assert paper.finetune == "staged"  # the paper's protocol where the paper's weights are
    with pytest.raises(ValueError, match="finetune.*profiles.yml"):
        C.Setup(finetune="head")
    with pytest.raises(ValueError, match="pretrain_task"):
        C.Setup(pretrain_task="expressions")
    assert C.Setup().seeds == (0,) and C.Setup(seed=3).seeds == (3,) and C.Setup(seeds=[2, 0]).seeds == (2, 0)
    with pytest.raises(ValueError, match="seeds"):
        C.Setup(seeds=[1, 1])
    assert setups["demo"].seeds == (0, 1, 2)  # 5 seeds decided no more than 3 (profiles.yml)
    assert setups["paper"].seeds == (0, 1, 2)


def test_paper_profile_without_data_names_what_is_missing():
    with pytest.raises(FileNotFoundError, match=r"fer2013\.csv.*DATA_ROOT"):
        C.load_data(C.Setup(profile="paper"))


def test_weights_per_profile():
    smoke, paper = C.Setup(), C.Setup(profile="paper")
    assert C.row_weights("g", smoke) == "synfer-face" and C.row_weights("g", paper) == "vggface"
    assert C.row_weights("b", smoke) is None and C.row_weights("b", paper) == "imagenet"
    assert C.row_weights("a", paper) is None
    assert not C.buildable("c") and C.buildable("cbam")
    with pytest.raises(ValueError, match="VGGFace2"):
        C.run_row(smoke, None, "c")  # refused before any data is touched


def test_protocol_stages_unfreeze_the_last_three_conv_layers():
    s = C.Setup(stage_epochs=(2, 1, 1, 1), lr=1e-3)
    model = C.build_model("vgg16_cbam", input_size=64, width=0.0625)
    cfg = C.train_config(s, model, pretrained=True)
    assert cfg.epochs == 5 and cfg.class_weights == "inverse" and cfg.class_weight_mean == "batch"
    assert cfg.optimizer == "adam" and cfg.input_size == 64 and cfg.hflip
    assert [st.trainable for st in cfg.stages] == [
        ["head", "attn"], ["head", "attn", "features.28"], ["head", "attn", "features.28", "features.26"],
        ["head", "attn", "features.28", "features.26", "features.24"]]
    assert [cfg.stage_lr(st) for st in cfg.stages] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6])
    scratch = C.train_config(s, C.build_model("small_cnn", input_size=64, width=0.0625), pretrained=False)
    assert scratch.stages == [] and scratch.epochs == 5
    inception = C.train_config(s, C.build_model("inception_v3", input_size=64), pretrained=False)
    assert inception.input_size == 75  # raised to the model's minimum
    table = C.schedule_table(s)
    assert table["conv layers trained"].tolist()[-1] == "conv5_3, conv5_2, conv5_1"
    assert table["trainable parameters"].tolist() == [595_033, 2_954_841, 5_314_649, 7_674_457]
    # finetune="all": pre-trained rows train every layer from the first step at lr / 10, as
    # many epochs; rows from scratch are unchanged; the page's schedule is still the paper's
    every = dataclasses.replace(s, finetune="all")
    cfg_all = C.train_config(every, model, pretrained=True)
    assert cfg_all.stages == [] and cfg_all.epochs == 5 and cfg_all.lr == pytest.approx(1e-4)
    assert cfg_all.class_weights == "inverse" and cfg_all.hflip
    assert C.train_config(every, model, pretrained=False).lr == pytest.approx(1e-3)
    assert C.schedule_table(every).equals(table)
    assert "all layers" in every.scale() and "unfreezing" in s.scale()
    assert C.finetune_text(s).startswith("as the paper") and "rate 0.0001 for 5 epochs" in C.finetune_text(every)
    faster = dataclasses.replace(every, finetune_lr=3e-4)
    assert C.train_config(faster, model, pretrained=True).lr == pytest.approx(3e-4) and "0.0003" in faster.scale()
    assert C.train_config(faster, model, pretrained=False).lr == pytest.approx(1e-3)


def test_every_rows_normalisation_is_that_of_the_weights_it_loads(monkeypatch):
    """Issue 15 section 4.1: row (d) once took VGG-Face's mean pixel and 1/255 std for ImageNet
    VGG16 (its probe was built without ``weights=``). No weight file is read here: the loaders
    are stubbed, the pretrained_cfg each builder sets is what is checked."""
    import torchvision

    import fer.models.cbam_vgg as M

    monkeypatch.setattr(_common, "load_vggface", lambda model, *a, **k: None)  # the chapters load it there
    monkeypatch.setattr(M, "_load_vgg_imagenet", lambda model: None)

    def fresh_state(weights, **_):  # a fresh torchvision model of the weights' family
        name = type(weights).__name__[:-len("_Weights")].lower()
        return torchvision.models.get_model(name, **({"init_weights": False} if name == "inception_v3" else {})
                                            ).state_dict()

    monkeypatch.setattr(M, "load_torchvision_state_dict", fresh_state)
    captured = {}
    monkeypatch.setattr(C, "run", lambda name, config, build, *a, **k: captured.setdefault(name, (config, build)))
    paper = dataclasses.replace(C.profile_setups()["paper"], input_size=64)  # full width, smaller heads
    seen = {}
    for row in C.FIGURE7:
        if not C.buildable(row):
            continue
        captured.clear()
        C.run_row(paper, C.ChapterData(None, None, None, "none"), row.key, progress=False)
        (config, build), = captured.values()
        weights = C.row_weights(row, paper)
        if weights is None:  # from scratch: no weights, the chapter's 0.5 / 0.5
            assert (config.mean, config.std) == ((0.5,) * 3, (0.5,) * 3)
            continue
        cfg = build().pretrained_cfg  # the model the run trains, with its weights "loaded"
        assert config.mean == pytest.approx(cfg["mean"]) and config.std == pytest.approx(cfg["std"]), row.key
        seen[row.key] = config.mean
    assert set(seen) == {"b", "d", "e", "f", "g", "cbam"}
    assert seen["d"] == pytest.approx((0.485, 0.456, 0.406))  # ImageNet VGG16, not VGG-Face's mean pixel
    assert seen["g"] == pytest.approx(tuple(m / 255 for m in M.VGGFACE_MEAN))


def test_build_model_scales_and_loads_the_face_stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    small = C.build_model("small_cnn", input_size=64, width=0.125)
    assert [b[0].out_channels for b in small.features] == [4, 8, 16, 32]
    s = C.Setup()
    face = C.face_pretrain(s, progress=False)
    assert face.path.name.startswith("cbam_vgg-smoke-face-pretrain-")
    assert face.run.spec["spec"]["task"] == s.pretrain_task == "landmarks"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in face.model.features)  # folded when loaded
    m = C.build_model("vgg16_gap", input_size=64, width=s.width, weights="synfer-face", face_run=face.path.name)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.features)  # the paper's VGG16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval().features(x), face.model.eval().features(x), rtol=1e-4, atol=1e-5)
    # with batch_norm the stand-in's conv base loads as trained, norms and statistics included
    bn = C.build_model("vgg16_cbam", input_size=64, width=s.width, weights="synfer-face", face_run=face.path.name,
                       batch_norm=True)
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in bn.features) == 13
    for (k, v), (k2, v2) in zip(bn.features.state_dict().items(), face.model.features.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    for weights in ("vggface", "imagenet"):  # real VGG16 weights have no batch norm
        with pytest.raises(ValueError, match="no batch norm"):
            C.build_model("vgg16_gap", input_size=64, width=s.width, weights=weights, batch_norm=True, load=False)
    facts = C.face_facts(s, face)
    assert (facts["task"], facts["faces"], facts["epochs"]) == ("landmarks", s.pretrain_n, s.pretrain_epochs)
    assert 0 < facts["rmse_px"] and 0 < facts["mean_shape_rmse_px"] < s.input_size
    with pytest.raises(ValueError, match="face_run"):
        C.build_model("vgg16_gap", input_size=64, width=s.width, weights="synfer-face")


def test_a_row_trains_once_then_loads_and_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    s = C.Setup(n_train=32, n_val=16, n_test=16, stage_epochs=(1, 1), pretrain_n=32)
    data = C.load_data(s, progress=False)
    assert len(data.train) == 32 and data.train.images.shape[1:] == (3, 48, 48)
    first = C.run_row(s, data, "cbam", progress=False)
    again = C.run_row(s, data, "cbam", progress=False)
    assert not first.cached and again.cached and again.metrics == first.metrics
    assert [h["stage_name"] for h in first.history] == ["head", "unfreeze-1"]
    table = C.figure7_table({"cbam": first}, s)
    assert len(table) == 2 * len(C.FIGURE7)
    assert [r["ours"] is None for r in table].count(False) == 2
    ex = C.explain_set(s, 4)
    cfg = first.run.config
    assert isinstance(cfg, TrainConfig)
    maps = C.gradcam_maps(first.model, ex.images, cfg, targets=ex.labels.tolist())
    assert maps.shape == (4, 64, 64)
    spatial = C.cbam_spatial_maps(first.model, ex.images, cfg)
    assert spatial.shape == (4, 2, 2) and ((spatial >= 0) & (spatial <= 1)).all()
    loc = C.localisation_table({"cbam": (first.model, cfg)}, ex)
    assert loc["map"].tolist() == ["Grad-CAM", "CBAM spatial"]
    assert ((loc["energy on evidence"] >= 0) & (loc["energy on evidence"] <= 1)).all()
    rel = ex.tensors["relevance"].double()  # chance needs no model: the evidence's mean and area share
    assert loc["energy (chance)"].tolist() == pytest.approx([float(rel.mean())] * len(loc))
    assert loc["pointing (chance)"].tolist() == pytest.approx([float((rel >= 0.5).double().mean())] * len(loc))
    assert loc["faces"].tolist() == [4] * len(loc)


def test_run_seeds_pairs_rows_per_seed_from_one_start(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    s = C.Setup(n_train=32, n_val=8, n_test=8, stage_epochs=(1,), pretrain_n=16, pretrain_identities=4,
                seeds=(0, 1), finetune="all")
    data = C.load_data(s, progress=False)
    runs = C.run_seeds(s, data, ("g", "cbam"), progress=False)
    assert [r.run.config.seed for r in runs["cbam"]] == [0, 1]
    names = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir())
    assert names == ["cbam_vgg-smoke-cbam-vgg16_cbam", "cbam_vgg-smoke-cbam-vgg16_cbam-s1",
                     "cbam_vgg-smoke-face-pretrain", "cbam_vgg-smoke-g-vgg16_gap", "cbam_vgg-smoke-g-vgg16_gap-s1"]
    # one pre-trained start for every seed; the seed-0 run is the one the other pages train
    assert {r.run.spec["spec"]["face_run"] for rs in runs.values() for r in rs} == {
        next(p.name for p in tmp_path.iterdir() if "face-pretrain" in p.name)}
    assert C.run_row(s, data, "g", progress=False).cached
    assert runs["g"][0].history.to_frame()["lr"].iloc[0] == pytest.approx(s.lr / 10)  # all layers, lr / 10 by default
    acc = C.accuracy_by_seed(runs, "test")
    assert set(acc) == {"g", "cbam"} and set(acc["g"]) == {0, 1}
    assert acc["g"][1] == pytest.approx(100 * runs["g"][1].metrics["test"]["accuracy"])


def test_localisation_table_on_maps_with_a_known_answer(monkeypatch):
    """Each (model, map) row carries its own map's scores against its own face's evidence.

    Two faces with disjoint evidence boxes of area share 1/8 and 1/4 (chance: 3/16); the maps
    are stand-ins for Grad-CAM and CBAM's spatial map whose scores are known by hand.
    """
    from types import SimpleNamespace

    rel = torch.zeros(2, 8, 8)
    rel[0, :2, :4] = 1.0
    rel[1, 4:, 4:] = 1.0
    ds = SimpleNamespace(images=torch.zeros(2, 3, 48, 48, dtype=torch.uint8), labels=torch.tensor([3, 5]),
                         tensors={"relevance": rel})
    cbam = SimpleNamespace(heat=rel.numpy(), attn=SimpleNamespace(spatial_gate=None))  # Grad-CAM on the evidence
    plain = SimpleNamespace(heat=1 + 2 * rel.numpy())  # no CBAM; 3x the heat on the evidence
    asked = []

    def gradcam_maps(model, images, config, *, targets=None, method="gradcam"):
        assert images is ds.images and config == "config"
        asked.append(targets)
        return model.heat

    monkeypatch.setattr(C, "gradcam_maps", gradcam_maps)
    monkeypatch.setattr(C, "cbam_spatial_maps", lambda model, images, config: np.full((2, 8, 8), 0.3))  # uniform
    loc = C.localisation_table({"cbam": (cbam, "config"), "plain": (plain, "config")}, ds)
    chance = 3 / 16
    expected = [  # model, map, energy share, pointing game
        ("cbam", "Grad-CAM", 1.0, 1.0),
        ("cbam", "CBAM spatial", chance, chance),  # uniform: the area share, peak ties everywhere
        ("plain", "Grad-CAM", (3 / 10 + 1 / 2) / 2, 1.0),  # 3a / (3a + 1 - a) per face
    ]
    assert loc[["model", "map"]].values.tolist() == [[m, k] for m, k, _, _ in expected]
    assert loc["energy on evidence"].tolist() == pytest.approx([e for *_, e, _ in expected], abs=1e-12)
    assert loc["pointing game"].tolist() == pytest.approx([p for *_, p in expected], abs=1e-12)
    assert loc["energy (chance)"].tolist() == pytest.approx([chance] * 3)
    assert loc["pointing (chance)"].tolist() == pytest.approx([chance] * 3)
    assert loc["faces"].tolist() == [2, 2, 2]
    assert asked == [[3, 5], [3, 5]]  # the true classes are explained
    asked.clear()
    C.localisation_table({"plain": (plain, "config")}, ds, targets="predicted")
    assert asked == [None]


def test_batch_norm_reaches_every_vgg16_row_and_its_record(monkeypatch):
    """``Setup.batch_norm`` builds each VGG16 row with its norms, names it in the run's spec
    and in the recorded builder (what ``fer.predict`` rebuilds), and leaves other rows and
    runs without it untouched; the paper profile refuses it."""
    captured = {}
    monkeypatch.setattr(C, "run", lambda name, config, build, *a, spec=None, **k: captured.setdefault(
        name, (build, spec)))
    monkeypatch.setattr(C, "face_pretrain", lambda *a, **k: pytest.fail("the face run is passed in"))
    face = SimpleNamespace(path=Path("/runs/cbam_vgg-smoke-face-pretrain-0123"))
    data = C.ChapterData(None, None, None, "none")
    for batch_norm in (False, True):
        s = C.Setup(batch_norm=batch_norm, finetune="all")
        for row in ("a", "d", "g", "cbam"):
            captured.clear()
            C.run_row(s, data, row, face=face, progress=False)
            (build, spec), = captured.values()
            vgg = row != "a"
            assert spec.get("batch_norm", False) == (batch_norm and vgg), (row, spec)
            assert build.keywords.get("batch_norm", False) == (batch_norm and vgg), row
            if row == "d":  # from scratch in the SynFER profiles: no file to read
                model = build()
                assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.features) == batch_norm
    assert "batch norm after each conv" in C.Setup(batch_norm=True).scale()
    assert "batch norm" not in C.Setup().scale()
    assert "keeps" in C.norm_text(C.Setup(batch_norm=True)) and "folded" in C.norm_text(C.Setup())
    with pytest.raises(ValueError, match="profiles.yml"):
        C.Setup(profile="paper", batch_norm=True)


def test_rows_text_names_what_the_paper_profile_adds():
    assert C.rows_text(["g"]).startswith("This profile trains row (g); rows (a), (b), (d), (e), (f) are left out")
    assert "rows (b), (e) are left out" in C.rows_text(["a", "d", "f", "g"])
    assert (C.rows_text(["a", "b", "d", "e", "f", "g"])
            == "This profile trains every buildable row: (a), (b), (d), (e), (f), (g).")
    with pytest.raises(ValueError, match="profiles.yml"):
        C.rows_text(["z"])
