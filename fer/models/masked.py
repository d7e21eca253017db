"""FER with face masks: the Attention Branch Network, MCN, FECN and the VGG11 baseline.

Paper: S. Hayashi, Y. Ono, R. Ishibashi, Q. Li and L. Meng, *Facial Expression
Recognition with Face Mask using Attention Mechanism*, ATAIT 2023 (book key
``masked``). Two stages: an Attention Branch Network (ABN; H. Fukui et al., *Attention
Branch Network: Learning of Attention Mechanism for Visual Explanation*, CVPR 2019)
trained to tell masked from unmasked faces (the **MCN**) is frozen and cut down to
its attention-map generator (the paper's Figure 3); the **FECN** multiplies its own
feature map by that map, ``F'_c(x) = M(x) * F_c(x)`` (equation 2), and classifies
four expressions. The baselines of Table 3 are VGG11 and an ABN trained directly on
the masked four-class set.

=================  ============================================================
model name         what it is
=================  ============================================================
``vgg11``          Table 3's VGG11 baseline (torchvision VGG11, optionally with BN)
``abn``            Table 3's ABN baseline: VGG11 split into feature extractor,
                   attention branch and perception branch; loss L_att + L_per (eq. 1)
``mcn``            stage 1: the ABN with two classes (unmasked, masked)
``fecn``           stage 2: own VGG11 features x the frozen MCN's map (eq. 2)
``fecn_shared``    the paper's future work: MCN and FECN share one feature extractor
=================  ============================================================

Layout of every model here (VGG11 = configuration "A": conv widths 64 | 128 | 256,
256 | 512, 512 | 512, 512, a 2x2 max pool after each group):

* ``features`` -- the **feature extractor**: VGG11's conv groups 1-4 with their pools,
  a ``512 x H/16 x W/16`` map ``F`` (14 x 14 at 224 px);
* ``perception`` -- the **perception branch**: VGG11's conv group 5 and fifth pool,
  then ``head`` (the classifier);
* ``attention`` (ABN, MCN, shared) -- the **attention branch**
  (:class:`AttentionBranch`): its own copy of conv group 5 (stride kept), a 1x1 conv
  to ``K`` channels + BN + ReLU, then (a) global average pooling of those ``K`` maps
  gives the attention branch's class scores and (b) a 1x1 conv to one channel + BN +
  sigmoid gives the attention map ``M`` (``B x 1 x H/16 x W/16``), read with a forward
  hook on ``model.attention.map_gate``;
* ``cam_layer`` -- the Grad-CAM target: the last module of the conv group 5 of the
  perception branch (the last feature map before the classifier);
* ``forward_features(x)`` / ``forward_head(f)`` and ``pretrained_cfg``.

ABN models return an :class:`AbnOutput` (``logits`` of the perception branch,
``att_logits`` of the attention branch, ``attention`` map); ``fer.train`` picks
``logits`` by itself, :func:`fer.losses.abn_loss` is equation (1), and
:class:`fer.explain.SingleOutput` (or :func:`fer.explain.cam`, which wraps by itself)
gives Grad-CAM one tensor.

.. note::
   **Where the branches split** (the paper shows only a block diagram; ABN's paper
   splits its ResNets after the third stage). The feature extractor is VGG11 up to the
   fourth pool (stride 16), so the attention map is **14 x 14 at 224 px** (4 x 4 at the
   demo's 64 px). The attention branch has its own conv group 5 at stride 16, as ABN's
   attention branch has its own copy of the last ResNet stage.

.. note::
   **How the map weights the features.** ABN (Fukui et al., equation 2) uses the
   residual form ``(1 + M) * F``; this paper's equation (2) for the FECN is the plain
   product ``M * F``. ``abn`` / ``mcn`` use ABN's residual form (``attention_mode
   ="residual"``), ``fecn`` / ``fecn_shared`` the paper's plain product
   (``attention_mode="multiply"``); both are switches.

.. note::
   **FECN's backbone** is not named. We use VGG11, like the baseline it is compared
   with, split as above: FECN's own ``features`` (groups 1-4) give ``F`` at stride 16,
   the same grid as the MCN's map, which is multiplied in before FECN's conv group 5
   and classifier. The MCN is held in ``model.mcn`` as an
   :class:`AttentionMapGenerator` (feature extractor + attention branch up to the map,
   the class-score nodes deleted as in Figure 3), frozen (``requires_grad=False``,
   always in eval mode, run under ``torch.no_grad``).

.. note::
   **Classifier.** ``head="vgg"`` (default) is torchvision's VGG classifier:
   adaptive average pooling to 7 x 7, then 4096 - 4096 - ``num_classes`` with ReLU and
   dropout 0.5, so ``pretrained=True`` loads all of torchvision's VGG11 except the
   last layer. ``head="gap"`` (global average pooling + one linear layer) is the
   SynFER profiles' small classifier (a departure for the CPU demo).

.. note::
   **Batch norm and width** (not in the paper). ``batch_norm=True`` builds the
   ``vgg11_bn`` structure (BN after every conv); ``width`` scales every conv layer's
   channels. The demo uses both to train from scratch on a CPU; the ``paper`` profile
   uses plain VGG11 at full width with torchvision's ImageNet weights
   (``VGG11_Weights.IMAGENET1K_V1``, or ``VGG11_BN_Weights`` with BN). The attention
   branch always has BN, as in ABN. Where ImageNet weights cannot load,
   :func:`load_vgg11_from` puts a :class:`Vgg11` pretrained on another task (at the same
   width) where they would go (:mod:`fer.experiments.masked` does so on SynFER).

.. note::
   **The shared extractor** (the paper's future work, Section 5.2). ``fecn_shared``
   holds one ``features``: stage 1 trains it with the attention branch as the MCN
   (masked / unmasked), stage 2 freezes it and the attention branch and trains only the
   perception branch on ``M * F``. So the attention map is exactly the MCN's, and the
   saving is one feature extractor. ``freeze_extractor=False`` fine-tunes the shared
   extractor in stage 2 too (attention branch still frozen), which lets the map drift
   away from the MCN's; the chapter runs both.

.. note::
   **ReLUs are not in-place**, so hooks and Grad-CAM see pre-activation values where
   they hook a conv.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv
from torch import nn
from torch.nn import functional as F

from ._hub import load_torchvision_state_dict
from ._registry import register_model

__all__ = [
    "VGG11_CFG",
    "AbnOutput",
    "AttentionBranch",
    "AttentionMapGenerator",
    "VggHead",
    "Vgg11",
    "Abn",
    "Fecn",
    "SharedFecn",
    "vgg11_widths",
    "make_vgg11_groups",
    "attention_generator",
    "load_vgg11_imagenet",
    "load_vgg11_from",
    "vgg11",
    "abn",
    "mcn",
    "fecn",
    "fecn_shared",
]

#: VGG11 (configuration "A"): conv widths per group, each group followed by a 2x2 max pool.
VGG11_CFG: Tuple[Tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
#: Groups in the feature extractor (the rest is conv group 5).
EXTRACTOR_GROUPS = 4

_IMAGENET_MEAN, _IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

HeadType = Literal["vgg", "gap"]
AttentionMode = Literal["residual", "multiply"]


# --------------------------------------------------------------------------- blocks


def vgg11_widths(width: float = 1.0) -> Tuple[Tuple[int, ...], ...]:
    """VGG11's conv widths per group, scaled by ``width`` (at least 1 each)."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(tuple(max(1, int(round(c * width))) for c in group) for group in VGG11_CFG)


