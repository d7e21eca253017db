"""Drawing a SynFER face from its 68 landmarks.

:func:`build_geometry` turns an identity, an expressed face-frame shape and a
pose into pixel geometry (the 68 landmarks plus the outline, hair, ears and neck
built around them); :func:`draw_head` paints it. Every facial part is drawn
*from the landmarks*: the eye openings are the polygons through landmarks 36-41
and 42-47, the lips those through 48-59 (outer) and 60-67 (inner), the brows are
bands along 17-21 and 22-26, the jaw line is landmarks 0-16. So the landmarks
are exact by construction, which ``tests/test_synfer.py`` checks on the pixels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from . import draw
from .face import (
    BROW_L,
    BROW_R,
    EYE_L,
    EYE_R,
    JAW,
    Identity,
    Pose,
    project,
    silhouette,
)

__all__ = ["FaceGeometry", "build_geometry", "draw_head", "face_mask_polygon", "catmull_rom", "FACE_MASK_STYLES",
           "EYES_DOWN", "SKIN_TEXTURE"]

FACE_MASK_STYLES = ("surgical", "cloth")

#: Irises' downward turn (eye widths) of AU 64 (eyes down) at weight 1.
EYES_DOWN = 0.15
#: Skin mottling: standard deviations of relative brightness of the blotches and of the grain.
SKIN_TEXTURE = (0.04, 0.03)

_JAW_SIL = np.array([1, 1, 1, 0.95, 0.8, 0.55, 0.3, 0.1, 0, 0.1, 0.3, 0.55, 0.8, 0.95, 1, 1, 1], dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _cr_basis(steps: int) -> np.ndarray:
    t = np.linspace(0, 1, steps, endpoint=False)
    return 0.5 * np.stack([-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -t**2 + t**3], 1)


@functools.lru_cache(maxsize=256)
def _cr_matrix(n: int, closed: bool, steps: int) -> np.ndarray:
    # The spline is linear in its points: one (samples x n) matrix per (n, closed, steps), built
    # once, turns every later spline into a single product (10x faster than building it each time).
    eye = np.eye(n)
    if closed:
        ext, segs = np.concatenate([eye[-1:], eye, eye[:2]]), n
    else:  # end points mirrored through the first and last point
        ext, segs = np.concatenate([2 * eye[:1] - eye[1:2], eye, 2 * eye[-1:] - eye[-2:-1]]), n - 1
    idx = np.arange(segs)[:, None] + np.arange(4)[None, :]
    m = np.einsum("tk,skn->stn", _cr_basis(steps), ext[idx]).reshape(-1, n)
    if not closed:
        m = np.concatenate([m, eye[-1:]])
    m.setflags(write=False)
    return m


def catmull_rom(points: np.ndarray, *, closed: bool = False, steps: int = 4) -> np.ndarray:
    """Catmull-Rom spline through ``points`` (it passes through every point)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return p
    return _cr_matrix(len(p), bool(closed), int(steps)) @ p


@dataclass
class FaceGeometry:
    """Pixel geometry of one face.

    ``landmarks`` are the 68 iBUG points (x, y); the jaw points lie on the visible
    face contour (iBUG's convention under yaw). ``shape3d`` is the expressed
    face-frame shape they were projected from, kept for parts built in 3D.
    """

    landmarks: np.ndarray
    shape3d: np.ndarray
    pose: Pose
    outline: np.ndarray
    skull: np.ndarray
    hair_cap: np.ndarray | None
    hair_back: np.ndarray | None
    bun: np.ndarray | None
    ears: list[np.ndarray]
    ear_in_front: list[bool]
    neck: np.ndarray
    shoulders: np.ndarray

    @property
    def scale(self) -> float:
        """Pixels per face width."""
        return self.pose.scale

    def project(self, points3d: np.ndarray, sil_weights: np.ndarray | None = None) -> np.ndarray:
        pts = np.asarray(points3d, dtype=np.float64)
        if sil_weights is not None:
            pts = silhouette(pts, sil_weights, self.pose.yaw)
        return project(pts, self.pose)


