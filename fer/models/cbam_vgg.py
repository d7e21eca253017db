"""VGG16 + CBAM for FER2013, and the paper's baselines.

Paper: A. Ghimire, S. Shrestha and Y. Ibrahim, *Facial Expression Recognition
Using Attention Technique*, 2020 (book key ``cbam_vgg``). The VGG16 conv base,
pre-trained on VGG-Face (Parkhi, Vedaldi & Zisserman, *Deep Face Recognition*,
BMVC 2015), is followed by CBAM (Woo et al., ECCV 2018), global average pooling
and a classifier of two 512-unit ReLU layers, each preceded by dropout 0.5, then
``num_classes`` logits. The paper compares convolutional bases (its Figure 7):

===================  ==========================================================
model name           paper row
===================  ==========================================================
``small_cnn``        (a) Small Convolutional Network + Classifier
``resnet50``         (b) ResNet50 (ImageNet) + Classifier
``vgg16_flatten``    (d) VGG16 (ImageNet) / (f) VGG16 (VGG-Face) + Flatten + Classifier
``inception_v3``     (e) InceptionV3 (ImageNet) + GAP + Classifier
``vgg16_gap``        (g) VGG16 (VGG-Face) + GAP + Classifier
``vgg16_cbam``       proposed: VGG16 (VGG-Face) + CBAM + GAP + Classifier
===================  ==========================================================

Every model here has:

* ``forward_features(x)`` -> the last feature map (after CBAM for ``vgg16_cbam``),
  ``forward_head(x, pre_logits=False)`` -> logits (softmax belongs to the loss);
* ``cam_layer`` -- the default Grad-CAM target: the module whose output is that
  last feature map (``model.attn``, the CBAM, for ``vgg16_cbam``; otherwise the
  last module of ``model.features``). Use ``target_layers=[model.cam_layer]``;
* ``attn`` -- the attention module (``nn.Identity`` without attention). For CBAM,
  ``model.attn.channel_gate`` and ``model.attn.spatial_gate`` output the channel
  map (``B x C x 1 x 1``) and the spatial map (``B x 1 x H x W``): read them with
  forward hooks (:class:`fer.layers.CbamModule`);
* ``conv_layers()`` -- the conv base's convolutions, *last first*, and
  ``set_backbone_trainable(last_n)`` -- freeze the conv base except its last
  ``last_n`` conv layers, for the paper's staged fine-tuning. A "layer" is one
  ``nn.Conv2d`` (its weight and bias); VGG16 has 13, named as in VGG-Face
  (``conv5_3`` ... ``conv1_1``);
* ``pretrained_cfg`` -- timm-style dict with the ``mean``/``std`` (in 0-1 units)
  and ``input_size`` of the weights the model starts from.

``pretrained=True`` on the VGG models loads VGG-Face into the conv base from a file
you supply (:func:`load_vggface`; ``weights="imagenet"`` loads torchvision's
ImageNet VGG16 instead, the paper's row (d)); on ``resnet50`` / ``inception_v3``
it loads torchvision's ImageNet weights (downloaded into the torch.hub cache,
with an error naming the file when offline).

.. note::
   **CBAM configuration** (the paper gives only the equations and "filter size 3").
   The spatial convolution is 3x3 as the paper says (the CBAM paper uses 7x7).
   The reduction ratio is not stated; we use ``r = 8`` with biases in the channel
   MLP and a bias-free, BN-free spatial convolution. That is the configuration of
   the widely used Keras CBAM (``cbam_block(ratio=8)``) and the only common one
   that reproduces the paper's "66K extra parameters": for 512 channels it adds
   2*512*64 + 64 + 512 + 2*3*3 = **66,130** parameters. timm's defaults
   (``r = 16``, no MLP bias, BN after the spatial conv) would add 32,788 (3x3 kernel).
   ``vgg16_cbam(cbam_rd_ratio=..., cbam_kernel_size=..., cbam_mlp_bias=...,
   cbam_spatial_norm=...)`` changes each choice.

.. note::
   **Where CBAM sits.** After the complete conv base, i.e. after VGG16's last max
   pool (``7 x 7 x 512`` at 224 px), as in the paper's Figure 1 and a Keras
   ``VGG16(include_top=False)`` base.

.. note::
   **Small Convolutional Network** (row (a)) is not described in the paper. We use
   four blocks of 3x3 conv (32, 64, 128, 256 channels) + BatchNorm + ReLU + 2x2 max
   pool, then GAP and the paper's classifier (0.39 M conv parameters).

.. note::
   **ResNet50 / InceptionV3 heads.** Row (b) does not say how ResNet50's features
   reach the classifier; we use GAP as in row (e). Row (c), ResNet50 pre-trained on
   VGGFace2, is not provided (no converted weights in torchvision); ``resnet50``
   covers rows (b)/(c) architecturally. ImageNet weights are torchvision's
   ``IMAGENET1K_V1`` (the original ResNet-50 release that Keras also ships).
   ``inception_v3`` has no auxiliary classifier and ``transform_input=False``: its
   ``pretrained_cfg`` says to normalise with mean = std = 0.5 (inputs in [-1, 1]),
   which is what torchvision's ``transform_input`` converts ImageNet-normalised
   input to. InceptionV3 needs inputs of at least 75 x 75 px.

.. note::
   **Input.** FER2013 is 48 x 48 grayscale, rescaled to 224 x 224 by the paper;
   feed it as 3 identical channels to use the RGB weights as they are, or pass
   ``in_chans=1``: pretrained first-layer weights are then summed over RGB
   (timm's ``adapt_input_conv``) and ``pretrained_cfg`` averages mean/std.

.. note::
   **Width** (not in the paper). ``VggFer(width=...)`` scales every conv layer's
   channels (``width=0.125``: 8 ... 64 channels), so that the book's ``demo`` profile
   can train the same 13-layer architecture on a 2-core CPU. ``width=1`` (default) is
   VGG16; pretrained weights exist only for it.

.. note::
   **ReLUs are not in-place** in the conv bases built here (torchvision's are), so
   hooks and Grad-CAM on any intermediate conv output see the pre-activation values.
"""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv
from torch import nn

