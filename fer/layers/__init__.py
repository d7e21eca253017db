"""Attention layers the papers share.

timm's implementations are reused where they match the papers:

* :class:`CbamModule` -- timm's CBAM with hookable ``channel_gate`` /
  ``spatial_gate`` and an optional BN-free spatial branch (see :mod:`fer.layers.cbam`).
* :class:`SEModule` -- timm's squeeze-and-excitation block, re-exported unchanged
  (``SEModule(channels, rd_ratio=1/16, ...)``; its gate is ``se.gate``, output
  ``B x C x 1 x 1``, hookable the same way).
* :func:`resize_mask` -- image-size masks to a feature map's size (area interpolation),
  MAPNet's mask attention (see :mod:`fer.layers.masks`).
"""
from __future__ import annotations

from timm.layers import SEModule

from .cbam import CbamModule
from .masks import resize_mask

__all__ = ["CbamModule", "SEModule", "resize_mask"]
