"""MAPNet: the mask-based attention parallel network.

Paper: L. Ju and X. Zhao, *Mask-based Attention Parallel Network for In-the-Wild Facial
Expression Recognition*, ICASSP 2022 (book key ``mapnet``). Two ResNet-50s run side by
side on the same face (the paper's Figure 1):

* the **main net** multiplies its ``layer4`` features by the landmark face mask ``M``
  (equation 3, :class:`MaskAttention`), splits them into ``K`` blocks along the
  **height**, average-pools each block and classifies it with two fully connected layers
  (with dropout) and a softmax; the block predictions are combined with weights
  ``delta_i`` that sum to 1, larger for inner blocks (equation 1);
* the **auxiliary net** applies the mask after ``layer1`` and splits its ``layer4``
  features along the **width**;
* the final prediction is ``P_F = 0.5 P_M + 0.5 P_A`` (equation 2).

===================  ==========================================================
model name           what
===================  ==========================================================
``mapnet``           MAPNet; keyword switches give every row of Table 2:
                     ``parallel=False, blocks=1, attention=False``: the baseline
                     (one ResNet-50, no split); ``attention=False``: +PS;
                     the defaults: +MAM (+WCL is the loss, :class:`fer.losses.MapNetLoss`)
``mapnet_baseline``  shorthand for the baseline row (one ResNet, GAP, one head)
===================  ==========================================================

The model takes the image **and its face mask**: ``model(x, mask)`` with ``x``
``B x C x H x W`` and ``mask`` ``B x 1 x H x W`` (or ``B x H x W``) in [0, 1] at the
image's size (:func:`fer.data.masks.face_mask` from landmarks: the dataset's own, the
landmark cache, or SynFER's exact ones). Each attention site shrinks it to its feature
map with :func:`fer.layers.resize_mask` (area interpolation). It returns a
:class:`MapNetOutput`; ``output.logits`` is ``log P_F`` (log-probabilities act as
logits: their softmax is ``P_F``), so accuracy, the default cross-entropy and
:func:`fer.explain.cam` work unchanged.

Every model here has ``forward_features(x, mask)`` (the two branches' last feature
maps), ``forward_head(features)`` (the output), ``cam_layer`` (the modules whose
outputs are the branches' last feature maps: the main net's layer-4 attention and the
auxiliary net's ``layer4``; Grad-CAM averages the two maps), ``attention_modules()``
(hook :class:`MaskAttention` outputs, or its ``factor`` submodule for ``alpha M +
beta`` at feature size, with :func:`fer.explain.capture`) and ``pretrained_cfg``.
:class:`MaskChannelInput` is the one-tensor wrapper: it takes the mask as an extra
last input channel, so Grad-CAM sees one input and one logits tensor.

.. note::
   **No mask given.** ``model(x)`` (``mask=None``) uses ``M = 1`` everywhere, "all of
   the image is face": then equation (3) is ``ReLU(2 X)``. This keeps the model usable
   by code that feeds one tensor (``fer.explain``, generic tests), but a model trained
   with masks should be given them (or wrapped in :class:`MaskChannelInput`).

.. note::
   **The two fully connected layers** ("reduce features dimension from 2048 to 7 and
   dropout is utilized"): the hidden size is not given. We use
   ``Linear(C, 512) - ReLU - Dropout(0.5) - Linear(512, num_classes)`` per block
   (``head_hidden``, ``drop_rate``), a separate head for every block ("train expression
   classifier of each block independently").

.. note::
   **Splitting into K blocks.** A 224 px input gives a 7 x 7 ``layer4`` map, which does
   not split evenly into the paper's best ``K = 4``. We pool with
   ``AdaptiveAvgPool2d((K, 1))`` (main) / ``((1, K))`` (auxiliary): PyTorch's adaptive
   bins, which overlap by one row where ``H`` is not a multiple of ``K``
   (rows 0-1, 1-3, 3-5, 5-6 for ``H = 7, K = 4``).

.. note::
   **Block weights delta_i** (equation 1) are not given, only "larger for the inner
   blocks" and that at ``K = 2`` both blocks weigh the same. We use triangular weights,
   ``delta_i`` proportional to ``min(i, K + 1 - i)``: ``K = 3``: 1/4, 1/2, 1/4;
   ``K = 4``: 1/6, 1/3, 1/3, 1/6 (:func:`block_weights`; ``delta=`` overrides).

.. note::
   **Combining.** Equations (1) and (2) mix *probabilities*: ``P = sum delta_i
   softmax(z_i)``. We compute ``log P`` with ``logsumexp`` (exact, stable).

.. note::
   **Two separate trunks.** The paper draws two complete ResNet-50s and never mentions
   sharing; the branches share nothing, not even the stem.

.. note::
   **Backbones for the CPU profiles** (a departure, for the book's ``smoke``/``demo``
   profiles only): ``backbone="resnet18"``/``"resnet34"`` (torchvision, BasicBlock) or
   ``"resnet10"`` (BasicBlock, one block per stage), with ``width`` scaling the
   BasicBlock channels (``width=0.25``: 16-128 channels), ``stem="small"`` (a 3 x 3 / 1
   convolution and a 2 x 2 max pool instead of ResNet's 7 x 7 / 2 and 3 x 3 / 2 pool, as
   CIFAR-style ResNets do for small inputs) and ``last_stride=1`` (as in PCB) to keep a
   ``layer4`` map tall and wide enough to split at small inputs. The paper's model is
   ``backbone="resnet50", width=1, last_stride=2, stem="resnet"``. Where ImageNet
   weights cannot load, a :class:`TrunkNet` (one trunk, pooled, a linear head) is
   pretrained on another task and :func:`load_trunks` copies its trunk into both
   branches (:mod:`fer.experiments.mapnet` does so on SynFER).

.. note::
   **ReLUs.** torchvision's ResNet ReLUs are in-place; the attention's ReLU is a
   separate ``nn.ReLU`` module (not in-place) so hooks see its input and output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from fer.layers import resize_mask

from ._hub import load_torchvision_state_dict
from ._registry import register_model

__all__ = [
    "BACKBONES",
    "MapNetOutput",
    "MaskAttention",
    "BlockHead",
    "SplitClassifier",
    "MapNetBranch",
    "MapNet",
    "MaskChannelInput",
    "mask_forward",
    "block_weights",
    "make_resnet_trunk",
    "TrunkNet",
    "TRUNK_MODULES",
    "load_trunks",
    "mapnet",
    "mapnet_baseline",
]

Backbone = Literal["resnet50", "resnet18", "resnet34", "resnet10"]
#: Trunks ``backbone=`` accepts: (block type, blocks per stage, torchvision weights or None).
BACKBONES: Dict[str, Tuple[type, Tuple[int, int, int, int], Any]] = {
    "resnet50": (Bottleneck, (3, 4, 6, 3), torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet34": (BasicBlock, (3, 4, 6, 3), torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet18": (BasicBlock, (2, 2, 2, 2), torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet10": (BasicBlock, (1, 1, 1, 1), None),
}
_IMAGENET_MEAN, _IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
_STAGES = ("layer1", "layer2", "layer3", "layer4")


# --------------------------------------------------------------------------- pieces


def block_weights(k: int) -> Tuple[float, ...]:
    """Equation (1)'s ``delta_i`` for ``k`` blocks: triangular, inner blocks heavier, sum 1.

    ``delta_i`` is proportional to ``min(i, k + 1 - i)`` (i = 1..k): 1; 1/2, 1/2;
    1/4, 1/2, 1/4; 1/6, 1/3, 1/3, 1/6; 1/9, 2/9, 3/9, 2/9, 1/9; ... (our choice: the
    paper only says inner blocks get larger values, and equal ones at ``k = 2``).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"the number of blocks must be an integer >= 1, got {k!r}")
    raw = [min(i, k + 1 - i) for i in range(1, int(k) + 1)]
    return tuple(r / sum(raw) for r in raw)


