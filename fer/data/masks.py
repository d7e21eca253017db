"""Masks from landmarks: MAPNet's face mask, MANet's eight region masks, pasted face masks.

* :func:`face_mask` and :func:`resize_mask` — the whole-face binary mask ``M`` of
  MAPNet (Ju & Zhao, "Mask-based attention parallel network for in-the-wild facial
  expression recognition", Figure 2 and equation (3)), at image size and at any
  feature-map size (:func:`resize_mask` is :func:`fer.layers.masks.resize_mask`,
  re-exported: the models call it on tensors, so it lives with the layers).
* :func:`region_masks` — the eight ground-truth region masks of MANet (Gan et al.,
  "Multiple attention network for facial expression recognition", IEEE Access 2020,
  Table 2 and equation (4)) from its eight landmarks
  (:func:`fer.data.landmarks.to_landmarks8`).
* :func:`paste_face_mask`, :class:`MaskedUnmaskedDataset`, :class:`MaskedFERDataset` —
  the masked-FER paper's data (Hayashi et al., "Facial expression recognition with
  face mask using attention mechanism", ATAIT 2023, section 4.1): surgical and cloth
  masks fitted to a face's nose-bridge and jaw landmarks in the way of its reference
  [21] (MaskTheFace, Anwar & Raychowdhury 2020), and its MU (masked / unmasked) and
  M-FER (four expressions, all masked) datasets built from any base dataset.

Landmarks are pixel (x, y) with pixel centres at integer coordinates, as in
:class:`fer.data.SynFER`. Functions take numpy arrays or torch tensors and return the
same kind.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..layers.masks import _hw, resize_mask
from .labels import LabelCounts, resolve_classes
from .synfer import draw
from .synfer.nuisances import FACE_MASK_COLOURS
from .synfer.render import catmull_rom

__all__ = [
    "face_mask",
    "resize_mask",
    "MANET_REGIONS",
    "MANET_REGION_SIZES",
    "region_masks",
    "FACE_MASK_STYLES",
    "FACE_MASK_COLOURS",
    "PAPER_MASK_PATTERNS",
    "paste_face_mask",
    "MU_CLASSES",
    "M_FER_CLASSES",
    "MaskedUnmaskedDataset",
    "MaskedFERDataset",
]

# ---------------------------------------------------------------------------- helpers
def _points(landmarks: Any, what: str = "landmarks") -> tuple[np.ndarray, bool]:
    is_torch = isinstance(landmarks, torch.Tensor)
    p = (landmarks.detach().cpu().numpy() if is_torch else np.asarray(landmarks)).astype(np.float64)
    if p.ndim < 2 or p.shape[-1] != 2:
        raise ValueError(f"{what}: expected ... x K x 2 pixel (x, y) points, got shape {p.shape}")
    return p, is_torch


def _like(arr: np.ndarray, is_torch: bool) -> Any:
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr) if is_torch else arr


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)


def _missing(policy: str, what: str) -> None:
    if policy not in ("raise", "ones"):
        raise ValueError(f"missing must be 'raise' or 'ones', got {policy!r}")
    if policy == "raise":
        raise ValueError(f"{what} has NaN / inf landmarks (a failed detection); pass missing='ones' to use "
                         "an all-ones mask for such faces, or drop them (LandmarkResult.ok)")


# ---------------------------------------------------------------------------- MAPNet
def _with_forehead(pts: np.ndarray, forehead: float) -> np.ndarray:
    if len(pts) != 68:
        raise ValueError(f"forehead > 0 needs the 68 iBUG points (it raises the brows 17-26), got {len(pts)}")
    up = pts[27] - pts[8]
    brows = pts[17:27] + forehead * up
    return np.concatenate([pts, brows])


def face_mask(landmarks: Any, size: int | Sequence[int], *, forehead: float = 0.0, missing: str = "raise") -> Any:
    """MAPNet's binary face mask ``M``: 1 on the face, 0 elsewhere.

    Args:
        landmarks: ``K x 2`` or ``B x K x 2`` pixel points (68 iBUG, or PFLD's 98 as
            in the paper, or any set outlining the face).
        size: image size, ``int`` or ``(H, W)``.
        forehead: also cover the forehead: copies of the brow points (68-point
            layout only) raised by this fraction of the chin-to-nose-root distance
            (landmark 8 to 27) join the hull. 0 (default): the hull of the points.
        missing: ``"raise"`` (default) or ``"ones"`` (a full mask) for faces whose
            landmarks are NaN.

    Returns:
        float32 ``H x W`` (or ``B x H x W``) with values in {0, 1}, numpy or torch
        like ``landmarks``. Pixel centres inside the hull are 1.

    .. note::
        MAPNet detects 98 PFLD points (Figure 2 b) and shows "one general mask M
        which highlights the whole face area" (Figure 2 c) without saying how it is
        formed. We take the **convex hull of the landmarks**: from the brows to the
        chin, cheek to cheek. Neither the 98 nor the 68 points reach above the brows,
        so the forehead is out unless ``forehead > 0`` (``0.4`` reaches about the
        hairline on the 300-W mean face).
    """
    p, is_torch = _points(landmarks)
    h, w = _hw(size)
    lead = p.shape[:-2]
    flat = p.reshape(-1, *p.shape[-2:])
    out = np.zeros((len(flat), h, w), np.float32)
    for b, pts in enumerate(flat):
        if not np.isfinite(pts).all():
            _missing(missing, f"face {b}")
            out[b] = 1.0
            continue
        if forehead > 0:
            pts = _with_forehead(pts, forehead)
        hull = cv2.convexHull(pts.astype(np.float32))[:, 0]
        m = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(m, _fixed(hull), 1, lineType=cv2.LINE_8, shift=4)
        out[b] = m
    return _like(out.reshape(*lead, h, w), is_torch)


# ---------------------------------------------------------------------------- MANet
#: MANet's eight regions, in the paper's order (Table 2; "left" = image left).
MANET_REGIONS: tuple[str, ...] = (
    "whole",
    "eyes_brows",
    "mouth_nose",
    "left_eye",
    "right_eye",
    "nose",
    "left_mouth_corner",
    "right_mouth_corner",
)
#: Region sizes as (width, height) fractions of the image (W, H); see :func:`region_masks`.
MANET_REGION_SIZES: dict[str, tuple[float, float]] = {
    "whole": (1.0, 1.0),
    "eyes_brows": (0.72, 0.36),
    "mouth_nose": (0.54, 0.36),
    "left_eye": (0.27, 0.27),
    "right_eye": (0.27, 0.27),
    "nose": (0.27, 0.27),
    "left_mouth_corner": (0.27, 0.27),
    "right_mouth_corner": (0.27, 0.27),
}


def _region_centres(l8: np.ndarray) -> np.ndarray:
    """B x 8 x 2 landmarks -> B x 8 x 2 region centres (Table 2; the whole image is handled apart)."""
    l1, l2, l3, l4, l5, l6, l7, l8_ = (l8[:, k] for k in range(8))
    return np.stack([np.zeros_like(l1),  # "whole": the image, set apart
                     (l2 + l5) / 2, (l1 + l8_) / 2, (l2 + l3) / 2, (l4 + l5) / 2, l1, l6, l7], axis=1)


def region_masks(
    landmarks8: Any,
    image_size: int | Sequence[int],
    feature_size: int | Sequence[int] = 14,
    *,
    sizes: dict[str, tuple[float, float]] | None = None,
    missing: str = "raise",
) -> Any:
    """MANet's eight ground-truth region masks (Table 2, equation (4)).

    Args:
        landmarks8: ``8 x 2`` or ``B x 8 x 2`` pixel points ``l1 .. l8`` in
            :data:`fer.data.landmarks.MANET_LANDMARKS` order (from 68 points:
            ``to_landmarks8(lm68)``).
        image_size: the image's size, ``int`` or ``(H, W)`` (224 in the paper).
        feature_size: the masks' size, ``int`` or ``(h, w)``: the MA block's input,
            14 for VGG16's conv4 at 224 px (the paper's ``lambda = 1/16``).
        sizes: override :data:`MANET_REGION_SIZES` (region name -> (w, h) fractions).
        missing: ``"raise"`` or ``"ones"`` (all eight masks full) for NaN landmarks.

    Returns:
        float32 ``8 x h x w`` (or ``B x 8 x h x w``) in {0, 1}, in
        :data:`MANET_REGIONS` order, numpy or torch like ``landmarks8``.

    Cell ``(i, j)`` of region ``r`` is 1 when the cell's centre, in image pixels,
    lies in the box of centre ``(x_r, y_r)`` and size ``(w_r, h_r)`` (equation (4)
    with ``lambda = h / H``); the cell holding the box centre is always 1, so tiny
    boxes on coarse maps never vanish.

    Note:
        **Table 2 read row-major.** Equation (4) bounds the index ``i`` with
        ``x, w`` and ``j`` with ``y, h``. Taken literally in image (x = column)
        terms, *eyes with brows* would be a 0.36W x 0.72H vertical strip reaching
        the mouth, which is not the region Figure 3 shows. With ``i`` the row index,
        as in ``M(i, j)``, the printed ``(w, h)`` are (height, width): eyes with
        brows is **0.72W wide x 0.36H tall** and mouth with nose **0.54W x 0.36H**,
        which is what we use. The eye boxes are square (0.27), so either reading
        gives the same.

        **Blank sizes.** Table 2 gives no size for the right eye, the nose and the
        two mouth corners. The right eye shares the left eye's row, so it gets
        0.27W x 0.27H; the nose and the mouth corners, the other fine-grained
        regions, get the same 0.27W x 0.27H.

        **Landmarks.** The paper's Figure 4 (the eight points) is an image; the
        points are inferred from Table 2 (see :mod:`fer.data.landmarks.eight`).
        **Whole image** is all ones, as the paper says.
    """
    p, is_torch = _points(landmarks8, "landmarks8")
    if p.shape[-2] != 8:
        raise ValueError(f"landmarks8 must be ... x 8 x 2 (MANet's eight points; use "
                         f"fer.data.landmarks.to_landmarks8), got shape {p.shape}")
    H, W = _hw(image_size, "image_size")
    fh, fw = _hw(feature_size, "feature_size")
    table = {**MANET_REGION_SIZES, **(sizes or {})}
    unknown = set(table) - set(MANET_REGIONS)
    if unknown:
        raise ValueError(f"unknown region(s) {sorted(unknown)} in sizes; regions are {MANET_REGIONS}")
    lead = p.shape[:-2]
    flat = p.reshape(-1, 8, 2)
    bad = ~np.isfinite(flat).all(axis=(1, 2))
    if bad.any():
        _missing(missing, f"{int(bad.sum())} face(s)")
    centres = _region_centres(np.where(bad[:, None, None], 0.0, flat))
    wh = np.array([table[r] for r in MANET_REGIONS]) * np.array([W, H])  # 8 x 2 pixels
    # cell centres in image pixels (pixel centres at integers: the image spans [-0.5, W - 0.5])
    cx = (np.arange(fw) + 0.5) * W / fw - 0.5
    cy = (np.arange(fh) + 0.5) * H / fh - 0.5
    lo, hi = centres - wh / 2, centres + wh / 2  # B x 8 x 2
    in_x = (cx >= lo[..., 0:1]) & (cx <= hi[..., 0:1])  # B x 8 x fw
    in_y = (cy >= lo[..., 1:2]) & (cy <= hi[..., 1:2])  # B x 8 x fh
    out = (in_y[..., :, None] & in_x[..., None, :]).astype(np.float32)
    # the cell holding each (clipped) centre is always on
    jx = np.clip(np.floor((centres[..., 0] + 0.5) * fw / W), 0, fw - 1).astype(int)
    jy = np.clip(np.floor((centres[..., 1] + 0.5) * fh / H), 0, fh - 1).astype(int)
    b_idx, r_idx = np.meshgrid(np.arange(len(flat)), np.arange(8), indexing="ij")
    out[b_idx, r_idx, jy, jx] = 1.0
    out[:, 0] = 1.0  # whole image
    out[bad] = 1.0
    return _like(out.reshape(*lead, 8, fh, fw), is_torch)


# ---------------------------------------------------------------------------- face masks
#: Face-mask styles :func:`paste_face_mask` draws.
FACE_MASK_STYLES: tuple[str, ...] = ("surgical", "cloth")
#: The paper's three mask patterns, "equally included" (section 4.1, Figure 5):
#: white non-woven (a surgical mask), black cloth, gray cloth.
PAPER_MASK_PATTERNS: tuple[tuple[str, str], ...] = (("surgical", "white"), ("cloth", "black"), ("cloth", "gray"))

# Per style: first jaw point of the sides, nose-bridge point (fraction from 28 to 29;
# negative: from 28 towards 27), side and chin margins and upward bulge of the top
# edge (fractions of the face size).
_STYLE = {
    "surgical": dict(side=1, bridge=0.3, margin=0.02, chin=0.035, bulge=0.0),
    "cloth": dict(side=2, bridge=0.0, margin=0.025, chin=0.06, bulge=0.035),
}


def _jaw_normals(lm: np.ndarray) -> np.ndarray:
    jaw = lm[:17]
    tangent = np.gradient(jaw, axis=0)
    n = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-9
    centre = np.concatenate([lm[27:36], lm[48:68]]).mean(axis=0)
    flip = np.sum(n * (jaw - centre), axis=1) < 0
    n[flip] *= -1
    return n


def _resample(curve: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced along a polyline."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, curve[:, 0]), np.interp(t, s, curve[:, 1])], axis=1)


def _mask_frame(lm: np.ndarray, style: str, rng: np.random.Generator | None,
                n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """The mask's top edge and bottom edge, ``n`` points each, image-left to image-right.

    The template lives in (u, v) mask coordinates: ``u`` across (0 at the left ear
    side, 1 at the right), ``v`` down (0 on the top edge, 1 on the bottom edge). It
    is warped onto the face by two curves: the top edge through the nose bridge and
    the bottom edge along the jaw, pushed outward so the mask wraps under the chin.
    """
    st = dict(_STYLE[style])
    if rng is not None:
        st["margin"] *= rng.uniform(0.8, 1.25)
        st["chin"] *= rng.uniform(0.8, 1.25)
        st["bridge"] += rng.uniform(-0.1, 0.1)
        st["bulge"] += rng.uniform(-0.01, 0.01)
    size = max(float(np.linalg.norm(lm[16] - lm[0])), float(np.linalg.norm(lm[8] - lm[27])), 1.0)
    normals = _jaw_normals(lm)
    j = np.arange(17)
    push = st["margin"] + st["chin"] * np.sin(np.pi * j / 16) ** 2
    pushed = lm[:17] + normals * push[:, None] * size
    a, b = st["side"], 16 - st["side"]
    bottom = _resample(catmull_rom(pushed[a:b + 1], steps=4), n)
    t = st["bridge"]
    nose = lm[28] + t * (lm[29] - lm[28]) if t >= 0 else lm[28] + (-t) * (lm[27] - lm[28])
    up = lm[27] - lm[8]
    up /= np.linalg.norm(up) + 1e-9
    left, right = bottom[0], bottom[-1]
    ql = left + 0.55 * (nose - left) + up * st["bulge"] * size
    qr = right + 0.55 * (nose - right) + up * st["bulge"] * size
    top = _resample(catmull_rom(np.stack([left, ql, nose, qr, right]), steps=8), n)
    return top, bottom


def _uv(top: np.ndarray, bottom: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask coordinates (u, v) -> image points (bilinear between the two edges)."""
    n = len(top)
    k = np.asarray(u) * (n - 1)
    tx = np.interp(k, np.arange(n), top[:, 0]), np.interp(k, np.arange(n), top[:, 1])
    bx = np.interp(k, np.arange(n), bottom[:, 0]), np.interp(k, np.arange(n), bottom[:, 1])
    v = np.asarray(v)
    return np.stack([(1 - v) * tx[0] + v * bx[0], (1 - v) * tx[1] + v * bx[1]], axis=-1)


