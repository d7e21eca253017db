"""SynFER nuisances: backgrounds, illumination, occluders, face masks, degradations.

Each is a small function of a ``numpy.random.Generator`` and the face geometry,
so a variant switches it on or off and sets its strength (see ``variants.py``).
Occluders and face masks also paint a binary *occlusion map*, so a chapter can
measure how much of a model's attention falls on them.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from . import draw
from .render import FACE_MASK_STYLES, FaceGeometry, face_mask_polygon

__all__ = [
    "OCCLUDERS",
    "FACE_MASK_COLOURS",
    "background",
    "illuminate",
    "draw_occluder",
    "draw_face_mask",
    "degrade",
]

OCCLUDERS = ("hand", "sunglasses", "scarf", "patch")
#: The masked-FER paper's three mask types: white non-woven, black cloth, gray cloth.
FACE_MASK_COLOURS = {"white": (236, 238, 240), "black": (32, 32, 36), "gray": (128, 130, 134)}


def _rand_colour(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.integers(lo, hi, size=3))


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel coordinates (y, x) in [0, 1], cached per size (read-only)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A size x size x 3 background: ``plain`` (one colour, faint gradient) or
    ``clutter`` (gradient plus random out-of-focus shapes)."""
    yy, xx = _grid(size, size)
    if kind == "plain":
        base = np.array(rng.integers(150, 235) + rng.integers(-12, 12, size=3), dtype=np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        g = 1 + 0.08 * ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang))
        # channel by channel: the same float64 products as base * g[..., None], at half the cost
        return cv2.merge([np.clip(g * c, 0, 255).astype(np.uint8) for c in base.astype(np.float64)])
    if kind != "clutter":
        raise ValueError(f"unknown background kind {kind!r}; choose 'plain' or 'clutter'")
    c0 = np.array(_rand_colour(rng), np.float32)
    c1 = np.array(_rand_colour(rng), np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)
    u = 1 - t
    img = cv2.merge([(u * a + t * b).astype(np.uint8) for a, b in zip(c0, c1)])  # as (1 - t) * c0 + t * c1
    for _ in range(int(rng.integers(5, 14))):
        kind_s = rng.integers(0, 4)
        col = _rand_colour(rng)
        cx, cy = rng.uniform(-0.1, 1.1, size=2) * size
        r = rng.uniform(0.05, 0.35) * size
        if kind_s == 0:
            draw.fill(img, draw.ellipse_points(cx, cy, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)), col)
        elif kind_s == 1:
            w, h = r, r * rng.uniform(0.3, 2.0)
            ang_r = rng.uniform(0, np.pi)
            rect = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
            rot = np.array([[np.cos(ang_r), -np.sin(ang_r)], [np.sin(ang_r), np.cos(ang_r)]])
            draw.fill(img, rect @ rot.T + [cx, cy], col)
        elif kind_s == 2:
            pts = rng.uniform(-0.1, 1.1, size=(2, 2)) * size
            draw.line(img, pts, col, rng.uniform(0.01, 0.05) * size)
        else:
            pts = np.array([cx, cy]) + rng.normal(0, r, size=(int(rng.integers(3, 6)), 2))
            draw.fill(img, pts, col)
    sigma = rng.uniform(0.6, 2.0) * size / 112
    return cv2.GaussianBlur(img, (0, 0), sigma)


def illuminate(img: np.ndarray, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, float]:
    """Directional light, overall exposure and colour cast.

    ``strength`` 0 leaves the image as it is; 1 gives hard side light and strong
    exposure changes. Returns the image and the light's horizontal direction
    (-1..1, used to place the nose shadow).
    """
    if strength <= 0:
        return img, 0.0
    h, w = img.shape[:2]
    ang = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0, 0.7) * strength
    yy, xx = _grid(h, w)
    g = 1 + amp * ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)) * 2
    expo = float(np.exp(rng.normal(0, 0.22 * strength)))
    cast = 1 + rng.normal(0, 0.05 * strength, size=3).astype(np.float32)
    contrast = float(np.exp(rng.normal(0, 0.15 * strength)))
    out = img.astype(np.float32)
    out *= (g * (expo * contrast))[..., None] * (cast)
    out += 128 * (1 - contrast)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8), float(np.cos(ang) * amp)


def _mark(occ: np.ndarray, poly: np.ndarray) -> None:
    draw.fill(occ, poly, 255)