def _conv_block(in_chans: int, widths: Sequence[int], batch_norm: bool, pool: bool) -> List[nn.Module]:
    layers: List[nn.Module] = []
    c = in_chans
    for w in widths:
        layers.append(nn.Conv2d(c, w, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU(inplace=False))
        c = w
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return layers


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def make_vgg11_groups(in_chans: int = 3, width: float = 1.0, batch_norm: bool = False
                      ) -> Tuple[nn.Sequential, nn.Sequential]:
    """VGG11's conv layers as (feature extractor = groups 1-4 with pools, group 5 with its pool).

    Module order inside each part matches torchvision's ``vgg11`` / ``vgg11_bn``
    ``features`` (the extractor holds its indices 0-15 / 0-21, group 5 the rest).
    """
    widths = vgg11_widths(width)
    layers: List[nn.Module] = []
    c = in_chans
    for group in widths[:EXTRACTOR_GROUPS]:
        layers += _conv_block(c, group, batch_norm, pool=True)
        c = group[-1]
    extractor = nn.Sequential(*layers)
    group5 = nn.Sequential(*_conv_block(c, widths[EXTRACTOR_GROUPS], batch_norm, pool=True))
    _init(extractor)
    _init(group5)
    return extractor, group5


class VggHead(nn.Module):
    """The classifier after conv group 5.

    ``"vgg"``: torchvision's (adaptive average pool to 7 x 7, flatten, [linear 4096, ReLU,
    dropout] x 2, linear ``num_classes``); ``"gap"``: global average pooling, dropout,
    linear ``num_classes``.
    """

    def __init__(self, in_features: int, num_classes: int, head: HeadType = "vgg", hidden: int = 4096,
                 drop_rate: float = 0.5) -> None:
        super().__init__()
        if head not in ("vgg", "gap"):
            raise ValueError(f"head must be 'vgg' or 'gap', got {head!r}")
        self.head_type = head
        self.in_features = in_features
        if head == "vgg":
            self.pool = nn.AdaptiveAvgPool2d((7, 7))
            self.hidden = nn.Sequential(
                nn.Linear(in_features * 49, hidden), nn.ReLU(inplace=False), nn.Dropout(drop_rate),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=False), nn.Dropout(drop_rate),
            )
            self.num_features = hidden
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.hidden = nn.Sequential(nn.Dropout(drop_rate))
            self.num_features = in_features
        self.fc = nn.Linear(self.num_features, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.fc(x)


class AttentionBranch(nn.Module):
    """ABN's attention branch: conv group, 1x1 conv to K maps, class scores by GAP, one sigmoid map.

    Args:
        in_chans: channels of the feature extractor's map.
        widths: the conv group's widths (VGG11 group 5).
        num_classes: ``K``, the attention branch's classes.
        batch_norm: BN in the conv group (the 1x1 convs always have BN, as in ABN).

    ``forward(f)`` returns ``(att_logits, attention)``: ``B x K`` and ``B x 1 x h x w``
    in (0, 1), ``h x w`` the size of ``f``. ``map_gate`` (the sigmoid) outputs the map:
    hook it to read ``M``. :meth:`attention_map` runs only the nodes the map needs.
    """

    def __init__(self, in_chans: int, widths: Sequence[int], num_classes: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.Sequential(*_conv_block(in_chans, widths, batch_norm, pool=False))
        c = widths[-1]
        self.bn = nn.BatchNorm2d(c)
        self.class_conv = nn.Sequential(nn.Conv2d(c, num_classes, 1, bias=False), nn.BatchNorm2d(num_classes),
                                        nn.ReLU(inplace=False))
        # class scores: GAP of the K maps (ABN; a 1x1 conv with GAP is a CAM classifier)
        self.class_pool = nn.AdaptiveAvgPool2d(1)
        self.map_conv = nn.Sequential(nn.Conv2d(num_classes, 1, 1, bias=False), nn.BatchNorm2d(1))
        self.map_gate = nn.Sigmoid()
        _init(self)

    def _k_maps(self, f: torch.Tensor) -> torch.Tensor:
        return self.class_conv(self.bn(self.convs(f)))

    def attention_map(self, f: torch.Tensor) -> torch.Tensor:
        """Only the map ``M(x)``, ``B x 1 x h x w``."""
        return self.map_gate(self.map_conv(self._k_maps(f)))

    def forward(self, f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        k = self._k_maps(f)
        att_logits = torch.flatten(self.class_pool(k), 1)
        return att_logits, self.map_gate(self.map_conv(k))


@dataclass
class AbnOutput:
    """What an ABN returns: the perception branch's ``logits`` (the prediction), the
    attention branch's ``att_logits``, and the attention map ``attention`` (``B x 1 x h x w``)."""

    logits: torch.Tensor
    att_logits: torch.Tensor
    attention: torch.Tensor


def _check_mode(mode: str) -> AttentionMode:
    if mode not in ("residual", "multiply"):
        raise ValueError(f"attention_mode must be 'residual' or 'multiply', got {mode!r}")
    return mode  # type: ignore[return-value]


def _weigh(features: torch.Tensor, attention: torch.Tensor, mode: AttentionMode) -> torch.Tensor:
    if attention.shape[-2:] != features.shape[-2:]:
        attention = F.interpolate(attention, size=features.shape[-2:], mode="bilinear", align_corners=False)
    return features * (1.0 + attention) if mode == "residual" else features * attention


# --------------------------------------------------------------------------- models


class _Base(nn.Module):
    features: nn.Sequential
    perception: nn.Sequential
    pretrained_cfg: Dict[str, Any]

    def _setup(self, *, num_classes: int, in_chans: int, img_size: int, width: float, batch_norm: bool,
               head: HeadType, drop_rate: float) -> Tuple[nn.Sequential, nn.Sequential]:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if img_size < 32:
            raise ValueError(f"img_size must be >= 32 px (VGG11 halves it five times), got {img_size}")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.width, self.batch_norm, self.head_type = width, batch_norm, head
        self.min_size = 32
        extractor, group5 = make_vgg11_groups(in_chans, width, batch_norm)
        self.num_features = vgg11_widths(width)[-1][-1]
        hidden = max(1, int(round(4096 * width))) if head == "vgg" else 0
        self.perception = nn.Sequential(OrderedDict([
            ("convs", group5), ("head", VggHead(self.num_features, num_classes, head, hidden or 4096, drop_rate)),
        ]))
        self.pretrained_cfg = _cfg(in_chans, img_size, num_classes, batch_norm)
        return extractor, group5

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects B x {self.in_chans} x H x W input, got "
                             f"{tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{type(self).__name__} needs inputs of at least {self.min_size} px, got "
                             f"{tuple(x.shape[-2:])}")

    @property
    def cam_layer(self) -> nn.Module:
        """Default Grad-CAM target: the last module of the perception branch's conv group 5."""
        return self.perception.convs[-1]

    @property
    def head(self) -> VggHead:
        return self.perception.head  # type: ignore[return-value]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Conv group 5 + classifier on a (weighted) extractor map."""
        return self.perception.head(self.perception.convs(x), pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.perception.head.fc

    @property
    def default_cfg(self) -> Dict[str, Any]:
        return self.pretrained_cfg


class Vgg11(_Base):
    """VGG11 (Table 3's baseline): ``features`` (groups 1-4) -> ``perception`` (group 5 + classifier).

    Args:
        num_classes: logits (4 in the paper).
        in_chans: input channels.
        img_size: nominal input side (``pretrained_cfg``); any side >= 32 px works.
        width: conv width multiplier (1 = VGG11); ``head="vgg"`` scales its 4096 too.
        batch_norm: ``vgg11_bn`` structure.
        head: ``"vgg"`` (torchvision's classifier) or ``"gap"``.
        drop_rate: classifier dropout.
    """

    def __init__(self, num_classes: int = 4, in_chans: int = 3, img_size: int = 224, width: float = 1.0,
                 batch_norm: bool = False, head: HeadType = "vgg", drop_rate: float = 0.5) -> None:
        super().__init__()
        self.features, _ = self._setup(num_classes=num_classes, in_chans=in_chans, img_size=img_size, width=width,
                                       batch_norm=batch_norm, head=head, drop_rate=drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The extractor's map ``F`` (stride 16)."""
        self._check_input(x)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Abn(_Base):
    """Attention Branch Network on VGG11 (Fukui et al. 2019), as the paper's ABN and MCN.

    ``forward(x)`` returns an :class:`AbnOutput`. Arguments as in :class:`Vgg11`, plus
    ``attention_mode`` (``"residual"``: ``(1 + M) * F`` as ABN; ``"multiply"``: ``M * F``).
    """

    def __init__(self, num_classes: int = 4, in_chans: int = 3, img_size: int = 224, width: float = 1.0,
                 batch_norm: bool = False, head: HeadType = "vgg", drop_rate: float = 0.5,
                 attention_mode: AttentionMode = "residual") -> None:
        super().__init__()
        self.attention_mode = _check_mode(attention_mode)
        self.features, _ = self._setup(num_classes=num_classes, in_chans=in_chans, img_size=img_size, width=width,
                                       batch_norm=batch_norm, head=head, drop_rate=drop_rate)
        c4 = vgg11_widths(width)[EXTRACTOR_GROUPS - 1][-1]
        self.attention = AttentionBranch(c4, vgg11_widths(width)[EXTRACTOR_GROUPS], num_classes, batch_norm=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The extractor's map ``F`` (before weighting)."""
        self._check_input(x)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> AbnOutput:
        f = self.forward_features(x)
        att_logits, attention = self.attention(f)
        logits = self.forward_head(_weigh(f, attention, self.attention_mode))
        return AbnOutput(logits=logits, att_logits=att_logits, attention=attention)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """``M(x)``, ``B x 1 x h x w``, without the perception branch."""
        return self.attention.attention_map(self.forward_features(x))


class _MapNodes(nn.Module):
    """The attention branch's nodes that make the map (its class-score nodes left out)."""

    def __init__(self, branch: AttentionBranch) -> None:
        super().__init__()
        self.convs, self.bn, self.class_conv = branch.convs, branch.bn, branch.class_conv
        self.map_conv, self.map_gate = branch.map_conv, branch.map_gate

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.map_gate(self.map_conv(self.class_conv(self.bn(self.convs(f)))))


class AttentionMapGenerator(nn.Module):
    """A trained ABN cut down to its attention map (the paper's Figure 3): the feature extractor and
    the attention branch without its class-score nodes. ``forward(x)`` returns ``M(x)``
    (``B x 1 x h x w``); ``attention.map_gate`` outputs it (hook point).

    Built by :func:`attention_generator` (it shares the ABN's modules). ``frozen=True``
    (default) fixes its weights, keeps it in eval mode whatever ``train()`` says and runs it
    under ``torch.no_grad``. Its state-dict keys are the ABN's (``features.*``, ``attention.*``).
    """

    def __init__(self, features: nn.Sequential, attention: AttentionBranch, frozen: bool = True) -> None:
        super().__init__()
        self.features = features
        self.attention = _MapNodes(attention)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> AttentionMapGenerator:
        return super().train(False if self.frozen else mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.attention(self.features(x))
        return self.attention(self.features(x))


def attention_generator(model: Abn, frozen: bool = True) -> AttentionMapGenerator:
    """The MCN after training (Figure 3): an :class:`AttentionMapGenerator` sharing ``model``'s modules."""
    if not isinstance(model, Abn):
        raise TypeError(f"attention_generator needs a trained Abn (create_model('mcn')), got {type(model).__name__}")
    return AttentionMapGenerator(model.features, model.attention, frozen=frozen)


class Fecn(_Base):
    """Stage 2: the Facial Expression Classification Network.

    ``F' = M(x) * F(x)`` (equation 2), ``F`` from FECN's own VGG11 extractor,
    ``M`` from the frozen MCN held in ``mcn`` (an :class:`AttentionMapGenerator`),
    then VGG11's group 5 and classifier. Returns logits.

    Args:
        mcn_width, mcn_batch_norm: the MCN's architecture (default: FECN's own), so
            that its stage-1 checkpoint loads into ``mcn`` (:meth:`load_mcn`).
        attention_mode: ``"multiply"`` (equation 2) or ``"residual"``.
        Others as in :class:`Vgg11`.
    """

    def __init__(self, num_classes: int = 4, in_chans: int = 3, img_size: int = 224, width: float = 1.0,
                 batch_norm: bool = False, head: HeadType = "vgg", drop_rate: float = 0.5,
                 attention_mode: AttentionMode = "multiply", mcn_width: Optional[float] = None,
                 mcn_batch_norm: Optional[bool] = None) -> None:
        super().__init__()
        self.attention_mode = _check_mode(attention_mode)
        self.features, _ = self._setup(num_classes=num_classes, in_chans=in_chans, img_size=img_size, width=width,
                                       batch_norm=batch_norm, head=head, drop_rate=drop_rate)
        mcn = Abn(num_classes=2, in_chans=in_chans, img_size=img_size,
                  width=width if mcn_width is None else mcn_width,
                  batch_norm=batch_norm if mcn_batch_norm is None else mcn_batch_norm, head="gap")
        self.mcn = attention_generator(mcn)

    def load_mcn(self, state_dict: Mapping[str, torch.Tensor]) -> Fecn:
        """Load a trained MCN's (``create_model("mcn")``) state dict into ``mcn``; its
        class-score and perception weights are dropped (Figure 3)."""
        keep = {k: v for k, v in state_dict.items() if k.startswith(("features.", "attention."))}
        hint = "build FECN with the MCN's width / batch_norm (mcn_width=..., mcn_batch_norm=...)"
        try:
            missing, unexpected = self.mcn.load_state_dict(keep, strict=False)
        except RuntimeError as err:
            raise ValueError(f"the MCN state dict does not fit FECN's MCN ({err}); {hint}") from err
        if missing or unexpected:
            raise ValueError(f"the MCN state dict does not fit FECN's MCN (missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}); {hint}")
        self.mcn.requires_grad_(False)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted map ``F' = M * F`` (equation 2)."""
        self._check_input(x)
        return _weigh(self.features(x), self.mcn(x), self.attention_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SharedFecn(_Base):
    """MCN and FECN with one feature extractor (the paper's future work, Section 5.2).

    ``features`` and ``attention`` are the MCN's (train them as ``mcn`` and load with
    :meth:`load_mcn`); ``perception`` classifies ``M * F``. ``forward`` returns an
    :class:`AbnOutput` whose ``att_logits`` are the masked/unmasked scores. The attention
    branch is always frozen (and kept in eval mode). With ``freeze_extractor=True``
    (default) so is ``features``: only the perception branch trains in stage 2 and the map
    is exactly the MCN's. With ``False`` the shared extractor is fine-tuned for
    expressions too, and the frozen attention branch then sees drifting features.
    """

    def __init__(self, num_classes: int = 4, in_chans: int = 3, img_size: int = 224, width: float = 1.0,
                 batch_norm: bool = False, head: HeadType = "vgg", drop_rate: float = 0.5,
                 attention_mode: AttentionMode = "multiply", freeze_extractor: bool = True) -> None:
        super().__init__()
        self.attention_mode = _check_mode(attention_mode)
        self.freeze_extractor = freeze_extractor
        self.features, _ = self._setup(num_classes=num_classes, in_chans=in_chans, img_size=img_size, width=width,
                                       batch_norm=batch_norm, head=head, drop_rate=drop_rate)
        c4 = vgg11_widths(width)[EXTRACTOR_GROUPS - 1][-1]
        self.attention = AttentionBranch(c4, vgg11_widths(width)[EXTRACTOR_GROUPS], 2, batch_norm=True)
        self._freeze()

    def _freeze(self) -> None:
        self.attention.requires_grad_(False)
        if self.freeze_extractor:
            self.features.requires_grad_(False)

    def train(self, mode: bool = True) -> SharedFecn:
        super().train(mode)
        self.attention.eval()
        if self.freeze_extractor:
            self.features.eval()
        return self

    def load_mcn(self, state_dict: Mapping[str, torch.Tensor]) -> SharedFecn:
        """Load a trained MCN's extractor and attention branch (its perception branch is dropped)."""
        keep = {k: v for k, v in state_dict.items() if k.startswith(("features.", "attention."))}
        own = {k for k in self.state_dict() if k.startswith(("features.", "attention."))}
        if set(keep) != own:
            raise ValueError(f"the MCN state dict does not fit (missing {sorted(own - set(keep))[:4]}, unexpected "
                             f"{sorted(set(keep) - own)[:4]}); build with the MCN's width / batch_norm")
        try:
            self.load_state_dict(keep, strict=False)
        except RuntimeError as err:
            raise ValueError(f"the MCN state dict does not fit ({err}); build with the MCN's width and "
                             f"batch_norm") from err
        self._freeze()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> AbnOutput:
        f = self.forward_features(x)
        if self.freeze_extractor:
            f = f.detach()
        att_logits, attention = self.attention(f)
        logits = self.forward_head(_weigh(f, attention, self.attention_mode))
        return AbnOutput(logits=logits, att_logits=att_logits, attention=attention)


# --------------------------------------------------------------------------- weights


def _cfg(in_chans: int, img_size: int, num_classes: int, batch_norm: bool) -> Dict[str, Any]:
    weights = torchvision.models.VGG11_BN_Weights if batch_norm else torchvision.models.VGG11_Weights
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    return {"tag": "tv_in1k", "input_size": (in_chans, img_size, img_size), "interpolation": "bilinear",
            "mean": tuple(mean), "std": tuple(std), "num_classes": num_classes,
            "classifier": "perception.head.fc", "first_conv": "features.0",
            "url": weights.IMAGENET1K_V1.url}


def load_vgg11_imagenet(model: nn.Module, state: Optional[Mapping[str, torch.Tensor]] = None) -> List[str]:
    """Copy torchvision's ImageNet VGG11 (or VGG11-BN) into a model of this file.

    Conv groups 1-4 go to ``features``, group 5 to ``perception.convs`` and, for the ABN
    family, to the attention branch's conv group too; the 4096-4096 classifier goes to
    ``perception.head`` when ``head="vgg"``. The last linear layer and the attention
    branch's 1x1 convs stay fresh. ``state``: a torchvision state dict (default: loaded
    with :func:`fer.models.load_torchvision_state_dict`, which names the file when offline).

    Returns the names of the parameters and buffers that were set.
    """
    if getattr(model, "width", 1.0) != 1.0:
        raise ValueError(f"ImageNet weights exist only for width=1.0, got width={model.width}")
    bn = bool(getattr(model, "batch_norm", False))
    if state is None:
        weights = (torchvision.models.VGG11_BN_Weights if bn else torchvision.models.VGG11_Weights).IMAGENET1K_V1
        state = load_torchvision_state_dict(weights)
    tv = torchvision.models.vgg11_bn(weights=None) if bn else torchvision.models.vgg11(weights=None)
    tv.load_state_dict(state)
    return _copy_vgg11(model, list(tv.features.children()), tv.classifier)


def load_vgg11_from(model: nn.Module, source: Vgg11) -> List[str]:
    """Copy the conv layers of ``source``, a :class:`Vgg11` of this file at ``model``'s width
    and batch norm (e.g. pretrained on another task), where :func:`load_vgg11_imagenet` puts
    ImageNet's: ``features``, ``perception.convs`` and the ABN family's attention conv group.
    Heads stay fresh. Returns the names of the parameters and buffers that were set."""
    if (source.width, source.batch_norm) != (getattr(model, "width", 1.0), getattr(model, "batch_norm", False)):
        raise ValueError(f"the source VGG11 (width {source.width}, batch norm {source.batch_norm}) does not fit the "
                         f"model (width {getattr(model, 'width', 1.0)}, batch norm "
                         f"{getattr(model, 'batch_norm', False)}); pretrain the same structure")
    layers = list(source.features.children()) + list(source.perception.convs.children())
    return _copy_vgg11(model, layers, None)


def _copy_vgg11(model: nn.Module, tv_layers: List[nn.Module], classifier: Optional[nn.Sequential]) -> List[str]:
    """Copy VGG11's conv layers ``tv_layers`` (torchvision's ``features`` order) and, when
    given and shaped alike, its 4096-4096 ``classifier`` layers into ``model``."""
    ours = list(model.features.children()) + list(model.perception.convs.children())
    if len(tv_layers) != len(ours):
        raise ValueError(f"layer count differs from torchvision's vgg11{'_bn' if bn else ''}: "
                         f"{len(ours)} vs {len(tv_layers)}")
    set_names: List[str] = []
    in_chans = getattr(model, "in_chans", 3)
    names = {id(m): n for n, m in model.named_modules()}
    with torch.no_grad():
        for k, (src, dst) in enumerate(zip(tv_layers, ours)):
            if type(src) is not type(dst) and not (isinstance(src, nn.ReLU) and isinstance(dst, nn.ReLU)):
                raise ValueError(f"layer {k}: torchvision has {type(src).__name__}, the model {type(dst).__name__}")
            sd = src.state_dict()
            if k == 0 and in_chans != 3:
                sd["weight"] = adapt_input_conv(in_chans, sd["weight"])
            if sd:
                dst.load_state_dict(sd)
                set_names += [f"{names[id(dst)]}.{p}" for p in sd]
        n5 = len(list(model.perception.convs.children()))
        attn = getattr(model, "attention", None)
        if isinstance(attn, AttentionBranch):
            g5 = tv_layers[-n5:-1]  # group 5 without its pool (the branch keeps stride 16)
            for kind in (nn.Conv2d, nn.BatchNorm2d):
                src_k = [m for m in g5 if isinstance(m, kind)]
                dst_k = [m for m in attn.convs.children() if isinstance(m, kind)]
                if len(src_k) == len(dst_k):  # the branch has BN even when the backbone has none
                    for src, dst in zip(src_k, dst_k):
                        dst.load_state_dict(src.state_dict())
            set_names.append("attention.convs")
        head = model.perception.head
        if classifier is not None and head.head_type == "vgg" \
                and head.hidden[0].in_features == classifier[0].in_features \
                and head.hidden[3].out_features == classifier[3].out_features:
            head.hidden[0].load_state_dict(classifier[0].state_dict())
            head.hidden[3].load_state_dict(classifier[3].state_dict())
            set_names.append("perception.head.hidden")
    return set_names


def _build(cls: type, pretrained: bool, **kwargs: Any) -> nn.Module:
    model = cls(**kwargs)
    if pretrained:
        load_vgg11_imagenet(model)
    return model


# --------------------------------------------------------------------------- builders


@register_model
def vgg11(pretrained: bool = False, **kwargs: Any) -> Vgg11:
    """Table 3's VGG11 baseline. ``pretrained=True`` loads torchvision's ImageNet VGG11
    (``$TORCH_HOME/hub/checkpoints/vgg11-8a719046.pth``; ``vgg11_bn-6002323d.pth`` with
    ``batch_norm=True``). Keyword arguments go to :class:`Vgg11`."""
    return _build(Vgg11, pretrained, **kwargs)


@register_model
def abn(pretrained: bool = False, **kwargs: Any) -> Abn:
    """Table 3's ABN baseline (Fukui et al.) on VGG11; returns :class:`AbnOutput`; train with
    :func:`fer.losses.abn_loss`. ``pretrained`` as in :func:`vgg11`. Keyword arguments go to :class:`Abn`."""
    return _build(Abn, pretrained, **kwargs)


@register_model
def mcn(pretrained: bool = False, num_classes: int = 2, **kwargs: Any) -> Abn:
    """Stage 1: the masked/unmasked classification network, an ABN with **two** classes
    (``fer.data.masks.MU_CLASSES``: unmasked, masked).

    ``num_classes`` is ignored: the task fixes it (``create_model`` passes its default 7 to
    every builder). Other keyword arguments go to :class:`Abn`.
    """
    del num_classes
    return _build(Abn, pretrained, num_classes=2, **kwargs)


@register_model
def fecn(pretrained: bool = False, mcn_state: Optional[Mapping[str, torch.Tensor]] = None, **kwargs: Any) -> Fecn:
    """Stage 2: FECN (equation 2). ``mcn_state``: a trained MCN's state dict (stage 1,
    ``create_model("mcn")``), loaded into the frozen ``model.mcn`` (:meth:`Fecn.load_mcn`).

    ``pretrained`` loads torchvision's ImageNet VGG11 (VGG11-BN with ``batch_norm=True``)
    into FECN's own layers only (:func:`load_vgg11_imagenet`): the extractor ``features``
    (conv groups 1-4), ``perception.convs`` (group 5) and, with ``head="vgg"`` at 224 px,
    the two 4096-unit layers of ``perception.head``; the last linear layer stays fresh.
    ``model.mcn`` is not touched: without ``mcn_state`` the MCN keeps its random
    initialisation, so give it a trained MCN (``mcn_state`` or :meth:`Fecn.load_mcn`)
    before training or using FECN. Keyword arguments go to :class:`Fecn`."""
    model = Fecn(**kwargs)
    if pretrained:
        load_vgg11_imagenet(model)
    if mcn_state is not None:
        model.load_mcn(mcn_state)
    return model


@register_model
def fecn_shared(pretrained: bool = False, mcn_state: Optional[Mapping[str, torch.Tensor]] = None,
                **kwargs: Any) -> SharedFecn:
    """The shared-extractor FECN (future work). ``mcn_state`` loads a trained MCN's extractor and
    attention branch. Keyword arguments go to :class:`SharedFecn`."""
    model = _build(SharedFecn, pretrained, **kwargs)
    if mcn_state is not None:
        model.load_mcn(mcn_state)
    return model
