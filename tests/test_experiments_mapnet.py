"""fer.experiments.mapnet: the MAPNet chapter's numbers, protocol, data with masks and cached runs."""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from fer.experiments import mapnet as E
from fer.experiments._common import stratified_indices
from fer.experiments.pretraining import backbone_facts
from fer.losses import MapNetLoss

import fixtures_datasets as fx  # tests/ helper module (pytest puts tests/ on sys.path)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_numbers_are_the_papers():
    t1 = {r[0]: r[1:] for r in E.TABLE1}
    assert t1["MAPNet"] == (87.26, 62.91, 71.50)
    assert t1["OADN"] == (87.16, 61.89, 71.17)
    assert len(E.TABLE1) == 14
    assert E.TABLE2["baseline"] == (84.48, 61.77, 64.25) and E.TABLE2["wcl"] == (87.26, 64.09, 71.05)
    # the text's increments follow from Table 2
    assert E.TABLE2["ps"][0] - E.TABLE2["baseline"][0] == pytest.approx(0.43)
    assert E.TABLE2["mam"][2] - E.TABLE2["ps"][2] == pytest.approx(3.50)
    assert E.PAPER_DATA["RAF-DB"] == (12271, 3068)


def test_paper_profile_setup_and_config():
    from fer.profiles import chapter_entry

    p = E.PAPER_PROTOCOL
    # Section 3.1's values (and our 12 epochs), each stated by book/profiles.yml itself: a value the
    # entry leaves out would fall back to the smoke default, which for several of them is the same.
    stated = {k: p[k] for k in ("optimizer", "lr", "lr_step", "momentum", "weight_decay", "batch_size", "alpha",
                                "blocks")}
    stated.update(image_size=p["input_size"], backbone="resnet50", width=1.0, last_stride=2, stem="resnet",
                  pretrained=True, epochs=12)
    entry = chapter_entry("mapnet", "paper")
    assert entry is not None, "book/profiles.yml has no paper entry for the mapnet chapter"
    assert not set(stated) - set(entry), f"the paper entry leaves out {sorted(set(stated) - set(entry))}"
    assert {k: entry[k] for k in stated} == stated
    setups = E.profile_setups()
    assert set(setups) == {"smoke", "demo", "paper"}
    paper = setups["paper"]
    assert paper == E.Setup.from_params(profile="paper", **entry)
    assert paper.profile == "paper" and {k: getattr(paper, k) for k in stated} == stated
    cfg = E.train_config(paper)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", p["lr"], p["momentum"], p["weight_decay"])
    assert (cfg.schedule, cfg.step_size, cfg.gamma, cfg.batch_size) == ("step", 4, 0.1, 128)
    assert cfg.hflip and cfg.shift == 0 and cfg.augment_keys == ["mask"]
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406))
    kw = E.row_model_kwargs(paper, "wcl")
    assert (kw["blocks"], kw["alpha"], kw["parallel"], kw["attention"]) == (4, 0.8, True, True)
    with pytest.raises(FileNotFoundError, match=r"rafdb/.*DATA_ROOT"):
        E.load_data(paper)


def test_setup_validation():
    with pytest.raises(ValueError, match="profile"):
        E.Setup(profile="full")
    with pytest.raises(ValueError, match="paper profile"):
        E.Setup(pretrained=True)
    with pytest.raises(ValueError, match="optimizer"):
        E.Setup(optimizer="rmsprop")
    s = E.Setup.from_params(profile="demo", seeds=[0, 1, 2], alpha_values=[0.4, 0.8], n_show=3)
    assert s.seeds == (0, 1, 2) and s.alpha_values == (0.4, 0.8) and s.seed == 0
    # the SynFER trunk pretraining stands in for ImageNet: not with real data, not beside ImageNet weights
    with pytest.raises(ValueError, match="pretrain_task: null"):
        E.Setup(profile="paper", pretrained=True)
    with pytest.raises(ValueError, match="pretrain_task must be one of"):
        E.Setup(pretrain_task="imagenet")
    assert "pretrained on SynFER to regress the 68 landmarks" in E.Setup().model_scale()
    assert E.Setup(pretrain_task=None).model_scale().endswith("(from scratch)")
    assert E.profile_setups()["paper"].model_scale().endswith("(ImageNet weights)")
    with pytest.raises(ValueError, match="no pretraining"):
        E.trunk_pretrain(E.Setup(pretrain_task=None))


