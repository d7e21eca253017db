"""fer.train: the loop (overfit, stages, schedules, losses, outputs), data, files, checkpoints."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fer.data import SynFER
from fer.data.cached import CachedDataset, cache_dataset, collate_items
from fer.data.transforms import InputTransform
from fer.io import (
    CheckpointError,
    atomic_write_json,
    get_rng_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_rng_state,
)
from fer.train import (
    History,
    Stage,
    TrainConfig,
    _fused,
    build_optimizer,
    class_weights_inverse,
    count_labels,
    default_output_to_logits,
    evaluate,
    fit,
    frozen_modules,
    lr_factor,
    seed_everything,
    select_parameters,
    unfreeze_stages,
)

# FER2013 training counts (VGG16 + CBAM paper, Figure 6) and equation (5) by hand: 28709 / (7 * n).
FER2013_COUNTS = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830,
                  "surprise": 3171}
FER2013_WEIGHTS = [1.0266, 9.4066, 1.0010, 0.5684, 0.8260, 0.8491, 1.2934]


class TinyNet(nn.Module):
    """features.0 (conv) -> features.2 (conv) -> cbam (1x1 conv gate) -> head; optional BN and dropout."""

    def __init__(self, num_classes: int = 7, width: int = 8, bn: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU())
        self.norm = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.cbam = nn.Conv2d(width, width, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.features(x))
        x = x * torch.sigmoid(self.cbam(x))
        return self.head(self.drop(F.adaptive_avg_pool2d(x, 1).flatten(1)))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny() -> CachedDataset:
    ds = SynFER("clean", "train", n=16, image_size=16, class_balance="uniform", with_relevance=False)
    return cache_dataset(ds, progress=False)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- class weights


def test_class_weights_equation5_fer2013():
    w = class_weights_inverse(FER2013_COUNTS)
    assert w.dtype == torch.float32 and w.shape == (7,)
    assert [round(float(v), 4) for v in w] == FER2013_WEIGHTS
    assert sum(FER2013_COUNTS.values()) == 28709
    assert torch.allclose(class_weights_inverse([5, 5, 5]), torch.ones(3))
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        class_weights_inverse([3, 0, 2])


def test_count_labels(tiny):
    counts = count_labels(tiny)
    assert counts.tolist() == list(tiny.class_counts.values()) and int(counts.sum()) == 16


def test_inverse_weights_are_used_by_the_default_loss(tiny):
    torch.manual_seed(0)
    model = TinyNet()
    before = _params(model)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.0, class_weights="inverse")
    hist = fit(model, tiny, None, cfg, progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # lr 0: nothing moved
    x = InputTransform.from_config(cfg)({"image": tiny.images})["image"]
    with torch.no_grad():
        expected = F.cross_entropy(model(x), tiny.labels, weight=class_weights_inverse(count_labels(tiny)))
    assert hist.last["train_loss"] == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="either loss_fn or class weights"):
        fit(TinyNet(), tiny, None, cfg, loss_fn=nn.CrossEntropyLoss(), progress=False)


# ----------------------------------------------------------------------------- the loop


def test_tiny_model_overfits_a_tiny_batch(tiny):
    seed_everything(0)
    model = TinyNet(width=16)
    # 100 epochs: SynFER v2's 16 px faces took the loss to 0.2 (15 of 16 right) at 60, 0.004 at 100.
    cfg = TrainConfig(epochs=100, batch_size=16, lr=2e-2, optimizer="adam", seed=0)
    hist = fit(model, tiny, tiny, cfg, progress=False, callbacks=[lambda r: None])
    assert len(hist) == 100 and hist["epoch"] == list(range(1, 101))
    assert hist.last["train_loss"] < hist[0]["train_loss"] / 5
    res = evaluate(model, tiny, cfg, progress=False)
    assert res["accuracy"] == 1.0 and res["mean_class_accuracy"] == 1.0
    assert torch.equal(res["predictions"], tiny.labels) and torch.equal(res["targets"], tiny.labels)
    assert res["confusion"].trace() == 16 and res["logits"].shape == (16, 7)
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_same_seed_same_weights(tiny):
    def train() -> dict[str, torch.Tensor]:
        seed_everything(1)
        model = TinyNet(dropout=0.3)
        fit(model, tiny, None, TrainConfig(epochs=2, batch_size=4, seed=1, hflip=True, shift=2), progress=False)
        return _params(model)

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)


@dataclass
class Out:
    logits: torch.Tensor
    feats: torch.Tensor


class DataclassNet(TinyNet):
    def forward(self, x: torch.Tensor) -> Out:  # type: ignore[override]
        logits = super().forward(x)
        return Out(logits=logits, feats=logits.detach())


def test_dataclass_and_dict_outputs_and_batch_losses(tiny):
    assert default_output_to_logits({"logits": torch.ones(2, 3)}).shape == (2, 3)
    assert default_output_to_logits((torch.ones(2, 3), 5)).shape == (2, 3)
    with pytest.raises(TypeError, match="output_to_logits"):
        default_output_to_logits("nope")
    seen = {}

    def loss(outputs: Out, batch) -> torch.Tensor:  # a loss on (outputs, batch)
        seen["keys"] = sorted(batch)
        return F.cross_entropy(outputs.logits, batch["label"])

    model = DataclassNet()
    hist = fit(model, tiny, tiny, TrainConfig(epochs=2, batch_size=8), loss_fn=loss, progress=False)
    assert seen["keys"] == ["image", "label"] and hist.last["val_accuracy"] is not None
    res = evaluate(model, tiny, loss_fn=loss, progress=False)
    assert res["num_samples"] == 16 and 0.0 <= res["accuracy"] <= 1.0
    # outputs without class scores: loss only
    res = evaluate(model, tiny, loss_fn=loss, output_to_logits=lambda out: None, progress=False)
    assert res["accuracy"] is None and res["loss"] > 0


# ----------------------------------------------------------------------------- stages and schedules


def test_unfreeze_stages_freeze_unfreeze_and_divide_lr(tiny):
    stages = unfreeze_stages(head=["cbam", "head"], layers=["features.2", "features.0"], epochs=1)
    assert [s.lr_scale for s in stages] == pytest.approx([1.0, 0.1, 0.01])
    assert [s.trainable for s in stages] == [["cbam", "head"], ["cbam", "head", "features.2"],
                                            ["cbam", "head", "features.2", "features.0"]]
    torch.manual_seed(0)
    model = TinyNet()
    snapshots = [_params(model)]
    cfg = TrainConfig(stages=stages, lr=1e-2, batch_size=8)
    assert cfg.epochs == 3
    hist = fit(model, tiny, None, cfg, progress=False, callbacks=[lambda r: snapshots.append(_params(model))])
    assert hist["lr"] == pytest.approx([1e-2, 1e-3, 1e-4]) and hist["stage"] == [0, 1, 2]
    assert hist["stage_name"] == ["head", "unfreeze-1", "unfreeze-2"]
    expected_trained = [{"cbam", "head"}, {"cbam", "head", "features.2"}, {"cbam", "head", "features.2", "features.0"}]
    for k, trained in enumerate(expected_trained):
        before, after = snapshots[k], snapshots[k + 1]
        moved = {n.rsplit(".", 1)[0] for n in before if not torch.equal(before[n], after[n])}
        assert moved == trained, f"stage {k}"
    assert all(p.requires_grad for p in model.parameters())  # restored after fit


def test_stage_switches_module_and_loss(tiny):
    class TwoPart(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mcn = TinyNet(num_classes=2)
            self.fecn = TinyNet(num_classes=7)

        def forward(self, x):
            return {"logits": self.fecn(x), "mask_logits": self.mcn(x)}

    calls = {"mcn": 0}

    def mcn_loss(outputs, batch):  # stage 1 trains the sub-module on its own task
        calls["mcn"] += 1
        assert outputs.shape[1] == 2
        return F.cross_entropy(outputs, batch["label"] % 2)

    torch.manual_seed(0)
    model = TwoPart()
    snaps = [_params(model)]
    stages = [Stage(epochs=1, module="mcn", loss="mcn", name="mcn"),
              Stage(epochs=1, frozen=["mcn"], name="fecn")]
    fit(model, tiny, None, TrainConfig(stages=stages, batch_size=8), losses={"mcn": mcn_loss},
        output_to_logits=lambda o: o["logits"] if isinstance(o, dict) else o, progress=False,
        callbacks=[lambda r: snaps.append(_params(model))])
    assert calls["mcn"] == 2
    moved = [{n.split(".")[0] for n in a if not torch.equal(a[n], b[n])}
             for a, b in zip(snaps[:-1], snaps[1:], strict=True)]
    assert moved == [{"mcn"}, {"fecn"}]
    with pytest.raises(KeyError, match="uses loss 'nope'"):
        fit(model, tiny, None, TrainConfig(stages=[Stage(epochs=1, loss="nope")]), progress=False)


def test_frozen_modules_run_in_eval_mode(tiny):
    model = TinyNet(bn=True)
    stats = model.norm.running_mean.clone()
    modes = []
    model.features.register_forward_hook(lambda m, i, o: modes.append((m.training, model.norm.training)))
    stage = Stage(epochs=1, trainable=["head", "cbam"])
    fit(model, tiny, None, TrainConfig(stages=[stage], batch_size=8), progress=False)
    assert torch.equal(model.norm.running_mean, stats) and set(modes) == {(False, False)}
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    assert frozen_modules(model) == ["features", "norm", "cbam"]
    model.requires_grad_(True)
    modes.clear()
    fit(model, tiny, None, TrainConfig(epochs=1, batch_size=8), progress=False)
    assert not torch.equal(model.norm.running_mean, stats) and set(modes) == {(True, True)}


def test_select_parameters_rejects_typos():
    model = TinyNet()
    assert select_parameters(model, ["features.2"]) == ["features.2.weight", "features.2.bias"]
    assert select_parameters(model, ["features.*.weight"], exclude=["features.0"]) == ["features.2.weight"]
    with pytest.raises(ValueError, match="'featuers' matches no parameter"):
        select_parameters(model, ["featuers"])


def test_step_decay_by_epoch_and_iteration(tiny):
    cfg = TrainConfig(epochs=5, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                      step_size=2, gamma=0.1, batch_size=8)
    hist = fit(TinyNet(), tiny, None, cfg, progress=False)
    assert hist["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    assert hist["step"] == [2, 4, 6, 8, 10]
    it = cfg.replace(schedule_unit="iteration", step_size=5000)  # MANet: x0.1 every 5K iterations
    f = [lr_factor(it, epoch=0, iteration=i, epochs=1, iterations_per_epoch=20000) for i in (0, 4999, 5000, 19999)]
    assert f == pytest.approx([1.0, 1.0, 0.1, 0.001])
    ms = cfg.replace(schedule="multistep", milestones=[1, 3])
    assert [lr_factor(ms, epoch=e, iteration=0, epochs=5, iterations_per_epoch=1) for e in range(5)] == \
        pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    cos = cfg.replace(schedule="cosine", min_lr=0.001)
    assert lr_factor(cos, epoch=0, iteration=0, epochs=4, iterations_per_epoch=1) == 1.0
    assert lr_factor(cos, epoch=4, iteration=0, epochs=4, iterations_per_epoch=1) == pytest.approx(0.01)


def test_config_roundtrip_and_validation():
    cfg = TrainConfig(stages=[{"epochs": 2, "trainable": "head"}, Stage(epochs=1, lr_scale=0.1)], lr=0.01)
    assert cfg.epochs == 3 and cfg.stages[0].trainable == ["head"]
    d = json.loads(cfg.to_json())
    assert TrainConfig.from_dict(d) == cfg
    assert "num_workers" not in cfg.to_dict(runtime=False)
    with pytest.raises(ValueError, match="stages add up to 3"):
        TrainConfig(epochs=5, stages=cfg.stages)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"lr": 1, "lerning_rate": 2})
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="rmsprop")


# ----------------------------------------------------------------------------- data


def test_cache_dataset_matches_the_source():
    ds = SynFER("clean", "val", n=6, image_size=16, with_relevance=True)
    cached = cache_dataset(ds, keys=("image", "label", "relevance"), progress=False, batch_size=4)
    assert cached.images.dtype == torch.uint8 and cached.images.shape == (6, 3, 16, 16)
    for i in (0, 5):
        assert torch.equal(cached[i]["image"], ds[i]["image"]) and cached[i]["label"] == ds[i]["label"]
    batch = cached.__getitems__([5, 0])
    assert torch.equal(batch["image"][0], ds[5]["image"]) and batch["relevance"].shape == (2, 16, 16)
    assert cached.targets == ds.targets and cached.classes == ds.classes
    assert cached.fingerprint() == cache_dataset(ds, keys=("image", "label", "relevance"), progress=False).fingerprint()
    assert cached.fingerprint() != cache_dataset(ds, progress=False).fingerprint()
    assert cache_dataset(cached) is cached
    sub = cached.subset([1, 2])
    assert len(sub) == 2 and sub.fingerprint() != cached.fingerprint()
    plain = CachedDataset({"image": cached.images, "label": cached.labels})
    assert plain.fingerprint() == CachedDataset({"image": cached.images.clone(), "label": cached.labels}).fingerprint()


def test_collate_items_keeps_common_keys():
    items = [{"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "label": 1, "meta": {"yaw": 1.5, "occ": "none"},
              "landmarks": torch.zeros(68, 2)},
             {"image": torch.ones(3, 4, 4, dtype=torch.uint8), "label": 2, "meta": {"yaw": -1.0, "occ": "hand"}}]
    b = collate_items(items)
    assert sorted(b) == ["image", "label", "meta"] and b["image"].shape == (2, 3, 4, 4)
    assert b["label"].tolist() == [1, 2] and b["meta"]["occ"] == ["none", "hand"]
    assert b["meta"]["yaw"].tolist() == [1.5, -1.0]
    pairs = collate_items([(torch.zeros(3, 2, 2), 0), (torch.zeros(3, 2, 2), 1)])
    assert pairs["label"].tolist() == [0, 1]


def test_input_transform_normalises_and_augments_on_device():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4) * 2
    t = InputTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = t({"image": img})["image"]
    assert x.dtype == torch.float32 and torch.allclose(x, (img.float() / 255 - 0.5) / 0.25)
    assert torch.equal(t({"image": img}, train=True)["image"], x)  # no augmentation configured

    flip = InputTransform((0.0,), (1.0,), hflip=True, augment_keys=["relevance"])
    rel = img[:, 0].float()
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, generator=torch.Generator().manual_seed(0)) < 0.5
    out = flip({"image": img, "relevance": rel}, train=True, generator=g)
    for i in range(2):
        ref = img[i].flip(-1) if mask[i] else img[i]
        assert torch.allclose(out["image"][i], ref.float() / 255)
        assert torch.equal(out["relevance"][i], rel[i].flip(-1) if mask[i] else rel[i])

    shift = InputTransform((0.0,), (1.0,), shift=1)
    ones = torch.full((64, 3, 6, 6), 255, dtype=torch.uint8)
    y = shift({"image": ones}, train=True, generator=torch.Generator().manual_seed(1))["image"]
    assert y.shape == ones.shape and y.min() == 0.0 and y.max() == 1.0  # zero padding shows at some borders
    assert torch.equal(y[:, :, 1:5, 1:5], torch.ones(64, 3, 4, 4))  # interior is never padding
    y2 = shift({"image": ones}, train=True, generator=torch.Generator().manual_seed(1))["image"]
    assert torch.equal(y, y2)
    gray = InputTransform((0.5,), (0.5,), grayscale=True)({"image": img})["image"]
    assert gray.shape == (2, 1, 4, 4)



def test_input_size_resizes_images_and_aligned_maps_on_device():
    img = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    img[:, :, :, 2:] = 255  # right half white
    rel = torch.zeros(2, 4, 4)
    rel[:, :2] = 1.0  # top half relevant
    t = InputTransform((0.0,), (1.0,), size=8, augment_keys=["relevance"])
    out = t({"image": img, "relevance": rel})
    x = out["image"]
    assert x.shape == (2, 3, 8, 8) and out["relevance"].shape == (2, 8, 8)
    assert torch.allclose(x[:, :, :, :3], torch.zeros(1)) and torch.allclose(x[:, :, :, 5:], torch.ones(1))
    assert torch.allclose(out["relevance"][:, :3], torch.ones(1))
    assert torch.allclose(out["relevance"][:, 5:], torch.zeros(1))
    labels = torch.tensor([[[0, 1], [2, 3]]])
    t2 = InputTransform((0.0,), (1.0,), size=4, augment_keys=["parts"])
    parts = t2({"image": torch.zeros(1, 1, 2, 2), "parts": labels})["parts"]
    assert parts.dtype == labels.dtype and set(parts.unique().tolist()) == {0, 1, 2, 3}  # nearest, no blending
    # the config carries it, and the default keeps the stored size
    cfg = TrainConfig(input_size=8)
    assert InputTransform.from_config(cfg).size == 8 and InputTransform.from_config(TrainConfig()).size is None
    with pytest.raises(ValueError, match="input_size"):
        TrainConfig(input_size=0)
    with pytest.raises(ValueError, match="class_weight_mean"):
        TrainConfig(class_weight_mean="mean")


# ----------------------------------------------------------------------------- files and checkpoints


def test_atomic_writes_leave_no_partial_files(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    save_checkpoint(target, {"format": "x", "w": torch.ones(3)})
    good = target.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert target.read_bytes() == good
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "metrics.json", {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    atomic_write_json(tmp_path / "m.json", {"acc": np.float32(0.5), "nan": float("nan"), "t": torch.tensor([1, 2])})
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 0.5, "nan": None, "t": [1, 2]}


def test_checkpoints_and_history_of_a_fit(tmp_path, tiny):
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.05)
    hist = fit(TinyNet(), tiny, tiny, cfg, run_dir=tmp_path, progress=False)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True inside
    assert ck["epoch"] == 2 and ck["step"] == 4 and ck["stage"] == 0 and ck["finished"]
    assert set(ck) >= {"model", "optimizer", "rng", "schedule", "history", "config"}
    assert TrainConfig.from_json(ck["config"]) == cfg
    on_disk = History.from_jsonl(tmp_path / "history.jsonl")
    assert on_disk.records == json.loads(json.dumps(hist.records))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.jsonl"]
    # a finished checkpoint: fit returns at once; a different config refuses to resume
    again = fit(TinyNet(), tiny, tiny, cfg, run_dir=tmp_path, progress=False)
    assert again.records == ck["history"]
    with pytest.raises(CheckpointError, match=r"different TrainConfig \(differs in \['lr'\]\)"):
        fit(TinyNet(), tiny, tiny, cfg.replace(lr=0.1), run_dir=tmp_path, progress=False)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_checkpoint_names_the_file_and_the_fix(tmp_path, tiny):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x80\x04 truncated")
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint\.pt.*delete .*checkpoint\.pt to restart"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="delete"):
        fit(TinyNet(), tiny, None, TrainConfig(epochs=1), run_dir=tmp_path, progress=False)
    torch.save({"not": "ours"}, bad)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(bad)


def test_load_weights_weights_only(tmp_path):
    src = TinyNet()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = load_weights(TinyNet(), path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    with pytest.raises(CheckpointError, match=r"w\.pt do not fit TinyNet: shapes differ for \['head.weight"):
        load_weights(TinyNet(num_classes=3), path)
    partial = load_weights(TinyNet(num_classes=3), path, strict=False)  # a new head, the rest loaded
    assert torch.equal(partial.cbam.weight, src.cbam.weight)
    evil = tmp_path / "evil.pt"
    torch.save({"model": src.state_dict(), "obj": Out(torch.ones(1), torch.ones(1))}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt .*weights_only=True"):
        load_weights(TinyNet(), evil)


def test_rng_state_roundtrip_through_a_weights_only_file(tmp_path):
    seed_everything(3)
    state = get_rng_state()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    draws = (torch.rand(3), np.random.rand(3), __import__("random").random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_dry_run_caps_every_stage_and_evaluation(monkeypatch):
    """FER_DRY_RUN=1: each stage trains 2 steps of at most 2 faces, evaluation scores 2 batches of 2."""
    from fer import _dry_run
    from fer.data import SynFER, cache_dataset
    from fer.train import Stage

    ds = cache_dataset(SynFER("clean", "train", n=64, seed=0, image_size=32), progress=False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    cfg = TrainConfig(stages=[Stage(epochs=3), Stage(epochs=2, lr_scale=0.1)], batch_size=16, seed=0)
    monkeypatch.setenv("FER_DRY_RUN", "1")
    history = fit(model, ds, ds, cfg, progress=False)
    assert [(r["epoch"], r["step"], r["stage"]) for r in history] == [(1, 2, 0), (2, 4, 1)]
    assert [r["val_accuracy"] is None for r in history] == [True, False]  # scored once, at the end
    assert evaluate(model, ds, cfg, progress=False)["num_samples"] == _dry_run.EVAL_BATCHES * _dry_run.BATCH
    monkeypatch.delenv("FER_DRY_RUN")
    assert evaluate(model, ds, cfg, progress=False)["num_samples"] == 64


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_take_the_fused_step_with_the_same_update_rule(name):
    """build_optimizer picks torch's fused step on the CPU; it makes the update the
    per-parameter step makes, to float rounding."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    ref(torch.zeros(1, 3, 6, 6))
    fast = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 2))
    fast.load_state_dict(ref.state_dict())
    config = TrainConfig(optimizer=name, lr=0.01, momentum=0.9, nesterov=name == "sgd", weight_decay=5e-4)
    opt_fast = build_optimizer(fast.parameters(), config)
    assert opt_fast.defaults.get("fused") is True
    kw = dict(lr=0.01, weight_decay=5e-4)
    opt_ref = (torch.optim.SGD(ref.parameters(), momentum=0.9, nesterov=True, **kw) if name == "sgd" else
               (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(ref.parameters(), **kw))
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    for _ in range(5):
        for model, opt in ((ref, opt_ref), (fast, opt_fast)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ref.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert _fused([torch.zeros(2, dtype=torch.long)]) == {} and _fused([]) == {}  # the default step then