@functools.lru_cache(maxsize=64)
def _trig(a0: float, a1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Cosines and sines of an arc's angles (read-only): every head has the same arcs.
    a = np.linspace(a0, a1, n)
    out = (np.cos(a), np.sin(a))
    for x in out:
        x.setflags(write=False)
    return out


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int) -> np.ndarray:
    cos, sin = _trig(a0, a1, n)
    return np.stack([cx + rx * cos, cy + ry * sin], axis=1)


@functools.lru_cache(maxsize=16)
def _ring3d(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int, z: float) -> np.ndarray:
    p3 = np.concatenate([_arc(cx, cy, rx, ry, a0, a1, n), np.full((n, 1), z)], axis=1)
    p3.setflags(write=False)
    return p3


def build_geometry(identity: Identity, shape3d: np.ndarray, pose: Pose) -> FaceGeometry:
    """Project an expressed face-frame shape and build the head around it."""
    sil = np.zeros(len(shape3d))
    sil[JAW] = _JAW_SIL
    shape = silhouette(shape3d, sil, pose.yaw)
    lm = project(shape, pose)

    jaw = shape3d[JAW]
    fw = np.ptp(jaw[:, 0]) / 2
    y_top_jaw = (jaw[0, 1] + jaw[16, 1]) / 2
    # Forehead arc from jaw point 16 over the top back to jaw point 0 (z follows the brow).
    cos, sin = _trig(0.0, np.pi, 13)
    cos, sin = cos[1:-1], sin[1:-1]
    fore = np.stack([fw * cos, y_top_jaw - 0.62 * sin, 0.05 + 0.5 * sin], axis=1)
    fore_px = project(silhouette(fore, cos ** 2, pose.yaw), pose)
    outline = np.concatenate([catmull_rom(lm[JAW], steps=3), fore_px])

    def ring(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int, z: float = 0.0) -> np.ndarray:
        return project(silhouette(_ring3d(cx, cy, rx, ry, a0, a1, n, z), np.ones(n), pose.yaw), pose)

    skull = ring(0.0, -0.1, 0.57, 0.72, 0, 2 * np.pi, 36)
    style = identity.hair_style
    hair_cap = None
    if style != "bald":
        hl = -0.34 - identity.hairline + (0.1 if style == "fringe" else 0.0)
        xs = np.linspace(-0.52, 0.52, 15)
        ys = hl + 0.12 * (xs / 0.52) ** 4
        if style == "fringe":
            ys = ys + 0.025 * (np.arange(15) % 2)
        zs = 0.05 + 0.5 * np.sqrt(np.clip(1 - (xs / 0.56) ** 2, 0, 1))
        line3 = np.stack([xs, ys, zs], axis=1)
        line_px = project(silhouette(line3, (xs / 0.52) ** 2, pose.yaw), pose)
        top = ring(0.0, -0.1, 0.58, 0.73, np.pi * 1.04, np.pi * 1.96, 20)
        hair_cap = np.concatenate([top, line_px[::-1]])
    hair_back = None
    if style == "long":
        hair_back = np.concatenate([
            ring(0.0, -0.1, 0.62, 0.76, np.pi, 2 * np.pi, 16),
            project(np.array([[0.66, 0.9, -0.1], [0.7, 1.35, -0.1], [-0.7, 1.35, -0.1], [-0.66, 0.9, -0.1]]), pose),
        ])
    bun = ring(0.0, -0.86, 0.2, 0.17, 0, 2 * np.pi, 16) if style == "bun" else None

    ears, front = [], []
    for side in (-1, 1):
        e = _arc(side * (fw + 0.02), 0.1, 0.07, 0.14, 0, 2 * np.pi, 14)
        e3 = np.concatenate([e, np.full((14, 1), -0.04)], axis=1)
        ears.append(project(e3, pose))
        # The ear on the side turned towards the camera shows in front of the head's side.
        front.append(bool(side * pose.yaw < -12))
    neck = project(np.array([[-0.24, 0.55, 0.0], [-0.27, 1.7, 0.0], [0.27, 1.7, 0.0], [0.24, 0.55, 0.0]]), pose)
    shoulders = project(np.array([
        [-1.6, 1.45, -0.2], [-0.5, 1.18, 0.0], [0.0, 1.25, 0.1], [0.5, 1.18, 0.0], [1.6, 1.45, -0.2],
        [1.6, 3.0, -0.2], [-1.6, 3.0, -0.2],
    ]), pose)
    return FaceGeometry(lm, shape3d, pose, outline, skull, hair_cap, hair_back, bun, ears, front, neck, shoulders)