class MaskAttention(nn.Module):
    """Equation (3): ``F = ReLU(X * (alpha * M + beta))`` with ``beta = 2 - alpha``.

    ``forward(x, mask)``: ``x`` ``B x C x h x w`` features, ``mask`` ``B x 1 x H x W`` (or
    ``B x H x W``) in [0, 1] at any size, shrunk to ``h x w`` by area interpolation
    (:func:`fer.layers.resize_mask`); ``mask=None`` means ``M = 1``. With
    ``enabled=False`` (Table 2's rows without MAM) the module returns ``x`` untouched,
    so the hook point exists in every ablation.

    Hooks: the module's output is ``F``; ``factor`` (an ``nn.Identity``) outputs
    ``alpha * M + beta`` at feature size (``B x 1 x h x w``); ``act`` is the ReLU.
    """

    def __init__(self, alpha: float = 0.8, enabled: bool = True) -> None:
        super().__init__()
        alpha = float(alpha)
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 2.0):
            raise ValueError(f"alpha must be in [0, 2] (alpha + beta = 2, both >= 0), got {alpha!r}")
        self.alpha = alpha
        self.beta = 2.0 - alpha
        self.enabled = bool(enabled)
        self.factor = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.enabled:
            return x
        if mask is None:
            m = torch.ones(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        else:
            if mask.ndim == 3:
                mask = mask.unsqueeze(1)
            if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0]:
                raise ValueError(f"mask must be B x 1 x H x W (or B x H x W) with B = {x.shape[0]}, got shape "
                                 f"{tuple(mask.shape)}")
            m = resize_mask(mask.to(device=x.device, dtype=torch.float32), tuple(x.shape[-2:])).to(x.dtype)
        return self.act(x * self.factor(self.alpha * m + self.beta))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, enabled={self.enabled}"