from fer.layers import CbamModule

from .._dry_run import dry_run
from ._hub import WeightFile, load_torchvision_state_dict, note_missing_weights, weights_dir
from ._registry import register_model

__all__ = [
    "VGG16_CFG",
    "VGGFACE_CONV_NAMES",
    "VGGFACE_URL",
    "VGGFACE_FILENAME",
    "VGGFACE_MEAN",
    "VGG16_CONV_PARAMS",
    "ClassifierHead",
    "VggFer",
    "SmallCnn",
    "BackboneFer",
    "make_vgg16_features",
    "fold_batchnorm",
    "vgg16_widths",
    "vggface_path",
    "load_vggface",
    "vggface_weight_file",
    "small_cnn",
    "vgg16_flatten",
    "vgg16_gap",
    "vgg16_cbam",
    "resnet50",
    "inception_v3",
]

#: VGG16 (configuration "D"): conv widths, "M" = 2x2 max pool.
VGG16_CFG: Tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: Names of VGG16's 13 conv layers in VGG-Face / ``vgg_face_dag.pth``, first to last.
VGGFACE_CONV_NAMES: Tuple[str, ...] = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)
#: Albanie's PyTorch conversion of the MatConvNet VGG-Face model (a state_dict).
VGGFACE_URL = "http://www.robots.ox.ac.uk/~albanie/models/pytorch-mcn/vgg_face_dag.pth"
VGGFACE_FILENAME = "vgg_face_dag.pth"
#: VGG-Face input mean in 0-255 units, **RGB order** (``meta["mean"]`` of the
#: conversion, whose std is 1). Caffe's BGR release lists it reversed.
VGGFACE_MEAN: Tuple[float, float, float] = (129.186279296875, 104.76238250732422, 93.59396362304688)
#: Parameters of the VGG16 conv base with 3 input channels.
VGG16_CONV_PARAMS = 14_714_688

_IMAGENET_MEAN, _IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
_INCEPTION_MIN_SIZE = 75

GlobalPool = Literal["avg", "flatten"]
VggWeights = Literal["vggface", "imagenet"]


# --------------------------------------------------------------------------- blocks