def _shade(colour, k: float) -> tuple[float, float, float]:
    return tuple(min(max(float(c) * k, 0.0), 255.0) for c in colour)


def _mixc(a, b, t: float) -> tuple[float, float, float]:
    return tuple(min(max((1 - t) * float(x) + t * float(y), 0.0), 255.0) for x, y in zip(a, b))


def _brow_polygon(geo: FaceGeometry, idx: np.ndarray, thickness: float, inner_last: bool) -> np.ndarray:
    pts = geo.shape3d[idx].copy()
    prof = np.array([0.55, 0.9, 1.0, 1.0, 0.85])
    if not inner_last:
        prof = prof[::-1]
    up = pts.copy()
    lo = pts.copy()
    up[:, 1] -= thickness * prof * 0.6
    lo[:, 1] += thickness * prof * 0.4
    poly3 = np.concatenate([up, lo[::-1]])
    return geo.project(poly3)


def _eye(img: np.ndarray, geo: FaceGeometry, idx: np.ndarray, identity: Identity, gaze: tuple[float, float]) -> None:
    lm = geo.landmarks[idx]
    poly = catmull_rom(lm, closed=True, steps=4)
    width = float(np.linalg.norm(lm[3] - lm[0]))
    if width < 1e-3:
        return
    corners_mid = (lm[0] + lm[3]) / 2
    axis = (lm[3] - lm[0]) / width
    normal = np.array([-axis[1], axis[0]])
    centre = corners_mid + axis * gaze[0] * width + normal * gaze[1] * width
    r = 0.22 * width
    skin = identity.skin
    sclera = _mixc((238, 234, 228), skin, 0.12)
    draw.fill(img, poly, sclera)
    draw.fill_clipped(img, poly, [
        (draw.ellipse_points(centre[0], centre[1], r, r, n=20), identity.iris),
        (draw.ellipse_points(centre[0], centre[1], 0.42 * r, 0.42 * r, n=12), (12, 10, 10)),
    ])
    s = geo.scale
    upper = catmull_rom(lm[[0, 1, 2, 3]], steps=4)
    lower = catmull_rom(lm[[3, 4, 5, 0]], steps=4)
    draw.line(img, lower, _shade(skin, 0.72), 0.008 * s)
    draw.line(img, upper, (35, 28, 28), max(1.0, 0.013 * s))


def _nose(img: np.ndarray, geo: FaceGeometry, identity: Identity, light: float) -> None:
    lm = geo.landmarks
    s = geo.scale
    skin = identity.skin
    body = np.concatenate([lm[[27]] + [-0.03 * s, 0], lm[[31, 32, 33, 34, 35]], lm[[27]] + [0.03 * s, 0]])
    draw.fill(img, body, skin)
    side = 1.0 if light >= 0 else -1.0  # shadow on the side away from the light
    bridge = lm[[27, 28, 29, 30]] + np.array([side * 0.035 * s, 0])
    draw.line(img, bridge, _shade(skin, 0.86), 0.01 * s)
    base = catmull_rom(lm[[31, 32, 33, 34, 35]], steps=3)
    draw.line(img, base, _shade(skin, 0.72), 0.01 * s)
    for a, b in ((31, 32), (35, 34)):
        c = 0.6 * lm[a] + 0.4 * lm[b] - np.array([0, 0.008 * s])
        rx = 0.3 * float(np.linalg.norm(lm[a] - lm[33])) + 0.3
        draw.fill(img, draw.ellipse_points(c[0], c[1], rx, 0.45 * rx, n=10), _shade(skin, 0.38))


