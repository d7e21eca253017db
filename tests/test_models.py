"""fer.models (registry, cbam_vgg) and fer.layers (CBAM): shapes, parameter counts, hooks, weights.

Nothing here downloads: an autouse fixture makes every download attempt fail, and the
VGG-Face tests use a file written from random weights in the real key format.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torchvision
from timm.layers.cbam import CbamModule as TimmCbamModule
from torch import nn

import fer
from fer.layers import CbamModule, SEModule
from fer.models import (
    VGGFACE_URL,
    create_model,
    is_model,
    list_models,
    load_vggface,
    register_model,
    vggface_path,
    weights_dir,
)
from fer.models.cbam_vgg import VGG16_CONV_PARAMS, VGGFACE_CONV_NAMES, VGGFACE_MEAN, make_vgg16_features

PAPER_MODELS = ["inception_v3", "resnet50", "small_cnn", "vgg16_cbam", "vgg16_flatten", "vgg16_gap"]
VGG_MODELS = ["vgg16_cbam", "vgg16_flatten", "vgg16_gap"]


def _size(name: str) -> int:
    """Smallest convenient input side for each model (inception needs >= 75 px)."""
    return 75 if name == "inception_v3" else 32


def _build(name: str, **kwargs) -> nn.Module:
    if name == "vgg16_flatten":
        kwargs.setdefault("img_size", _size(name))
    return create_model(name, **kwargs)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any download attempt fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)


# --------------------------------------------------------------------------- registry


def test_list_models_and_patterns():
    assert set(PAPER_MODELS) <= set(list_models())
    assert list_models(module="cbam_vgg") == PAPER_MODELS
    assert list_models("vgg16*") == VGG_MODELS
    assert list_models(["small*", "res*"]) == ["resnet50", "small_cnn"]
    assert list_models(module="no_such_paper") == []
    assert is_model("vgg16_cbam") and not is_model("vgg19")


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model 'vgg16_cbm'.*Did you mean 'vgg16_cbam'"):
        create_model("vgg16_cbm")


def test_duplicate_registration_is_refused():
    def vgg16_gap(pretrained: bool = False, **kwargs) -> nn.Module:  # same name, other module
        return nn.Identity()

    vgg16_gap.__module__ = "tests.elsewhere"
    with pytest.raises(ValueError, match="already registered by fer.models.cbam_vgg"):
        register_model(vgg16_gap)
    assert create_model("vgg16_gap", img_size=32).__class__.__name__ == "VggFer"


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_output_shapes_and_forward_split(name):
    torch.manual_seed(0)
    model = _build(name).eval()
    x = torch.randn(2, 3, _size(name), _size(name))
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), logits)
        pre = model.forward_head(feats, pre_logits=True)
    assert logits.shape == (2, 7)
    assert feats.shape[:2] == (2, model.num_features)
    assert pre.shape == (2, 512)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_num_classes_and_in_chans_respected(name):
    model = _build(name, num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, _size(name), _size(name)))
    assert out.shape == (1, 3)
    assert model.pretrained_cfg["input_size"][0] == 1
    assert len(model.pretrained_cfg["mean"]) == len(model.pretrained_cfg["std"]) == 1
    assert model.pretrained_cfg["num_classes"] == 3
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_cam_layer_outputs_last_feature_map(name):
    model = _build(name).eval()
    assert any(m is model.cam_layer for m in model.modules())
    seen: List[torch.Tensor] = []
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 3, _size(name), _size(name))
    with torch.no_grad():
        feats = model.forward_features(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], feats)


def test_cam_layer_is_cbam_for_vgg16_cbam():
    model = create_model("vgg16_cbam")
    assert model.cam_layer is model.attn and isinstance(model.attn, CbamModule)
    gap = create_model("vgg16_gap")
    assert gap.cam_layer is gap.features[-1]


def test_grad_cam_runs_on_cam_layer():
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    model = create_model("vgg16_cbam").eval()
    x = torch.randn(1, 3, 64, 64)
    with GradCAM(model=model, target_layers=[model.cam_layer]) as cam:
        heat = cam(input_tensor=x, targets=None)
    assert heat.shape == (1, 64, 64)
    assert heat.min() >= 0 and heat.max() <= 1


def test_input_size_errors_are_clear():
    with pytest.raises(ValueError, match="at least 75x75"):
        create_model("inception_v3")(torch.randn(1, 3, 64, 64))
    flat = create_model("vgg16_flatten", img_size=32).eval()
    with pytest.raises(ValueError, match="img_size"):
        flat(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("small_cnn", pretrained=True)


# --------------------------------------------------------------------------- parameter counts


def test_vgg16_conv_base_matches_torchvision():
    ours = make_vgg16_features()
    theirs = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    assert _n_params(ours) == _n_params(theirs) == VGG16_CONV_PARAMS == 14_714_688
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    for name in VGG_MODELS:
        assert _n_params(_build(name).features) == 14_714_688


def test_parameter_counts():
    # classifier: 512->512->512->7 (GAP) = 262,656 + 262,656 + 3,591
    head_gap = 528_903
    gap, cbam = create_model("vgg16_gap"), create_model("vgg16_cbam")
    assert _n_params(gap.head) == head_gap
    assert _n_params(gap) == 14_714_688 + head_gap == 15_243_591
    # The paper: CBAM adds "66K" parameters. Our default (r=8, MLP biases, bias-free
    # 3x3 spatial conv, no BN) adds 2*512*64 + 64 + 512 + 18 = 66,130.
    assert _n_params(cbam.attn) == _n_params(cbam) - _n_params(gap) == 66_130
    assert 66_130 / _n_params(gap) < 0.005  # < 0.5 % of the model
    # flatten at 224: 25,088 -> 512 replaces 512 -> 512
    assert _n_params(create_model("vgg16_flatten")) == 14_714_688 + 25_088 * 512 + 512 + 262_656 + 3_591


def test_cbam_parameter_counts_for_reduction_16():
    # timm's CBAM structure (no MLP bias, BN after the 3x3 spatial conv): 2*512*32 + 18 + 2
    assert _n_params(CbamModule(512, rd_ratio=1 / 16, spatial_kernel_size=3)) == 32_788
    assert _n_params(TimmCbamModule(512, rd_ratio=1 / 16, spatial_kernel_size=3)) == 32_788
    # Keras-style (MLP biases, bare conv) at r=16: 2*512*32 + 32 + 512 + 18
    keras16 = CbamModule(512, rd_ratio=1 / 16, spatial_kernel_size=3, mlp_bias=True, spatial_norm=False)
    assert _n_params(keras16) == 33_330
    assert _n_params(create_model("vgg16_cbam", cbam_rd_ratio=1 / 16)) - 15_243_591 == 33_330


# --------------------------------------------------------------------------- CBAM and hooks


def _capture(cbam: CbamModule) -> Dict[str, torch.Tensor]:
    maps: Dict[str, torch.Tensor] = {}
    cbam.channel_gate.register_forward_hook(lambda m, i, o: maps.__setitem__("channel", o))
    cbam.spatial_gate.register_forward_hook(lambda m, i, o: maps.__setitem__("spatial", o))
    return maps


def test_hooks_capture_cbam_maps_in_vgg16_cbam():
    torch.manual_seed(0)
    model = create_model("vgg16_cbam").eval()
    maps = _capture(model.attn)
    seen: Dict[str, torch.Tensor] = {}
    model.features.register_forward_hook(lambda m, i, o: seen.__setitem__("features", o))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        refined = model.forward_features(x)
    assert maps["channel"].shape == (2, 512, 1, 1)
    assert maps["spatial"].shape == (2, 1, 3, 3)
    for m in maps.values():
        assert ((m > 0) & (m < 1)).all()
    # F'' = M_s * (M_c * F): the hooked maps are exactly the ones applied
    expected = maps["spatial"] * (maps["channel"] * seen["features"])
    torch.testing.assert_close(refined, expected)
    assert model.get_submodule("attn.channel_gate") is model.attn.channel_gate


def test_cbam_maps_follow_the_equations():
    torch.manual_seed(0)
    cbam = CbamModule(64, rd_ratio=1 / 8, spatial_kernel_size=3, mlp_bias=True, spatial_norm=False).eval()
    maps = _capture(cbam)
    x = torch.randn(2, 64, 14, 14)
    with torch.no_grad():
        cbam(x)
        mlp = lambda v: cbam.channel.fc2(torch.relu(cbam.channel.fc1(v)))  # noqa: E731
        mc = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
        xc = mc * x
        pooled = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
        ms = torch.sigmoid(nn.functional.conv2d(pooled, cbam.spatial.conv.weight, padding=1))
    torch.testing.assert_close(maps["channel"], mc)
    torch.testing.assert_close(maps["spatial"], ms)
    assert maps["spatial"].shape == (2, 1, 14, 14)
    assert cbam.spatial.conv.kernel_size == (3, 3) and cbam.spatial.conv.bias is None


def test_cbam_keeps_timm_state_dict_when_spatial_norm():
    timm_cbam = TimmCbamModule(128, spatial_kernel_size=7)
    ours = CbamModule(128, spatial_kernel_size=7)
    ours.load_state_dict(timm_cbam.state_dict())  # strict: same keys and shapes
    with pytest.raises(ValueError, match="odd"):
        CbamModule(128, spatial_kernel_size=4)


def test_se_module_reexported_and_hookable():
    se = SEModule(32)
    got = []
    se.gate.register_forward_hook(lambda m, i, o: got.append(o))
    se(torch.randn(2, 32, 5, 5))
    assert got[0].shape == (2, 32, 1, 1)


# --------------------------------------------------------------------------- staged unfreezing


def test_conv_layers_last_first_and_staged_unfreezing():
    model = create_model("vgg16_cbam")
    convs = model.conv_layers()
    assert [n for n, _ in convs] == list(reversed(VGGFACE_CONV_NAMES))
    assert len(convs) == 13 and all(isinstance(m, nn.Conv2d) for _, m in convs)
    assert convs[0][1] is model.features[28] and convs[-1][1] is model.features[0]

    assert model.set_backbone_trainable(0) == []
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.attn.parameters())
    assert all(p.requires_grad for p in model.head.parameters())

    assert model.set_backbone_trainable(3) == ["conv5_3", "conv5_2", "conv5_1"]
    trainable = {n for n, p in model.features.named_parameters() if p.requires_grad}
    assert trainable == {f"{i}.{p}" for i in (24, 26, 28) for p in ("weight", "bias")}

    assert len(model.set_backbone_trainable(None)) == 13
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="0..13"):
        model.set_backbone_trainable(14)


def test_conv_layers_for_other_models():
    assert len(create_model("small_cnn").conv_layers()) == 4
    names = [n for n, _ in create_model("resnet50").conv_layers()]
    assert names[0] == "layer4.2.conv3" and names[-1] == "conv1"


# --------------------------------------------------------------------------- VGG-Face weights


@pytest.fixture(scope="module")
def vggface_file(tmp_path_factory) -> Path:
    """A vgg_face_dag.pth in the real key format, from random weights (convs + fc8 bias)."""
    torch.manual_seed(1)
    state: Dict[str, torch.Tensor] = {}
    convs = [m for m in make_vgg16_features().modules() if isinstance(m, nn.Conv2d)]
    for name, conv in zip(VGGFACE_CONV_NAMES, convs):
        state[f"{name}.weight"] = torch.randn_like(conv.weight)
        state[f"{name}.bias"] = torch.randn_like(conv.bias)
    state["fc8.bias"] = torch.zeros(2622)  # fc layers are ignored (fc6 alone would be 400 MB)
    path = tmp_path_factory.mktemp("weights") / "vgg_face_dag.pth"
    torch.save(state, path)
    return path


def _assert_loaded(model: nn.Module, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    for name, conv in model.conv_layers():
        assert torch.equal(conv.weight, state[f"{name}.weight"]), name
        assert torch.equal(conv.bias, state[f"{name}.bias"]), name


def test_vggface_round_trip(vggface_file):
    model = create_model("vgg16_cbam", pretrained=True, weights_path=vggface_file)
    _assert_loaded(model, vggface_file)
    other = load_vggface(create_model("vgg16_gap"), vggface_file)
    _assert_loaded(other, vggface_file)


def test_vggface_default_path_from_env(vggface_file, monkeypatch):
    monkeypatch.setenv("FER_WEIGHTS", str(vggface_file.parent))
    assert weights_dir() == vggface_file.parent
    assert vggface_path() == vggface_file
    _assert_loaded(create_model("vgg16_flatten", pretrained=True), vggface_file)
    monkeypatch.delenv("FER_WEIGHTS")
    assert vggface_path() == fer.REPO_ROOT / "weights" / "vgg_face_dag.pth"


def test_vggface_gray_input_sums_rgb(vggface_file):
    model = create_model("vgg16_gap", pretrained=True, weights_path=vggface_file, in_chans=1)
    rgb = torch.load(vggface_file, weights_only=True)["conv1_1.weight"]
    torch.testing.assert_close(model.features[0].weight, rgb.sum(1, keepdim=True))
    assert torch.equal(model.features[2].weight, torch.load(vggface_file, weights_only=True)["conv1_2.weight"])


def test_vggface_pretrained_cfg():
    cfg = create_model("vgg16_cbam").pretrained_cfg
    torch.testing.assert_close(torch.tensor(cfg["mean"]) * 255, torch.tensor(VGGFACE_MEAN), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.tensor(cfg["std"]) * 255, torch.ones(3))
    assert cfg["input_size"] == (3, 224, 224) and cfg["url"] == VGGFACE_URL
    assert create_model("vgg16_gap", weights="imagenet").pretrained_cfg["mean"] == (0.485, 0.456, 0.406)


def test_vggface_missing_file_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_model("vgg16_cbam", pretrained=True)
    msg = str(err.value)
    assert str(tmp_path / "vgg_face_dag.pth") in msg and VGGFACE_URL in msg and "FER_WEIGHTS" in msg


def test_vggface_wrong_keys(tmp_path):
    bad = tmp_path / "tv.pth"
    tv_layout = {f"features.{k}": v for k, v in make_vgg16_features().state_dict().items()}
    torch.save(tv_layout, bad)  # torchvision VGG16 layout: features.0.weight, ...
    with pytest.raises(ValueError, match=r"missing 26 of 26 conv keys.*torchvision"):
        load_vggface(create_model("vgg16_gap"), bad)


def test_vggface_wrong_shape(tmp_path, vggface_file):
    state = torch.load(vggface_file, weights_only=True)
    state["conv3_1.weight"] = torch.zeros(256, 64, 3, 3)
    bad = tmp_path / "shape.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"conv3_1\.weight has shape \(256, 64, 3, 3\).*\(256, 128, 3, 3\)"):
        load_vggface(create_model("vgg16_gap"), bad)


def test_vggface_not_a_state_dict(tmp_path):
    pickled = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), pickled)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_vggface(create_model("vgg16_gap"), pickled)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_vggface(create_model("vgg16_gap"), listed)


def test_vggface_needs_a_vgg(vggface_file):
    with pytest.raises(TypeError, match="VGG16"):
        load_vggface(create_model("small_cnn"), vggface_file)


# --------------------------------------------------------------------------- torchvision weights


@pytest.mark.parametrize(
    "name, kwargs, filename",
    [
        ("resnet50", {}, "resnet50-0676ba61.pth"),
        ("inception_v3", {}, "inception_v3_google-0cc3c7bd.pth"),
        ("vgg16_gap", {"weights": "imagenet"}, "vgg16-397923af.pth"),
    ],
)
def test_torchvision_weights_offline_error(name, kwargs, filename, tmp_path, monkeypatch):
    calls: List[str] = []

    def offline(url, dst, *args, **kw):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as err:
        create_model(name, pretrained=True, **kwargs)
    msg = str(err.value)
    assert len(calls) == 1 and calls[0].endswith(filename)
    assert str(tmp_path / "hub" / "checkpoints" / filename) in msg
    assert calls[0] in msg and "TORCH_HOME" in msg and "pretrained=False" in msg


def test_vgg_width_scales_every_conv_layer_and_refuses_pretrained_weights():
    from fer.models.cbam_vgg import vgg16_widths

    assert vgg16_widths(1.0) == (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
    assert vgg16_widths(0.125) == (8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64)
    m = create_model("vgg16_cbam", width=0.125, img_size=64)
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(vgg16_widths(0.125)) and m.num_features == 64
    # CBAM keeps its ratio 8: 2 * 64 * 8 + 8 + 64 channel MLP, 2 * 3 * 3 spatial
    assert sum(p.numel() for p in m.attn.parameters()) == 2 * 64 * 8 + 8 + 64 + 18
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(ValueError, match="width=1.0"):
        create_model("vgg16_gap", width=0.5, pretrained=True)
    with pytest.raises(ValueError, match="width"):
        vgg16_widths(0)
