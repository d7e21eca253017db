"""fer.models.dlib_resnet: dlib's face-recognition ResNet read from its .dat file.

Parity is measured against dlib itself (``dlib.face_recognition_model_v1``) on face
chips that dlib aligns: a photograph (``skimage.data.astronaut()``), a SynFER face
aligned from its known landmarks, and random noise. Everything is offline: the
weights come from the installed ``face-recognition-models`` package.
"""
from __future__ import annotations

import sys

import dlib
import numpy as np
import pytest
import torch
from torch import nn

from fer.data import SynFER
from fer.data.landmarks.backends import face_recognition_models_file
from fer.models import create_model, list_models
from fer.models.dlib_resnet import (
    DLIB_MEAN,
    DLIB_RESNET_ENV,
    DLIB_RESNET_FILENAME,
    Affine,
    DlibFaceResNet,
    DlibModelError,
    add_prev,
    dlib_preprocess,
    dlib_resnet_path,
    load_dlib_resnet,
    read_dlib_resnet,
)

skimage_data = pytest.importorskip("skimage.data")  # test dependency (scikit-image)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-4  # max |port - dlib| per descriptor component; measured ~3e-7


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def weights():
    return read_dlib_resnet()


@pytest.fixture(scope="module")
def descriptor_net(weights) -> DlibFaceResNet:
    model = DlibFaceResNet(num_classes=128, head="descriptor")
    return load_dlib_resnet(model, weights=weights).eval()


@pytest.fixture(scope="module")
def dlib_net():
    return dlib.face_recognition_model_v1(str(dlib_resnet_path()))


@pytest.fixture(scope="module")
def astronaut_chip() -> tuple[np.ndarray, np.ndarray, dlib.full_object_detection]:
    """(photo, 150 x 150 chip, 5-point shape): dlib's HOG detector + 5-point predictor."""
    img = skimage_data.astronaut()
    faces = dlib.get_frontal_face_detector()(img, 0)
    assert len(faces) >= 1
    face = max(faces, key=lambda r: r.area())
    sp = dlib.shape_predictor(str(face_recognition_models_file("shape_predictor_5_face_landmarks.dat")))
    shape = sp(img, face)
    chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
    return img, chip, shape


@pytest.fixture(scope="module")
def synthetic_chips() -> dict[str, np.ndarray]:
    """A SynFER face aligned by dlib from its ground-truth 68 landmarks, and noise."""
    ds = SynFER("clean", split="test", n=1, image_size=224, seed=0, with_relevance=False)
    s = ds[0]
    img = np.ascontiguousarray(s["image"].permute(1, 2, 0).numpy())
    pts = [dlib.point(int(round(x)), int(round(y))) for x, y in s["landmarks"].tolist()]
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, 223, 223), pts)
    face = dlib.get_face_chip(img, shape, size=150, padding=0.25)
    noise = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    return {"synfer": face, "noise": noise}


def _port(model: nn.Module, chips: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(dlib_preprocess(chips)).numpy().astype(np.float64)


# --------------------------------------------------------------------------- parity with dlib
def test_parity_on_a_photograph(descriptor_net, dlib_net, astronaut_chip):
    img, chip, shape = astronaut_chip
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    ref = np.array(dlib_net.compute_face_descriptor(img, shape))  # dlib's own chip extraction
    assert np.array_equal(ref, np.array(dlib_net.compute_face_descriptor(chip)))
    got = _port(descriptor_net, [chip])[0]
    assert got.shape == (128,)
    assert np.abs(got - ref).max() <= TOL, np.abs(got - ref).max()
    assert 0.5 < np.linalg.norm(ref) < 3  # a raw (not normalised) descriptor


def test_parity_on_synthetic_chips_in_one_batch(descriptor_net, dlib_net, synthetic_chips):
    names = list(synthetic_chips)
    got = _port(descriptor_net, [synthetic_chips[n] for n in names])
    for name, row in zip(names, got):
        ref = np.array(dlib_net.compute_face_descriptor(synthetic_chips[name]))
        assert np.abs(row - ref).max() <= TOL, (name, np.abs(row - ref).max())


def test_descriptors_tell_faces_apart(descriptor_net, astronaut_chip, synthetic_chips):
    """dlib's rule: descriptors closer than 0.6 are the same person."""
    chip = astronaut_chip[1]
    d = _port(descriptor_net, [chip, chip[:, ::-1].copy(), synthetic_chips["noise"]])
    assert np.linalg.norm(d[0] - d[1]) < 0.6  # mirrored photo: same person
    assert np.linalg.norm(d[0] - d[2]) > 0.6


def test_add_prev_zero_pads_at_the_end():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 1, 4, 4), 10.0)
    out = add_prev(a, b)
    assert out.shape == (1, 2, 4, 4)
    assert torch.equal(out[0, 0, :3, :3], torch.full((3, 3), 11.0))
    ten = torch.full((4,), 10.0)
    assert torch.equal(out[0, 0, 3], ten) and torch.equal(out[0, 0, :, 3], ten)
    assert torch.equal(out[0, 1, :3, :3], torch.ones(3, 3)) and out[0, 1, 3].abs().sum() == 0


def test_preprocess_matches_pretrained_cfg(astronaut_chip):
    chip = astronaut_chip[1]
    x = dlib_preprocess(chip)
    assert x.shape == (1, 3, 150, 150) and x.dtype == torch.float32
    r = chip[..., 0].astype(np.float32)
    assert torch.equal(x[0, 0], torch.from_numpy((r - np.float32(DLIB_MEAN[0])) / 256))
    cfg = create_model("dlib_resnet").pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    t = torch.from_numpy(chip).permute(2, 0, 1)[None].float() / 255
    assert torch.allclose((t - mean) / std, x, atol=1e-6)
    assert cfg["input_size"] == (3, 150, 150)