class ClassifierHead(nn.Module):
    """The paper's classifier: pool, then [dropout, linear, act] per hidden layer, then logits.

    Args:
        in_features: channels of the feature map (``"avg"``) or its ``C*H*W``
            (``"flatten"``).
        num_classes: logits; 0 makes ``fc`` an identity (features only).
        hidden_dims: widths of the hidden layers (paper: two of 512).
        drop_rate: dropout before each hidden layer (paper: 0.5).
        act_layer: hidden activation (paper: ReLU).
        global_pool: ``"avg"`` (global average pooling) or ``"flatten"``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 7,
        hidden_dims: Sequence[int] = (512, 512),
        drop_rate: float = 0.5,
        act_layer: Type[nn.Module] = nn.ReLU,
        global_pool: GlobalPool = "avg",
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", "flatten"):
            raise ValueError(f"global_pool must be 'avg' or 'flatten', got {global_pool!r}")
        self.global_pool_type = global_pool
        self.in_features = in_features
        self.global_pool = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)) if global_pool == "avg" else nn.Flatten(1)
        )
        layers: List[nn.Module] = []
        width = in_features
        for hidden in hidden_dims:
            layers += [nn.Dropout(drop_rate), nn.Linear(width, hidden), act_layer()]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.num_features = width
        self.fc: nn.Module = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def reset(self, num_classes: int) -> None:
        """Replace the last layer by a fresh one with ``num_classes`` outputs."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"the classifier expects {self.in_features} features after "
                f"{self.global_pool_type!r} pooling, got {x.shape[1]}; with global_pool='flatten' "
                f"build the model for your input size (img_size=...)"
            )
        x = self.hidden(x)
        return x if pre_logits else self.fc(x)


