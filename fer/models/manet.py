"""MANet: the multiple attention network (RASnet + ERSnet), and the paper's VGG baselines.

Paper: Y. Gan, J. Chen, Z. Yang and L. Xu, *Multiple Attention Network for Facial
Expression Recognition*, IEEE Access 8, 2020 (book key ``manet``). A region-aware
sub-net (RASnet, Table 1) regresses ``N = 8`` binary region masks (whole face, eyes
with brows, mouth with nose, left eye, right eye, nose, two mouth corners) at the
size of VGG16's fourth conv block output; the expression recognition sub-net (ERSnet)
is VGG16 (five conv blocks, three fc layers) with a multiple attention (MA) block
between conv blocks 4 and 5. The MA block has one sub-branch per region (region
attention ``V * M_r``, a 1x1 conv buffer, an SE block; equation 5) and a weight
learning branch giving a normalised ``N``-vector ``q``; its output is
``sum_r q_r F_r`` (equation 6).

=====================  ============================================================
model name             paper row
=====================  ============================================================
``manet_rasnet``       RASnet alone (Table 1), trained with :func:`fer.losses.mask_loss` (eqs. 2-3)
``manet``              "Ours": ERSnet (VGG16 + MA block) with a RASnet inside (``model.rasnet``)
``manet_vgg16``        "VGG fine-tuning" (pretrained) / VGG16 from scratch
``manet_vgg16_se``     "VGG+SE": one SE block between conv blocks 4 and 5
=====================  ============================================================

(``vgg16`` is not used as a name: :mod:`fer.models.cbam_vgg` registers ``vgg16_gap`` /
``vgg16_flatten`` / ``vgg16_cbam``, whose heads differ.)

Every model has ``forward_features`` (the conv-block-5 output, before pool 5),
``forward_head`` (pool 5, flatten, the three fc layers), ``cam_layer`` (the ReLU after
``conv5_3``: 14 x 14 at 224 px, the default Grad-CAM target), ``pretrained_cfg`` and
``features`` (the VGG16 conv base in torchvision's layout, so that
:func:`fer.models.load_vggface` and :func:`~fer.models.cbam_vgg.make_vgg16_features`
are shared with the VGG16 + CBAM chapter). Maps are read with forward hooks:

* ``model.mask_gate`` (``manet``): the masks the MA block uses, ``B x N x A x B``;
* ``model.attn.weight_branch`` (``manet``): the region weights ``q``, ``B x N``;
* ``model.attn.branches[r].se.gate``: region ``r``'s channel attention;
* ``model.rasnet.sigmoid`` / ``manet_rasnet``'s ``sigmoid``: RASnet's masks.

``manet`` returns :class:`ManetOutput` (``logits``, ``masks``, ``region_weights``);
``manet_rasnet`` returns :class:`RasnetOutput` (``masks`` and ``logits``, the N
region scores, see below); :class:`fer.explain.SingleOutput` (used by
:func:`fer.explain.cam`) picks ``logits`` from either.

.. note::
   **Table 1's last fc size.** Table 1 lists 1056 outputs for the last fc layer, but
   equation (1) and the reshape row need ``N x A x B = 8 x 14 x 14 = 1568``. 1056 is not
   ``8 x A x B`` for any square map, so we use ``N * A * B`` (1568 at 224 px).

.. note::
   **RASnet at small inputs.** Table 1's strides (3, 2, 3, 2, 1, 2) shrink 224 px to 2 x 2
   before the fc layers and leave nothing below 144 px, so RASnet resizes its input to
   ``max(img_size, 144)`` (bilinear) first; the fc input is computed from that size.
   Its masks have the MA block's size ``img_size // 16``. The fc layers are
   ``fc 2048 + ReLU``, ``fc N*A*B``: Table 1 shows no ReLU between them, we add one
   (two stacked linear layers without it would be one linear map). ``width``
   (``ras_width``) scales RASnet's conv channels and first fc, for the CPU profiles.

.. note::
   **RASnet's region scores.** For Grad-CAM (and the registry-wide Grad-CAM test)
   :class:`RasnetOutput` also carries ``logits``: each mask's mean (``B x N``), so
   "class" ``r`` explains where RASnet looks to place region ``r``. They are not
   expression scores, and ``num_classes`` is accepted and ignored by ``manet_rasnet``.

.. note::
   **MA block details the text leaves to Figure 2** (an image). The buffer is a 1x1
   conv ``C -> C`` with bias (equation 5's ``omega_2, b_2``); the SE block is timm's
   ``SEModule`` with reduction 16 (the SE paper's default), no divisor rounding. The
   weight-learning branch's five layers are: 2x2 max pool (halves ``A x B``), 1x1 conv
   ``C -> C/8`` + ReLU (reduces channels), fc ``-> N``, sigmoid, and division by the
   sum, so ``q`` is positive and sums to 1 ("a normalised probability vector"); the
   paper does not say which two layers normalise.

.. note::
   **Masks are constants for ERSnet.** In stage 2 RASnet is frozen and "serves as a
   mask generator": ``manet`` detaches the masks, so no gradient flows from the
   expression loss into RASnet (or through it into the input, for guided back-prop).
   ``mask_source="gt"`` (ablation) feeds the ground-truth masks instead:
   ``model(x, masks)``, ``masks`` from :func:`fer.data.masks.region_masks`.

.. note::
   **VGG16's classifier** is Caffe's / VGG-Face's: pool 5, flatten, fc 4096 + ReLU +
   dropout 0.5, fc 4096 + ReLU + dropout 0.5, fc ``num_classes``. ``fc_dims`` changes
   the hidden widths (the CPU profiles scale them with ``width``).

.. note::
   **Initialisation.** ``pretrained=True`` loads VGG-Face into the five conv blocks
   (width 1 only, :func:`fer.models.load_vggface`); every other layer (MA block, fc
   layers, RASnet) is Xavier-uniform with zero bias, as the paper says. Conv blocks
   trained from scratch keep :func:`~fer.models.cbam_vgg.make_vgg16_features`'s
   Kaiming-normal init (the paper does not say how its from-scratch rows were
   initialised; Xavier in a 13-layer VGG without batch norm trains very slowly).

.. note::
   **Batch norm** (not in the paper; ``batch_norm=True``, default ``False``): a
   ``BatchNorm2d`` after each of the 13 convs of the VGG16 conv base, as in torchvision's
   ``vgg16_bn`` (VGG-Face has none, so the ``paper`` profile keeps it off). The SynFER
   profiles use it: at their scale (VGG16 at width 1/8, 64 px, a few hundred Adam steps)
   the plain 13-layer stack sat at the majority class for most of the run, and ``manet``,
   whose MA block scales conv-block-4's features by masks in (0, 1), sum-normalised
   weights ``q`` and SE gates, never left it. The MA block itself is unchanged; the
   batch norms of conv block 5 restore the scale of its output. The conv-block-4 cut
   (``model.conv4_end``) and the Grad-CAM layer (``model.relu5_3``) follow the layout.

.. note::
   **Width** (not in the paper): ``width`` scales every VGG conv layer, as in
   :class:`~fer.models.cbam_vgg.VggFer`, so the book's ``demo`` profile trains the same
   architecture on a CPU. ``width=1`` is VGG16. ReLUs are not in-place.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from fer.layers import SEModule

from ._registry import register_model
from .cbam_vgg import _vgg_cfg, load_vggface, make_vgg16_features, vgg16_widths

__all__ = [
    "NUM_REGIONS",
    "RAS_MIN_SIZE",
    "CONV4_END",
    "RasnetOutput",
    "ManetOutput",
    "RASnet",
    "RegionBranch",
    "WeightBranch",
    "MABlock",
    "VggManet",
    "mask_side",
    "manet_rasnet",
    "manet",
    "manet_vgg16",
    "manet_vgg16_se",
]

#: Regions (Table 2): whole, eyes+brows, mouth+nose, left eye, right eye, nose, mouth corners.
NUM_REGIONS = 8
#: RASnet resizes smaller inputs to this side (Table 1 needs >= 144 px).
RAS_MIN_SIZE = 144
#: ``features[:CONV4_END]`` = conv blocks 1-4 with pool 4 (torchvision indices, no batch norm);
#: the rest is block 5. With ``batch_norm=True`` use ``model.conv4_end`` (34).
CONV4_END = 24


def mask_side(img_size: int) -> int:
    """Side of the MA block's input (and of the masks): ``img_size // 16`` (14 at 224 px)."""
    if img_size < 16:
        raise ValueError(f"img_size must be >= 16 (the masks are img_size // 16), got {img_size}")
    return img_size // 16


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass
class RasnetOutput:
    """RASnet's output: ``masks`` (``B x N x A x B`` in (0, 1)) and ``logits``, the region
    scores (each mask's mean, ``B x N``; not expression scores)."""

    masks: torch.Tensor
    logits: torch.Tensor


