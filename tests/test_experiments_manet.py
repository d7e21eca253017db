"""fer.experiments.manet: the MANet chapter's protocol, data and runs (smoke scale, temporary runs folder)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer.experiments import manet as M

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_numbers():
    rows = {r.key: r for r in M.TABLE3}
    assert (rows["ours"].pretrained, rows["ours"].scratch) == (85.69, 75.59)
    assert (rows["se"].pretrained, rows["se"].scratch) == (83.28, 73.27)
    assert (rows["vgg"].pretrained, rows["vgg"].scratch) == (83.89, 73.63)
    assert [r.pretrained for r in M.TABLE5] == [96.28, 93.11, 92.27]
    t4 = np.array(M.TABLE4)
    assert t4.shape == (7, 7) and np.allclose(t4.sum(1), 100, atol=0.1)
    assert np.diag(t4).tolist() == [85.11, 58.11, 60.62, 94.60, 82.85, 75.93, 83.68]
    t6 = np.array(M.TABLE6)
    assert np.diag(t6).tolist() == [89.57, 88.33, 100.0, 84.17, 100.0, 95.0, 98.33]
    assert sorted(M.TABLE4_ORDER) == sorted(M.CLASSES_7) and "contempt" in M.TABLE6_ORDER


def test_paper_profile_config_values():
    paper = M.Setup.for_profile("paper", data_root="/data")
    assert (paper.input_size, paper.width, paper.batch_size, paper.lr) == (224, 1.0, 42, 1e-3)
    assert paper.folds == tuple(range(10)) and paper.n_train is None and not paper.synthetic
    cfg = M.train_config(paper, model="manet", n_train=12271, dataset="raf")
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size) == ("sgd", 0.9, 5e-4, 42)
    assert (cfg.schedule, cfg.schedule_unit, cfg.step_size, cfg.gamma, cfg.lr) == ("step", "iteration", 5000, 0.1,
                                                                                  1e-3)
    steps = -(-12271 // 42)
    assert [s.name for s in cfg.stages] == ["rasnet", "ersnet"]
    assert cfg.stages[1].epochs == -(-20000 // steps) and (cfg.stages[1].epochs - 1) * steps < 20000
    assert cfg.stages[0].module == "rasnet" and cfg.stages[0].loss == "mask" and cfg.stages[1].frozen == ["rasnet"]
    assert cfg.input_size == 224 and not cfg.hflip and cfg.shift == 0
    assert cfg.std == pytest.approx((1 / 255,) * 3)  # VGG-Face: mean pixel, std 1 in 0-255 units
    ck = M.train_config(paper, model="manet_vgg16", n_train=883, dataset="ck")
    assert not ck.stages and ck.step_size == 500 and ck.epochs == -(-1000 // -(-883 // 42))
    setups = M.profile_setups()
    assert {"smoke", "paper"} <= set(setups) and setups["smoke"] == M.Setup()
    assert setups["paper"].input_size == 224 and setups["paper"].width == 1.0


def test_setup_validation():
    with pytest.raises(ValueError, match="profile"):
        M.Setup(profile="full")
    with pytest.raises(ValueError, match="folds"):
        M.Setup(folds=(10,))
    with pytest.raises(ValueError, match="folds"):
        M.Setup(folds=(1, 1))
    # no fold: the demo trains no CK+ run (breadth it cuts, book/profiles.yml); the pages say so
    demo = M.profile_setups()["demo"]
    assert demo.folds == () and not M.runs_ck(demo) and M.runs_ck(M.Setup())
    assert M.ck_not_run_text(demo) == ("not measured: the demo profile trains no CK+ fold, to stay within the "
                                       "book's CPU budget (the paper profile runs all 10)")
    s = M.Setup.from_params(profile="demo", seeds=[1, 2], folds=[0, 3], n_show=4)
    assert s.seeds == (1, 2) and s.seed0 == 1 and s.folds == (0, 3)
    assert not M.Setup().batch_norm and not M.Setup.for_profile("paper").batch_norm
    with pytest.raises(ValueError, match="batch_norm"):
        M.Setup.for_profile("paper", batch_norm=True)  # VGG-Face has no batch norm


def test_build_model_batch_norm():
    plain = M.build_model("manet_vgg16", input_size=64, width=0.0625)
    bn = M.build_model("manet", input_size=64, width=0.0625, batch_norm=True)
    assert not plain.batch_norm and bn.batch_norm
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.features) == 13


def test_paper_profile_without_data_names_what_is_missing():
    with pytest.raises(FileNotFoundError, match=r"rafdb.*DATA_ROOT"):
        M.load_raf(M.Setup.for_profile("paper"))
    with pytest.raises(FileNotFoundError, match=r"ckplus.*DATA_ROOT"):
        M.load_ck(M.Setup.for_profile("paper"))


def test_person_independent_folds():
    subjects = ["S010", "S005", "S005", "S100", "S011", "S020", "S010"] + [f"S{i:03d}" for i in range(30, 47)]
    folds = M.ck_folds(subjects, 10)
    ordered = sorted(set(subjects), key=lambda s: int(s[1:]))
    for k, (train, test) in enumerate(folds):
        test_subj = {subjects[i] for i in test}
        assert test_subj == set(ordered[k::10])  # sampling interval 10 over the sorted ids
        assert not test_subj & {subjects[i] for i in train}
        assert len(train) + len(test) == len(subjects)
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(len(subjects)))


def test_masks_and_a_two_stage_run_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    setup = M.Setup(n_train=24, n_test=12, input_size=48, width=0.0625, pretrain_n=16, pretrain_identities=4,
                    raf_iterations=1, raf_step=1)
    data = M.load_raf(setup, progress=False)
    masks = data.train.tensors["masks"]
    assert masks.shape == (24, 8, 3, 3) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks[:, 0] == 1).all()  # the whole image
    first = M.run_model(setup, data, "ours", pretrained=False, progress=False)
    hist = first.history.to_frame()
    assert hist["stage_name"].tolist() == ["rasnet", "ersnet"]
    assert np.isnan(hist["val_accuracy"].iloc[0]) and not np.isnan(hist["val_accuracy"].iloc[1])
    again = M.run_model(setup, data, "ours", pretrained=False, progress=False)
    assert again.cached and not first.cached
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    iou = M.mask_iou(again.model, data.test, again.run.config)
    assert list(iou.index)[0] == "whole" and iou.loc["whole", "ground-truth area"] == 1.0
    q = M.region_weights(again.model, data.test, again.run.config, data.classes)
    assert q.shape[1] == 8 and np.allclose(q.sum(axis=1), 1.0, atol=1e-5)
    gt = M.run_model(setup, data, "ours", pretrained=False, mask_source="gt", progress=False)
    assert len(gt.history) == 1 and gt.run.config.stages == []  # one stage: no RASnet to train
    table = M.table3({("ours", False): [again]}, setup)
    ours_scratch = [r for r in table if r["model"].startswith("Ours") and r["initialisation"] == "from scratch"][0]
    assert ours_scratch["paper"] == 75.59 and ours_scratch["ours"] == pytest.approx(
        100 * again.metrics["test"]["accuracy"])
    for key in ("accuracy", "confusion"):  # the test set, also the per-epoch monitor ("val")
        assert again.metrics["test"][key] == again.metrics["val"][key]


def test_the_face_stand_in_regresses_landmarks_and_loads_into_every_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    setup = M.Setup(input_size=48, width=0.0625, pretrain_n=16, pretrain_identities=4, batch_norm=True)
    face = M.face_pretrain(setup, progress=False)
    assert face.path.name.startswith("manet-smoke-face-pretrain-") and face.run.spec["spec"]["task"] == "landmarks"
    assert face.model.get_classifier().out_features == 136  # 68 landmarks, x and y
    facts = M.face_facts(setup, face)
    assert facts["task"] == "landmarks" and 0 < facts["mean_shape_rmse_px"] < 48 and facts["rmse_px"] > 0
    for name in M.MODELS.values():
        model = M.build_model(name, input_size=48, width=0.0625, weights="synfer-face", face_run=face.path.name,
                              batch_norm=True)
        assert torch.equal(model.features[0].weight, face.model.features[0].weight), name
    with pytest.raises(ValueError, match="pretrain_task.*manet"):
        M.Setup(pretrain_task="age")


def test_reorder_confusion():
    classes = ("a", "b")
    df = M.reorder_confusion([[3, 1], [0, 2]], classes, ("b", "a"))
    assert df.loc["b", "b"] == 100.0 and df.loc["a", "a"] == 75.0 and df.loc["a", "b"] == 25.0


def test_localisation_table_on_maps_with_a_known_answer(monkeypatch):
    """Each model's row carries its own Grad-CAM's scores against each face's own evidence.

    Two faces with disjoint evidence boxes of area share 1/8 and 1/4 (chance: 3/16); the
    Grad-CAM maps are stand-ins whose scores are known by hand.
    """
    from types import SimpleNamespace

    rel = torch.zeros(2, 8, 8)
    rel[0, :2, :4] = 1.0
    rel[1, 4:, 4:] = 1.0
    ds = SimpleNamespace(images=torch.zeros(2, 3, 48, 48, dtype=torch.uint8), labels=torch.tensor([2, 4]),
                         tensors={"relevance": rel})
    heat = {"inside": rel.numpy(), "uniform": np.full((2, 8, 8), 0.3), "outside": 1 - rel.numpy(),
            "swapped": rel.flip(0).numpy(), "3x inside": 1 + 2 * rel.numpy()}
    asked = []

    def gradcam_maps(model, images, config, *, targets=None, method="gradcam"):
        assert images is ds.images and config == "config"
        asked.append(targets)
        return heat[model]

    monkeypatch.setattr(M, "gradcam_maps", gradcam_maps)
    loc = M.localisation_table({k: (k, "config") for k in heat}, ds)
    chance = 3 / 16
    assert loc["model"].tolist() == list(heat)
    # exactly the evidence; uniform = the area share (the peak ties everywhere); entirely outside;
    # the other face's box (maps pair with their own face); 3a / (3a + 1 - a) per face.
    assert loc["energy on evidence"].tolist() == pytest.approx([1.0, chance, 0.0, 0.0, (3 / 10 + 1 / 2) / 2],
                                                               abs=1e-12)
    assert loc["pointing game"].tolist() == pytest.approx([1.0, chance, 0.0, 0.0, 1.0], abs=1e-12)
    assert loc["energy (chance)"].tolist() == pytest.approx([chance] * 5)
    assert loc["pointing (chance)"].tolist() == pytest.approx([chance] * 5)
    assert loc["faces"].tolist() == [2] * 5
    assert asked == [[2, 4]] * 5  # the true classes are explained