def _sunglasses(img: np.ndarray, occ: np.ndarray, geo: FaceGeometry, rng: np.random.Generator) -> None:
    lm = geo.landmarks
    s = geo.scale
    lens = tuple(float(v) for v in np.array([20, 20, 24]) + rng.integers(0, 50) * np.array(rng.random(3) < 0.5))
    frame = _rand_colour(rng, 0, 90)
    eyes = []
    for idx in (slice(36, 42), slice(42, 48)):
        e = lm[idx]
        c = e.mean(axis=0)
        width = float(np.linalg.norm(e[3] - e[0]))
        ang = float(np.arctan2(e[3, 1] - e[0, 1], e[3, 0] - e[0, 0]))
        rx = max(0.8 * width, 0.11 * s)
        poly = draw.ellipse_points(c[0], c[1] + 0.01 * s, rx, 0.7 * rx, ang, n=20)
        draw.fill(img, poly, lens)
        draw.line(img, poly, frame, 0.012 * s, closed=True)
        _mark(occ, poly)
        eyes.append((c, rx))
    (c0, r0), (c1, r1) = eyes
    draw.line(img, np.stack([c0 + [r0 * 0.9, -0.02 * s], c1 - [r1 * 0.9, 0.02 * s]]), frame, 0.012 * s)
    draw.line(img, np.stack([c0 - [r0, 0], lm[0] + [0, -0.02 * s]]), frame, 0.012 * s)
    draw.line(img, np.stack([c1 + [r1, 0], lm[16] + [0, -0.02 * s]]), frame, 0.012 * s)


def _hand(img: np.ndarray, occ: np.ndarray, geo: FaceGeometry, rng: np.random.Generator,
          skin: tuple[float, float, float]) -> None:
    lm = geo.landmarks
    s = geo.scale
    target = {"mouth": lm[48:60].mean(axis=0), "chin": lm[8] - [0, 0.08 * s], "cheek": lm[[2, 3, 31]].mean(axis=0),
              "eye": lm[36:42].mean(axis=0) if rng.random() < 0.5 else lm[42:48].mean(axis=0),
              "forehead": lm[[19, 24]].mean(axis=0) - [0, 0.12 * s]}
    where = list(target)[rng.integers(0, len(target))]
    c = target[where] + rng.normal(0, 0.05 * s, size=2)
    ang = rng.uniform(-np.pi, np.pi)
    col = tuple(float(np.clip(v * rng.uniform(0.85, 1.1), 0, 255)) for v in skin)
    palm = draw.ellipse_points(c[0], c[1], 0.2 * s, 0.24 * s, ang, n=20)
    axis = np.array([np.sin(ang), -np.cos(ang)])
    perp = np.array([np.cos(ang), np.sin(ang)])
    fingers = []
    for off, length in ((-0.12, 0.28), (-0.04, 0.33), (0.04, 0.32), (0.12, 0.26)):
        base = c + axis * 0.16 * s + perp * off * s
        fingers.append(np.stack([base, base + axis * length * s]))
    thumb_base = c + perp * 0.17 * s
    fingers.append(np.stack([thumb_base, thumb_base + (perp * 0.8 + axis * 0.6) * 0.22 * s]))
    outline_col = tuple(v * 0.75 for v in col)
    for f in fingers:
        draw.line(img, f, outline_col, 0.095 * s)
        draw.line(img, f, col, 0.075 * s)
        draw.line(occ, f, 255, 0.095 * s)
    draw.fill(img, palm, col)
    draw.line(img, palm, outline_col, 0.01 * s, closed=True)
    _mark(occ, palm)


def _scarf(img: np.ndarray, occ: np.ndarray, geo: FaceGeometry, rng: np.random.Generator) -> None:
    lm = geo.landmarks
    s = geo.scale
    top = float(np.interp(rng.uniform(0.0, 0.7), [0, 1], [lm[51, 1], lm[8, 1]]))
    left, right = lm[2, 0] - 0.12 * s, lm[14, 0] + 0.12 * s
    h = img.shape[0]
    poly = np.array([[left, top + 0.05 * s], [(left + right) / 2, top], [right, top + 0.05 * s],
                     [right + 0.2 * s, h + 5], [left - 0.2 * s, h + 5]])
    c0, c1 = _rand_colour(rng), _rand_colour(rng)
    draw.fill(img, poly, c0)
    stripes = []
    for k in range(int(rng.integers(2, 6))):
        y = top + (k + 1) * 0.07 * s
        stripes.append((np.array([[left - s, y], [right + s, y], [right + s, y + 0.025 * s], [left - s, y + 0.025 * s]]),
                        c1))
    draw.fill_clipped(img, poly, stripes)
    _mark(occ, poly)


