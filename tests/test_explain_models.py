"""Grad-CAM output shape and finiteness for every registered model.

The model list is read from :func:`fer.models.list_models` when this module is
imported, so a model registered later is covered without editing this file. Each
model is built at the smallest input whose Grad-CAM layer (``model.cam_layer``)
still has a 2 x 2 or larger map, starting from ``model.min_size`` (else 64 px) --
at 1 x 1 the map carries no location and comes back all zero.
"""
from __future__ import annotations

import ast
import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fer.explain import cam, guided_gradcam, resolve_target_layers
from fer.models import create_model, list_models, model_entrypoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MODELS = list_models()
#: One model per family (the file of fer.models it lives in, i.e. the paper key), for guided Grad-CAM.
FAMILIES: dict[str, str] = {}
for _name in MODELS:
    FAMILIES.setdefault(model_entrypoint(_name).__module__.rsplit(".", 1)[-1], _name)

NUM_CLASSES = 7
BATCH = 2
MIN_CAM_SIDE = 2  # smallest useful side of the Grad-CAM layer's map
DEFAULT_START = 64  # first input side tried for models without ``min_size``
MAX_SIDE = 512


class _Seen(Exception):
    """Raised by the probe hook once every Grad-CAM layer has produced its map."""


def _build(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, img_size=size).eval()


def _in_chans(model: nn.Module) -> int:
    return int(getattr(model, "in_chans", 3))


def _cam_side(model: nn.Module, size: int) -> int:
    """Smallest spatial side of the Grad-CAM layer output(s) for a ``size x size`` input.

    The forward stops at the layer, so models built for another ``img_size`` (flatten
    heads) can be probed too.
    """
    layers = resolve_target_layers(model)
    sides: dict[int, int] = {}

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        sides[id(module)] = int(min(t.shape[-2:]))
        if len(sides) == len(layers):
            raise _Seen

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            model(torch.zeros(1, _in_chans(model), size, size))
    except _Seen:
        return min(sides.values())
    finally:
        for h in handles:
            h.remove()
    raise AssertionError(f"{type(model).__name__}.cam_layer never ran during forward; it must name a module of "
                         f"the forward path")


def _smallest_useful(name: str) -> tuple[nn.Module, int]:
    """The model built at the smallest input side whose Grad-CAM map is at least 2 x 2."""
    model = _build(name, DEFAULT_START)
    start = int(getattr(model, "min_size", None) or DEFAULT_START)
    for size in range(start, MAX_SIDE + 1, 4):
        if _cam_side(model, size) >= MIN_CAM_SIDE:
            return (model if size == DEFAULT_START else _build(name, size)), size
    raise AssertionError(f"{name}: the Grad-CAM layer stays below {MIN_CAM_SIDE} x {MIN_CAM_SIDE} up to "
                         f"{MAX_SIDE} px inputs")


def _images(model: nn.Module, size: int, n: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, _in_chans(model), size, size, generator=g)


@contextmanager
def _no_pointlike_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Grad-CAM target layer's output is 1 x 1.*")
        yield


@pytest.fixture(scope="module", params=MODELS)
def built(request) -> tuple[str, nn.Module, int]:
    model, size = _smallest_useful(request.param)
    return request.param, model, size


def _builders_in_source() -> set[str]:
    """Names of every ``@register_model`` builder written in ``fer/models/*.py``."""
    import fer.models

    names = set()
    for path in Path(fer.models.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(
                getattr(d, "id", getattr(d, "attr", None)) == "register_model" for d in node.decorator_list
            ):
                names.add(node.name)
    return names


def test_models_are_registered():
    """Every builder decorated in the model files is registered (its file is imported by fer.models)."""
    written = _builders_in_source()
    assert len(written) >= 20, sorted(written)  # the five papers' models and their baselines
    assert set(MODELS) == written
    for key in ("cbam_vgg", "manet", "mapnet", "masked", "msanet"):
        assert list_models(module=key), f"no model registered from fer.models.{key}"


#: Modules a head may apply to the Grad-CAM layer's map before it stops being a map:
#: pooling, or a class-map convolution (one output channel per class).
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _reads_for_the_head(module: nn.Module) -> bool:
    return isinstance(module, _POOLS) or (isinstance(module, nn.Conv2d) and module.out_channels == NUM_CLASSES)


def _output_tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if dataclasses.is_dataclass(out):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _output_tensors(o)]
    return []