def test_a_profile_may_run_no_sweep():
    """Figure 6's sweeps are breadth the demo cuts (book/profiles.yml): no sweep runs are planned,
    and the page says what the paper profile sweeps instead of reporting an optimum."""
    from fer.experiments import plan

    setups = E.profile_setups()
    demo, paper = setups["demo"], setups["paper"]
    assert not E.runs_sweeps(demo) and E.runs_sweeps(paper) and E.runs_sweeps(E.Setup())
    text = E.sweep_not_run_text(demo, paper)
    assert text.startswith("not measured: the demo profile runs no sweep")
    assert "K over 1, 2, 3, 4, 5, 6" in text and "alpha over 0.2, 0.4, 0.6, 0.8, 1, 1.2" in text
    assert E.sweep_not_run_text(demo) == text  # the paper profile's values by default
    names = {r.name for r in plan.plan("demo", chapters=["mapnet"])}
    swept = {n for n in names if "-wcl-" in n and "-wcl-k4-a0.8" not in n}  # the full model off its K, alpha
    assert names and not swept
    assert any("-wcl-k1-" in r.name for r in plan.plan("paper", chapters=["mapnet"]))


def test_ablation_rows_switch_the_model_and_the_loss():
    s = E.Setup()
    base, ps, mam, wcl = (E.row_model_kwargs(s, r) for r in E.ROWS)
    assert (base["parallel"], base["blocks"], base["attention"]) == (False, 1, False)
    assert (ps["parallel"], ps["blocks"], ps["attention"]) == (True, 4, False)
    assert mam["attention"] and wcl == mam
    counts = {"neutral": 10, "happy": 40, "sad": 10, "surprise": 10, "fear": 5, "disgust": 5, "anger": 10}
    assert E.make_loss(s, "mam", counts).ce.weight is None
    loss = E.make_loss(s, "wcl", counts)
    assert isinstance(loss, MapNetLoss)
    assert loss.ce.weight[4] == pytest.approx((90 / 7 / 5) ** 0.5, rel=1e-6)  # gamma = 2
    assert E.row_model_kwargs(s, "wcl", blocks=2, alpha=0.4)["blocks"] == 2
    with pytest.raises(ValueError, match="unknown ablation row"):
        E.row_model_kwargs(s, "cbam")


def test_class_weight_table_on_known_counts():
    df = E.class_weight_table({"a": 100, "b": 400}, gammas=(1.0, 2.0))
    assert df.loc["a", "omega, gamma=1"] == pytest.approx(2.5) and df.loc["b", "omega, gamma=1"] == pytest.approx(0.625)
    assert df.loc["a", "omega, gamma=2"] == pytest.approx(2.5 ** 0.5)
    g = E.gamma_table({"a": 100, "b": 400}, gammas=(1.0, 3.0))
    assert g.loc[1.0, "ratio"] == pytest.approx(4.0) and g.loc[3.0, "ratio"] == pytest.approx(4 ** (1 / 3))


def test_face_masks_follow_the_landmarks():
    data = E.load_data(E.Setup(n_train=8, n_test=4, n_occluded=4), progress=False)
    m = data.train.tensors["mask"]
    assert m.dtype == torch.uint8 and tuple(m.shape) == (8, 1, 48, 48)
    share = m.float().mean((1, 2, 3))
    assert (share > 0.15).all() and (share < 0.9).all()  # a face, not the whole image
    assert "landmarks" not in data.train.tensors and set(data.eval_sets()) == {"test", "occluded"}