def _shade(colour: np.ndarray, k: float) -> tuple[float, ...]:
    return tuple(float(c) for c in np.clip(colour * k, 0, 255))


def _draw_mask(img: np.ndarray, lm: np.ndarray, top: np.ndarray, bottom: np.ndarray, style: str,
               colour: np.ndarray, dark: bool) -> None:
    size = max(float(np.linalg.norm(lm[16] - lm[0])), float(np.linalg.norm(lm[8] - lm[27])), 1.0)
    th = max(1.0, 0.008 * size)
    outline = np.concatenate([top, bottom[::-1]])
    loop = _shade(colour, 1.25 if dark else 0.85)
    normals = _jaw_normals(lm)
    for side, corner, low in ((0, top[0], bottom[5]), (16, top[-1], bottom[-6])):  # ear loops
        ear = lm[side] + normals[side] * 0.03 * size
        draw.line(img, np.stack([corner, ear, low]), loop, th)
    draw.fill(img, outline, tuple(float(c) for c in colour))
    u = np.linspace(0.04, 0.96, 40)
    # wrap shading towards the bottom edge
    band = np.concatenate([_uv(top, bottom, u, np.full_like(u, 0.72)), _uv(top, bottom, u[::-1], np.ones_like(u))])
    draw.blend_fill(img, band, _shade(colour, 0.6 if not dark else 1.8), 0.18)
    detail = _shade(colour, 0.78 if not dark else 1.7)
    if style == "surgical":
        for v in (0.3, 0.5, 0.7):  # pleats
            draw.line(img, _uv(top, bottom, u, np.full_like(u, v)), detail, th)
        wire = np.linspace(0.4, 0.6, 9)
        draw.line(img, _uv(top, bottom, wire, np.full_like(wire, 0.05)), _shade(colour, 0.9), 1.6 * th)
    else:
        weave = _shade(colour, 0.9 if not dark else 1.35)
        for v in np.linspace(0.08, 0.92, 12):
            draw.line(img, _uv(top, bottom, u, np.full_like(u, v)), weave, 1.0)
        vv = np.linspace(0.0, 1.0, 20)
        draw.line(img, _uv(top, bottom, np.full_like(vv, 0.5), vv), detail, th)  # centre seam
    draw.line(img, top, detail, th)  # hem