def test_cam_layer_is_the_last_map_the_head_reads(built):
    """``cam_layer`` outputs the last multi-channel spatial map of the forward pass (or the map
    that the head's pooling / class-map conv reads). Models with one map per branch (MAPNet)
    return those maps from ``forward_features``, one per Grad-CAM layer, in order."""
    name, model, size = built
    layers = resolve_target_layers(model)
    x = _images(model, size, 1)
    calls: list[tuple[nn.Module, torch.Tensor | None, torch.Tensor]] = []

    def hook(module: nn.Module, inp: tuple, out: object) -> None:
        if (isinstance(out, torch.Tensor) and out.dim() == 4 and out.is_floating_point()
                and out.shape[1] > 1 and min(out.shape[-2:]) >= MIN_CAM_SIDE):
            first = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
            calls.append((module, first, out))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            outputs = _output_tensors(model(x))
    finally:
        for h in handles:
            h.remove()
    # a model that returns maps (RASnet's region masks) is not reading them for a head
    maps = [c for c in calls if not any(c[2] is o for o in outputs)]
    cam_maps = []
    for layer in layers:
        produced = [out for module, _, out in maps if module is layer]
        assert produced, f"{name}: cam_layer {type(layer).__name__} produced no {MIN_CAM_SIDE}x{MIN_CAM_SIDE}+ map"
        cam_maps.append(produced[-1])
    if len(layers) == 1:
        last_module, last_input, last_map = maps[-1]
        assert torch.equal(cam_maps[0], last_map) or (
            _reads_for_the_head(last_module) and last_input is not None and torch.equal(last_input, cam_maps[0])
        ), (f"{name}: cam_layer ({type(layers[0]).__name__}) is not the last map; the last is "
            f"{type(last_module).__name__} {tuple(last_map.shape)}")
    else:
        with torch.no_grad():
            features = model.forward_features(x)
        assert isinstance(features, (list, tuple)) and len(features) == len(layers), name
        for i, (cam_map, feature) in enumerate(zip(cam_maps, features)):
            assert torch.equal(cam_map, feature), f"{name}: Grad-CAM layer {i} is not branch {i}'s map"
        assert any(torch.equal(m, maps[-1][2]) for m in cam_maps), f"{name}: a later map follows the branches'"


class _QuadrantNet(nn.Module):
    """A toy classifier: which quadrant of a 16 x 16 image holds the bright square.

    Channels 2 and 3 of the input are the pixel coordinates (CoordConv), so a feature
    map can be specific to a quadrant, as Grad-CAM's per-channel weights need.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    @property
    def cam_layer(self) -> nn.Module:
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _quadrant_images(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = 0.1 * torch.rand(len(labels), 3, 16, 16, generator=g)
    x[:, 1] = torch.linspace(-1, 1, 16)[None, :]
    x[:, 2] = torch.linspace(-1, 1, 16)[:, None]
    for i, k in enumerate(labels.tolist()):
        r, c = 8 * (k // 2) + 2, 8 * (k % 2) + 2
        x[i, 0, r:r + 4, c:c + 4] = 1.0
    return x


def test_cam_follows_the_target_class_on_a_trained_toy_model():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = _QuadrantNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        labels = torch.randint(0, 4, (32,), generator=g)
        loss = nn.functional.cross_entropy(model(_quadrant_images(labels, g)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = _quadrant_images(torch.arange(4), g)
    assert (model(test).argmax(1) == torch.arange(4)).all(), "the toy model did not learn"
    # one image with squares in quadrants 0 (top left) and 3 (bottom right)
    both = torch.maximum(test[0], test[3])[None]
    maps = {k: cam(model, both, targets=k, mean=[0.0] * 3, std=[1.0] * 3)[0] for k in (0, 3)}
    assert np.abs(maps[0] - maps[3]).max() > 0.5, "different target classes gave the same map"
    for k, (rows, cols) in {0: (slice(0, 8), slice(0, 8)), 3: (slice(8, 16), slice(8, 16))}.items():
        inside = maps[k][rows, cols].sum() / maps[k].sum()
        assert inside > 0.5, f"the class-{k} map puts only {inside:.2f} of its mass on quadrant {k}"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_shape_range_and_finiteness(built, method):
    name, model, size = built
    with _no_pointlike_warning():
        maps = cam(model, _images(model, size), method=method)
    assert isinstance(maps, np.ndarray) and maps.shape == (BATCH, size, size), name
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert (maps.reshape(BATCH, -1).max(axis=1) > 0).any(), f"{name}: every {method} map is all zero at {size} px"
    assert all(p.grad is None for p in model.parameters()), name  # gradients restored


@pytest.mark.parametrize("name", sorted(FAMILIES.values()), ids=lambda n: n)
def test_guided_gradcam_per_family(name):
    model, size = _smallest_useful(name)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    with _no_pointlike_warning():
        out = guided_gradcam(model, _images(model, size))
    assert out.shape == (BATCH, size, size, _in_chans(model)) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus  # guided ReLUs swapped back
    assert all(p.grad is None for p in model.parameters())


# The wrapper that cam / guided_gradcam build around a model is a fresh nn.Module in
# training mode; fer.explain restores *its* mode on exit, and train(True) on the wrapper
# puts the wrapped eval-mode model into training mode (fix: restore the wrapped model's
# mode, e.g. build the wrapper with .train(model.training)).
@pytest.mark.parametrize("fn", [cam, guided_gradcam], ids=["cam", "guided_gradcam"])
def test_explain_leaves_an_eval_model_in_eval_mode(fn):
    name = "small_cnn" if "small_cnn" in MODELS else MODELS[0]
    model, size = _smallest_useful(name)
    assert not model.training
    fn(model, _images(model, size))
    assert not model.training, f"{fn.__name__} put {name} into training mode"