def test_tiny_run_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    s = E.Setup(n_train=32, n_test=16, n_occluded=16, epochs=1, batch_size=16)
    data = E.load_data(s, progress=False)
    first = E.run_row(s, data, "mam", progress=False)  # 32 faces may miss a class: no class weights here
    again = E.run_row(s, data, "mam", progress=False)
    assert not first.cached and again.cached
    # both trunks start from the one cached trunk pretraining (the ImageNet stand-in), named in the spec
    trunk = E.trunk_pretrain(s, progress=False)
    assert trunk.cached and first.run.spec["spec"]["trunk_run"] == trunk.path.name
    start = E.build_model(trunk_run=trunk.path.name, **E.row_model_kwargs(s, "mam"))
    for branch in (start.main, start.aux):
        assert torch.equal(branch.layer3[0].conv1.weight, trunk.model.features["layer3"][0].conv1.weight)
    facts = backbone_facts(s, trunk, seed=s.seed, image_size=s.image_size)
    assert facts["task"] == "landmarks" and facts["rmse_px"] > 0 and facts["mean_shape_rmse_px"] > 0
    assert "a landmark error of" in E.trunk_text(s, trunk) and "ImageNet" in E.trunk_text(s, trunk)
    assert "random weights" in E.trunk_text(E.Setup(pretrain_task=None))
    assert "ImageNet weights" in E.trunk_text(E.profile_setups()["paper"])
    with pytest.raises(ValueError, match="facts of the pretraining run"):
        E.trunk_text(s)
    assert again.metrics["test"]["accuracy"] == first.metrics["test"]["accuracy"]
    assert {"test", "occluded"} <= set(first.metrics)
    t2 = E.table2({"mam": [first]})
    assert t2.loc[E.TABLE2_LABELS["mam"], "ours RAF-DB mean"] == pytest.approx(E.accuracy(first))
    assert E.trained_on(first) == "rafdb"  # recorded in the run's spec
    assert t2.loc[E.TABLE2_LABELS["mam"], "ours FED-RO (trained on RAF-DB only) mean"] == pytest.approx(
        E.accuracy(first, "occluded"))
    ex = E.explain_set(s, 4)
    heat = E.gradcam_maps(again.model, ex, again.run.config)
    assert heat.shape == (4, 48, 48) and np.isfinite(heat).all()
    maps = E.feature_maps(again.model, ex, again.run.config)
    assert set(maps) == {"layer1", "layer1 masked", "layer4", "layer4 masked"}
    energy = E.mask_energy(maps, ex.tensors["mask"])
    assert energy["layer4 masked"] >= energy["layer4"] - 1e-6  # the mask raises the face's share


def test_mask_energy_on_maps_with_a_known_answer():
    """The share of each map on the face mask, against maps whose share is known by hand."""
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    masks[0, 0, :4, :4] = 1  # a quarter of the image
    masks[1, 0, :, 4:] = 1  # half of it
    small = torch.nn.functional.avg_pool2d(masks.float(), 2)[:, 0].numpy()  # at 4 x 4: exact, cells are 2 x 2
    maps = {"exactly the mask": small, "uniform": np.full((2, 4, 4), 0.2), "entirely outside": 1 - small,
            "the other face's mask": small[::-1].copy(), "8 x 8, 3x on the mask": 1 + 2 * masks[:, 0].float().numpy(),
            "all zero": np.zeros((2, 4, 4))}
    energy = E.mask_energy(maps, masks)
    assert list(energy) == list(maps)
    assert energy == pytest.approx({
        "exactly the mask": 1.0,
        "uniform": (1 / 4 + 1 / 2) / 2,  # the mask's area share, mean over faces
        "entirely outside": 0.0,
        "the other face's mask": 0.0,  # each map is paired with its own face's mask
        "8 x 8, 3x on the mask": (1 / 2 + 3 / 4) / 2,  # 3a / (3a + 1 - a) per face
        "all zero": 0.0,
    }, abs=1e-6)