def _mouth(img: np.ndarray, geo: FaceGeometry, identity: Identity, aus: dict[int, float]) -> None:
    """Lips from landmarks 48-59 / 60-67; an open mouth shows its dark inside and as much
    of the teeth as the action units bare: the upper teeth under a raised or pulled
    upper lip (AU 10, 12, 20), the lower ones under a stretched or depressed lower lip
    (AU 16, 20); a dropped jaw alone (AU 26) shows a dark opening and the upper teeth's edge."""
    lm = geo.landmarks
    s = geo.scale
    outer = catmull_rom(lm[48:60], closed=True, steps=4)
    draw.fill(img, outer, identity.lips)
    gap = float(np.mean(lm[[65, 66, 67], 1] - lm[[63, 62, 61], 1]))
    upper_in = catmull_rom(lm[[60, 61, 62, 63, 64]], steps=4)  # the lips' seam, or the upper lip's edge
    lower_in = catmull_rom(lm[[64, 65, 66, 67, 60]], steps=4) if gap > 0.25 else None
    if lower_in is not None:
        bare_up = max(aus.get(10, 0.0), aus.get(12, 0.0), 0.2 * aus.get(20, 0.0))
        bare_low = max(aus.get(16, 0.0), aus.get(20, 0.0), aus.get(23, 0.0))
        teeth_col = (236, 232, 218)
        shapes = [(np.concatenate([upper_in, upper_in[::-1] + np.array([0, (0.012 + 0.036 * min(bare_up, 1.0)) * s])]),
                   teeth_col)]
        if bare_low > 0.1:
            shapes.append((np.concatenate([lower_in, lower_in[::-1] - np.array([0, 0.03 * min(bare_low, 1.0) * s])]),
                           _shade(teeth_col, 0.9)))
        inner = catmull_rom(lm[60:68], closed=True, steps=4)
        draw.fill(img, inner, (52, 16, 22))
        draw.fill_clipped(img, inner, shapes)
    draw.line(img, upper_in, _shade(identity.lips, 0.5), 0.009 * s)
    if lower_in is not None:
        draw.line(img, lower_in, _shade(identity.lips, 0.55), 0.008 * s)


def _wrinkles(img: np.ndarray, geo: FaceGeometry, identity: Identity, aus: dict[int, float], side: int) -> None:
    """Texture cues of action units: forehead lines (1, 2), glabella furrows (4),
    nose wrinkles (9), nasolabial folds (6, 10, 12), crow's feet (6), dimple (14)."""
    lm = geo.landmarks
    s = geo.scale
    sh = geo.shape3d
    skin = identity.skin

    def col(w: float) -> tuple[float, float, float]:
        return _shade(skin, 1.0 - 0.32 * min(max(w, 0.0), 1.2))

    th = 0.009 * s
    w12 = max(aus.get(1, 0.0), aus.get(2, 0.0))
    if w12 > 0.2:
        brow_top = min(sh[17:27, 1]) - 0.06
        span = 0.16 + 0.12 * aus.get(2, 0.0)
        for k in range(3):
            xs = np.linspace(-span, span, 7)
            ys = brow_top - 0.04 * k + 0.06 * (xs / 0.3) ** 2
            pts = np.stack([xs, ys, 0.5 + 0.0 * xs], axis=1)
            draw.line(img, geo.project(pts), col(w12 * (1 - 0.25 * k)), th)
    w4 = aus.get(4, 0.0)
    if w4 > 0.2:
        for sgn in (-1, 1):
            x = (sh[21, 0] + sh[22, 0]) / 2 + sgn * 0.028
            pts = np.array([[x, sh[21, 1] - 0.05, 0.6], [x + sgn * 0.004, sh[21, 1] + 0.03, 0.6]])
            draw.line(img, geo.project(pts), col(w4), th)
    w9 = aus.get(9, 0.0)
    if w9 > 0.2:
        for k in range(2):
            y = sh[28, 1] - 0.02 + 0.03 * k
            pts = np.array([[-0.05, y, 0.62], [0.0, y - 0.008, 0.66], [0.05, y, 0.62]])
            draw.line(img, geo.project(pts), col(w9), th)
    wn = max(aus.get(6, 0.0), aus.get(10, 0.0), aus.get(12, 0.0), aus.get(9, 0.0))
    if wn > 0.15:
        for wing, corner, sgn in ((31, 48, -1), (35, 54, 1)):
            if side and sgn != side and max(aus.get(6, 0.0), aus.get(9, 0.0), aus.get(10, 0.0)) < 0.15:
                continue
            a = lm[wing] + np.array([sgn * 0.04 * s, -0.02 * s])
            c = lm[corner] + np.array([sgn * 0.025 * s, 0.02 * s])
            m = (a + c) / 2 + np.array([sgn * 0.045 * s, 0])
            draw.line(img, catmull_rom(np.stack([a, m, c]), steps=4), col(wn), th)
    w6 = aus.get(6, 0.0)
    if w6 > 0.2:
        for corner, sgn in ((36, -1), (45, 1)):
            o = lm[corner]
            for ang in (-0.35, 0.0, 0.35):
                d = np.array([sgn * np.cos(ang), np.sin(ang)]) * 0.05 * s
                draw.line(img, np.stack([o + d * 0.4, o + d * 1.3]), col(w6), th)
        for eye in (EYE_R, EYE_L):
            lower = lm[eye][[3, 4, 5, 0]] + np.array([0, 0.022 * s])
            draw.line(img, catmull_rom(lower, steps=3), col(0.7 * w6), th)
    w14 = aus.get(14, 0.0)
    if w14 > 0.2 and side:
        corner = lm[54] if side > 0 else lm[48]
        pts = np.stack([corner + [side * 0.02 * s, -0.025 * s], corner + [side * 0.03 * s, 0.0],
                        corner + [side * 0.02 * s, 0.025 * s]])
        draw.line(img, catmull_rom(pts, steps=3), col(w14), th)


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(np.asarray(points, np.float32)).reshape(-1, 2).astype(np.float64)