# --------------------------------------------------------------------------- the file
def test_file_found_without_importing_its_package_and_parsed(weights):
    assert weights.path.name == DLIB_RESNET_FILENAME
    assert "face_recognition_models" not in sys.modules  # its __init__ needs pkg_resources
    kinds = [layer.kind for layer in weights.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds[-1] == "fc"
    assert [layer.name for layer in weights.layers[:3]] == ["conv1", "bn1", "layer1.0.conv1"]  # input first
    assert weights.layers[0].tensors["weight"].shape == (32, 3, 7, 7)
    fc = weights.layers[-1].tensors
    assert fc["weight"].shape == (128, 256) and "bias" not in fc
    assert np.allclose(weights.mean, DLIB_MEAN, atol=1e-4) and weights.input_size == (150, 150)
    assert weights.distance_threshold == pytest.approx(0.6) and weights.margin == pytest.approx(0.04)
    strided = [(layer.name, layer.attrs["padding_y"]) for layer in weights.layers
               if layer.kind == "con" and layer.attrs["stride_y"] == 2]
    assert strided == [("conv1", 0)] + [(f"layer{i}.0.conv1", 0) for i in (2, 3, 4, 5)]


def test_env_var_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(DLIB_RESNET_ENV, str(tmp_path / "nope.dat"))
    with pytest.raises(FileNotFoundError, match=r"nope\.dat.*FER_DLIB_RESNET"):
        read_dlib_resnet()
    with pytest.raises(FileNotFoundError, match=r"missing\.dat \(from path\)"):
        read_dlib_resnet(tmp_path / "missing.dat")


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"ends early"),
    ("tag", r"expected a con_ layer for layer1\.0\.conv1, found a record tagged 'cox_4'"),
    ("version", r"expected the version of tensor conv1 params in \[2\], found 7"),
    ("append", r"3 unexpected bytes after the last layer"),
    ("empty", r"ends early"),
])
def test_damaged_file_names_the_file_and_the_fix(tmp_path, damage, message):
    data = bytearray(dlib_resnet_path().read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "tag":
        i = data.index(b"con_4", data.index(b"max_pool_2"))  # first conv after the stem
        data[i + 2] = ord("x")
    elif damage == "version":
        i = data.index(b"con_4")
        assert data[i + 5: i + 7] == b"\x01\x02"
        data[i + 6] = 7
    elif damage == "append":
        data += b"xyz"
    else:
        data = bytearray()
    bad = tmp_path / "broken.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(DlibModelError, match=message) as err:
        read_dlib_resnet(bad)
    text = str(err.value)
    assert str(bad) in text and "pip install --force-reinstall" in text
    assert "dlib_face_recognition_resnet" in text
    assert isinstance(err.value, ValueError)


# --------------------------------------------------------------------------- the FER builder
def test_registered_and_pretrained_trunk_equals_parsed_weights(weights):
    assert "dlib_resnet" in list_models(module="dlib_resnet")
    model = create_model("dlib_resnet", pretrained=True, num_classes=7)
    state = model.state_dict()
    parsed = weights.state_dict()
    trunk = [k for k in parsed if not k.startswith("head.")]
    assert len(trunk) == 2 * 29 + 2 * 29
    for k in trunk:
        assert torch.equal(state[k], parsed[k]), k
    assert all(isinstance(m, Affine) for n, m in model.named_modules() if n.endswith(("bn1", "bn2")))
    assert model.get_classifier().weight.shape == (7, 256) and model.get_classifier().bias is not None
    assert model.pretrained_cfg["tag"] == "dlib_v1"
    assert create_model("dlib_resnet").pretrained_cfg["tag"] == "scratch"


def test_fer_model_shapes_cam_layer_and_backward():
    torch.manual_seed(0)
    model = create_model("dlib_resnet", pretrained=True, num_classes=7).eval()
    x = torch.randn(2, 3, 150, 150)
    seen: dict[str, torch.Tensor] = {}
    h1 = model.cam_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("cam", o))
    h2 = model.head.global_pool.register_forward_hook(lambda m, i, o: seen.__setitem__("pool_in", i[0]))
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        pre = model.forward_head(feats, pre_logits=True)
    h1.remove()
    h2.remove()
    assert feats.shape == (2, 256, 2, 2) and logits.shape == (2, 7) and pre.shape == (2, 256)
    assert torch.equal(model.forward_head(feats), logits)
    assert torch.equal(seen["cam"], feats) and torch.equal(seen["pool_in"], feats)  # the map the head reads
    assert model.cam_layer is model.layer5[-1]
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 3]))
    loss.backward()
    for p in (model.conv1.weight, model.layer5[0].bn2.weight, model.head.fc.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_in_chans_num_classes_and_sizes():
    with pytest.raises(ValueError, match="in_chans=3"):
        create_model("dlib_resnet", pretrained=True, in_chans=1)
    model = create_model("dlib_resnet", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 150, 150)).shape == (1, 3)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (1, 150, 150) and len(cfg["mean"]) == len(cfg["std"]) == 1
    rgb = create_model("dlib_resnet").pretrained_cfg
    assert np.allclose(np.array(rgb["mean"]) * 255, DLIB_MEAN)
    assert np.allclose(np.array(rgb["std"]) * 255, 256)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    assert model.min_size == 103
    with pytest.raises(ValueError, match="at least 103x103"):
        model(torch.randn(1, 1, 102, 102))
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 103, 103)).shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match="norm_layer=Affine"):
        load_dlib_resnet(DlibFaceResNet(norm_layer=nn.BatchNorm2d))