def vgg16_widths(width: float = 1.0) -> Tuple[int, ...]:
    """Output channels of VGG16's 13 conv layers scaled by ``width`` (at least 1 each)."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(max(1, int(round(int(v) * width))) for v in VGG16_CFG if v != "M")


def make_vgg16_features(
    in_chans: int = 3, act_layer: Type[nn.Module] = nn.ReLU, width: float = 1.0,
    norm_layer: Optional[Type[nn.Module]] = None,
) -> nn.Sequential:
    """VGG16's conv base, with torchvision's indices (``features.0`` = conv1_1, ...).

    Ends with the fifth max pool: ``512 * width x H/32 x W/32``. Activations are built
    as ``act_layer()`` (not in-place). ``width`` scales every layer's channels.
    ``norm_layer`` (e.g. ``nn.BatchNorm2d``; default none) is inserted after each conv,
    as in torchvision's ``vgg16_bn`` (whose indices then apply).
    """
    layers: List[nn.Module] = []
    channels = in_chans
    widths = iter(vgg16_widths(width))
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = next(widths)
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if norm_layer is not None:
                layers.append(norm_layer(out))
            layers.append(act_layer())
            channels = out
    features = nn.Sequential(*layers)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def fold_batchnorm(state: Dict[str, torch.Tensor], *, eps: float = 1e-5) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The ``(weight, bias)`` of each conv of a conv base's ``state`` dict, batch norm folded in.

    ``state`` is an ``nn.Sequential`` conv base's ``state_dict()`` (keys ``"<index>.weight"``
    ...), with or without a ``BatchNorm2d`` right after each conv (as
    :func:`make_vgg16_features` builds them with ``norm_layer``). A conv followed by a
    batch norm becomes the one conv that computes, in eval mode, what the pair computes
    (:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`, with the norm's running
    statistics); a conv without one is returned as it is. In conv order, first first.

    ``eps``: the norms' epsilon (not in a state dict; ``BatchNorm2d``'s default).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    def index(key: str) -> int:
        return int(key.split(".", 1)[0])

    convs = sorted({index(k) for k, v in state.items() if k.endswith(".weight") and v.ndim == 4})
    out = []
    for i in convs:
        w, b = state[f"{i}.weight"], state.get(f"{i}.bias")
        if f"{i + 1}.running_mean" in state:
            bn = {name: state[f"{i + 1}.{name}"] for name in ("running_mean", "running_var", "weight", "bias")}
            w, b = fuse_conv_bn_weights(w, b, bn["running_mean"], bn["running_var"], eps, bn["weight"], bn["bias"])
        elif b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype)
        out.append((w.detach().clone(), b.detach().clone()))
    return out


# --------------------------------------------------------------------------- models


class _FerCnn(nn.Module):
    """Shared plumbing: conv base ``features`` -> ``attn`` -> ``head``."""

    features: nn.Sequential
    attn: nn.Module
    head: ClassifierHead
    pretrained_cfg: Dict[str, Any]

    def _conv_names(self) -> Optional[Sequence[str]]:
        return None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (after attention when the model has it)."""
        return self.attn(self.features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool + classifier; ``pre_logits=True`` returns the last hidden layer."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def cam_layer(self) -> nn.Module:
        """Default Grad-CAM target: the module whose output is the last feature map.

        The attention module when there is one (CBAM output), else the last module
        of the conv base.
        """
        return self.features[-1] if isinstance(self.attn, nn.Identity) else self.attn

    @property
    def default_cfg(self) -> Dict[str, Any]:
        """Alias of ``pretrained_cfg`` (older timm name)."""
        return self.pretrained_cfg

    def conv_layers(self) -> List[Tuple[str, nn.Conv2d]]:
        """The conv base's ``nn.Conv2d`` layers as ``(name, module)``, **last first**.

        ``conv_layers()[:n]`` are "the last n conv layers" (each = conv weight + bias).
        VGG names follow VGG-Face (``conv5_3``, ...); others use module paths.
        """
        convs = [(n, m) for n, m in self.features.named_modules() if isinstance(m, nn.Conv2d)]
        names = self._conv_names()
        if names is not None:
            convs = [(name, m) for name, (_, m) in zip(names, convs)]
        return convs[::-1]

    def set_backbone_trainable(self, last_n: Optional[int] = None) -> List[str]:
        """Freeze the conv base except its last ``last_n`` conv layers.

        ``None`` unfreezes the whole conv base, ``0`` freezes all of it. Attention
        and classifier stay trainable. Other parameters of the conv base (BatchNorm)
        follow the conv base: trainable only when ``last_n is None``.

        Returns:
            names of the trainable conv layers, last first.
        """
        convs = self.conv_layers()
        if last_n is not None and not 0 <= last_n <= len(convs):
            raise ValueError(f"last_n must be in 0..{len(convs)} or None, got {last_n}")
        for p in self.features.parameters():
            p.requires_grad_(last_n is None)
        chosen = convs if last_n is None else convs[:last_n]
        for _, conv in chosen:
            for p in conv.parameters():
                p.requires_grad_(True)
        for p in list(self.attn.parameters()) + list(self.head.parameters()):
            p.requires_grad_(True)
        return [n for n, _ in chosen]

    def get_classifier(self) -> nn.Module:
        """The last (logits) layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the logits layer (the hidden layers are kept)."""
        self.num_classes = num_classes
        self.head.reset(num_classes)


class VggFer(_FerCnn):
    """VGG16 conv base + optional attention + the paper's classifier.

    Args:
        num_classes: logits.
        in_chans: input channels.
        global_pool: ``"avg"`` (GAP, rows (g) and proposed) or ``"flatten"`` (rows (d), (f)).
        img_size: input side the model is built for; sets ``input_size`` and, with
            ``"flatten"``, the classifier's input ``512 * (img_size // 32) ** 2``.
        attn_layer: attention after the conv base, called as ``attn_layer(512)``
            (e.g. ``partial(CbamModule, spatial_kernel_size=3)``); ``None`` for none.
        hidden_dims: classifier hidden widths.
        drop_rate: dropout before each hidden layer.
        act_layer: activation of conv base and classifier.
        width: multiplies every conv layer's channels (``1.0``: VGG16; see the
            module note); the attention then sees ``round(512 * width)`` channels.
        norm_layer: normalisation after each conv (``nn.BatchNorm2d``: torchvision's
            ``vgg16_bn`` layout); ``None`` (the paper's VGG16) for none. A SynFER
            pretraining may train with it (``benchmarks/bench_pretrain.py --norm bn``)
            and hand a plain VGG16 its weights folded (:func:`fold_batchnorm`).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 3,
        global_pool: GlobalPool = "avg",
        img_size: int = 224,
        attn_layer: Optional[Callable[[int], nn.Module]] = None,
        hidden_dims: Sequence[int] = (512, 512),
        drop_rate: float = 0.5,
        act_layer: Type[nn.Module] = nn.ReLU,
        width: float = 1.0,
        norm_layer: Optional[Type[nn.Module]] = None,
    ) -> None:
        super().__init__()
        if img_size < 32:
            raise ValueError(f"VGG16 halves the input 5 times: img_size must be >= 32, got {img_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.width = float(width)
        self.num_features = vgg16_widths(width)[-1]
        self.features = make_vgg16_features(in_chans, act_layer, width, norm_layer=norm_layer)
        self.attn = attn_layer(self.num_features) if attn_layer is not None else nn.Identity()
        side = img_size // 32
        in_features = self.num_features * (side * side if global_pool == "flatten" else 1)
        self.head = ClassifierHead(in_features, num_classes, hidden_dims, drop_rate, act_layer, global_pool)
        self.pretrained_cfg = _vgg_cfg("vggface", in_chans, img_size, num_classes)

    def _conv_names(self) -> Sequence[str]:
        return VGGFACE_CONV_NAMES


class SmallCnn(_FerCnn):
    """The paper's "small convolutional network" baseline, as we chose it (see module note).

    Blocks of 3x3 conv (no bias) + norm + act + 2x2 max pool, then GAP and the
    paper's classifier.

    Args:
        num_classes: logits.
        in_chans: input channels.
        widths: output channels of each block.
        norm_layer: normalisation after each conv.
        act_layer: activation of blocks and classifier.
        hidden_dims: classifier hidden widths.
        drop_rate: dropout before each hidden layer.
        img_size: input side recorded in ``pretrained_cfg`` (the model accepts any
            size >= ``2 ** len(widths)``).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256),
        norm_layer: Type[nn.Module] = nn.BatchNorm2d,
        act_layer: Type[nn.Module] = nn.ReLU,
        hidden_dims: Sequence[int] = (512, 512),
        drop_rate: float = 0.5,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
        channels = in_chans
        for i, width in enumerate(widths):
            blocks[f"block{i + 1}"] = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                norm_layer(width),
                act_layer(),
                nn.MaxPool2d(2, 2),
            )
            channels = width
        self.features = nn.Sequential(blocks)
        self.num_features = channels
        self.attn = nn.Identity()
        self.head = ClassifierHead(channels, num_classes, hidden_dims, drop_rate, act_layer, "avg")
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.pretrained_cfg = _cfg(
            tag="scratch", in_chans=in_chans, img_size=img_size, num_classes=num_classes,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv="features.block1.0",
        )