def _unit(field: np.ndarray) -> np.ndarray:
    mean, std = cv2.meanStdDev(field)
    field -= np.float32(mean[0, 0])
    field *= np.float32(1.0 / (float(std[0, 0]) + 1e-6))
    return field


def _skin_texture(rng: np.random.Generator, shape: tuple[int, int], s: float) -> np.ndarray:
    """Mottling of real skin: zero-mean relative brightness, blotches about 0.05 face widths
    across (SKIN_TEXTURE[0] standard deviation) plus a finer grain (SKIN_TEXTURE[1]).

    The blotches are smooth, so they are drawn on a grid ``k`` times coarser and upsampled
    (``k`` keeps their blur at 1.5 grid cells or more); the grain is blurred uniform noise.
    Both are scaled to unit standard deviation before weighting.
    """
    h, w = shape
    sigma = 0.05 * s
    k = max(1, int(sigma // 1.5))
    gh, gw = h // k + 2, w // k + 2
    coarse = cv2.GaussianBlur(rng.standard_normal((gh, gw), dtype=np.float32), (0, 0), max(0.5, sigma / k))
    blotch = cv2.resize(_unit(coarse), (gw * k, gh * k), interpolation=cv2.INTER_LINEAR)[:h, :w]
    grain = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), max(0.5, 0.006 * s))
    return _unit(np.ascontiguousarray(blotch)) * np.float32(SKIN_TEXTURE[0]) + _unit(grain) * np.float32(SKIN_TEXTURE[1])


