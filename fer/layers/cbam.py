"""CBAM whose two attention maps can be read with forward hooks.

Woo, Park, Lee & Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018
(https://arxiv.org/abs/1807.06521)::

    F'  = M_c(F)  * F,   M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))       (B x C x 1 x 1)
    F'' = M_s(F') * F',  M_s(F) = sigmoid(conv_kxk([AvgPool_c(F); MaxPool_c(F)]))  (B x 1 x H x W)

:class:`CbamModule` is timm's ``timm.layers.cbam.CbamModule`` (same submodules,
same state_dict keys) with two additions:

* ``channel_gate`` and ``spatial_gate`` name the sigmoid submodules whose
  *outputs are the maps* ``M_c`` and ``M_s``; a forward hook on them reads the
  maps without changing what the module returns::

      maps = {}
      cbam.channel_gate.register_forward_hook(lambda m, i, o: maps.__setitem__("channel", o))
      cbam.spatial_gate.register_forward_hook(lambda m, i, o: maps.__setitem__("spatial", o))

  They are properties that return ``cbam.channel.gate`` and ``cbam.spatial.gate``,
  so ``model.get_submodule("attn.channel_gate")`` works too.
* ``spatial_norm=False`` replaces timm's conv + BatchNorm in the spatial branch by
  a bare bias-free convolution: the Keras CBAM most FER code builds on
  (``Conv2D(1, k, activation="sigmoid", use_bias=False)``) has no normalisation,
  while the CBAM authors' PyTorch code and timm use BN.
"""
from __future__ import annotations

from typing import Optional, Type, Union

from timm.layers.cbam import CbamModule as _TimmCbamModule
from torch import nn

__all__ = ["CbamModule"]


class CbamModule(_TimmCbamModule):
    """Channel then spatial attention (CBAM), with hookable gates.

    Args:
        channels: Channels of the input feature map.
        rd_ratio: Reduction ratio of the channel MLP's hidden layer (``1/r``).
        rd_channels: Hidden width of the channel MLP; overrides ``rd_ratio``.
        rd_divisor: Round the hidden width to a multiple of this.
        spatial_kernel_size: Kernel of the spatial-attention convolution (odd).
        act_layer: Activation of the channel MLP.
        gate_layer: Gate producing both maps (name or type, timm style).
        mlp_bias: Biases in the channel MLP's two layers.
        spatial_norm: Keep timm's BatchNorm after the spatial convolution
            (``True``), or use a bare bias-free convolution (``False``).

    Shapes:
        input and output ``B x C x H x W``; ``channel_gate`` output
        ``B x C x 1 x 1``; ``spatial_gate`` output ``B x 1 x H x W``; both in (0, 1).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1.0 / 16,
        rd_channels: Optional[int] = None,
        rd_divisor: int = 1,
        spatial_kernel_size: int = 7,
        act_layer: Type[nn.Module] = nn.ReLU,
        gate_layer: Union[str, Type[nn.Module]] = "sigmoid",
        mlp_bias: bool = False,
        spatial_norm: bool = True,
    ) -> None:
        if spatial_kernel_size < 1 or spatial_kernel_size % 2 == 0:
            raise ValueError(
                f"spatial_kernel_size must be a positive odd number (the map keeps H x W), "
                f"got {spatial_kernel_size}"
            )
        super().__init__(
            channels,
            rd_ratio=rd_ratio,
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            spatial_kernel_size=spatial_kernel_size,
            act_layer=act_layer,
            gate_layer=gate_layer,
            mlp_bias=mlp_bias,
        )
        self.spatial_norm = spatial_norm
        if not spatial_norm:
            self.spatial.conv = nn.Conv2d(
                2, 1, spatial_kernel_size, padding=spatial_kernel_size // 2, bias=False
            )

    @property
    def channel_gate(self) -> nn.Module:
        """Submodule whose output is the channel map ``M_c`` (``B x C x 1 x 1``)."""
        return self.channel.gate

    @property
    def spatial_gate(self) -> nn.Module:
        """Submodule whose output is the spatial map ``M_s`` (``B x 1 x H x W``)."""
        return self.spatial.gate