def test_localisation_table_on_maps_with_a_known_answer(monkeypatch):
    """Each model's row carries its own Grad-CAM's scores against each face's own evidence
    (two disjoint boxes of area share 1/8 and 1/4: chance 3/16)."""
    from types import SimpleNamespace

    rel = torch.zeros(2, 8, 8)
    rel[0, :2, :4] = 1.0
    rel[1, 4:, 4:] = 1.0
    ds = SimpleNamespace(labels=torch.tensor([0, 6]), tensors={"relevance": rel})
    heat = {"inside": rel.numpy(), "uniform": np.full((2, 8, 8), 0.3), "outside": 1 - rel.numpy(),
            "swapped": rel.flip(0).numpy(), "3x inside": 1 + 2 * rel.numpy()}
    asked = []

    def gradcam_maps(model, data, config, *, targets=None):
        assert data is ds and config == "config"
        asked.append(targets)
        return heat[model]

    monkeypatch.setattr(E, "gradcam_maps", gradcam_maps)
    loc = E.localisation_table({k: (k, "config") for k in heat}, ds)
    chance = 3 / 16
    assert loc.index.tolist() == list(heat)
    assert loc["energy on evidence"].tolist() == pytest.approx([1.0, chance, 0.0, 0.0, (3 / 10 + 1 / 2) / 2],
                                                               abs=1e-12)
    assert loc["pointing game"].tolist() == pytest.approx([1.0, chance, 0.0, 0.0, 1.0], abs=1e-12)
    assert loc["energy (chance)"].tolist() == pytest.approx([chance] * 5)
    assert loc["pointing (chance)"].tolist() == pytest.approx([chance] * 5)
    assert asked == [[0, 6]] * 5  # the true classes are explained


def test_affectnet_stand_in_and_unknown_dataset():
    data = E.load_data(E.Setup(n_train=8, n_test=4, n_occluded=4), "affectnet", progress=False)
    assert data.test_name == "AffectNet" and "affectnet" in data.source
    assert tuple(data.occluded.tensors["mask"].shape[1:]) == (1, 48, 48)
    with pytest.raises(ValueError, match="dataset must be"):
        E.load_data(E.Setup(), "fer2013")


# ---------------------------------------------------------------------- AffectNet's 33,803 (issue 15, section 4.2)
_AFFECTNET_KEEP = {"neutral": 6, "happy": 6, "sad": 4, "surprise": 4, "fear": 2, "disgust": 2, "anger": 2,
                   "contempt": 6}


def _paper_root(root):
    """AffectNet in its real format with unequal classes (26 seven-class training images), and FED-RO
    with a landmark cache (a stub detector), so that the paper profile's data loads."""
    from fer.data import load_dataset
    from fer.data.datasets import affectnet
    from fer.data.landmarks import annotate_dataset, landmarks_path

    fx.write_affectnet(root / "affectnet", n_train=48, n_test=8)  # 6 training images per class of 8
    csv = root / "affectnet/training.csv"
    lines, seen = csv.read_text().splitlines(), Counter()
    kept = [lines[0]]
    for line in lines[1:]:
        name = affectnet.LABEL_MAP.get(int(line.split(",")[6]))  # the expression column
        seen[name] += 1
        if name is None or seen[name] <= _AFFECTNET_KEEP[name]:
            kept.append(line)
    csv.write_text("\n".join(kept) + "\n")
    fx.write_fedro(root / "fedro", per_class=1)
    fedro = load_dataset("fedro", root)
    pts = np.tile(np.linspace(20, 80, 68, dtype=np.float32)[:, None], (1, 2))
    annotate_dataset(fedro, landmarks_path(fedro.root, "test"), backend=lambda ims, **_: [pts] * len(ims),
                     progress=False, base_dir=fedro.root)
    return root