def _shading(img: np.ndarray, geo: FaceGeometry, aus: dict[int, float],
             rng: np.random.Generator | None = None) -> None:
    """Soft shadows: the face's relief, and the action units' folds and bulges.

    Shadows are painted as darkness into a map over the face's box, blurred (the
    blur grows with the face) and multiplied into the skin, inside the face outline
    only. Painted before the brows, eyes, nose and lips, so those keep their colours.
    With ``rng``, the skin is mottled too (:func:`_skin_texture`): real skin is not
    one flat colour.

    * relief, always: eye sockets, the sides and underside of the nose, the hollow
      under the lower lip, the jaw's underside;
    * AU 4: the brows' shadow deepens over the inner eye and two vertical glabella
      furrows; AU 1 with 4: short horizontal furrows in the middle of the forehead;
    * AU 6 and 7: lower-lid bulge; AU 6, 9, 10, 12: nasolabial folds (deep and short for
      9 and 10, long for 12); AU 9: creases across the nose root;
    * AU 15: folds from the lip corners down; AU 17: the chin boss pushed up, with a
      deep fold under the lower lip; AU 20: folds at the stretched corners; AU 23:
      pressed lips bulge the skin above and below.
    """
    box = draw._roi(img, geo.outline, pad=2)
    if box is None:
        return
    x0, y0, x1, y1 = box
    off = np.array([x0, y0], dtype=np.float64)
    lm = geo.landmarks - off
    s = geo.scale
    dark = np.zeros((y1 - y0, x1 - x0), np.uint8)
    a = aus.get

    def paint(poly: np.ndarray, v: float) -> None:
        if v > 0:
            draw.fill(dark, poly, float(min(v, 255.0)))

    def stroke(pts: np.ndarray, v: float, width: float) -> None:
        if v > 0:
            draw.line(dark, pts, float(min(v, 255.0)), width)

    w1, w4, w5, w6, w7 = a(1, 0.0), a(4, 0.0), a(5, 0.0), a(6, 0.0), a(7, 0.0)
    w9, w10, w12, w15, w17 = a(9, 0.0), a(10, 0.0), a(12, 0.0), a(15, 0.0), a(17, 0.0)
    w20, w23 = a(20, 0.0), a(23, 0.0)
    # A brow lowered and raised at once (AU 1+4, fear's 1+2+4) hoods the eye less.
    hood = max(0.0, w4 - 0.8 * max(w1, a(2, 0.0)))
    # Eye sockets: the hull of brow and eye, darker towards the nose under AU 4.
    for eye, brow, inner in ((EYE_R, BROW_R, 21), (EYE_L, BROW_L, 22)):
        e = lm[eye]
        paint(_hull(np.concatenate([lm[brow] + [0, 0.02 * s], e[[3, 4, 5, 0]] + [0, 0.015 * s]])),
              55 + 50 * hood - 25 * w5)
        if hood > 0.1:
            inner_eye = e[3] if inner == 22 else e[0]
            paint(draw.ellipse_points(*((lm[inner] + inner_eye) / 2), 0.06 * s, 0.035 * s), 110 * hood)
    # Nose: sides of the bridge, wings, the shadow under the tip.
    for a0, b0 in ((31, 39), (35, 42)):
        paint(_hull(np.stack([lm[27], lm[29], lm[a0], lm[b0]])), 30)
    paint(draw.ellipse_points(*(lm[33] + [0, 0.025 * s]), 0.09 * s, 0.022 * s), 70)
    # Under the lower lip and under the jaw.
    chin_fold = (lm[57] + lm[8]) / 2 - [0, 0.02 * s]
    paint(draw.ellipse_points(*chin_fold, 0.1 * s, 0.025 * s), 55 + 120 * w17)
    stroke(lm[3:14], 60, 0.04 * s)
    # Forehead and glabella.
    if w4 > 0.15:
        mid = (lm[21] + lm[22]) / 2
        for sgn in (-1, 1):
            x = mid[0] + sgn * 0.03 * s
            stroke(np.array([[x, mid[1] - 0.07 * s], [x - sgn * 0.006 * s, mid[1] + 0.03 * s]]), 230 * w4, 0.018 * s)
        if w1 > 0.15:
            for k in range(3):
                y = mid[1] - (0.1 + 0.045 * k) * s
                stroke(np.array([[mid[0] - 0.09 * s, y + 0.01 * s], [mid[0], y], [mid[0] + 0.09 * s, y + 0.01 * s]]),
                       170 * min(w1, w4), 0.014 * s)
    # Lower lids (AU 6 cheeks, AU 7 lids).
    lid = max(w6, w7)
    if lid > 0.1:
        for eye in (EYE_R, EYE_L):
            stroke(catmull_rom(lm[eye][[3, 4, 5, 0]] + [0, 0.03 * s], steps=3), 170 * lid, 0.02 * s)
    # Nose root creases (AU 9).
    if w9 > 0.1:
        for k in range(3):
            y = lm[28, 1] - 0.005 * s + 0.028 * k * s
            x = lm[28, 0]
            stroke(np.array([[x - 0.06 * s, y + 0.01 * s], [x, y], [x + 0.06 * s, y + 0.01 * s]]), 220 * w9, 0.014 * s)
        for sgn in (-1, 1):  # creases running down the sides of the nose root
            stroke(np.array([lm[27] + [sgn * 0.03 * s, 0.0], lm[29] + [sgn * 0.05 * s, 0.01 * s]]), 200 * w9, 0.016 * s)
    # Nasolabial folds.
    fold = max(w6, w9, w10, w12)
    if fold > 0.1:
        reach = 0.35 + 0.65 * min(1.0, w12 / max(fold, 1e-6))  # short for 9/10, long for a smile
        for wing, corner, sgn in ((31, 48, -1), (35, 54, 1)):
            top = lm[wing] + [sgn * 0.035 * s, -0.03 * s]
            end = lm[corner] + [sgn * 0.03 * s, 0.05 * s]
            pts = catmull_rom(np.stack([top, (top + end) / 2 + [sgn * 0.045 * s, 0], end]), steps=6)
            stroke(pts[: max(2, int(round(len(pts) * reach)))], 220 * fold, 0.025 * s)
    # Lip corners down (AU 15), stretched (AU 20).
    for corner, sgn in ((48, -1), (54, 1)):
        c = lm[corner]
        if w15 > 0.1:
            stroke(np.stack([c + [sgn * 0.01 * s, 0.01 * s], c + [sgn * 0.025 * s, 0.09 * s]]), 180 * w15, 0.02 * s)
        if w20 > 0.1:
            stroke(np.stack([c + [sgn * 0.02 * s, -0.03 * s], c + [sgn * 0.035 * s, 0.04 * s]]), 160 * w20, 0.018 * s)
    # Tightened lips (AU 23) bulge the skin around them.
    if w23 > 0.1:
        stroke(catmull_rom(lm[[48, 50, 52, 54]] + [0, -0.025 * s], steps=4), 120 * w23, 0.02 * s)
        stroke(catmull_rom(lm[[54, 56, 58, 48]] + [0, 0.03 * s], steps=4), 120 * w23, 0.02 * s)
    sigma = max(0.6, 0.018 * s)
    dark = cv2.GaussianBlur(dark, (0, 0), sigma)
    inside = np.zeros_like(dark)
    draw.fill(inside, geo.outline - off, 255)
    shade = 1.0 - (dark.astype(np.float32) / 255.0) * 0.75
    if rng is not None:
        shade *= 1.0 + _skin_texture(rng, shade.shape, s)
    f = 1.0 + (shade - 1.0) * (inside.astype(np.float32) / 255.0)
    roi = img[y0:y1, x0:x1]
    roi[...] = np.minimum(roi * f[..., None] + 0.5, 255.0).astype(np.uint8)