@dataclass
class ManetOutput:
    """ERSnet's output: expression ``logits`` (``B x C``), the ``masks`` it used
    (``B x N x A x B``) and the region weights ``q`` (``B x N``)."""

    logits: torch.Tensor
    masks: torch.Tensor
    region_weights: torch.Tensor


# --------------------------------------------------------------------------- RASnet


class RASnet(nn.Module):
    """The region-aware sub-net (Table 1): 3 x [conv, ReLU, max pool], fc, fc, reshape, sigmoid.

    Args:
        img_size: input side; the masks are ``img_size // 16`` per side. Inputs are
            resized to ``max(img_size, 144)`` (see the module note).
        in_chans: input channels.
        num_regions: ``N`` (8 in the paper).
        width: multiplies the conv channels (64, 128, 128) and the first fc (2048).
        act_layer: activation after each conv and the first fc.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_regions: int = NUM_REGIONS,
                 width: float = 1.0, act_layer: Type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.img_size = int(img_size)
        self.in_chans = in_chans
        self.num_regions = num_regions
        self.input_size = max(self.img_size, RAS_MIN_SIZE)
        self.side = mask_side(self.img_size)
        c1, c2, c3 = (max(1, int(round(c * width))) for c in (64, 128, 128))
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5, stride=3, padding=1), act_layer(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 5, stride=3, padding=1), act_layer(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c2, c3, 3, stride=1, padding=0), act_layer(), nn.MaxPool2d(2, 2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_chans, self.input_size, self.input_size)).numel()
        hidden = max(1, int(round(2048 * width)))
        self.fc = nn.Sequential(nn.Flatten(1), nn.Linear(flat, hidden), act_layer(),
                                nn.Linear(hidden, num_regions * self.side * self.side))
        self.sigmoid = nn.Sigmoid()
        _xavier(self)

    def forward(self, x: torch.Tensor) -> RasnetOutput:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        g = self.fc(self.features(x))
        masks = self.sigmoid(g.view(len(g), self.num_regions, self.side, self.side))
        return RasnetOutput(masks=masks, logits=masks.mean(dim=(2, 3)))

    @property
    def cam_layer(self) -> nn.Module:
        """The last conv's ReLU."""
        return self.features[7]


