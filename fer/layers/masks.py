"""Masks at a feature map's size: the tensor side of the papers' mask attention.

:func:`resize_mask` shrinks (or grows) image-size masks to a feature map's ``h x w``
by area interpolation. MAPNet (Ju & Zhao, "Mask-based attention parallel network for
in-the-wild facial expression recognition", equation (3)) multiplies its face mask
``M`` into layer-1 and layer-4 features; :class:`fer.models.mapnet.MaskAttention`
calls it on every forward pass, so it lives with the layers, below the models.
Building masks from landmarks stays in :mod:`fer.data.masks` (which re-exports this
function for its callers).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_mask"]


def _hw(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {size}")
    return h, w


def resize_mask(mask: Any, feature_size: int | Sequence[int], *, threshold: float | None = None) -> Any:
    """Resize masks to a feature map's size by area interpolation.

    Args:
        mask: ``H x W``, ``B x H x W`` or ``B x C x H x W`` (numpy or torch).
        feature_size: ``int`` or ``(h, w)``, e.g. 56 for ResNet-50's layer1 at 224
            px, 7 for its layer4 (MAPNet's two attention sites), 14 for VGG16's conv4
            (MANet).
        threshold: if given, binarise the result (``>= threshold`` -> 1).

    Returns:
        float32 of shape ``(..., h, w)`` in [0, 1] (the fraction of each cell the
        mask covers, unless ``threshold``), numpy or torch like ``mask``, on the same
        device.

    .. note::
        MAPNet multiplies ``M`` into layer-4 features (7 x 7) and layer-1 features
        (56 x 56) without saying how ``M`` is shrunk. Area interpolation keeps the
        mask's mass (a cell half on the face gets 0.5) instead of snapping cells in
        or out; pass ``threshold=0.5`` for a binary map.
    """
    is_torch = isinstance(mask, torch.Tensor)
    t = mask if is_torch else torch.from_numpy(np.ascontiguousarray(mask))
    if t.ndim < 2:
        raise ValueError(f"mask must be at least H x W, got shape {tuple(t.shape)}")
    h, w = _hw(feature_size, "feature_size")
    lead = tuple(t.shape[:-2])
    x = t.reshape(-1, 1, *t.shape[-2:]).float()
    y = F.interpolate(x, size=(h, w), mode="area").clamp_(0.0, 1.0)
    if threshold is not None:
        y = (y >= threshold).float()
    y = y.reshape(*lead, h, w)
    return y if is_torch else y.numpy()