def _as_hwc(image: Any) -> tuple[np.ndarray, str]:
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3) or image.dtype != torch.uint8:
            raise ValueError(f"image tensor must be uint8 3 x H x W (or 1 x H x W), got {image.dtype} "
                             f"{tuple(image.shape)}")
        arr = image.detach().cpu().permute(1, 2, 0).numpy()
        kind = "torch"
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
            raise ValueError(f"image array must be uint8 H x W x 3 (or H x W), got {arr.dtype} {arr.shape}")
        kind = "numpy2d" if arr.ndim == 2 else "numpy"
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr), kind


def _restore(arr: np.ndarray, kind: str, channels: int) -> Any:
    if channels == 1:
        arr = arr[..., :1]
    if kind == "torch":
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return np.ascontiguousarray(arr[..., 0] if kind == "numpy2d" else arr)


def paste_face_mask(
    image: Any,
    landmarks: Any,
    style: str = "surgical",
    colour: str = "white",
    rng: np.random.Generator | None = None,
) -> tuple[Any, Any]:
    """Put a face mask on a face, fitted to its nose-bridge and jaw landmarks.

    Args:
        image: uint8 ``3 x H x W`` tensor (as :class:`fer.data.SynFER` yields) or
            ``H x W x 3`` / ``H x W`` array.
        landmarks: the face's 68 iBUG points (pixel x, y), numpy or torch.
        style: ``"surgical"`` (straight top edge with a nose wire, pleats) or
            ``"cloth"`` (contoured: higher over the nose, deeper under the chin,
            centre seam, woven texture).
        colour: ``"white"``, ``"black"`` or ``"gray"``
            (:data:`FACE_MASK_COLOURS`).
        rng: a ``numpy.random.Generator`` for small variations (colour, fit, nose
            wire); ``None`` draws the template exactly.

    Returns:
        ``(masked_image, mask_map)``: the image in the input's layout and type, and
        the mask's binary map (float32 ``H x W`` in {0, 1}; a torch tensor for a
        torch image). The thin ear loops are drawn but not in the map.

    Raises:
        ValueError: unknown style or colour, or landmarks that are not 68 finite points.

    .. note::
        The paper pastes mask *images* with MaskTheFace [21], which warps a mask
        picture onto six points from dlib's 68 (nose bridge, chin, jaw sides). We
        ship no pictures: the template is drawn in the mask's own (u, v) frame
        (outline, pleats or seam, nose wire) and warped by two curves: the top edge
        from the jaw at ear level through the nose bridge (landmarks 28-29), the
        bottom edge along the jaw (landmarks 1-15) pushed outward so the mask wraps
        under the chin. Following every jaw point instead of six keeps the mask on
        the face under yaw and an open mouth. A grey image (equal channels, e.g.
        FER2013-like) stays grey.
    """
    if style not in FACE_MASK_STYLES:
        raise ValueError(f"unknown face-mask style {style!r}; choose from {FACE_MASK_STYLES}")
    if colour not in FACE_MASK_COLOURS:
        raise ValueError(f"unknown face-mask colour {colour!r}; choose from {tuple(FACE_MASK_COLOURS)}")
    lm, _ = _points(landmarks)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise ValueError(f"paste_face_mask needs 68 finite iBUG landmarks (68 x 2), got shape {lm.shape}"
                         + ("" if lm.shape != (68, 2) else " with NaN (a failed detection)")
                         + "; detect them with fer.data.landmarks.detect")
    channels = image.shape[0] if isinstance(image, torch.Tensor) else (1 if np.ndim(image) == 2 else
                                                                      np.shape(image)[2])
    img, kind = _as_hwc(image)
    grey = bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
    base = np.array(FACE_MASK_COLOURS[colour], np.float64)
    if rng is not None:
        base = np.clip(base + rng.normal(0, 4, size=3), 0, 255)
    top, bottom = _mask_frame(lm, style, rng)
    out = img.copy()
    _draw_mask(out, lm, top, bottom, style, base, dark=colour == "black")
    if grey:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [_fixed(np.concatenate([top, bottom[::-1]]))], 1, lineType=cv2.LINE_8, shift=4)
    mask_map = m.astype(np.float32)
    return _restore(out, kind, channels), (torch.from_numpy(mask_map) if kind == "torch" else mask_map)


