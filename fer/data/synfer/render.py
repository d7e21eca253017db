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

__all__ = ["FaceGeometry", "build_geometry", "draw_head", "face_mask_polygon", "catmull_rom", "FACE_MASK_STYLES"]

FACE_MASK_STYLES = ("surgical", "cloth")

_JAW_SIL = np.array([1, 1, 1, 0.95, 0.8, 0.55, 0.3, 0.1, 0, 0.1, 0.3, 0.55, 0.8, 0.95, 1, 1, 1], dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _cr_basis(steps: int) -> np.ndarray:
    t = np.linspace(0, 1, steps, endpoint=False)
    return 0.5 * np.stack([-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -t**2 + t**3], 1)


def catmull_rom(points: np.ndarray, *, closed: bool = False, steps: int = 4) -> np.ndarray:
    """Catmull-Rom spline through ``points`` (it passes through every point)."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    if n < 3:
        return p
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        segs = n
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        segs = n - 1
    idx = np.arange(segs)[:, None] + np.arange(4)[None, :]
    out = np.einsum("tk,skd->std", _cr_basis(steps), ext[idx]).reshape(-1, 2)
    return out if closed else np.concatenate([out, p[-1:]])


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


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int) -> np.ndarray:
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


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
    a = np.linspace(0.0, np.pi, 13)[1:-1]
    fore = np.stack([fw * np.cos(a), y_top_jaw - 0.62 * np.sin(a), 0.05 + 0.5 * np.sin(a)], axis=1)
    fore_px = project(silhouette(fore, np.cos(a) ** 2, pose.yaw), pose)
    outline = np.concatenate([catmull_rom(lm[JAW], steps=3), fore_px])

    def ring(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int, z: float = 0.0) -> np.ndarray:
        pts = _arc(cx, cy, rx, ry, a0, a1, n)
        p3 = np.concatenate([pts, np.full((n, 1), z)], axis=1)
        return project(silhouette(p3, np.ones(n), pose.yaw), pose)

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


def _mouth(img: np.ndarray, geo: FaceGeometry, identity: Identity) -> None:
    lm = geo.landmarks
    s = geo.scale
    outer = catmull_rom(lm[48:60], closed=True, steps=4)
    inner = catmull_rom(lm[60:68], closed=True, steps=4)
    draw.fill(img, outer, identity.lips)
    gap = float(np.mean(lm[[65, 66, 67], 1] - lm[[63, 62, 61], 1]))
    if gap > 0.25:
        upper_in = catmull_rom(lm[[60, 61, 62, 63, 64]], steps=4)
        teeth = np.concatenate([upper_in, upper_in[::-1] + np.array([0, 0.045 * s])])
        draw.fill(img, inner, (72, 22, 28))
        draw.fill_clipped(img, inner, [(teeth, (236, 232, 218))])
    seam = catmull_rom(lm[[60, 61, 62, 63, 64]], steps=4)
    draw.line(img, seam, _shade(identity.lips, 0.5), 0.009 * s)
    if gap > 0.25:
        draw.line(img, catmull_rom(lm[[64, 65, 66, 67, 60]], steps=4), _shade(identity.lips, 0.55), 0.008 * s)


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
              clothes: tuple[float, float, float] = (70, 90, 120)) -> None:
    """Paint the head (hair, neck, ears, face and its parts) onto ``img`` in place."""
    s = geo.scale
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
    _wrinkles(img, geo, identity, aus, side)
    if geo.hair_cap is not None:
        draw.fill(img, geo.hair_cap, hair)
    if identity.beard:
        lm = geo.landmarks
        beard = np.concatenate([catmull_rom(lm[3:14], steps=2),
                                lm[[54]] + [0.05 * s, -0.06 * s], lm[[33]] + [0, 0.025 * s],
                                lm[[48]] + [-0.05 * s, -0.06 * s]])
        draw.blend_fill(img, beard, hair, 0.55)
    brow_col = _mixc(hair, (28, 22, 20), 0.45)
    draw.fill(img, _brow_polygon(geo, BROW_R, identity.brow_thickness, inner_last=True), brow_col)
    draw.fill(img, _brow_polygon(geo, BROW_L, identity.brow_thickness, inner_last=False), brow_col)
    _eye(img, geo, EYE_R, identity, gaze)
    _eye(img, geo, EYE_L, identity, gaze)
    _nose(img, geo, identity, light)
    _mouth(img, geo, identity)