class BlockHead(nn.Module):
    """One block's classifier: ``Linear(C, hidden) - ReLU - Dropout - Linear(hidden, K)``."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class SplitClassifier(nn.Module):
    """Split a feature map into ``blocks`` along ``axis``, pool each, classify each, combine (eq. 1).

    Returns ``(block_logits, log_p)``: ``B x K x classes`` logits per block and
    ``log P = log sum_i delta_i softmax(z_i)``, ``B x classes``.
    """

    def __init__(self, in_features: int, num_classes: int, blocks: int = 4, axis: Literal["height", "width"] = "height",
                 delta: Optional[Sequence[float]] = None, hidden: int = 512, drop_rate: float = 0.5) -> None:
        super().__init__()
        if axis not in ("height", "width"):
            raise ValueError(f"axis must be 'height' or 'width', got {axis!r}")
        weights = block_weights(blocks) if delta is None else tuple(float(d) for d in delta)
        if len(weights) != blocks or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"delta must hold {blocks} non-negative weights summing to 1 (equation 1), got {delta}")
        self.blocks, self.axis = int(blocks), axis
        self.pool = nn.AdaptiveAvgPool2d((blocks, 1) if axis == "height" else (1, blocks))
        self.heads = nn.ModuleList(BlockHead(in_features, num_classes, hidden, drop_rate) for _ in range(blocks))
        self.register_buffer("delta", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pool(x).flatten(2)  # B x C x K
        logits = torch.stack([head(pooled[:, :, i]) for i, head in enumerate(self.heads)], dim=1)
        log_delta = self.delta.to(logits.dtype).log().view(1, -1, 1)
        return logits, torch.logsumexp(F.log_softmax(logits, dim=-1) + log_delta, dim=1)

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}, axis={self.axis!r}, delta={[round(float(d), 4) for d in self.delta]}"


def make_resnet_trunk(backbone: Backbone = "resnet50", *, in_chans: int = 3, width: float = 1.0,
                      last_stride: int = 2, stem: Literal["resnet", "small"] = "resnet",
                      pretrained: bool = False) -> nn.ModuleDict:
    """A ResNet's ``stem`` (conv1, bn1, relu, maxpool) and ``layer1`` ... ``layer4`` as a ``ModuleDict``.

    ``width`` scales the BasicBlock trunks' channels (``64 * width`` ...); ``last_stride=1``
    keeps ``layer4`` at ``layer3``'s resolution. ``stem="small"`` replaces the 7 x 7 / 2
    convolution and the max pool (stride 4) by a 3 x 3 / 1 convolution and a 2 x 2 max
    pool (stride 2), for small inputs. ``pretrained`` loads torchvision's ImageNet
    weights (``resnet50``/``34``/``18`` at ``width=1`` with the ResNet stem only).
    """
    if stem not in ("resnet", "small"):
        raise ValueError(f"stem must be 'resnet' or 'small', got {stem!r}")
    if pretrained and stem != "resnet":
        raise ValueError("ImageNet weights come with the ResNet stem; pass stem='resnet'")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    block, layers, weights = BACKBONES[backbone]
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if block is Bottleneck and width != 1.0:
        raise ValueError("width applies to the BasicBlock trunks (resnet10/18/34); resnet50 is the paper's, width=1")
    if pretrained and (weights is None or width != 1.0):
        raise ValueError(f"no ImageNet weights for backbone={backbone!r} at width={width}; pretrained weights exist "
                         f"for resnet50, resnet34 and resnet18 at width=1")
    if block is Bottleneck or width == 1.0:
        tv = torchvision.models.ResNet(block, list(layers))
        if pretrained:
            tv.load_state_dict(load_torchvision_state_dict(weights))
        if last_stride == 1:
            _unstride(tv.layer4[0])
        stem = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)
        trunk = nn.ModuleDict({"stem": stem, **{n: getattr(tv, n) for n in _STAGES}})
    else:
        trunk = _narrow_trunk(layers, width, last_stride)
    if stem == "small":
        c = trunk["stem"][0].out_channels
        trunk["stem"] = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2))
        nn.init.kaiming_normal_(trunk["stem"][0].weight, mode="fan_out", nonlinearity="relu")
    if in_chans != 3:
        trunk["stem"][0] = _adapt_conv(trunk["stem"][0], in_chans)
    return trunk


def _unstride(block: nn.Module) -> None:
    for conv in (getattr(block, "conv1", None), getattr(block, "conv2", None)):
        if conv is not None and conv.stride != (1, 1):
            conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def _narrow_trunk(layers: Sequence[int], width: float, last_stride: int) -> nn.ModuleDict:
    widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
    stem_w = widths[0]
    stem = nn.Sequential(nn.Conv2d(3, stem_w, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_w), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1))
    out: Dict[str, nn.Module] = {"stem": stem}
    inplanes = stem_w
    for i, (planes, n) in enumerate(zip(widths, layers)):
        stride = 1 if i == 0 else (last_stride if i == 3 else 2)
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(inplanes, planes, stride, down)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
        out[_STAGES[i]] = nn.Sequential(*blocks)
        inplanes = planes
    for m in nn.ModuleList(out.values()).modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.ModuleDict(out)


def _adapt_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    from timm.models import adapt_input_conv

    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
    return new


def _trunk_channels(trunk: nn.ModuleDict) -> int:
    last = trunk["layer4"][-1]
    bn = last.bn3 if isinstance(last, Bottleneck) else last.bn2
    return int(bn.num_features)


# --------------------------------------------------------------------------- model


@dataclass
class MapNetOutput:
    """What :class:`MapNet` returns.

    Attributes:
        logits: ``log P_F`` (``B x classes``); equation (2). Its softmax is ``P_F``.
        main_log_p: ``log P_M``, the main net's combined prediction (equation 1).
        main_block_logits: ``B x K x classes``, the main net's per-block logits.
        aux_log_p: ``log P_A``, or ``None`` without the parallel branch.
        aux_block_logits: ``B x K x classes``, or ``None``.
    """

    logits: torch.Tensor
    main_log_p: torch.Tensor
    main_block_logits: torch.Tensor
    aux_log_p: Optional[torch.Tensor] = None
    aux_block_logits: Optional[torch.Tensor] = None

    @property
    def probs(self) -> torch.Tensor:
        """``P_F``."""
        return self.logits.exp()


class MapNetBranch(nn.Module):
    """One ResNet with a :class:`MaskAttention` after ``attn_after`` and a :class:`SplitClassifier`."""

    def __init__(self, trunk: nn.ModuleDict, *, attn_after: str, split: Literal["height", "width"], num_classes: int,
                 blocks: int, alpha: float, attention: bool, delta: Optional[Sequence[float]], hidden: int,
                 drop_rate: float) -> None:
        super().__init__()
        if attn_after not in _STAGES:
            raise ValueError(f"attn_after must be one of {_STAGES}, got {attn_after!r}")
        self.attn_after = attn_after
        self.stem = trunk["stem"]
        for n in _STAGES:
            setattr(self, n, trunk[n])
        self.attn = MaskAttention(alpha, enabled=attention)
        self.num_features = _trunk_channels(trunk)
        self.head = SplitClassifier(self.num_features, num_classes, blocks, split, delta, hidden, drop_rate)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.stem(x)
        for n in _STAGES:
            x = getattr(self, n)(x)
            if n == self.attn_after:
                x = self.attn(x, mask)
        return x

    @property
    def last_module(self) -> nn.Module:
        """The module whose output is the branch's last feature map."""
        return self.attn if self.attn_after == "layer4" else self.layer4

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.forward_features(x, mask))


