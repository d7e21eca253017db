"""Grad-CAM output shape and finiteness for every registered model.

The model list is read from :func:`fer.models.list_models` when this module is
imported, so a model registered later is covered without editing this file. Each
model is built at the smallest input whose Grad-CAM layer (``model.cam_layer``)
still has a 2 x 2 or larger map, starting from ``model.min_size`` (else 64 px) --
at 1 x 1 the map carries no location and comes back all zero.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

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


def test_models_are_registered():
    assert MODELS, "fer.models registers no model"
    assert set(FAMILIES.values()) <= set(MODELS)


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