def test_stratified_indices_keep_each_class_share():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    assert np.bincount(y[stratified_indices(y, 10, 0)]).tolist() == [5, 3, 2]
    assert np.bincount(y[stratified_indices(y, 7, 0)]).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4: largest remainder
    idx = stratified_indices(y, 10, 0)
    assert np.array_equal(idx, np.sort(idx)) and len(set(idx.tolist())) == 10
    assert np.array_equal(stratified_indices(y, 200, 0), np.arange(100))


def test_paper_profile_trains_on_a_seeded_class_stratified_affectnet_subset(tmp_path):
    from fer.data import load_dataset

    root = _paper_root(tmp_path)
    ds = load_dataset("affectnet", root, "train")
    assert ds.class_counts == {c: k for c, k in _AFFECTNET_KEEP.items() if c != "contempt"} and len(ds) == 26
    idx = E.affectnet_subset(ds.targets, 13)
    assert len(idx) == 13 and len(set(idx.tolist())) == 13
    half = {c: k // 2 for c, k in ds.class_counts.items()}
    assert ds.subset(idx).class_counts == half  # each class keeps its share of the list
    assert np.array_equal(idx, E.affectnet_subset(ds.targets, 13))  # seeded: the same images every time
    assert not np.array_equal(idx, E.affectnet_subset(ds.targets, 13, seed=E.AFFECTNET_SUBSET_SEED + 1))
    # the paper profile uses it, with the paper's number
    paper = E.profile_setups()["paper"]
    assert paper.affectnet_train == E.PAPER_DATA["AffectNet"][0] == 33_803
    setup = dataclasses.replace(paper, data_root=str(root), image_size=32, pretrained=False, affectnet_train=13)
    data = E.load_data(setup, "affectnet", progress=False)
    assert len(data.train) == 13 and data.train.class_counts == half
    assert data.train.labels.tolist() == ds.subset(idx).targets  # those images, in list order
    again = E.load_data(setup, "affectnet", progress=False)
    assert torch.equal(data.train.images, again.train.images)
    assert len(E.load_data(dataclasses.replace(setup, affectnet_train=None), "affectnet", progress=False).train) == 26


# ---------------------------------------------------------------------- Table 2's FED-RO column (issue 15, section 4.3)
def _fake_run(dataset: str, acc: float = 0.5):
    from types import SimpleNamespace

    run = SimpleNamespace(spec={"spec": {"dataset": dataset}}, path=f"mapnet-smoke-{dataset}", config=None)
    return SimpleNamespace(run=run, metrics={"test": {"accuracy": acc}, "occluded": {"accuracy": acc / 2}})


def test_table2_names_the_fedro_column_for_what_the_runs_trained_on():
    assert E.PAPER_FEDRO_TRAINING == "joint"  # the paper's FED-RO protocol: AffectNet + RAF-DB together
    assert E.fedro_column("rafdb") == "FED-RO (trained on RAF-DB only)"
    assert E.fedro_column("joint") == "FED-RO (trained on AffectNet + RAF-DB)"
    raf = E.table2({"wcl": [_fake_run("rafdb", 0.8)]})  # the ablation: RAF-DB runs
    assert "paper FED-RO (trained on AffectNet + RAF-DB)" in raf.columns and "paper FED-RO" not in raf.columns
    assert raf.loc[E.TABLE2_LABELS["wcl"], "ours FED-RO (trained on RAF-DB only) mean"] == pytest.approx(40.0)
    assert not any(c.startswith("ours FED-RO") and "RAF-DB only" not in c for c in raf.columns)
    joint = E.table2({"wcl": [_fake_run("joint")]})
    assert "ours FED-RO (trained on AffectNet + RAF-DB) mean" in joint.columns
    assert "ours AffectNet mean" in joint.columns  # the joint runs' test set is AffectNet's validation set
    with pytest.raises(ValueError, match="mixes runs"):
        E.table2({"ps": [_fake_run("rafdb")], "wcl": [_fake_run("joint")]})
    with pytest.raises(ValueError, match="training set"):
        E.trained_on(_fake_run("fer2013"))
