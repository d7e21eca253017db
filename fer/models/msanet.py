"""MSA-Net: the multi-branch multi-scale attention network, and its ablations.

Paper: C. Ghadai and D. Patra, *Multi-branch Multi-Scale Attention Network for Facial
Expression Recognition (FER) in-the-Wild*, 2022 (book key ``msanet``). A ResNet-18
feature pre-extractor (stem, max pool, ``layer1``, ``layer2``: ``128 x 28 x 28`` for a
224 px face) feeds three parallel branches. Each branch is a *multi-scale module* (two
Res2Net-like multi-scale blocks in series, Figure 2 and equation (1)) followed by CBAM
(Woo et al., ECCV 2018); the branches use 7x7, 5x5 and 3x3 kernels. The three outputs
are concatenated along the channels, globally average-pooled and classified by one
linear layer, trained with the beta-scaled cross-entropy of equation (2), beta = 0.6
(:class:`fer.losses.BetaCrossEntropy`).

=====================  =================================================================
model name             paper row (Table 3)
=====================  =================================================================
``msanet_baseline``    Baseline: ResNet-18 (its four stages, GAP, linear classifier)
``msanet_ms``          MS: the pre-extractor + one branch with the multi-scale module
``msanet_as``          AS: MS + CBAM (one branch, multi-scale + attention)
``msanet``             MSA-Net: three branches (7x7, 5x5, 3x3), each multi-scale + CBAM
=====================  =================================================================

Every model here has:

* ``stem`` -- the ResNet-18 pre-extractor (torchvision's ``conv1``, ``bn1``, ``relu``,
  ``maxpool``, ``layer1``, ``layer2``, module names kept so ImageNet weights load);
* ``forward_features(x)`` -> the last feature map (the concatenated branch outputs,
  ``384 x 28 x 28`` at 224 px for ``msanet``; ``512 x 7 x 7`` for the baseline),
  ``forward_head(x, pre_logits=False)`` -> logits (softmax belongs to the loss);
* ``cam_layer`` -- the default Grad-CAM target, the module whose output is that map
  (``model.fuse``, the concatenation, for the MSA-Net models; ``model.layer4`` for the
  baseline);
* ``branches`` -- (MSA-Net models) one :class:`MsaBranch` per kernel size; hook
  ``model.branches[i].attn.channel_gate`` / ``.spatial_gate`` for the CBAM maps of
  branch ``i`` (:class:`fer.layers.CbamModule`), ``model.branches[i]`` for its output;
* ``pretrained_cfg`` -- timm-style dict (ImageNet mean/std, ``input_size``).

``pretrained=True`` loads torchvision's ImageNet ResNet-18 (``IMAGENET1K_V1``) into the
pre-extractor (and, for the baseline, into ``layer3``/``layer4`` too); the branches and
the classifier start from scratch.

.. note::
   **Kernel per branch, not per block position.** Section 2.1 gives the first, second
   and third *branch* 7x7, 5x5 and 3x3 kernels; Figure 2's caption and the text under
   equation (1) instead index "multi-scale block 1, 2, 3" by a position ``p`` in
   {1, 2, 3}, although a branch holds two blocks. We follow Section 2.1 and Figure 1:
   branch ``b`` uses kernel ``kernel_sizes[b]`` in both of its blocks.

.. note::
   **Equation (1) versus the text.** Equation (1) reads ``Y_i = P_i(X_i) + Y_(i-1)``:
   each subset is convolved once and the results are summed cumulatively, so a block's
   receptive field grows by one ``k x k`` convolution only. The text (and Res2Net, which
   it follows) says each operator ``P_i`` "receives feature information from all feature
   subsets X_j, j < i", which is Res2Net's ``Y_i = P_i(X_i + Y_(i-1))``, whose receptive
   field grows with ``i``. ``hierarchy="equation"`` (default) implements equation (1) as
   printed; ``hierarchy="res2net"`` the text's reading. The chapter measures both, and its
   ``paper`` profile trains ``"res2net"`` (:class:`fer.experiments.msanet.Setup`).

.. note::
   **Block internals** (the paper gives only Figure 2). 1x1 conv + BN + ReLU reduces
   ``C`` channels to ``C * bottleneck_ratio`` (default 0.5, i.e. 128 -> 64), split into
   ``scale = 4`` subsets (Res2Net's default); each ``P_i`` is a ``k x k`` conv (stride 1,
   "same" padding, no bias) + BN + ReLU; the concatenated ``Y_i`` go through a 1x1 conv
   + BN back to ``C`` channels, added to the input, then ReLU (Res2Net's bottleneck). The
   spatial size is kept (28 x 28 at 224 px): the paper mentions no down-sampling.

.. note::
   **CBAM configuration.** The paper cites CBAM and gives no settings, so we use the
   CBAM authors' own: reduction ratio 16 with biases in the channel MLP, a 7x7 spatial
   convolution followed by BatchNorm (:class:`fer.layers.CbamModule` with
   ``rd_ratio=1/16, mlp_bias=True, spatial_kernel_size=7, spatial_norm=True``).

.. note::
   **Ablation rows.** The paper's "Resnet-18 is considered as one branch baseline": we
   take the whole ResNet-18 (four stages, GAP, one linear layer). For MS and AS the
   paper does not say which kernel the single branch uses; we use the first branch's
   (7x7). ``kernel_sizes`` changes it.

.. note::
   **Width** (not in the paper). ``width`` multiplies the ResNet-18 channels
   (64/128/256/512), built from torchvision's ``BasicBlock``; the branches follow the
   pre-extractor's channels. It exists so that the book's CPU profiles can train; ImageNet
   weights exist for ``width=1`` only. Where they cannot load, :func:`resnet18_classifier`
   (the same ResNet-18 at any width, with a head of any size) is pretrained on another
   task, and :func:`load_resnet18` puts its weights where ImageNet's would go
   (:mod:`fer.experiments.msanet` does so on SynFER).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Type

import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock

from fer.layers import CbamModule

from ._hub import load_torchvision_state_dict
from ._registry import register_model

__all__ = [
    "KERNEL_SIZES",
    "RESNET18_WIDTHS",
    "MultiScaleBlock",
    "MsaBranch",
    "Concat",
    "MsaNet",
    "ResNetBaseline",
    "resnet18_trunk",
    "resnet18_classifier",
    "load_resnet18",
    "paper_cbam",
    "msanet",
    "msanet_as",
    "msanet_ms",
    "msanet_baseline",
]

#: Kernel of each branch (Section 2.1): 7x7, 5x5, 3x3.
KERNEL_SIZES = (7, 5, 3)
#: Output channels of ResNet-18's conv1 and its four stages.
RESNET18_WIDTHS = (64, 64, 128, 256, 512)

Hierarchy = Literal["equation", "res2net"]

_IMAGENET_MEAN, _IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


# --------------------------------------------------------------------------- blocks


class MultiScaleBlock(nn.Module):
    """Figure 2 / equation (1): a Res2Net-like block with ``k x k`` operators (timm's res2net style).

    1x1 reduce -> split into ``scale`` subsets ``X_i`` -> ``P_i`` (``k x k`` conv, BN,
    act) combined hierarchically -> concat -> 1x1 restore -> + input -> act.

    Args:
        channels: input = output channels.
        kernel_size: ``k`` of the operators ``P_i`` (odd).
        scale: number of subsets ``n``.
        bottleneck_ratio: reduced channels = ``channels * bottleneck_ratio`` (rounded to a
            multiple of ``scale``, at least ``scale``).
        hierarchy: ``"equation"``: ``Y_i = P_i(X_i) + Y_(i-1)`` (equation (1));
            ``"res2net"``: ``Y_i = P_i(X_i + Y_(i-1))`` (the text, Res2Net).
        norm_layer, act_layer: normalisation and activation.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        scale: int = 4,
        bottleneck_ratio: float = 0.5,
        hierarchy: Hierarchy = "equation",
        norm_layer: Type[nn.Module] = nn.BatchNorm2d,
        act_layer: Type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number (the block keeps H x W), got {kernel_size}")
        if scale < 1:
            raise ValueError(f"scale (number of subsets) must be >= 1, got {scale}")
        if hierarchy not in ("equation", "res2net"):
            raise ValueError(f"hierarchy must be 'equation' or 'res2net', got {hierarchy!r}")
        width = max(1, int(round(channels * bottleneck_ratio / scale)))
        self.channels, self.kernel_size, self.scale, self.width = channels, kernel_size, scale, width
        self.hierarchy = hierarchy
        self.conv1 = nn.Conv2d(channels, width * scale, 1, bias=False)
        self.bn1 = norm_layer(width * scale)
        self.act1 = act_layer()
        self.convs = nn.ModuleList(
            [nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, bias=False) for _ in range(scale)])
        self.bns = nn.ModuleList([norm_layer(width) for _ in range(scale)])
        self.acts = nn.ModuleList([act_layer() for _ in range(scale)])
        self.conv3 = nn.Conv2d(width * scale, channels, 1, bias=False)
        self.bn3 = norm_layer(channels)
        self.act3 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.act1(self.bn1(self.conv1(x)))
        subsets = torch.split(out, self.width, 1)
        ys: List[torch.Tensor] = []
        y: Optional[torch.Tensor] = None
        for i, (conv, bn, act) in enumerate(zip(self.convs, self.bns, self.acts)):
            xi = subsets[i]
            if self.hierarchy == "equation":
                p = act(bn(conv(xi)))
                y = p if y is None else p + y
            else:
                y = act(bn(conv(xi if y is None else xi + y)))
            ys.append(y)
        out = self.bn3(self.conv3(torch.cat(ys, 1)))
        return self.act3(out + shortcut)