class MapNet(nn.Module):
    """MAPNet (see the module docstring): ``forward(x, mask=None) -> MapNetOutput``.

    Args:
        num_classes: expressions (7).
        in_chans: image channels.
        img_size: nominal input side (for ``pretrained_cfg``; any size runs).
        backbone: ``"resnet50"`` (the paper), ``"resnet34"``, ``"resnet18"``, ``"resnet10"``.
        width: channel multiplier of BasicBlock trunks (CPU profiles only).
        last_stride: stride of ``layer4`` (2 as in ResNet; 1 doubles its map).
        stem: ``"resnet"`` (the paper) or ``"small"`` (stride 2 instead of 4; CPU profiles).
        blocks: ``K``, blocks per branch (paper: 4).
        alpha: equation (3)'s ``alpha`` (paper: 0.8); ``beta = 2 - alpha``.
        parallel: add the auxiliary net (Table 2's PS); ``False``: the main net only.
        attention: the mask-based attention modules (Table 2's MAM).
        main_attn_after, aux_attn_after: where each branch applies the mask (paper:
            ``layer4`` and ``layer1``).
        branch_weights: ``(a, b)`` of equation (2) (paper: 0.5, 0.5).
        delta: block weights of equation (1); default :func:`block_weights`.
        head_hidden, drop_rate: the per-block classifier (our choice: 512, 0.5).
        pretrained: ImageNet weights in both trunks (torchvision).
    """

    def __init__(self, num_classes: int = 7, in_chans: int = 3, img_size: int = 224, *, backbone: Backbone = "resnet50",
                 width: float = 1.0, last_stride: int = 2, stem: Literal["resnet", "small"] = "resnet",
                 blocks: int = 4, alpha: float = 0.8, parallel: bool = True,
                 attention: bool = True, main_attn_after: str = "layer4", aux_attn_after: str = "layer1",
                 branch_weights: Tuple[float, float] = (0.5, 0.5), delta: Optional[Sequence[float]] = None,
                 head_hidden: int = 512, drop_rate: float = 0.5, pretrained: bool = False) -> None:
        super().__init__()
        a, b = (float(v) for v in branch_weights)
        if min(a, b) < 0 or abs(a + b - 1.0) > 1e-6:
            raise ValueError(f"branch_weights (a, b) of equation (2) must be >= 0 and sum to 1, got {branch_weights}")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.backbone, self.width, self.last_stride, self.stem = backbone, width, last_stride, stem
        self.blocks, self.alpha, self.parallel, self.attention = int(blocks), float(alpha), parallel, attention
        self.branch_weights = (a, b)
        common = dict(num_classes=num_classes, blocks=blocks, alpha=alpha, attention=attention, delta=delta,
                      hidden=head_hidden, drop_rate=drop_rate)

        def trunk() -> nn.ModuleDict:
            return make_resnet_trunk(backbone, in_chans=in_chans, width=width, last_stride=last_stride, stem=stem,
                                     pretrained=pretrained)

        self.main = MapNetBranch(trunk(), attn_after=main_attn_after, split="height", **common)
        self.aux = MapNetBranch(trunk(), attn_after=aux_attn_after, split="width", **common) if parallel else None
        self.num_features = self.main.num_features
        weights = BACKBONES[backbone][2]
        self.pretrained_cfg: Dict[str, Any] = {
            "tag": "tv_in1k" if pretrained else "scratch", "num_classes": num_classes,
            "input_size": (in_chans, img_size, img_size), "mean": _IMAGENET_MEAN if in_chans == 3 else (0.449,),
            "std": _IMAGENET_STD if in_chans == 3 else (0.226,), "first_conv": "main.stem.0",
            "url": weights.url if weights is not None else None, "pretrained": bool(pretrained),
        }

    @property
    def default_cfg(self) -> Dict[str, Any]:
        return self.pretrained_cfg

    def branches(self) -> List[MapNetBranch]:
        return [self.main] + ([self.aux] if self.aux is not None else [])

    def attention_modules(self) -> Dict[str, MaskAttention]:
        """``{"main": ..., "aux": ...}``: the :class:`MaskAttention` modules (hook them)."""
        return {"main": self.main.attn, **({"aux": self.aux.attn} if self.aux is not None else {})}

    @property
    def cam_layer(self) -> List[nn.Module]:
        """Grad-CAM targets: each branch's last feature map (the main net's attention output, the aux ``layer4``)."""
        return [b.last_module for b in self.branches()]

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The branches' last feature maps, ``[main, aux]`` (``[main]`` without the parallel net)."""
        return [b.forward_features(x, mask) for b in self.branches()]

    def forward_head(self, features: Sequence[torch.Tensor]) -> MapNetOutput:
        """Split, classify and combine (equations 1 and 2)."""
        main_logits, main_log_p = self.main.head(features[0])
        if self.aux is None:
            return MapNetOutput(main_log_p, main_log_p, main_logits)
        aux_logits, aux_log_p = self.aux.head(features[1])
        a, b = self.branch_weights
        parts, logw = [], []
        for w, lp in ((a, main_log_p), (b, aux_log_p)):
            if w > 0:
                parts.append(lp)
                logw.append(math.log(w))
        stacked = torch.stack(parts, 0) + torch.tensor(logw, dtype=main_log_p.dtype, device=main_log_p.device).view(
            -1, 1, 1)
        return MapNetOutput(torch.logsumexp(stacked, 0), main_log_p, main_logits, aux_log_p, aux_logits)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> MapNetOutput:
        return self.forward_head(self.forward_features(x, mask))

    def get_classifier(self) -> nn.Module:
        return nn.ModuleList(b.head for b in self.branches())


