"""Ground-truth face regions and per-class relevance maps for SynFER.

Because SynFER knows its landmarks exactly and which action units make each
expression, it knows where the class evidence is. :func:`region_maps` draws the
named facial regions from the landmarks; :func:`relevance_map` unions the
regions of an expression's action units into a soft map in [0, 1], against
which chapters score Grad-CAM and attention maps (share of energy inside, and a
pointing-game hit).
"""
from __future__ import annotations

import cv2
import numpy as np

from . import draw
from .face import AU_NAMES, PROTOTYPES, UNILATERAL

__all__ = ["REGIONS", "AU_REGIONS", "region_maps", "relevance_map", "class_regions", "describe_expressions"]

#: Facial regions SynFER can draw as maps.
REGIONS = ("brows", "eyes", "nose", "mouth", "cheeks")
#: Where each action unit acts.
AU_REGIONS: dict[int, tuple[str, ...]] = {
    1: ("brows",), 2: ("brows",), 4: ("brows",), 5: ("eyes",), 6: ("eyes", "cheeks"), 7: ("eyes",),
    9: ("nose",), 10: ("mouth", "nose"), 12: ("mouth", "cheeks"), 14: ("mouth",), 15: ("mouth",),
    16: ("mouth",), 17: ("mouth",), 20: ("mouth",), 23: ("mouth",), 25: ("mouth",), 26: ("mouth",),
    64: ("eyes",),
}


def class_regions(expression: str) -> tuple[str, ...]:
    """Regions holding the evidence for ``expression``.

    Neutral is recognised by the *absence* of action units, so all its
    expressive regions (brows, eyes, mouth) count.
    """
    aus = PROTOTYPES[expression]
    if not aus:
        return ("brows", "eyes", "mouth")
    names = {r for au in aus for r in AU_REGIONS[au]}
    return tuple(r for r in REGIONS if r in names)


def describe_expressions():
    """A pandas DataFrame: each expression's action units, what they move, and its evidence regions."""
    import pandas as pd

    rows = [{"expression": e, "action units": " + ".join(map(str, aus)) or "none",
             "what moves": ", ".join(AU_NAMES[a] for a in aus) or "-",
             "unilateral": "yes" if e in UNILATERAL else "",
             "evidence regions": ", ".join(class_regions(e))} for e, aus in PROTOTYPES.items()]
    return pd.DataFrame(rows).set_index("expression")


def _scaled(poly: np.ndarray, k: float) -> np.ndarray:
    c = poly.mean(axis=0)
    return c + (poly - c) * k


def _brows(lm: np.ndarray, s: float, m: np.ndarray) -> None:
    for brow in (lm[17:22], lm[22:27]):
        up = brow - [0, 0.09 * s]
        lo = brow + [0, 0.045 * s]
        draw.fill(m, np.concatenate([up, lo[::-1]]), 255)
    draw.fill(m, np.stack([lm[21] - [0, 0.06 * s], lm[22] - [0, 0.06 * s], lm[27] + [0.03 * s, 0],
                           lm[27] - [0.03 * s, 0]]), 255)


def _eyes(lm: np.ndarray, s: float, m: np.ndarray) -> None:
    for eye in (lm[36:42], lm[42:48]):
        c = eye.mean(axis=0)
        w = float(np.linalg.norm(eye[3] - eye[0]))
        ang = float(np.arctan2(eye[3, 1] - eye[0, 1], eye[3, 0] - eye[0, 0]))
        draw.fill(m, draw.ellipse_points(c[0], c[1], 0.7 * w + 0.01 * s, 0.42 * w + 0.02 * s, ang), 255)


def _nose(lm: np.ndarray, s: float, m: np.ndarray) -> None:
    nose = np.concatenate([lm[[27]] - [0.04 * s, 0], lm[[31]] - [0.03 * s, 0], lm[[33]] + [0, 0.03 * s],
                           lm[[35]] + [0.03 * s, 0], lm[[27]] + [0.04 * s, 0]])
    draw.fill(m, nose, 255)


def _mouth(lm: np.ndarray, s: float, m: np.ndarray) -> None:
    draw.fill(m, _scaled(lm[48:60], 1.3), 255)


def _cheeks(lm: np.ndarray, s: float, m: np.ndarray) -> None:
    for eye_lo, wing, jaw_pt, corner in ((lm[[41, 40]], lm[31], lm[2], lm[48]), (lm[[46, 47]], lm[35], lm[14], lm[54])):
        poly = np.stack([eye_lo[0] + [0, 0.03 * s], eye_lo[1] + [0, 0.03 * s], wing, corner,
                         0.55 * jaw_pt + 0.45 * corner])
        draw.fill(m, poly, 255)


_DRAW_REGION = {"brows": _brows, "eyes": _eyes, "nose": _nose, "mouth": _mouth, "cheeks": _cheeks}


def region_maps(landmarks: np.ndarray, size: int, scale: float,
                names: tuple[str, ...] = REGIONS) -> dict[str, np.ndarray]:
    """Binary (0/255 uint8, anti-aliased edges) maps of :data:`REGIONS` (or of ``names`` only).

    Args:
        landmarks: 68 x 2 pixel landmarks.
        size: image side in pixels.
        scale: pixels per face width (sets margins).
        names: the regions to draw (each map is drawn on its own, so a subset is the same maps).
    """
    unknown = set(names) - set(REGIONS)
    if unknown:
        raise ValueError(f"unknown regions {sorted(unknown)}; choose from {REGIONS}")
    lm = np.asarray(landmarks, dtype=np.float64)
    out = {}
    for name in names:
        m = np.zeros((size, size), np.uint8)
        _DRAW_REGION[name](lm, scale, m)
        out[name] = m
    return out


def relevance_map(landmarks: np.ndarray, size: int, scale: float, expression: str, *, side: int = 0,
                  maps: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Soft map (float32, size x size, max 1) of where ``expression``'s evidence is.

    ``side`` (-1 image-left, 1 image-right) restricts unilateral expressions
    (contempt) to the half of the face that moves.
    """
    names = class_regions(expression)
    maps = maps if maps is not None else region_maps(landmarks, size, scale, names)
    union = np.zeros((size, size), np.uint8)
    for name in names:
        np.maximum(union, maps[name], out=union)
    acc = union.astype(np.float32) / 255.0
    if expression in UNILATERAL and side:
        lm = np.asarray(landmarks)
        a, b = lm[27], lm[8]
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        cross = (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0])
        # cross < 0 on the image-right of the midline (y down).
        keep = (cross < 0) if side > 0 else (cross > 0)
        acc *= keep
    sigma = max(0.5, 0.02 * scale)
    acc = cv2.GaussianBlur(acc, (0, 0), sigma)
    peak = float(acc.max())
    return acc / peak if peak > 0 else acc