# ---------------------------------------------------------------------------- datasets
#: Labels of the MU-dataset.
MU_CLASSES: tuple[str, ...] = ("unmasked", "masked")
#: The M-FER-dataset's four expressions, in canonical order.
M_FER_CLASSES: tuple[str, ...] = resolve_classes(("anger", "happy", "neutral", "surprise"), 4)


def _uniform(seed: int, salt: int, idx: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): a pure function of (seed, salt, index)."""
    def mix(x: np.ndarray) -> np.ndarray:
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        h = mix(np.full(idx.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ np.uint64(salt))
        h = mix(h ^ idx.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _check_patterns(patterns: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    out = tuple((str(s), str(c)) for s, c in patterns)
    if not out:
        raise ValueError("patterns must name at least one (style, colour) pair")
    for s, c in out:
        if s not in FACE_MASK_STYLES or c not in FACE_MASK_COLOURS:
            raise ValueError(f"unknown mask pattern ({s!r}, {c!r}); styles {FACE_MASK_STYLES}, "
                             f"colours {tuple(FACE_MASK_COLOURS)}")
    return out


class _MaskedBase(LabelCounts, Dataset):
    """Shared machinery: per-index pattern choice, pasting, item assembly."""

    classes: tuple[str, ...] = ()

    def __init__(self, base: Any, *, patterns: Sequence[tuple[str, str]], seed: int, jitter: bool,
                 transform: Callable[[torch.Tensor], Any] | None) -> None:
        self.base = base
        self.patterns = _check_patterns(patterns)
        self.seed = int(seed)
        self.jitter = bool(jitter)
        self.transform = transform
        n = len(base)
        self._pattern_ids = (_uniform(self.seed, 2, np.arange(n)) * len(self.patterns)).astype(np.int64)
        self._targets = np.zeros(0, np.int64)

    def pattern(self, base_index: int) -> tuple[str, str]:
        """The (style, colour) pasted on base item ``base_index`` (if it is masked)."""
        return self.patterns[int(self._pattern_ids[base_index])]

    def _item(self, base_index: int, label: int, masked: bool) -> dict[str, Any]:
        item = self.base[base_index]
        if not isinstance(item, dict) or "image" not in item:
            raise TypeError(f"base dataset items must be dicts with 'image' (and 'landmarks'), got {type(item)}")
        image = item["image"]
        meta = dict(item.get("meta") or {})
        meta.update(base_index=int(base_index), base_label=int(item.get("label", -1)),
                    face_mask="none", mask_style="none", mask_colour="none")
        if masked:
            lm = item.get("landmarks")
            if lm is None or np.shape(lm) != (68, 2) or not np.isfinite(np.asarray(lm)).all():
                raise ValueError(
                    f"base item {base_index} has no 68 finite landmarks (got "
                    f"{None if lm is None else tuple(np.shape(lm))}); annotate the dataset with "
                    "`python -m fer.data.landmarks` or leave such items out of the base dataset")
            style, colour = self.pattern(base_index)
            rng = np.random.default_rng([self.seed, int(base_index), 0x3A5C]) if self.jitter else None
            image, mmap = paste_face_mask(image, lm, style, colour, rng)
            meta.update(face_mask=f"{colour}-{style}", mask_style=style, mask_colour=colour)
        else:
            h, w = (image.shape[-2:] if isinstance(image, torch.Tensor) else np.shape(image)[:2])
            mmap = torch.zeros(h, w) if isinstance(image, torch.Tensor) else np.zeros((h, w), np.float32)
        if self.transform is not None:
            image = self.transform(image)
        out = {k: v for k, v in item.items() if k not in ("image", "label", "meta")}
        out.update(image=image, label=int(label), mask=mmap, meta=meta)
        return out

    def __len__(self) -> int:
        return len(self._targets)

    def _index(self, i: int) -> int:
        """``i`` as a non-negative index; negative ones count from the end."""
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return i

    def _base_config(self) -> Any:
        fn = getattr(self.base, "config", None)
        return fn() if callable(fn) else {"type": type(self.base).__name__, "n": len(self.base)}

    def fingerprint(self) -> str:
        """A short hash of :meth:`config`: same fingerprint, same samples."""
        blob = json.dumps(self.config(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


class MaskedUnmaskedDataset(_MaskedBase):
    """The masked-FER paper's MU-dataset: faces with and without a pasted mask.

    Stage 1 of the paper trains its masked/unmasked classifier (MCN) on it (section
    4.1, Table 1: about 500 training and 100 test images of several expressions).

    Args:
        base: a dataset of unmasked faces yielding dicts with ``image`` (uint8
            3 x H x W), ``label``, ``landmarks`` (68 x 2) and ``meta``, e.g.
            ``SynFER("wild", n=500)`` or RAF-DB with cached landmarks.
        mask_prob: probability that a sample gets a mask (about half, as in the paper).
        patterns: the (style, colour) pairs drawn uniformly for masked samples;
            default :data:`PAPER_MASK_PATTERNS`.
        seed: every choice is a pure function of ``(seed, index)``.
        jitter: small per-sample variations of the mask (colour, fit).
        transform: applied to the image tensor after pasting.

    Items: ``image``, ``label`` (0 unmasked, 1 masked), ``mask`` (the pasted mask's
    binary map, zeros when unmasked), the base item's other keys, and ``meta`` (the
    base meta plus ``base_index``, ``base_label``, ``face_mask`` (``"white-surgical"``
    or ``"none"``), ``mask_style``, ``mask_colour``).

    .. note::
        Each sample is masked with probability ``mask_prob`` independently, so the
        split is *about* half (the paper gives no exact ratio). The base faces
        should be unmasked (SynFER variants other than ``masked``/``masked_unmasked``).
    """

    classes = MU_CLASSES

    def __init__(self, base: Any, *, mask_prob: float = 0.5,
                 patterns: Sequence[tuple[str, str]] = PAPER_MASK_PATTERNS, seed: int = 0, jitter: bool = True,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        super().__init__(base, patterns=patterns, seed=seed, jitter=jitter, transform=transform)
        self.mask_prob = float(mask_prob)
        self._targets = (_uniform(self.seed, 1, np.arange(len(base))) < self.mask_prob).astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(i)
        masked = bool(self._targets[i])
        return self._item(i, int(masked), masked)

    def config(self) -> dict[str, Any]:
        return {"dataset": "MaskedUnmasked", "mask_prob": self.mask_prob, "patterns": self.patterns,
                "seed": self.seed, "jitter": self.jitter, "base": self._base_config()}

    def __repr__(self) -> str:
        return f"MaskedUnmaskedDataset(n={len(self)}, counts={self.class_counts}, seed={self.seed})"


class MaskedFERDataset(_MaskedBase):
    """The masked-FER paper's M-FER-dataset: every face masked, four expressions.

    Stage 2 (FECN) and the VGG11 / ABN baselines train on it (section 4.1, Table 1:
    about 4000 training and 400 test images of angry, happy, normal (neutral) and
    surprised faces).

    Args:
        base: a dataset yielding dicts with ``image``, ``label``, ``landmarks`` and
            ``meta``, with ``classes`` (names, :data:`fer.data.CLASSES` spelling)
            and ideally ``targets`` (read without decoding images).
        classes: the expressions kept; the paper's four by default.
        patterns, seed, jitter, transform: as in :class:`MaskedUnmaskedDataset`.

    Samples of other classes are left out; labels index ``self.classes``, the kept
    names in canonical order (neutral, happy, surprise, anger).

    .. note::
        The paper also removed images "that cannot be visually classified as facial
        expressions and failed to paste a face mask". Nothing here judges
        expressions; faces without landmarks raise an error when drawn, so leave
        them out of ``base`` (a failed detection in the landmark cache).
    """

    def __init__(self, base: Any, classes: Sequence[str] = ("anger", "happy", "neutral", "surprise"), *,
                 patterns: Sequence[tuple[str, str]] = PAPER_MASK_PATTERNS, seed: int = 0, jitter: bool = True,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        super().__init__(base, patterns=patterns, seed=seed, jitter=jitter, transform=transform)
        self.classes = resolve_classes(classes, len(classes))
        base_classes = tuple(getattr(base, "classes", ()))
        absent = [c for c in self.classes if c not in base_classes]
        if absent:
            raise ValueError(f"base dataset has no class(es) {absent}; its classes are {base_classes}")
        targets = getattr(base, "targets", None)
        if targets is None:  # decode everything once: slow, but correct
            targets = [base[i]["label"] for i in range(len(base))]
        names = [base_classes[int(t)] for t in targets]
        self.indices = np.array([i for i, c in enumerate(names) if c in self.classes], np.int64)
        self._targets = np.array([self.classes.index(names[i]) for i in self.indices], np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(i)
        return self._item(int(self.indices[i]), int(self._targets[i]), True)

    def config(self) -> dict[str, Any]:
        return {"dataset": "MaskedFER", "classes": self.classes, "patterns": self.patterns, "seed": self.seed,
                "jitter": self.jitter, "base": self._base_config()}

    def __repr__(self) -> str:
        return f"MaskedFERDataset(n={len(self)}, classes={self.classes}, seed={self.seed})"