class MsaBranch(nn.Module):
    """One parallel path: ``depth`` multi-scale blocks with one kernel size, then attention.

    ``blocks`` is an ``nn.Sequential`` of :class:`MultiScaleBlock`; ``attn`` the CBAM
    (``nn.Identity`` without attention).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        depth: int = 2,
        attn_layer: Optional[Callable[[int], nn.Module]] = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth (multi-scale blocks per branch) must be >= 1, got {depth}")
        self.kernel_size = kernel_size
        self.blocks = nn.Sequential(*[MultiScaleBlock(channels, kernel_size, **block_kwargs) for _ in range(depth)])
        self.attn = attn_layer(channels) if attn_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.blocks(x))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dim`` (a module, so Grad-CAM and hooks can target it)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), self.dim)


def paper_cbam(channels: int) -> CbamModule:
    """CBAM as the CBAM authors configured it (module note): ratio 16, MLP bias, 7x7 + BN."""
    return CbamModule(channels, rd_ratio=1.0 / 16, mlp_bias=True, spatial_kernel_size=7, spatial_norm=True)


# --------------------------------------------------------------------------- ResNet-18 trunk


def _scaled(width: float) -> List[int]:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(4, int(round(c * width))) for c in RESNET18_WIDTHS]


def resnet18_trunk(in_chans: int = 3, width: float = 1.0, pretrained: bool = False) -> torchvision.models.ResNet:
    """torchvision's ResNet-18, optionally with every stage's channels scaled by ``width``.

    ``width=1`` is ``torchvision.models.resnet18``; other widths rebuild ``conv1``,
    ``bn1`` and the four stages with torchvision's own ``_make_layer`` and ``BasicBlock``.
    ``pretrained`` loads ``ResNet18_Weights.IMAGENET1K_V1`` (``width=1`` only). With
    ``in_chans != 3`` the first conv's weights are adapted (timm's ``adapt_input_conv``).
    """
    if pretrained and width != 1.0:
        raise ValueError(f"ImageNet weights exist only for width=1.0 (ResNet-18), got width={width}; "
                         f"pass pretrained=False or width=1.0")
    tv = torchvision.models.resnet18(weights=None)
    if pretrained:
        tv.load_state_dict(load_torchvision_state_dict(torchvision.models.ResNet18_Weights.IMAGENET1K_V1))
    if width != 1.0:
        c = _scaled(width)
        tv.conv1 = nn.Conv2d(3, c[0], kernel_size=7, stride=2, padding=3, bias=False)
        tv.bn1 = nn.BatchNorm2d(c[0])
        tv.inplanes = c[0]
        tv.layer1 = tv._make_layer(BasicBlock, c[1], 2)
        tv.layer2 = tv._make_layer(BasicBlock, c[2], 2, stride=2)
        tv.layer3 = tv._make_layer(BasicBlock, c[3], 2, stride=2)
        tv.layer4 = tv._make_layer(BasicBlock, c[4], 2, stride=2)
        tv.fc = nn.Linear(c[4], 1000)
        for m in tv.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    if in_chans != 3:
        old = tv.conv1
        tv.conv1 = nn.Conv2d(in_chans, old.out_channels, 7, 2, 3, bias=False)
        with torch.no_grad():
            tv.conv1.weight.copy_(adapt_input_conv(in_chans, old.weight))
    return tv


def resnet18_classifier(num_classes: int, *, width: float = 1.0) -> torchvision.models.ResNet:
    """:func:`resnet18_trunk` at ``width`` with a ``num_classes``-wide ``fc``: what a pretraining
    trains in place of ImageNet; :func:`load_resnet18` reads its state dict."""
    tv = resnet18_trunk(3, width)
    tv.fc = nn.Linear(_scaled(width)[4], num_classes)
    return tv


#: torchvision ResNet-18 modules that make the pre-extractor (``model.stem``), in order.
_PRE_EXTRACTOR = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")


def load_resnet18(model: nn.Module, state: Dict[str, torch.Tensor]) -> nn.Module:
    """Load a torchvision-named ResNet-18 ``state`` (e.g. of :func:`resnet18_classifier`) where
    ``pretrained=True`` puts ImageNet's: the pre-extractor (``model.stem``), and for
    :class:`ResNetBaseline` ``layer3`` and ``layer4`` too. Branches and classifier keep their
    start. A missing or mis-shaped tensor is a ``RuntimeError`` (pretrain the same ``width``)."""
    model.stem.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in _PRE_EXTRACTOR})
    if isinstance(model, ResNetBaseline):
        for name in ("layer3", "layer4"):
            getattr(model, name).load_state_dict({k[len(name) + 1:]: v for k, v in state.items()
                                                  if k.startswith(f"{name}.")})
    return model


def _stem_of(tv: torchvision.models.ResNet) -> nn.Sequential:
    return nn.Sequential(OrderedDict((n, getattr(tv, n)) for n in _PRE_EXTRACTOR))


def _zero_init_residuals(model: nn.Module, *, stem: bool) -> None:
    """Zero the last BN weight of every residual block (``stem=False``: leave the stem's alone)."""
    for name, m in model.named_modules():
        if isinstance(m, MultiScaleBlock):
            m.zero_init_last()
        elif isinstance(m, BasicBlock) and (stem or not name.startswith("stem.")):
            nn.init.zeros_(m.bn2.weight)


def _cfg(in_chans: int, img_size: int, num_classes: int, tag: str) -> Dict[str, Any]:
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    return {"tag": tag, "input_size": (in_chans, img_size, img_size), "interpolation": "bilinear",
            "mean": tuple(mean), "std": tuple(std), "num_classes": num_classes, "classifier": "fc",
            "first_conv": "stem.conv1", "url": torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url}


# --------------------------------------------------------------------------- models


class _Base(nn.Module):
    num_classes: int
    num_features: int
    pretrained_cfg: Dict[str, Any]
    fc: nn.Module
    drop: nn.Module

    @property
    def default_cfg(self) -> Dict[str, Any]:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, dropout, then the linear classifier (``pre_logits``: the pooled vector ``v``)."""
        v = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return v if pre_logits else self.fc(self.drop(v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]


def _check_input(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected a B x {in_chans} x H x W input, got {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"inputs must be at least {min_size} x {min_size} px, got {tuple(x.shape[-2:])}")


class MsaNet(_Base):
    """ResNet-18 pre-extractor + parallel multi-scale (attention) branches + concat + GAP + linear.

    Args:
        num_classes: logits.
        in_chans: input channels.
        img_size: input side recorded in ``pretrained_cfg`` (any side >= 16 works).
        kernel_sizes: one branch per entry, its kernel (paper: ``(7, 5, 3)``).
        depth: multi-scale blocks per branch (paper: 2).
        attention: CBAM at the end of each branch (``attn_layer``).
        attn_layer: the attention, called as ``attn_layer(channels)`` (default :func:`paper_cbam`).
        scale, bottleneck_ratio, hierarchy: of each :class:`MultiScaleBlock`.
        width: ResNet-18 channel multiplier (module note).
        drop_rate: dropout before the classifier (not in the paper: 0).
        zero_init_last: start the last BN of every residual block at zero (identity blocks at
            initialisation, timm's res2net default and torchvision's ``zero_init_residual``;
            the paper does not say); pretrained stem blocks keep their weights.
        pretrained: load ImageNet weights into the pre-extractor.
    """

    min_size = 16

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 3,
        img_size: int = 224,
        kernel_sizes: Sequence[int] = KERNEL_SIZES,
        depth: int = 2,
        attention: bool = True,
        attn_layer: Optional[Callable[[int], nn.Module]] = None,
        scale: int = 4,
        bottleneck_ratio: float = 0.5,
        hierarchy: Hierarchy = "equation",
        width: float = 1.0,
        drop_rate: float = 0.0,
        zero_init_last: bool = False,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) < 1:
            raise ValueError("kernel_sizes needs at least one branch")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.width = float(width)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.stem = _stem_of(resnet18_trunk(in_chans, width, pretrained))
        channels = _scaled(width)[2]
        attn = (attn_layer or paper_cbam) if attention else None
        self.branches = nn.ModuleList([
            MsaBranch(channels, k, depth, attn, scale=scale, bottleneck_ratio=bottleneck_ratio, hierarchy=hierarchy)
            for k in self.kernel_sizes])
        if zero_init_last:
            _zero_init_residuals(self, stem=not pretrained)
        self.fuse = Concat(1)
        self.branch_channels = channels
        self.num_features = channels * len(self.kernel_sizes)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = _cfg(in_chans, img_size, num_classes, "tv_in1k" if pretrained else "scratch")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``F_r``: the branch outputs concatenated along channels (``B x (n_branches * C) x H/8 x W/8``)."""
        _check_input(x, self.in_chans, self.min_size)
        x = self.stem(x)
        return self.fuse([branch(x) for branch in self.branches])

    @property
    def cam_layer(self) -> nn.Module:
        """Default Grad-CAM target: the concatenation of the branches (``F_r``)."""
        return self.fuse


class ResNetBaseline(_Base):
    """Table 3's baseline: ResNet-18 (same pre-extractor, then ``layer3``, ``layer4``), GAP, linear.

    Args: as :class:`MsaNet` (``num_classes``, ``in_chans``, ``img_size``, ``width``,
    ``drop_rate``, ``zero_init_last``, ``pretrained``).
    """

    min_size = 32

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 3,
        img_size: int = 224,
        width: float = 1.0,
        drop_rate: float = 0.0,
        zero_init_last: bool = False,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.width = float(width)
        tv = resnet18_trunk(in_chans, width, pretrained)
        self.stem = _stem_of(tv)
        self.layer3, self.layer4 = tv.layer3, tv.layer4
        if zero_init_last and not pretrained:
            _zero_init_residuals(self, stem=True)
        self.num_features = _scaled(width)[4]
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = _cfg(in_chans, img_size, num_classes, "tv_in1k" if pretrained else "scratch")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_chans, self.min_size)
        return self.layer4(self.layer3(self.stem(x)))

    @property
    def cam_layer(self) -> nn.Module:
        """Default Grad-CAM target: ``layer4`` (the last feature map)."""
        return self.layer4


