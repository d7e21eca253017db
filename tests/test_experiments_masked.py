"""fer.experiments.masked: the masked-FER chapter's numbers, setups, data, runs and attention measures.

Runs use the ``smoke`` scale in a temporary runs folder.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer.experiments import masked as X
from fer.models.masked import Fecn, SharedFecn

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(n_mu_train=16, n_mu_test=8, n_train=32, n_test=8, input_size=64, image_size=64, width=0.0625,
            epochs=1, mcn_epochs=1, batch_size=16, device="cpu")


def test_paper_numbers_and_their_inconsistencies():
    assert X.TABLE1["M-FER-dataset"]["train"] == 4000 and X.TABLE1["MU-dataset"]["test"] == 100
    assert X.TABLE3["fecn"]["total"] == 86.7 and X.CLAIMS["abstract_total"] == 86.8
    # totals are the per-class means (100 test faces per class) to 0.1
    for row in X.TABLE3.values():
        assert np.mean([row[c] for c in X.PAPER_CLASSES]) == pytest.approx(row["total"], abs=0.11)
    # Figure 7's (a) "VGG" diagonal is Table 3's FECN row and (c) "Ours" is VGG11's: captions swapped
    diag = {k: np.diag(X.paper_confusion(k)) * 100 for k in X.FIGURE7}
    assert diag["(a) VGG"] == pytest.approx([X.TABLE3["fecn"][c] for c in X.PAPER_CLASSES])
    assert diag["(c) Ours"] == pytest.approx([X.TABLE3["vgg11"][c] for c in X.PAPER_CLASSES])
    assert diag["(b) ABN"] == pytest.approx([X.TABLE3["abn"][c] for c in X.PAPER_CLASSES])


def test_setup_validation_and_profiles():
    with pytest.raises(ValueError, match="profile"):
        X.Setup(profile="full")
    with pytest.raises(ValueError, match="multiple of 4"):
        X.Setup(n_test=10)
    with pytest.raises(ValueError, match="paper profile"):
        X.Setup(pretrained=True)
    # the SynFER pretraining stands in for ImageNet: not with real data, not beside ImageNet weights
    with pytest.raises(ValueError, match="pretrain_task: null"):
        X.Setup(profile="paper", pretrained=True)
    assert "pretrained on SynFER to regress the 68 landmarks" in X.Setup().scale()
    assert "from scratch" in X.Setup(pretrain_task=None).scale()
    assert "ImageNet VGG11" in X.trunk_text(X.profile_setups()["paper"])
    with pytest.raises(ValueError, match="no pretraining"):
        X.trunk_pretrain(X.Setup(pretrain_task=None))
    s = X.Setup.from_params(profile="demo", seeds=[0, 1, 2], n_per_class=3)
    assert s.seeds == (0, 1, 2) and s.shift_px == 4
    setups = X.profile_setups()
    assert set(setups) == {"smoke", "demo", "paper"}
    paper = setups["paper"]
    assert (paper.input_size, paper.width, paper.batch_norm, paper.head, paper.pretrained) == (224, 1.0, False, "vgg",
                                                                                             True)
    assert (paper.n_mu_train, paper.n_mu_test, paper.n_train, paper.n_test) == (500, 100, 4000, 400)
    assert len(setups["demo"].seeds) >= 3


def test_the_demo_leaves_the_shared_variants_out():
    """The shared-extractor variants are the paper's future work: breadth the demo cuts (book/profiles.yml);
    the pages and the planner follow Setup.shared."""
    from fer.experiments import plan

    setups = X.profile_setups()
    assert not setups["demo"].shared and setups["paper"].shared and X.Setup().shared
    assert X.page_models(setups["demo"], "shared") == X.page_models(setups["demo"], "stage2") == X.TABLE3_MODELS
    assert X.page_models(setups["paper"], "shared") == X.TABLE3_MODELS + X.SHARED_MODELS
    with pytest.raises(ValueError, match="page"):
        X.page_models(X.Setup(), "stage1")
    assert X.shared_not_run_text(setups["demo"]).startswith("The demo profile does not train")
    rows = {r.row for r in plan.plan("demo", chapters=["masked"])}
    assert rows and not rows & set(X.SHARED_MODELS)
    assert set(X.SHARED_MODELS) <= {r.row for r in plan.plan("paper", chapters=["masked"])}


def test_paper_configs_without_training():
    paper = X.profile_setups()["paper"]
    cfg = X.train_config(paper, "fecn", 0)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert cfg.schedule == "multistep" and cfg.milestones == [paper.epochs // 2, 3 * paper.epochs // 4]
    assert cfg.hflip and cfg.shift == 14 and cfg.input_size == 224 and cfg.mean == (0.485, 0.456, 0.406)
    assert cfg.stages[0].frozen == ["mcn"]
    assert X.train_config(paper, "fecn_shared", 0).stages[0].trainable == ["perception"]
    assert X.train_config(paper, "fecn_shared_ft", 0).stages[0].trainable == ["features", "perception"]
    assert X.train_config(paper, "mcn", 0).epochs == paper.mcn_epochs


def test_paper_profile_without_data_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"rafdb.*DATA_ROOT"):
        X.load_data(X.Setup(profile="paper", pretrain_task=None))
    with pytest.raises(FileNotFoundError, match=r"landmarks68-train\.npz.*fer\.data\.landmarks"):
        X.load_data(X.Setup(profile="paper", data_root=str(tmp_path), pretrain_task=None))


def test_attention_measures_on_known_maps():
    maps = np.zeros((4, 2, 2))
    maps[[0, 1], 0, 0] = 1.0  # class 0 looks top-left
    maps[[2, 3], 1, 1] = 1.0  # class 1 bottom-right
    v = X.class_variation(maps, [0, 0, 1, 1])
    assert v["between_class_share"] == pytest.approx(1.0) and v["class_mean_distance"] == pytest.approx(1.0)
    same = X.class_variation(np.ones((4, 2, 2)), [0, 0, 1, 1])
    assert same["between_class_share"] == 0.0 and same["class_mean_distance"] == 0.0
    eyes = np.zeros((2, 4, 4))
    eyes[:, :2] = 1.0
    mask = 1.0 - eyes
    s = X.attention_shares(np.stack([np.ones((4, 4)), eyes[0]]), eyes, mask)
    assert s["eyes"] == pytest.approx(0.75) and s["mask"] == pytest.approx(0.25) and s["eyes_chance"] == 0.5


def test_parameter_table_full_size():
    t = X.parameter_table().set_index("model")["parameters"]
    assert t["VGG11"] == 128_782_724
    assert t["two networks: MCN + FECN"] == t["MCN cut down to its map (Figure 3)"] + t["FECN's own layers"]
    assert t["saved by sharing"] == 4_500_864  # VGG11's conv groups 1-4: one feature extractor


def test_tiny_rows_train_once_then_load_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    setup = X.Setup(**TINY)
    data = X.load_data(setup, progress=False)
    assert (len(data.mu_train), len(data.train), len(data.test)) == (16, 32, 8)
    assert data.test.class_counts == {"neutral": 2, "happy": 2, "surprise": 2, "anger": 2}
    mcn, results = X.run_all(setup, data, models=("abn", "fecn", "fecn_shared"), progress=False)
    assert not mcn.cached and mcn.metrics["test"]["num_samples"] == 8
    fecn = results["fecn"][0].model
    assert isinstance(fecn, Fecn)
    state = mcn.model.state_dict()
    assert torch.equal(fecn.mcn.features[0].weight.cpu(), state["features.0.weight"].cpu())  # frozen MCN kept
    # every model's VGG11 layers start from the one SynFER pretraining; FECN's MCN from the MCN run
    trunk = X.trunk_pretrain(setup, progress=False)
    assert trunk.cached and mcn.run.spec is not None
    pre = trunk.model.state_dict()
    kw = X.model_kwargs(setup)
    for name in ("vgg11", "abn", "mcn"):
        start = X.build_model(name, kwargs=kw, trunk_run=trunk.path.name, num_classes=2 if name == "mcn" else 4)
        assert torch.equal(start.features[0].weight, pre["features.0.weight"]), name
        assert torch.equal(start.perception.convs[0].weight, pre["perception.convs.0.weight"]), name
    start = X.build_model("fecn", kwargs=kw, trunk_run=trunk.path.name, mcn_run=mcn.path.name)
    assert torch.equal(start.features[0].weight, pre["features.0.weight"])
    assert torch.equal(start.mcn.features[0].weight, state["features.0.weight"])
    shared = X.build_model("fecn_shared", kwargs=kw, trunk_run=trunk.path.name, mcn_run=mcn.path.name)
    assert torch.equal(shared.features[0].weight, state["features.0.weight"])  # the shared extractor is the MCN's
    assert "a landmark error of" in X.trunk_text(setup, trunk)
    assert isinstance(results["fecn_shared"][0].model, SharedFecn)
    again = X.run_model(setup, data, "fecn", 0, progress=False)
    assert again.cached and again.metrics == results["fecn"][0].metrics
    table = X.table3({k: results[k] for k in ("abn", "fecn")})
    assert list(table["class"][:5]) == ["angry", "happy", "normal", "surprised", "total"]
    assert table.loc[table["class"] == "total", "paper"].tolist() == [84.2, 86.7]
    cm = X.confusions({"fecn": results["fecn"]})["fecn"]
    assert cm.shape == (4, 4) and cm.sum() == 8 and (cm.sum(1) == 2).all()
    ex = X.explain_set(setup, 1)
    assert ex["masked"].shape == (4, 3, 64, 64) and ex["label"].tolist() == [0, 1, 2, 3]
    assert float(ex["mask"].sum()) > 0 and float(ex["eyes"].sum()) > 0
    assert not torch.equal(ex["masked"], ex["unmasked"])
    maps = X.attention_maps(mcn.model, ex["masked"], mcn.run.config)
    assert maps.shape == (4, 4, 4) and ((maps > 0) & (maps < 1)).all()
    assert np.allclose(X.attention_maps(fecn, ex["masked"], mcn.run.config), maps, atol=1e-5)