class BackboneFer(_FerCnn):
    """A torchvision backbone's conv stages (``features``) + GAP + the paper's classifier.

    Built by :func:`resnet50` and :func:`inception_v3`.

    Args:
        features: conv base as an ``nn.Sequential`` ending at the last feature map.
        num_features: channels of that map.
        num_classes: logits.
        in_chans: input channels (recorded; ``features`` must already accept them).
        hidden_dims: classifier hidden widths.
        drop_rate: dropout before each hidden layer.
        act_layer: classifier activation.
        min_size: smallest input side the backbone accepts (checked in ``forward_features``).
    """

    def __init__(
        self,
        features: nn.Sequential,
        num_features: int,
        num_classes: int = 7,
        in_chans: int = 3,
        hidden_dims: Sequence[int] = (512, 512),
        drop_rate: float = 0.5,
        act_layer: Type[nn.Module] = nn.ReLU,
        min_size: int = 32,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = num_features
        self.min_size = min_size
        self.features = features
        self.attn = nn.Identity()
        self.head = ClassifierHead(num_features, num_classes, hidden_dims, drop_rate, act_layer, "avg")
        self.pretrained_cfg = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"this backbone needs inputs of at least {self.min_size}x{self.min_size} px, "
                f"got {tuple(x.shape[-2:])}"
            )
        return super().forward_features(x)


# --------------------------------------------------------------------------- weights


def _cfg(
    tag: str,
    in_chans: int,
    img_size: int,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **extra: Any,
) -> Dict[str, Any]:
    """timm-style ``pretrained_cfg``; mean/std are averaged when ``in_chans != 3``."""
    if in_chans != len(mean):
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return {
        "tag": tag,
        "input_size": (in_chans, img_size, img_size),
        "interpolation": "bilinear",
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "num_classes": num_classes,
        "classifier": "head.fc",
        **extra,
    }


