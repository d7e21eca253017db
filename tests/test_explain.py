"""fer.explain: CAMs on torchvision and toy models, the one-output wrapper, hooks, localisation scores."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from fer import explain
from fer.explain import SingleOutput, cam, capture, guided_gradcam, localisation_scores


class TinyCNN(nn.Module):
    """Two conv layers, GAP, linear; declares its Grad-CAM layer with a method."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(16, num_classes)

    def cam_layer(self) -> nn.Module:
        return self.features[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class QuadrantGate(nn.Module):
    """Keeps channels 0-3 in the top-left quadrant and channels 4-7 in the bottom-right one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mask = torch.zeros_like(x)
        mask[:, :4, : h // 2, : w // 2] = 1
        mask[:, 4:, h // 2:, w // 2:] = 1
        return x * mask


class QuadrantNet(nn.Module):
    """Logit 0 is the mean of the top-left quadrant's features, logit 1 that of the bottom-right."""

    cam_layer = "gate"  # a dotted name also works

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.fill_(0.1)
        self.gate = QuadrantGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(torch.relu(self.conv(x)))
        return torch.stack([g[:, :4].mean((1, 2, 3)), g[:, 4:].mean((1, 2, 3))], dim=1)


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    attention: torch.Tensor


class MultiOutput(nn.Module):
    """Returns a dict, a dataclass or a tuple around TinyCNN's logits."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.net = TinyCNN()

    def forward(self, x: torch.Tensor):
        logits, att = self.net(x), torch.sigmoid(self.net.features(x).mean(1, keepdim=True))
        if self.kind == "dict":
            return {"attention": att, "logits": logits}
        if self.kind == "dataclass":
            return Output(logits=logits, attention=att)
        return logits, att


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_maps(maps: np.ndarray, n: int, size: int) -> None:
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == (n, size, size)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=7)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_on_resnet18(resnet, method):
    maps = cam(resnet, _images(2, 64), method=method, target_layer=resnet.layer4)
    _check_maps(maps, 2, 64)
    assert maps.max() > 0.5  # min-max scaled per image, so not all zero
    by_name = cam(resnet, _images(2, 64), method=method, target_layer="layer4", targets=[1, 2])
    _check_maps(by_name, 2, 64)


def test_cam_warns_when_the_layer_has_no_location(resnet):
    with pytest.warns(RuntimeWarning, match="1 x 1"):
        maps = cam(resnet, _images(1, 32), target_layer=resnet.layer4)
    assert (maps == 0).all()


def test_cam_needs_a_target_layer(resnet):
    with pytest.raises(ValueError, match=r"target_layer=.*layer4.*cam_layer"):
        cam(resnet, _images(1, 64))
    with pytest.raises(ValueError, match="no submodule 'layer9'"):
        cam(resnet, _images(1, 64), target_layer="layer9")
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam(resnet, _images(1, 64), target_layer="layer4", method="scorecam")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_on_tiny_cnn_uses_declared_layer(method):
    torch.manual_seed(0)
    model = TinyCNN().train()
    maps = cam(model, _images(3, 32), targets=0, method=method)
    _check_maps(maps, 3, 32)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # gradients restored


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_lands_on_the_quadrant_the_model_reads(method):
    torch.manual_seed(0)
    model = QuadrantNet()
    x = _images(2, 32, seed=1)
    quadrant = torch.zeros(2, 32, 32)
    quadrant[:, :16, :16] = 1
    for target, region in ((0, quadrant), (1, quadrant.flip(1, 2))):
        maps = cam(model, x, targets=target, method=method)
        _check_maps(maps, 2, 32)
        for m in maps:
            y, x_ = np.unravel_index(m.argmax(), m.shape)
            assert region[0, y, x_] == 1
        scores = localisation_scores(maps, region)
        assert scores["pointing"] == 1.0
        assert scores["energy"] > 0.9 and scores["energy_chance"] == pytest.approx(0.25)


def test_cam_works_with_frozen_parameters():
    torch.manual_seed(0)
    model = TinyCNN().requires_grad_(False)
    maps = cam(model, _images(2, 32), targets=[0, 1])
    _check_maps(maps, 2, 32)
    assert maps.max() > 0.5


@pytest.mark.parametrize("kind", ["dict", "dataclass", "tuple"])
def test_single_output_wrapper(kind):
    torch.manual_seed(0)
    model = MultiOutput(kind)
    x = _images(2, 32)
    wrapped = SingleOutput(model)
    logits = wrapped(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    torch.testing.assert_close(logits, model.net(x))
    # Layer names resolve inside the wrapped model; cam() wraps by itself.
    maps = cam(wrapped, x, target_layer="net.features.3")
    _check_maps(maps, 2, 32)
    np.testing.assert_allclose(cam(model, x, target_layer=model.net.features[3]), maps, atol=1e-6)


def test_single_output_select_and_errors():
    model = MultiOutput("dict")
    x = _images(1, 32)
    assert SingleOutput(model, select="attention")(x).shape == (1, 1, 16, 16)
    assert SingleOutput(MultiOutput("tuple"), select=1)(x).shape == (1, 1, 16, 16)
    assert SingleOutput(model, select=lambda out: out["logits"] * 2)(x).shape == (1, 3)
    with pytest.raises(KeyError, match="select='scores'"):
        SingleOutput(model, select="scores")(x)

    class NoLogits(nn.Module):
        def forward(self, x):
            return {"scores": x.mean((2, 3))}

    with pytest.raises(KeyError, match="without 'logits'"):
        SingleOutput(NoLogits())(x)


def test_single_output_forwards_cam_layer():
    model = TinyCNN()
    assert SingleOutput(model).cam_layer() == [model.features[3]]
    assert explain.resolve_target_layers(SingleOutput(model)) == [model.features[3]]


def test_capture_reads_module_outputs_and_removes_hooks():
    torch.manual_seed(0)
    model = MultiOutput("dict")
    x = _images(2, 32)
    with capture(model, ["net.features.1", model.net.head]) as out:
        logits = model(x)["logits"]
    assert set(out) == {"net.features.1", "net.head"}
    assert out["net.features.1"].shape == (2, 8, 32, 32) and not out["net.features.1"].requires_grad
    torch.testing.assert_close(out["net.head"], logits.detach())
    assert all(not m._forward_hooks for m in model.modules())
    with capture(model, {"gate": "net.features.4"}) as out:
        model(x)
    assert list(out) == ["gate"] and out["gate"].shape == (2, 16, 16, 16)
    with pytest.raises(ValueError, match="not part of"):
        with capture(model, nn.ReLU()):
            pass


def test_uint8_images_need_normalisation():
    torch.manual_seed(0)
    model = TinyCNN()
    x8 = (_images(2, 32) * 255).round().to(torch.uint8)
    with pytest.raises(ValueError, match="preprocess=.*mean="):
        cam(model, x8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    by_stats = cam(model, x8, targets=0, mean=mean, std=std)
    ref = (x8.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(by_stats, cam(model, ref, targets=0), atol=1e-5)
    by_fn = cam(model, x8.numpy(), targets=0, preprocess=lambda t: (t - 0.5) / 0.25)
    _check_maps(by_fn, 2, 32)


def test_guided_gradcam_shape_and_model_restored(resnet):
    relus = [m for m in resnet.modules() if isinstance(m, nn.ReLU)]
    resnet.train()
    out = guided_gradcam(resnet, _images(2, 64), target_layer=resnet.layer4)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 and out.std() > 0
    assert [m for m in resnet.modules() if isinstance(m, nn.ReLU)] == relus
    assert resnet.training and all(p.grad is None for p in resnet.parameters())
    gb = explain.guided_backprop(TinyCNN(), _images(1, 32), targets=[2])
    assert gb.shape == (1, 32, 32, 3) and np.isfinite(gb).all()


# --------------------------------------------------------------------------- localisation


def _box(size: int = 32) -> torch.Tensor:
    rel = torch.zeros(size, size)
    rel[8:24, 4:12] = 1.0  # area share 16*8/1024 = 0.125
    return rel


def test_localisation_perfect_inverted_and_uniform():
    rel = _box()
    perfect = localisation_scores(rel, rel)
    assert perfect == {"energy": 1.0, "energy_chance": 0.125, "pointing": 1.0, "pointing_chance": 0.125,
                       "num_images": 1}
    inverted = localisation_scores(1 - rel, rel)
    assert inverted["energy"] == 0.0 and inverted["pointing"] == 0.0
    for flat in (torch.full((32, 32), 0.3), torch.zeros(32, 32), torch.full((4, 4), 2.0)):
        s = localisation_scores(flat, rel)
        assert s["energy"] == pytest.approx(s["energy_chance"]) and s["pointing"] == pytest.approx(0.125)


def test_localisation_hand_computed_soft_and_hard():
    rel = torch.tensor([[1.0, 0.3], [0.0, 0.0]])
    heat = torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    soft = localisation_scores(heat, rel)
    assert soft["energy"] == pytest.approx((2 * 1 + 1 * 0.3) / 4)
    assert soft["energy_chance"] == pytest.approx(1.3 / 4)
    assert soft["pointing"] == 1.0 and soft["pointing_chance"] == 0.25
    hard = localisation_scores(heat, rel, energy="hard")
    assert hard["energy"] == pytest.approx(2 / 4) and hard["energy_chance"] == pytest.approx(0.25)
    # Two tied peaks, one inside: half a hit.
    tied = localisation_scores(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), rel)
    assert tied["pointing"] == pytest.approx(0.5)


def test_localisation_resizes_heat_bilinearly():
    rel = _box(32)
    small = torch.nn.functional.avg_pool2d(rel[None, None], 4)[0, 0]  # 8 x 8
    s = localisation_scores(small, rel)
    assert s["pointing"] == 1.0 and s["energy"] > 0.7


def test_localisation_tolerance_and_batches():
    rel = _box(32)
    heat = torch.zeros(2, 32, 32)
    heat[0, 16, 14] = 1.0  # two pixels right of the box (last column 11)
    heat[1, 16, 6] = 1.0  # inside
    strict = localisation_scores(heat, rel, reduce=False)
    assert strict["pointing"].tolist() == [0.0, 1.0] and strict["num_images"] == 2
    loose = localisation_scores(heat, rel, tolerance=3)
    assert loose["pointing"] == 1.0 and loose["pointing_chance"] > 0.125
    with pytest.raises(ValueError, match="2 heat maps but 3 relevance"):
        localisation_scores(heat, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="nan"):
        localisation_scores(torch.full((4, 4), float("nan")), rel)


def test_localisation_on_synfer_relevance():
    from fer.data import SynFER

    ds = SynFER("wild", "test", n=2, seed=0)
    rel = torch.stack([ds[i]["relevance"] for i in range(2)])
    own = localisation_scores(rel, rel)
    assert own["energy"] > 2 * own["energy_chance"] and own["pointing"] == 1.0
    inverted = localisation_scores(1 - rel, rel)
    assert inverted["energy"] < own["energy_chance"] and inverted["pointing"] == 0.0
    uniform = localisation_scores(torch.ones(2, 7, 7), rel)
    assert uniform["energy"] == pytest.approx(uniform["energy_chance"])
    assert uniform["pointing"] == pytest.approx(uniform["pointing_chance"])


# Maps with a known answer on two faces whose evidence regions are disjoint boxes of area
# share 1/8 and 1/4: chance is their mean, 3/16, for the energy share and the pointing game.
def _two_regions() -> torch.Tensor:
    rel = torch.zeros(2, 8, 8)
    rel[0, :2, :4] = 1.0  # 8 of 64 pixels
    rel[1, 4:, 4:] = 1.0  # 16 of 64 pixels
    return rel


KNOWN_MAPS = {  # name -> (heat from the relevance maps, energy share, pointing-game hit rate)
    "exactly the region": (lambda r: r, 1.0, 1.0),
    "uniform": (lambda r: torch.full_like(r, 0.7), 3 / 16, 3 / 16),  # every pixel ties: the area share
    "entirely outside": (lambda r: 1 - r, 0.0, 0.0),
    "3x heat inside": (lambda r: 1 + 2 * r, (3 / 10 + 1 / 2) / 2, 1.0),  # 3a / (3a + 1 - a) per face
    "the other face's region": (lambda r: r.flip(0), 0.0, 0.0),  # heat and evidence must be paired by face
}


@pytest.mark.parametrize("name", list(KNOWN_MAPS))
def test_localisation_row_on_maps_with_a_known_answer(name):
    from fer.experiments._common import localisation_row

    rel = _two_regions()
    heat, energy, pointing = KNOWN_MAPS[name]
    for h in (heat(rel), heat(rel).numpy(), heat(rel)[:, None]):  # tensor, array, B x 1 x H x W
        row = localisation_row(h, rel, model="m", map=name)
        assert list(row) == ["model", "map", "energy on evidence", "energy (chance)", "pointing game",
                             "pointing (chance)", "faces"]
        assert (row["model"], row["map"], row["faces"]) == ("m", name, 2)
        assert row["energy on evidence"] == pytest.approx(energy, abs=1e-12)
        assert row["pointing game"] == pytest.approx(pointing, abs=1e-12)
        assert row["energy (chance)"] == pytest.approx(3 / 16) and row["pointing (chance)"] == pytest.approx(3 / 16)