# --------------------------------------------------------------------------- MA block


class RegionBranch(nn.Module):
    """One hybrid-attention sub-branch (equation 5): ``SE(conv1x1(V * M_r))``."""

    def __init__(self, channels: int, se_rd_ratio: float = 1.0 / 16) -> None:
        super().__init__()
        self.buffer = nn.Conv2d(channels, channels, 1)
        self.se = SEModule(channels, rd_ratio=se_rd_ratio, rd_divisor=1)

    def forward(self, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.se(self.buffer(v * mask.unsqueeze(1)))


class _SumNorm(nn.Module):
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s / s.sum(dim=1, keepdim=True)


class WeightBranch(nn.Module):
    """The weight-learning branch: max pool, 1x1 conv + ReLU, fc -> N, sigmoid, sum-normalise.

    Args:
        channels: ``C`` of the conv-block-4 features.
        side: their side (``img_size // 16``).
        num_regions: ``N``.
        reduction: channel reduction of the 1x1 conv (8).
    """

    def __init__(self, channels: int, side: int, num_regions: int = NUM_REGIONS, reduction: int = 8) -> None:
        super().__init__()
        pooled = max(1, side // 2)
        mid = max(1, channels // reduction)
        self.pool = nn.AdaptiveMaxPool2d(pooled)
        self.reduce = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.ReLU())
        self.fc = nn.Sequential(nn.Flatten(1), nn.Linear(mid * pooled * pooled, num_regions))
        self.gate = nn.Sigmoid()
        self.norm = _SumNorm()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.norm(self.gate(self.fc(self.reduce(self.pool(v)))))


class MABlock(nn.Module):
    """The multiple attention block: ``F = sum_r q_r SE_r(conv_r(V * M_r))`` (equations 5, 6).

    ``forward(v, masks)`` with ``v`` ``B x C x A x B`` and ``masks`` ``B x N x A x B``.
    """

    def __init__(self, channels: int, side: int, num_regions: int = NUM_REGIONS,
                 se_rd_ratio: float = 1.0 / 16, weight_reduction: int = 8) -> None:
        super().__init__()
        self.num_regions = num_regions
        self.branches = nn.ModuleList(RegionBranch(channels, se_rd_ratio) for _ in range(num_regions))
        self.weight_branch = WeightBranch(channels, side, num_regions, weight_reduction)
        _xavier(self)

    def forward(self, v: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if masks.shape[1] != self.num_regions or masks.shape[-2:] != v.shape[-2:]:
            raise ValueError(f"MA block: {self.num_regions} masks of {tuple(v.shape[-2:])} expected (the conv-block-4 "
                             f"map), got masks of shape {tuple(masks.shape)}")
        q = self.weight_branch(v)
        out = torch.zeros_like(v)
        for r, branch in enumerate(self.branches):
            out = out + q[:, r].view(-1, 1, 1, 1) * branch(v, masks[:, r])
        return out, q


# --------------------------------------------------------------------------- ERSnet and baselines


class VggManet(nn.Module):
    """VGG16 (five conv blocks, three fc) with an optional attention between blocks 4 and 5.

    Args:
        num_classes: expressions (the last fc).
        in_chans: input channels.
        img_size: input side the model is built for (fc input ``C * (img_size // 32)^2``).
        attention: ``None`` (VGG16), ``"se"`` (VGG+SE) or ``"ma"`` (ERSnet, the MA block).
        mask_source: for ``"ma"``: ``"rasnet"`` (masks from ``self.rasnet``) or ``"gt"``
            (ground-truth masks passed as ``forward(x, masks)``).
        width: conv width multiplier (1: VGG16).
        fc_dims: hidden fc widths (VGG16: 4096, 4096).
        drop_rate: dropout after each hidden fc (paper: 0.5).
        num_regions: ``N``.
        ras_width: RASnet's width multiplier (default: ``width``).
        se_rd_ratio: SE reduction ratio (1/16).
        batch_norm: batch norm after each conv of the VGG16 conv base (torchvision's
            ``vgg16_bn`` layout; not in the paper, see the module note). Default ``False``.
    """

    def __init__(self, num_classes: int = 7, in_chans: int = 3, img_size: int = 224,
                 attention: Optional[str] = "ma", mask_source: str = "rasnet", width: float = 1.0,
                 fc_dims: Sequence[int] = (4096, 4096), drop_rate: float = 0.5, num_regions: int = NUM_REGIONS,
                 ras_width: Optional[float] = None, se_rd_ratio: float = 1.0 / 16,
                 act_layer: Type[nn.Module] = nn.ReLU, batch_norm: bool = False) -> None:
        super().__init__()
        if attention not in (None, "se", "ma"):
            raise ValueError(f"attention must be None, 'se' or 'ma', got {attention!r}")
        if mask_source not in ("rasnet", "gt"):
            raise ValueError(f"mask_source must be 'rasnet' or 'gt', got {mask_source!r}")
        if img_size < 32:
            raise ValueError(f"VGG16 halves the input 5 times: img_size must be >= 32, got {img_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = int(img_size)
        self.width = float(width)
        self.attention = attention
        self.mask_source = mask_source if attention == "ma" else None
        widths = vgg16_widths(width)
        self.conv4_channels = widths[9]
        self.num_features = widths[-1]
        self.side = mask_side(self.img_size)
        self.batch_norm = bool(batch_norm)
        self.features = make_vgg16_features(in_chans, act_layer, width,
                                            nn.BatchNorm2d if self.batch_norm else None)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        #: ``features[:conv4_end]`` = conv blocks 1-4 with pool 4 (24 without BN, 34 with).
        self.conv4_end = pools[3] + 1
        #: index of the ReLU after conv5_3 (29 without BN, 42 with).
        self.relu5_3 = pools[4] - 1
        self.rasnet: Optional[RASnet] = None
        if attention == "ma":
            if mask_source == "rasnet":
                self.rasnet = RASnet(self.img_size, in_chans, num_regions, ras_width if ras_width else width,
                                     act_layer)
            self.mask_gate = nn.Identity()
            self.attn: nn.Module = MABlock(self.conv4_channels, self.side, num_regions, se_rd_ratio)
        elif attention == "se":
            self.attn = SEModule(self.conv4_channels, rd_ratio=se_rd_ratio, rd_divisor=1)
            _xavier(self.attn)
        else:
            self.attn = nn.Identity()
        out_side = self.img_size // 32
        layers: list[nn.Module] = [nn.Flatten(1)]
        prev = self.num_features * out_side * out_side
        for d in fc_dims:
            layers += [nn.Linear(prev, int(d)), act_layer(), nn.Dropout(drop_rate)]
            prev = int(d)
        self.pool = nn.MaxPool2d(2, 2)
        self.head_hidden = nn.Sequential(*layers)
        self.head_features = prev
        self.fc = nn.Linear(prev, num_classes)
        _xavier(self.head_hidden)
        _xavier(self.fc)
        self.pretrained_cfg: Dict[str, Any] = _vgg_cfg("vggface", in_chans, self.img_size, num_classes)

    # ------------------------------------------------------------------ parts
    @property
    def cam_layer(self) -> nn.Module:
        """The ReLU after conv5_3 (``img_size // 16`` per side)."""
        return self.features[self.relu5_3]

    @property
    def default_cfg(self) -> Dict[str, Any]:
        return self.pretrained_cfg

    def conv4(self, x: torch.Tensor) -> torch.Tensor:
        """Conv blocks 1-4 with pool 4: ``V``, ``B x C x img/16 x img/16``."""
        return self.features[:self.conv4_end](x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_features, num_classes)
        _xavier(self.fc)

    def masks_for(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The masks the MA block uses for ``x``: ``masks`` if given, else RASnet's (detached)."""
        if masks is not None:
            return masks.to(x.dtype)
        if self.rasnet is None:
            raise ValueError("this MANet uses ground-truth masks (mask_source='gt'): call model(x, masks) with "
                             "masks from fer.data.masks.region_masks (B x 8 x img/16 x img/16)")
        return self.rasnet(x).masks.detach()

    # ------------------------------------------------------------------ forward
    def _features(self, x: torch.Tensor, masks: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Any, Any]:
        v = self.conv4(x)
        used = q = None
        if self.attention == "ma":
            used = self.mask_gate(self.masks_for(x, masks))
            v, q = self.attn(v, used)
        else:
            v = self.attn(v)
        return self.features[self.conv4_end:-1](v), used, q

    def forward_features(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Conv block 5's output before pool 5 (after the attention between blocks 4 and 5)."""
        return self._features(x, masks)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool 5, flatten, fc-ReLU-dropout x 2, then the logits."""
        x = self.head_hidden(self.pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None) -> Union[torch.Tensor, ManetOutput]:
        feats, used, q = self._features(x, masks)
        logits = self.forward_head(feats)
        if self.attention != "ma":
            return logits
        return ManetOutput(logits=logits, masks=used, region_weights=q)


# --------------------------------------------------------------------------- builders


def _fc_dims(kwargs: Dict[str, Any]) -> None:
    width = float(kwargs.get("width", 1.0))
    kwargs.setdefault("fc_dims", tuple(max(1, int(round(4096 * width))) for _ in range(2)))


def _pretrained(model: VggManet, pretrained: bool, weights_path: Optional[Union[str, Path]]) -> VggManet:
    if pretrained:
        if model.batch_norm:
            raise ValueError("VGG-Face has no batch norm: pass pretrained=False or batch_norm=False")
        if model.width != 1.0:
            raise ValueError(f"VGG-Face weights exist only for width=1.0 (VGG16), got width={model.width}; "
                             f"pass pretrained=False or width=1.0")
        load_vggface(model, weights_path)
    return model


@register_model
def manet_rasnet(pretrained: bool = False, **kwargs: Any) -> RASnet:
    """RASnet (Table 1) on its own: ``img_size``, ``in_chans``, ``num_regions``, ``width``.

    ``num_classes`` is accepted for the registry and ignored (RASnet regresses masks).
    """
    if pretrained:
        raise ValueError("manet_rasnet has no pretrained weights: the paper trains it with Xavier init")
    kwargs.pop("num_classes", None)
    return RASnet(**kwargs)


@register_model
def manet(pretrained: bool = False, weights_path: Optional[Union[str, Path]] = None, **kwargs: Any) -> VggManet:
    """ERSnet: VGG16 + MA block between conv blocks 4 and 5, masks from ``model.rasnet``.

    ``pretrained=True`` loads VGG-Face into the five conv blocks. ``mask_source="gt"``
    builds the ablation fed with ground-truth masks. Other keyword arguments go to
    :class:`VggManet` (``fc_dims`` default: ``4096 * width``).
    """
    _fc_dims(kwargs)
    return _pretrained(VggManet(attention="ma", **kwargs), pretrained, weights_path)


@register_model
def manet_vgg16(pretrained: bool = False, weights_path: Optional[Union[str, Path]] = None,
                **kwargs: Any) -> VggManet:
    """The "VGG fine-tuning" baseline: VGG16 with its three fc layers (the last sized to the classes)."""
    _fc_dims(kwargs)
    return _pretrained(VggManet(attention=None, **kwargs), pretrained, weights_path)


@register_model
def manet_vgg16_se(pretrained: bool = False, weights_path: Optional[Union[str, Path]] = None,
                   **kwargs: Any) -> VggManet:
    """The "VGG+SE" baseline: one SE block (timm ``SEModule``, ratio 1/16) between conv blocks 4 and 5."""
    _fc_dims(kwargs)
    return _pretrained(VggManet(attention="se", **kwargs), pretrained, weights_path)