class MaskChannelInput(nn.Module):
    """One-tensor wrapper: ``forward(x)`` with the face mask as the last channel, returns ``log P_F``.

    ``x`` is ``B x (C + 1) x H x W``: the model-ready image and the mask in [0, 1]
    (build it with :meth:`pack`). Grad-CAM (:func:`fer.explain.cam`) then runs on
    MAPNet like on any classifier, with each face's own mask, in any batch size.
    ``cam_layer`` is the wrapped model's.
    """

    def __init__(self, model: MapNet) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def pack(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image batch and ``B x 1 x H x W`` (or ``B x H x W``) masks as one tensor."""
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        return torch.cat([x, mask.to(x.dtype)], dim=1)

    @property
    def cam_layer(self) -> List[nn.Module]:
        return self.model.cam_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, :-1], x[:, -1:]).logits


# --------------------------------------------------------------------------- trunk pretraining

#: The modules of a trunk, as :func:`make_resnet_trunk` names them and every branch holds them.
TRUNK_MODULES: Tuple[str, ...] = ("stem",) + _STAGES


class TrunkNet(nn.Module):
    """One MAPNet trunk (:func:`make_resnet_trunk`), global average pooling and a linear head.

    What a pretraining trains when no ImageNet weights can load (the book's SynFER
    profiles): ``features`` is the trunk, keyed as :func:`load_trunks` reads it. Keyword
    arguments go to :func:`make_resnet_trunk` (``backbone``, ``width``, ``last_stride``,
    ``stem``); the head has ``num_classes`` outputs (logits, or a regression target).
    """

    def __init__(self, num_classes: int, *, backbone: Backbone = "resnet10", width: float = 1.0,
                 last_stride: int = 2, stem: Literal["resnet", "small"] = "resnet") -> None:
        super().__init__()
        self.features = make_resnet_trunk(backbone, width=width, last_stride=last_stride, stem=stem)
        self.num_features = _trunk_channels(self.features)
        self.head = nn.Linear(self.num_features, num_classes)

    @property
    def cam_layer(self) -> nn.Module:
        return self.features["layer4"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in TRUNK_MODULES:
            x = self.features[name](x)
        return self.head(x.mean((2, 3)))


def load_trunks(model: MapNet, trunk_state: Dict[str, torch.Tensor]) -> MapNet:
    """Load one trunk's weights into every branch of ``model`` (both trunks start alike).

    ``trunk_state``: a :class:`TrunkNet`'s ``features`` state dict (keys ``stem.0.weight``,
    ``layer1.0.conv1.weight``, ...). Every trunk tensor must be there with its shape (a
    ``RuntimeError`` from :meth:`~torch.nn.Module.load_state_dict` otherwise: pretrain the
    same ``backbone``, ``width``, ``last_stride`` and ``stem``); the heads and attention
    keep their fresh weights.
    """
    for branch in model.branches():
        trunk = nn.ModuleDict({name: getattr(branch, name) for name in TRUNK_MODULES})
        trunk.load_state_dict(trunk_state)
    return model


# --------------------------------------------------------------------------- builders


@register_model
def mapnet(pretrained: bool = False, **kwargs: Any) -> MapNet:
    """MAPNet (Ju & Zhao 2022): two ResNet-50s, mask attention at layer4 / layer1, K = 4, alpha = 0.8.

    ``pretrained=True`` loads torchvision's ``IMAGENET1K_V1`` weights into both trunks (the
    paper starts from ImageNet), from ``$TORCH_HOME/hub/checkpoints/`` (downloaded when
    online; offline, the error names the file). Keyword arguments go to :class:`MapNet`
    (``backbone``, ``blocks``, ``alpha``, ``parallel``, ``attention``, ...).
    """
    return MapNet(pretrained=pretrained, **kwargs)


@register_model
def mapnet_baseline(pretrained: bool = False, **kwargs: Any) -> MapNet:
    """Table 2's baseline: one ResNet (the main net), no split (K = 1), no mask attention."""
    for k in ("parallel", "blocks", "attention"):
        if k in kwargs:
            raise ValueError(f"mapnet_baseline fixes {k}; use mapnet({k}=...) for other rows")
    return MapNet(pretrained=pretrained, parallel=False, blocks=1, attention=False, **kwargs)


def mask_forward(module: nn.Module, batch: Any) -> MapNetOutput:
    """``forward_fn`` for :func:`fer.train.fit`: ``module(batch["image"], batch.get("mask"))``."""
    mask = batch.get("mask") if hasattr(batch, "get") else None
    if mask is not None and not mask.is_floating_point():
        mask = mask.float()
    return module(batch["image"], mask)