def _vgg_cfg(weights: str, in_chans: int, img_size: int, num_classes: int) -> Dict[str, Any]:
    if weights == "vggface":
        # meta of vgg_face_dag: mean in 0-255 (RGB), std 1 -> in 0-1 units: mean/255, std 1/255.
        return _cfg(
            "vggface", in_chans, img_size, num_classes,
            mean=tuple(m / 255.0 for m in VGGFACE_MEAN), std=(1 / 255.0,) * 3,
            first_conv="features.0", url=VGGFACE_URL, file=VGGFACE_FILENAME,
        )
    if weights == "imagenet":
        return _cfg(
            "tv_in1k", in_chans, img_size, num_classes, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
            first_conv="features.0", url=torchvision.models.VGG16_Weights.IMAGENET1K_V1.url,
        )
    raise ValueError(f"weights must be 'vggface' or 'imagenet', got {weights!r}")


def vggface_path(path: Optional[Union[str, Path]] = None) -> Path:
    """Path of the VGG-Face file: ``path``, else ``$FER_WEIGHTS/vgg_face_dag.pth``,
    else ``<repo>/weights/vgg_face_dag.pth``."""
    return Path(path).expanduser() if path is not None else weights_dir() / VGGFACE_FILENAME


def vggface_weight_file(path: Optional[Union[str, Path]] = None) -> WeightFile:
    """The VGG-Face :class:`~fer.models.WeightFile` (:func:`vggface_path`) and how to get it."""
    file = vggface_path(path)
    return WeightFile(file, _vggface_fix(file))


def _vggface_fix(file: Path) -> str:
    return (f"Fix: download {VGGFACE_URL} (Albanie's PyTorch conversion of VGG-Face, "
            f"Parkhi et al. 2015; 580 MB) and save it as {file}, or set $FER_WEIGHTS to the "
            f"folder holding {VGGFACE_FILENAME}, or pass path=...")