# --------------------------------------------------------------------------- builders


@register_model
def msanet(pretrained: bool = False, **kwargs: Any) -> MsaNet:
    """MSA-Net: three branches (7x7, 5x5, 3x3 kernels), each two multi-scale blocks + CBAM.

    ``pretrained=True`` loads ImageNet ResNet-18 into the pre-extractor (torchvision's
    ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``). Keyword arguments go to
    :class:`MsaNet`.
    """
    kwargs.setdefault("kernel_sizes", KERNEL_SIZES)
    return MsaNet(pretrained=pretrained, **kwargs)


@register_model
def msanet_as(pretrained: bool = False, **kwargs: Any) -> MsaNet:
    """Table 3's AS: one branch (7x7 by default), multi-scale module + CBAM."""
    kwargs.setdefault("kernel_sizes", KERNEL_SIZES[:1])
    return MsaNet(pretrained=pretrained, attention=True, **kwargs)


@register_model
def msanet_ms(pretrained: bool = False, **kwargs: Any) -> MsaNet:
    """Table 3's MS: one branch (7x7 by default), multi-scale module, no attention."""
    kwargs.setdefault("kernel_sizes", KERNEL_SIZES[:1])
    return MsaNet(pretrained=pretrained, attention=False, **kwargs)


@register_model
def msanet_baseline(pretrained: bool = False, **kwargs: Any) -> ResNetBaseline:
    """Table 3's baseline: ResNet-18 + GAP + linear classifier (:class:`ResNetBaseline`)."""
    return ResNetBaseline(pretrained=pretrained, **kwargs)