def _patch(img: np.ndarray, occ: np.ndarray, geo: FaceGeometry, rng: np.random.Generator) -> None:
    lm = geo.landmarks
    s = geo.scale
    centres = [lm[36:48].mean(axis=0), lm[48:60].mean(axis=0), lm[27:36].mean(axis=0),
               lm[[1, 2, 31]].mean(axis=0), lm[[15, 14, 35]].mean(axis=0), lm[17:27].mean(axis=0)]
    c = centres[rng.integers(0, len(centres))] + rng.normal(0, 0.05 * s, size=2)
    w, h = rng.uniform(0.22, 0.5, size=2) * s
    ang = rng.uniform(-0.4, 0.4)
    rect = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    poly = rect @ rot.T + c
    if rng.random() < 0.5:
        draw.fill(img, poly, _rand_colour(rng))
    else:
        m = np.zeros(img.shape[:2], np.uint8)
        draw.fill(m, poly, 255)
        noise = rng.integers(0, 256, size=img.shape, dtype=np.uint8)
        noise = cv2.GaussianBlur(noise, (0, 0), 0.8)
        a = (m.astype(np.float32) / 255)[..., None]
        img[...] = (noise * a + img * (1 - a)).astype(np.uint8)
    _mark(occ, poly)


def draw_occluder(img: np.ndarray, occ: np.ndarray, geo: FaceGeometry, kind: str, rng: np.random.Generator,
                  skin: tuple[float, float, float]) -> None:
    """Paint occluder ``kind`` (one of :data:`OCCLUDERS`) and mark it in ``occ``."""
    if kind == "hand":
        _hand(img, occ, geo, rng, skin)
    elif kind == "sunglasses":
        _sunglasses(img, occ, geo, rng)
    elif kind == "scarf":
        _scarf(img, occ, geo, rng)
    elif kind == "patch":
        _patch(img, occ, geo, rng)
    else:
        raise ValueError(f"unknown occluder {kind!r}; choose from {OCCLUDERS}")


def draw_face_mask(img: np.ndarray, occ: np.ndarray, geo: FaceGeometry, colour: str, style: str,
                   rng: np.random.Generator) -> None:
    """Paint a face mask (``colour`` in :data:`FACE_MASK_COLOURS`, ``style`` in
    ``("surgical", "cloth")``) over nose and mouth, with ear loops."""
    if colour not in FACE_MASK_COLOURS:
        raise ValueError(f"unknown face-mask colour {colour!r}; choose from {tuple(FACE_MASK_COLOURS)}")
    if style not in FACE_MASK_STYLES:
        raise ValueError(f"unknown face-mask style {style!r}; choose from {FACE_MASK_STYLES}")
    s = geo.scale
    base = np.array(FACE_MASK_COLOURS[colour], np.float64) + rng.normal(0, 5, size=3)
    base = tuple(float(v) for v in np.clip(base, 0, 255))
    poly, details = face_mask_polygon(geo, style)
    lm = geo.landmarks
    loop_col = tuple(v * 0.85 for v in base)
    for jaw_i, ear_y in ((2, -0.02), (14, -0.02)):
        ear = lm[0] if jaw_i == 2 else lm[16]
        draw.line(img, np.stack([poly[0 if jaw_i == 2 else 12], ear + [0, ear_y * s]]), loop_col, 0.008 * s)
    draw.fill(img, poly, base)
    shade = tuple(v * (0.8 if colour != "black" else 1.6) for v in base)
    for d in details:
        draw.line(img, d, shade, 0.008 * s)
    _mark(occ, poly)


def degrade(img: np.ndarray, rng: np.random.Generator, *, blur: float, noise: float, lowres: float,
            jpeg: float) -> np.ndarray:
    """Blur (max sigma, pixels at 112 px), Gaussian noise (max sigma, grey levels),
    low resolution (probability of a 2-3x down-up sample) and JPEG (probability)."""
    size = img.shape[0]
    if blur > 0:
        sigma = rng.uniform(0, blur) * size / 112
        if sigma > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
    if lowres > 0 and rng.random() < lowres:
        f = rng.uniform(2, 3.2)
        small = max(8, int(size / f))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    if noise > 0:
        sd = rng.uniform(0, noise)
        if sd > 0.5:
            noisy = img.astype(np.float32)
            noisy += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sd)
            img = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    if jpeg > 0 and rng.random() < jpeg:
        q = int(rng.integers(30, 85))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return img