def _vgg_features_of(model: nn.Module) -> nn.Sequential:
    features = model if isinstance(model, nn.Sequential) else getattr(model, "features", None)
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)] if isinstance(features, nn.Module) else []
    if len(convs) != len(VGGFACE_CONV_NAMES):
        raise TypeError(
            f"load_vggface needs a VGG16 (13 conv layers in model.features, e.g. "
            f"fer.models.create_model('vgg16_gap')), got {type(model).__name__} with {len(convs)} conv layers"
        )
    return features  # type: ignore[return-value]


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path} could not be read as a state_dict with torch.load(weights_only=True) "
            f"({type(err).__name__}: {err}). Expected Albanie's converted VGG-Face state_dict "
            f"{VGGFACE_URL}; a file holding a whole pickled model is not supported."
        ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state_dict (a mapping of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_vggface(model: nn.Module, path: Optional[Union[str, Path]] = None) -> nn.Module:
    """Copy VGG-Face's 13 conv layers into a VGG16 conv base; the fc layers are ignored.

    Args:
        model: a VGG16 model from this package (or any module whose ``features`` is a
            torchvision-layout VGG16 conv base, or that conv base itself).
        path: ``vgg_face_dag.pth`` (see :func:`vggface_path` for the default).
            Keys ``conv1_1.weight``, ``conv1_1.bias``, ..., ``conv5_3.bias`` (and
            ``fc6``/``fc7``/``fc8``, unused).

    Returns:
        ``model``, with weights loaded. With ``in_chans != 3`` the first layer's
        RGB weights are adapted (summed for 1 channel).

    Raises:
        FileNotFoundError: no file; the message names the path, the URL and the fix.
        ValueError: not a state_dict, missing conv keys, or wrong shapes.
        TypeError: ``model`` is not a VGG16.

    The weights expect RGB input in 0-255 minus :data:`VGGFACE_MEAN` (std 1), i.e.
    ``pretrained_cfg`` of the VGG models: mean ``VGGFACE_MEAN / 255``, std ``1/255``
    on 0-1 tensors.
    """
    features = _vgg_features_of(model)
    weight_file = vggface_weight_file(path)
    file = weight_file.path
    if not weight_file.present:
        if dry_run():  # the dry run goes on with random weights and lists the file
            note_missing_weights(file, weight_file.fix)
            return model
        raise FileNotFoundError(f"VGG-Face weights not found at {file}.\n{weight_file.fix}")
    state = _read_state_dict(file)
    wanted = [f"{n}.{p}" for n in VGGFACE_CONV_NAMES for p in ("weight", "bias")]
    missing = [k for k in wanted if k not in state]
    if missing:
        hint = ""
        if any(re.fullmatch(r"(features\.)?\d+\.weight", k) for k in state):
            hint = " It looks like a torchvision VGG state_dict; use weights='imagenet' for that."
        raise ValueError(
            f"{file} is not the VGG-Face vgg_face_dag state_dict: missing {len(missing)} of "
            f"{len(wanted)} conv keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); "
            f"it has keys like {', '.join(list(state)[:4]) or 'none'}.{hint} Expected {VGGFACE_URL}."
        )
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    new: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    for i, (name, conv) in enumerate(zip(VGGFACE_CONV_NAMES, convs)):
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        expected = (conv.out_channels, 3 if i == 0 else conv.in_channels, 3, 3)
        if tuple(weight.shape) != expected or tuple(bias.shape) != (conv.out_channels,):
            raise ValueError(
                f"{file}: {name}.weight has shape {tuple(weight.shape)} and {name}.bias "
                f"{tuple(bias.shape)}; VGG16 needs {expected} and ({conv.out_channels},). "
                f"Expected VGG-Face from {VGGFACE_URL}."
            )
        if i == 0 and conv.in_channels != 3:
            weight = adapt_input_conv(conv.in_channels, weight)
        new[i] = (weight, bias)
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(new[i][0])
            conv.bias.copy_(new[i][1])
    return model


def _load_vgg_imagenet(model: VggFer) -> None:
    state = load_torchvision_state_dict(torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if model.in_chans != 3:
        feats["0.weight"] = adapt_input_conv(model.in_chans, feats["0.weight"])
    model.features.load_state_dict(feats)


def _adapt_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_chans`` inputs, weights adapted (timm's rule)."""
    if in_chans == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


# --------------------------------------------------------------------------- builders


def _build_vgg(
    pretrained: bool,
    weights: VggWeights,
    weights_path: Optional[Union[str, Path]],
    **kwargs: Any,
) -> VggFer:
    model = VggFer(**kwargs)
    model.pretrained_cfg = _vgg_cfg(weights, model.in_chans, model.img_size, model.num_classes)
    if pretrained and model.width != 1.0:
        raise ValueError(f"pretrained weights exist only for width=1.0 (VGG16), got width={model.width}; "
                         f"pass pretrained=False or width=1.0")
    if pretrained:
        if weights == "vggface":
            load_vggface(model, weights_path)
        else:
            _load_vgg_imagenet(model)
    return model


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCnn:
    """Row (a): the small CNN baseline (our choice of architecture; trained from scratch).

    Keyword arguments go to :class:`SmallCnn`.
    """
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights: the paper trains it from scratch")
    return SmallCnn(**kwargs)


@register_model
def vgg16_flatten(
    pretrained: bool = False,
    weights: VggWeights = "vggface",
    weights_path: Optional[Union[str, Path]] = None,
    **kwargs: Any,
) -> VggFer:
    """Rows (d)/(f): VGG16 conv base + flatten + classifier.

    The classifier input is ``512 * (img_size // 32) ** 2`` (25,088 at 224 px), so
    build with the ``img_size`` you feed. ``pretrained=True`` loads ``weights``
    (``"vggface"``: :func:`load_vggface` from ``weights_path``; ``"imagenet"``:
    torchvision). Other keyword arguments go to :class:`VggFer`.
    """
    return _build_vgg(pretrained, weights, weights_path, global_pool="flatten", **kwargs)


@register_model
def vgg16_gap(
    pretrained: bool = False,
    weights: VggWeights = "vggface",
    weights_path: Optional[Union[str, Path]] = None,
    **kwargs: Any,
) -> VggFer:
    """Row (g): VGG16 conv base + global average pooling + classifier (the paper's baseline).

    ``pretrained`` / ``weights`` / ``weights_path`` as in :func:`vgg16_flatten`.
    """
    return _build_vgg(pretrained, weights, weights_path, global_pool="avg", **kwargs)


@register_model
def vgg16_cbam(
    pretrained: bool = False,
    weights: VggWeights = "vggface",
    weights_path: Optional[Union[str, Path]] = None,
    cbam_rd_ratio: float = 1.0 / 8,
    cbam_kernel_size: int = 3,
    cbam_mlp_bias: bool = True,
    cbam_spatial_norm: bool = False,
    **kwargs: Any,
) -> VggFer:
    """The proposed model: VGG16 conv base + CBAM + GAP + classifier.

    The defaults reproduce the paper's "66K extra parameters" (66,130; see the
    module note). CBAM is ``model.attn``; hook ``model.attn.channel_gate`` /
    ``model.attn.spatial_gate`` for its maps. ``pretrained`` / ``weights`` /
    ``weights_path`` as in :func:`vgg16_flatten`; pretrained weights cover the conv
    base only (CBAM and classifier start from scratch, as in the paper).
    """
    attn = partial(
        CbamModule,
        rd_ratio=cbam_rd_ratio,
        spatial_kernel_size=cbam_kernel_size,
        mlp_bias=cbam_mlp_bias,
        spatial_norm=cbam_spatial_norm,
    )
    return _build_vgg(pretrained, weights, weights_path, global_pool="avg", attn_layer=attn, **kwargs)


def _tv_kwargs(kwargs: Dict[str, Any]) -> Tuple[int, int, int, Dict[str, Any]]:
    num_classes = kwargs.pop("num_classes", 7)
    in_chans = kwargs.pop("in_chans", 3)
    img_size = kwargs.pop("img_size", 224)
    return num_classes, in_chans, img_size, kwargs


@register_model
def resnet50(pretrained: bool = False, **kwargs: Any) -> BackboneFer:
    """Rows (b)/(c): torchvision ResNet-50 conv stages + GAP + the paper's classifier.

    ``pretrained=True`` loads torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (from
    ``$TORCH_HOME/hub/checkpoints/resnet50-0676ba61.pth``, downloaded when online).
    Keyword arguments: ``num_classes``, ``in_chans``, ``img_size`` and those of
    :class:`BackboneFer` (``hidden_dims``, ``drop_rate``, ``act_layer``).
    """
    num_classes, in_chans, img_size, kwargs = _tv_kwargs(kwargs)
    tv = torchvision.models.resnet50(weights=None)
    if pretrained:
        tv.load_state_dict(load_torchvision_state_dict(torchvision.models.ResNet50_Weights.IMAGENET1K_V1))
    tv.conv1 = _adapt_first_conv(tv.conv1, in_chans)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    features = nn.Sequential(OrderedDict((n, getattr(tv, n)) for n in names))
    model = BackboneFer(features, 2048, num_classes, in_chans, min_size=32, **kwargs)
    model.pretrained_cfg = _cfg(
        "tv_in1k", in_chans, img_size, num_classes, _IMAGENET_MEAN, _IMAGENET_STD,
        first_conv="features.conv1", url=torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url,
    )
    return model


@register_model
def inception_v3(pretrained: bool = False, **kwargs: Any) -> BackboneFer:
    """Row (e): torchvision Inception-v3 conv stages + GAP + the paper's classifier.

    No auxiliary classifier, ``transform_input=False``; inputs of at least 75 x 75 px,
    normalised with mean = std = 0.5 (see ``pretrained_cfg``). ``pretrained=True``
    loads ``Inception_V3_Weights.IMAGENET1K_V1`` (from
    ``$TORCH_HOME/hub/checkpoints/inception_v3_google-0cc3c7bd.pth``, downloaded when
    online). Keyword arguments as in :func:`resnet50`.
    """
    num_classes, in_chans, img_size, kwargs = _tv_kwargs(kwargs)
    weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
    tv = torchvision.models.Inception3(aux_logits=False, transform_input=False, init_weights=not pretrained)
    if pretrained:
        state = load_torchvision_state_dict(weights)
        tv.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")})
    tv.Conv2d_1a_3x3.conv = _adapt_first_conv(tv.Conv2d_1a_3x3.conv, in_chans)
    names = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
        "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
    )
    features = nn.Sequential(OrderedDict((n, getattr(tv, n)) for n in names))
    model = BackboneFer(features, 2048, num_classes, in_chans, min_size=_INCEPTION_MIN_SIZE, **kwargs)
    model.pretrained_cfg = _cfg(
        "tv_in1k", in_chans, img_size, num_classes, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
        first_conv="features.Conv2d_1a_3x3.conv", url=weights.url,
    )
    return model
