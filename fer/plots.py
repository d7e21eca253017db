"""Figures shared by the chapters: image grids, landmark and heat-map overlays.

Everything returns a matplotlib ``Figure`` (or draws into a given ``Axes``) so a
notebook cell is one call. Images are uint8 tensors or arrays, 3 x H x W or
H x W x 3.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["to_hwc", "image_grid", "draw_landmarks", "overlay_heatmap", "LANDMARK_GROUPS"]

#: iBUG-68 groups and the colour each is drawn in.
LANDMARK_GROUPS: dict[str, tuple[range, str]] = {
    "jaw": (range(0, 17), "#1f77b4"),
    "brows": (range(17, 27), "#ff7f0e"),
    "nose": (range(27, 36), "#2ca02c"),
    "eyes": (range(36, 48), "#d62728"),
    "mouth": (range(48, 68), "#9467bd"),
}


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A displayable H x W x 3 (or H x W) numpy array from a CHW/HWC tensor or array."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def draw_landmarks(ax: plt.Axes, landmarks: torch.Tensor | np.ndarray, *, size: float = 4.0,
                   numbers: bool = False) -> None:
    """Scatter 68 iBUG landmarks on ``ax``, one colour per facial part."""
    lm = landmarks.detach().cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
    for _, (idx, colour) in LANDMARK_GROUPS.items():
        pts = lm[list(idx)]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, c=colour, linewidths=0)
    if numbers:
        for k, (x, y) in enumerate(lm):
            ax.text(x, y, str(k), fontsize=5, color="black", ha="center", va="bottom")


def overlay_heatmap(ax: plt.Axes, image, heat, *, alpha: float = 0.5, cmap: str = "jet",
                    threshold: float | None = 0.05) -> None:
    """Show ``image`` with a heat map (H x W, any range, resized by extent) on top.

    Values below ``threshold`` (relative to the map's maximum) are left transparent,
    so the image stays visible where the map is empty.
    """
    img = to_hwc(image)
    h = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, dtype=np.float64)
    if threshold is not None and h.size and h.max() > 0:
        h = np.ma.masked_less(h, threshold * float(h.max()))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.imshow(h, cmap=cmap, alpha=alpha, extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5),
              interpolation="bilinear")


def image_grid(images: Sequence, *, titles: Sequence[str] | None = None, ncols: int = 8,
               landmarks: Sequence | None = None, heatmaps: Sequence | None = None, row_labels: Sequence[str] | None = None,
               cell: float = 1.5, suptitle: str | None = None, fontsize: int = 8, heat_cmap: str = "jet",
               heat_alpha: float = 0.5, landmark_size: float | None = None) -> plt.Figure:
    """A grid of images with optional titles, landmarks, heat maps and row labels."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
        if k >= n:
            ax.axis("off")
            continue
        if heatmaps is not None:
            overlay_heatmap(ax, images[k], heatmaps[k], cmap=heat_cmap, alpha=heat_alpha)
        else:
            img = to_hwc(images[k])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        if landmarks is not None:
            draw_landmarks(ax, landmarks[k], size=landmark_size or 2.0 * cell)
        if titles is not None:
            ax.set_title(titles[k], fontsize=fontsize)
        if row_labels is not None and k % ncols == 0:
            ax.set_ylabel(row_labels[k // ncols], fontsize=fontsize + 1)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 2)
    fig.tight_layout()
    return fig
