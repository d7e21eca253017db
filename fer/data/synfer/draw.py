"""Anti-aliased drawing primitives for SynFER (OpenCV, sub-pixel precision).

All coordinates are float pixels; OpenCV receives them in 1/16 pixel fixed
point (``shift=4``) with ``LINE_AA``, so shapes land where the landmarks say.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "fill",
    "line",
    "ellipse_points",
    "fill_clipped",
    "blend_fill",
    "Colour",
]

Colour = Sequence[float]
_SHIFT = 4
_ONE = 1 << _SHIFT


def _fixed(points: np.ndarray) -> np.ndarray:
    # np.rint is np.round's half-to-even without its Python wrapper (the same integers).
    scaled = np.multiply(points, float(_ONE), dtype=np.float64)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int32).reshape(-1, 2)  # OpenCV takes N x 2 int32 points as they are


def _col(colour: Colour | float, channels: int) -> tuple[float, ...]:
    if isinstance(colour, (int, float, np.number)):
        return (float(colour),) * channels
    if channels > 1:
        return tuple(map(float, colour[:channels]))
    return (float(colour[0]),)


def fill(img: np.ndarray, points: np.ndarray, colour: Colour | float) -> None:
    """Fill a polygon (N x 2 float pixels), anti-aliased, in place."""
    if len(points) < 3:
        return
    ch = 1 if img.ndim == 2 else img.shape[2]
    cv2.fillPoly(img, [_fixed(points)], _col(colour, ch), cv2.LINE_AA, _SHIFT)


def line(img: np.ndarray, points: np.ndarray, colour: Colour | float, thickness: float = 1.0,
         closed: bool = False) -> None:
    """Draw an anti-aliased polyline; ``thickness`` in pixels (rounded, at least 1)."""
    if len(points) < 2:
        return
    ch = 1 if img.ndim == 2 else img.shape[2]
    t = max(1, int(round(thickness)))
    cv2.polylines(img, [_fixed(points)], closed, _col(colour, ch), t, cv2.LINE_AA, _SHIFT)


@functools.lru_cache(maxsize=32)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c = np.stack([np.cos(t), np.sin(t)], axis=1)
    c.setflags(write=False)
    return c


def ellipse_points(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 24) -> np.ndarray:
    """Polygon approximating an ellipse (angle in radians)."""
    ca, sa = np.cos(angle), np.sin(angle)
    rot = np.array([[ca * rx, sa * rx], [-sa * ry, ca * ry]])
    return _unit_circle(n) @ rot + (cx, cy)


def _roi(img: np.ndarray, points: np.ndarray, pad: int = 2) -> tuple[int, int, int, int] | None:
    h, w = img.shape[:2]
    (lx, ly), (hx, hy) = points.min(axis=0).tolist(), points.max(axis=0).tolist()
    x0 = max(math.floor(lx) - pad, 0)
    y0 = max(math.floor(ly) - pad, 0)
    x1 = min(math.ceil(hx) + pad, w)
    y1 = min(math.ceil(hy) + pad, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def fill_clipped(img: np.ndarray, clip: np.ndarray, shapes: Sequence[tuple[np.ndarray, Colour]]) -> None:
    """Fill ``shapes`` (polygon, colour) but only inside the ``clip`` polygon.

    Used for the iris inside the eyelids and the teeth inside the lips. Works on
    the clip polygon's bounding box only, so it is cheap.
    """
    box = _roi(img, clip)
    if box is None:
        return
    x0, y0, x1, y1 = box
    off = np.array([x0, y0], dtype=np.float64)
    roi = img[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    fill(mask, clip - off, 255)
    layer = roi.copy()
    for poly, colour in shapes:
        fill(layer, poly - off, colour)
    a = mask.astype(np.float32)
    a /= 255.0
    if roi.ndim == 3:
        a = a[..., None]
    out = layer * a  # (layer * a + roi * (1 - a)) + 0.5, in float32, in place
    out += roi * (1 - a)
    out += 0.5
    roi[...] = out.astype(np.uint8)


def blend_fill(img: np.ndarray, points: np.ndarray, colour: Colour, alpha: float) -> None:
    """Fill a polygon with ``alpha`` opacity (for shading, stubble, soft shadows)."""
    box = _roi(img, points)
    if box is None or alpha <= 0:
        return
    x0, y0, x1, y1 = box
    roi = img[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    fill(mask, points - np.array([x0, y0]), 255)
    a = mask.astype(np.float32) * (alpha / 255.0)
    if roi.ndim == 3:
        a = a[..., None]
    col = np.asarray(colour, dtype=np.float32)[: roi.shape[2] if roi.ndim == 3 else 1]
    roi[...] = (col * a + roi * (1 - a) + 0.5).astype(np.uint8)