def face_mask_polygon(geo: FaceGeometry, style: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """A face mask over nose and mouth, built from the landmarks in 3D.

    Returns the mask polygon and its detail lines (pleats or seam) in pixels.
    """
    if style not in FACE_MASK_STYLES:
        raise ValueError(f"unknown face-mask style {style!r}; choose from {FACE_MASK_STYLES}")
    sh = geo.shape3d
    y_bridge = sh[28, 1] + (0.01 if style == "surgical" else 0.0)
    lift = 0.035
    jaw = sh[JAW].copy()
    jaw[:, 2] += lift
    bottom = jaw[2:15].copy()
    bottom[:, 1] += np.sin(np.linspace(0, np.pi, 13)) * 0.04  # below the chin, hugging the jaw
    bottom[:, 0] *= 1.02
    top_x = np.linspace(jaw[14, 0] * 1.02, jaw[2, 0] * 1.02, 11)
    prof = 1 - (np.abs(top_x) / np.abs(jaw[2, 0])) ** 2
    if style == "surgical":
        top_y = y_bridge + 0.1 * (1 - prof) - 0.02 * prof
    else:
        top_y = y_bridge + 0.16 * (1 - np.sqrt(np.clip(prof, 0, 1))) - 0.015
    top_z = 0.1 + 0.55 * np.clip(prof, 0, 1) + lift
    top = np.stack([top_x, top_y, top_z], axis=1)
    poly3 = np.concatenate([bottom, top])
    w_sil = np.concatenate([_JAW_SIL[2:15], (top_x / np.abs(jaw[2, 0])) ** 4])
    poly = geo.project(poly3, w_sil)
    details = []
    if style == "surgical":
        for f in (0.3, 0.5, 0.7):
            ys = top_y + f * (np.interp(top_x, bottom[::-1, 0], bottom[::-1, 1]) - top_y)
            pts = np.stack([top_x * 0.97, ys, top_z], axis=1)
            details.append(geo.project(pts, w_sil[13:]))
    else:
        seam = np.array([[0.0, y_bridge - 0.03, 0.8], [0.0, sh[51, 1], 0.75], [0.0, bottom[6, 1], 0.62]])
        details.append(geo.project(seam))
    return poly, details


def draw_head(img: np.ndarray, geo: FaceGeometry, identity: Identity, aus: dict[int, float], *,
              side: int = 0, gaze: tuple[float, float] = (0.0, 0.0), light: float = 0.0,
              clothes: tuple[float, float, float] = (70, 90, 120), rng: np.random.Generator | None = None) -> None:
    """Paint the head (hair, neck, ears, face and its parts) onto ``img`` in place.

    ``gaze`` is the irises' offset (eye widths; +y down); AU 64 (eyes down) adds
    :data:`EYES_DOWN` x its weight. ``rng`` draws the skin's texture (none without it).
    """
    s = geo.scale
    gaze = (gaze[0], gaze[1] + EYES_DOWN * aus.get(64, 0.0))
    skin = identity.skin
    hair = identity.hair
    if geo.hair_back is not None:
        draw.fill(img, geo.hair_back, hair)
    if geo.bun is not None:
        draw.fill(img, geo.bun, hair)
    draw.fill(img, geo.neck, _shade(skin, 0.82))
    draw.fill(img, geo.shoulders, clothes)
    draw.fill(img, geo.skull, skin if identity.hair_style == "bald" else hair)
    for ear, front in zip(geo.ears, geo.ear_in_front):
        if not front:
            draw.fill(img, ear, _shade(skin, 0.9))
    draw.fill(img, geo.outline, skin)
    draw.line(img, catmull_rom(geo.landmarks[JAW], steps=3), _shade(skin, 0.8), 0.008 * s)
    for ear, front in zip(geo.ears, geo.ear_in_front):
        if front:
            draw.fill(img, ear, _shade(skin, 0.9))
            draw.line(img, ear, _shade(skin, 0.7), 0.008 * s, closed=True)
    _shading(img, geo, aus, rng)
    _wrinkles(img, geo, identity, aus, side)
    if geo.hair_cap is not None:
        draw.fill(img, geo.hair_cap, hair)
    if identity.beard:
        lm = geo.landmarks
        beard = np.concatenate([catmull_rom(lm[3:14], steps=2),
                                lm[[54]] + [0.05 * s, -0.06 * s], lm[[33]] + [0, 0.025 * s],
                                lm[[48]] + [-0.05 * s, -0.06 * s]])
        draw.blend_fill(img, beard, hair, 0.55)
    brow_col = _mixc(hair, (28, 22, 20), 0.6)
    draw.fill(img, _brow_polygon(geo, BROW_R, identity.brow_thickness, inner_last=True), brow_col)
    draw.fill(img, _brow_polygon(geo, BROW_L, identity.brow_thickness, inner_last=False), brow_col)
    _eye(img, geo, EYE_R, identity, gaze)
    _eye(img, geo, EYE_L, identity, gaze)
    _nose(img, geo, identity, light)
    _mouth(img, geo, identity, aus)

