"""SynFER face geometry: the iBUG 68-point face, identities, action units, pose.

Everything here works in a *face frame*: x to the image right, y down, z towards
the camera, with the unit the face width (jaw point 0 to jaw point 16 on the
mean frontal face) and the origin on the eye line, at the head's vertical axis.
Landmarks carry a depth so that yaw and pitch rotate them like points on a head;
the projection is orthographic.

The mean shape is the 68-point iBUG 300-W template used by OpenFace's face
alignment (``openface/align_dlib.py``, ``TEMPLATE``), made exactly left-right
symmetric. Expressions are sums of FACS action-unit displacements on these points
(Ekman & Friesen's EMFACS prototypes, :data:`PROTOTYPES`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "N_LANDMARKS",
    "JAW",
    "BROW_R",
    "BROW_L",
    "NOSE_BRIDGE",
    "NOSE_BASE",
    "EYE_R",
    "EYE_L",
    "MOUTH_OUTER",
    "MOUTH_INNER",
    "MIRROR",
    "ACTION_UNITS",
    "AU_NAMES",
    "PROTOTYPES",
    "AU_SCALE",
    "AU_ONSET",
    "prototype_weights",
    "Identity",
    "sample_identity",
    "neutral_shape",
    "au_displacement",
    "apply_action_units",
    "Pose",
    "rotation_matrix",
    "project",
]

N_LANDMARKS = 68
JAW = np.arange(0, 17)
BROW_R = np.arange(17, 22)  # subject's right brow, image left
BROW_L = np.arange(22, 27)
NOSE_BRIDGE = np.arange(27, 31)
NOSE_BASE = np.arange(31, 36)
EYE_R = np.arange(36, 42)
EYE_L = np.arange(42, 48)
MOUTH_OUTER = np.arange(48, 60)
MOUTH_INNER = np.arange(60, 68)

# OpenFace's iBUG-68 template (unit square, y down).
_TEMPLATE = np.array([
    (0.0792396913815, 0.339223741112), (0.0829219487236, 0.456955367943),
    (0.0967927109165, 0.575648016728), (0.122141515615, 0.691921601066),
    (0.168687863544, 0.800341263616), (0.239789390707, 0.895732504778),
    (0.325662452515, 0.977068762493), (0.422318282013, 1.04329000149),
    (0.531777802068, 1.06080371126), (0.641296298053, 1.03981924107),
    (0.738105872266, 0.972268833998), (0.824444363295, 0.889624082279),
    (0.894792677532, 0.792494155836), (0.939395486253, 0.681546643421),
    (0.96111933829, 0.562238253072), (0.970579841181, 0.441758925744),
    (0.971193274221, 0.322118743967), (0.163846223133, 0.249151738053),
    (0.21780354657, 0.204255863861), (0.291299351124, 0.192367318323),
    (0.367460241458, 0.203582210627), (0.4392945113, 0.233135599851),
    (0.586445962425, 0.228141644834), (0.660152671635, 0.195923841854),
    (0.737466449096, 0.182360984545), (0.813236546239, 0.192828009114),
    (0.8707571886, 0.235293377042), (0.51534533827, 0.31863546193),
    (0.516221448289, 0.396200446263), (0.517118861835, 0.473797687758),
    (0.51816430343, 0.553157797772), (0.433701156035, 0.604054457668),
    (0.475501237769, 0.62076344024), (0.520712933176, 0.634268222208),
    (0.565874114041, 0.618796581487), (0.607054002672, 0.60157671656),
    (0.252418718401, 0.331052263829), (0.298663015648, 0.302646354002),
    (0.355749724218, 0.303020650651), (0.403718978315, 0.33867711083),
    (0.352507175597, 0.349987615384), (0.296791759886, 0.350478978225),
    (0.631326076346, 0.334136672344), (0.679073381078, 0.29645404267),
    (0.73597236153, 0.294721285802), (0.782865376271, 0.321305281656),
    (0.740312274764, 0.341849376713), (0.68499850091, 0.343734332172),
    (0.353167761422, 0.746189164237), (0.414587777921, 0.719053835073),
    (0.477677654595, 0.706835892494), (0.522732900812, 0.717092275768),
    (0.569832064287, 0.705414478982), (0.635195811927, 0.71565572516),
    (0.69951672331, 0.739419187253), (0.639447159575, 0.805236879972),
    (0.576410514055, 0.835436670169), (0.525398405766, 0.841706377792),
    (0.47641545769, 0.837505914975), (0.41379548902, 0.810045601727),
    (0.380084785646, 0.749979603086), (0.477955996282, 0.74513234612),
    (0.523389793327, 0.748924302915), (0.571057789237, 0.74332894691),
    (0.672409137852, 0.744177032192), (0.572539621444, 0.776609286626),
    (0.5240106503, 0.783370783245), (0.477561227414, 0.778476346951),
], dtype=np.float64)

#: Index of each landmark's mirror image (left-right) in the iBUG layout.
MIRROR = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows
    + [27, 28, 29, 30]  # bridge
    + [35, 34, 33, 32, 31]  # nose base
    + [45, 44, 43, 42, 47, 46]  # right eye -> left eye
    + [39, 38, 37, 36, 41, 40]  # left eye -> right eye
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lip
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lip
)

# Depth of each landmark (face-width units, towards the camera, head axis at 0).
_DEPTH = np.array(
    [0.02, 0.05, 0.10, 0.17, 0.26, 0.36, 0.45, 0.53, 0.57, 0.53, 0.45, 0.36, 0.26, 0.17, 0.10, 0.05, 0.02]
    + [0.39, 0.49, 0.56, 0.60, 0.61, 0.61, 0.60, 0.56, 0.49, 0.39]
    + [0.60, 0.65, 0.72, 0.78]
    + [0.61, 0.65, 0.68, 0.65, 0.61]
    + [0.43, 0.52, 0.53, 0.52, 0.52, 0.51, 0.52, 0.53, 0.52, 0.43, 0.51, 0.52]
    + [0.52, 0.60, 0.64, 0.65, 0.64, 0.60, 0.52, 0.60, 0.62, 0.64, 0.62, 0.60]
    + [0.53, 0.61, 0.62, 0.61, 0.53, 0.60, 0.61, 0.60]
)
#: Half-depth of the head's horizontal cross-section, for the silhouette under yaw.
HEAD_HALF_DEPTH = 0.66


def _mean_frontal() -> np.ndarray:
    """The symmetric mean face, 68 x 3, in face-frame units."""
    t = _TEMPLATE.copy()
    width = t[16, 0] - t[0, 0]
    eye_y = t[36:48, 1].mean()
    xy = np.stack([(t[:, 0] - t[:, 0].mean()) / width, (t[:, 1] - eye_y) / width], axis=1)
    xy[:, 0] -= xy[:, 0].mean()
    sym = np.stack([(xy[:, 0] - xy[MIRROR, 0]) / 2, (xy[:, 1] + xy[MIRROR, 1]) / 2], axis=1)
    # The template's mouth is slightly open; a neutral face keeps its lips together.
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        mid = (sym[upper, 1] + sym[lower, 1]) / 2
        sym[upper, 1] = sym[lower, 1] = mid
    for corner in (60, 64):
        sym[corner] = sym[48 if corner == 60 else 54] * np.array([0.93, 1.0])
    return np.concatenate([sym, _DEPTH[:, None]], axis=1)


MEAN_FACE = _mean_frontal()

# --------------------------------------------------------------------------- identity

SKIN_TONES = np.array([  # RGB, light to dark
    (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 100),
    (170, 110, 78), (141, 85, 54), (105, 64, 42), (78, 48, 32),
], dtype=np.float64)
HAIR_COLOURS = np.array([
    (25, 20, 18), (60, 40, 28), (100, 68, 40), (160, 120, 70),
    (205, 170, 110), (140, 60, 30), (150, 150, 150), (220, 220, 215),
], dtype=np.float64)
IRIS_COLOURS = np.array([
    (60, 38, 22), (95, 60, 30), (40, 30, 25), (70, 110, 150), (90, 120, 80), (120, 95, 50),
], dtype=np.float64)
HAIR_STYLES = ("short", "long", "bald", "bun", "fringe")


@dataclass(frozen=True)
class Identity:
    """A SynFER person: face-shape parameters and colours.

    Shape parameters are offsets (face-width units) or factors applied to
    :data:`MEAN_FACE` by :func:`neutral_shape`. ``rest`` is a resting offset of
    the mouth corners (positive = down): some people look a little sad or a
    little happy at rest, which is part of what makes weak expressions ambiguous.
    """

    face_width: float = 1.0
    face_height: float = 1.0
    jaw_width: float = 1.0
    chin: float = 0.0
    eye_size: float = 1.0
    eye_spacing: float = 0.0
    eye_height: float = 0.0
    eye_tilt: float = 0.0
    brow_height: float = 0.0
    brow_tilt: float = 0.0
    brow_thickness: float = 0.022
    nose_length: float = 0.0
    nose_width: float = 1.0
    mouth_width: float = 1.0
    mouth_height: float = 0.0
    upper_lip: float = 1.0
    lower_lip: float = 1.0
    rest: float = 0.0
    skin: tuple[float, float, float] = (224.0, 172.0, 138.0)
    hair: tuple[float, float, float] = (60.0, 40.0, 28.0)
    iris: tuple[float, float, float] = (60.0, 38.0, 22.0)
    lips: tuple[float, float, float] = (190.0, 110.0, 100.0)
    hair_style: str = "short"
    hairline: float = 0.0
    beard: bool = False


_TONES = tuple(tuple(map(float, t)) for t in SKIN_TONES)
_HAIRS = tuple(tuple(map(float, t)) for t in HAIR_COLOURS)
_IRISES = tuple(tuple(map(float, t)) for t in IRIS_COLOURS)
_STYLE_P = np.array([0.34, 0.3, 0.08, 0.1, 0.18])


def _clip255(v: float) -> float:
    return min(max(v, 0.0), 255.0)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[float, ...]:
    return tuple(_clip255((1 - t) * x + t * y) for x, y in zip(a, b))


def _pick(rng: np.random.Generator, p: np.ndarray) -> int:
    """``rng.choice(len(p), p=p)`` without its argument checks: the same draw (one
    ``rng.random()`` searched in the normalised cumulative sum), a fifth of the time."""
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def sample_identity(rng: np.random.Generator, *, beard_prob: float = 0.12) -> Identity:
    """Draw a random identity (shape and colours) from ``rng``.

    Scalar draws are ``lo + (hi - lo) * rng.random()``, which is what ``rng.uniform(lo, hi)``
    computes, and choices go through :func:`_pick`: the identities are those that
    ``rng.uniform`` and ``rng.choice`` drew (checked in ``tests/test_synfer.py``).
    """
    rand = rng.random

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * rand()

    tone = u(0, len(SKIN_TONES) - 1)
    i = int(tone)
    skin = _mix(_TONES[i], _TONES[min(i + 1, len(_TONES) - 1)], tone - i)
    skin = tuple(_clip255(c + rng.normal(0, 6)) for c in skin)
    dark = tone / (len(SKIN_TONES) - 1)
    hair_p = np.array([4, 4, 3, 2, 2, 1, 1.2, 0.6]) * np.array([1, 1, 1, 1 - dark, 1 - dark, 1 - dark, 1, 1])
    hair = tuple(_clip255(c + rng.normal(0, 8)) for c in _HAIRS[_pick(rng, hair_p / hair_p.sum())])
    iris_p = np.array([4, 3, 2, 1 - 0.9 * dark, 1 - 0.9 * dark, 1.5])
    iris = _IRISES[_pick(rng, iris_p / iris_p.sum())]
    lips = _mix((skin[0] * 0.9, skin[1] * 0.62, skin[2] * 0.62), (170.0, 70.0, 80.0), u(0.15, 0.45))
    style = HAIR_STYLES[_pick(rng, _STYLE_P)]
    return Identity(
        face_width=u(0.92, 1.08),
        face_height=u(0.92, 1.1),
        jaw_width=u(0.86, 1.1),
        chin=u(-0.03, 0.05),
        eye_size=u(0.85, 1.2),
        eye_spacing=u(-0.025, 0.025),
        eye_height=u(-0.02, 0.02),
        eye_tilt=u(-0.012, 0.012),
        brow_height=u(-0.025, 0.025),
        brow_tilt=u(-0.015, 0.015),
        brow_thickness=u(0.026, 0.045),
        nose_length=u(-0.04, 0.04),
        nose_width=u(0.85, 1.2),
        mouth_width=u(0.86, 1.14),
        mouth_height=u(-0.025, 0.025),
        upper_lip=u(0.7, 1.3),
        lower_lip=u(0.75, 1.35),
        rest=float(rng.normal(0, 0.008)),
        skin=skin,
        hair=hair,
        iris=iris,
        lips=lips,
        hair_style=style,
        hairline=u(-0.05, 0.06),
        beard=bool(rng.random() < beard_prob),
    )


# What neutral_shape reads of MEAN_FACE before it changes it, computed once: the jaw's
# lower-face weight, each eye's centre, each brow's spread from the midline.
_JAW_LOWER = np.clip((MEAN_FACE[JAW, 1] - 0.25) / 0.6, 0, 1)
_JAW_LOWER2 = _JAW_LOWER**2
_EYE_SHAPES = tuple((slice(int(e[0]), int(e[-1]) + 1), side, int(e[0] if side < 0 else e[3]),
                     MEAN_FACE[e, :2].mean(axis=0)) for e, side in ((EYE_R, -1), (EYE_L, 1)))
_BROW_SHAPES = tuple((slice(int(b[0]), int(b[-1]) + 1), side, np.abs(MEAN_FACE[b, 0]) - 0.2)
                     for b, side in ((BROW_R, -1), (BROW_L, 1)))
_NOSE_PROFILE = np.array([0.3, 0.6, 1.0, 1, 1, 1, 1, 1])
_LIP_SEAM = np.array([61, 62, 63])
_LIP_CORNERS = np.array([48, 54, 60, 64])


def neutral_shape(identity: Identity) -> np.ndarray:
    """The identity's neutral face, 68 x 3, in the face frame."""
    p = MEAN_FACE.copy()
    x, y = p[:, 0], p[:, 1]
    idt = identity
    # Jaw: narrower or wider lower face, longer or shorter chin.
    x[0:17] *= 1 + (idt.jaw_width - 1) * _JAW_LOWER
    y[0:17] += idt.chin * _JAW_LOWER2
    # Eyes: size about each eye's centre, spacing, height, tilt.
    for eye, side, outer, c in _EYE_SHAPES:
        p[eye, :2] = c + (p[eye, :2] - c) * idt.eye_size
        x[eye] += side * idt.eye_spacing
        y[eye] += idt.eye_height
        y[outer] -= idt.eye_tilt
    # Brows.
    for brow, side, spread in _BROW_SHAPES:
        y[brow] += -idt.brow_height + idt.brow_tilt * spread * 4
        x[brow] += side * idt.eye_spacing * 0.7
    # Nose: the bridge below its root, and the base.
    y[28:36] += idt.nose_length * _NOSE_PROFILE
    x[31:36] *= idt.nose_width
    # Mouth: width, height, lip thickness, resting corners.
    y[48:68] += idt.mouth_height + idt.nose_length * 0.6
    x[48:68] *= idt.mouth_width
    seam = y[_LIP_SEAM].mean()
    y[49:54] = seam + (y[49:54] - seam) * idt.upper_lip
    y[55:60] = seam + (y[55:60] - seam) * idt.lower_lip
    y[_LIP_CORNERS] += idt.rest
    # Whole face.
    x *= idt.face_width
    y *= idt.face_height
    return p


# --------------------------------------------------------------------------- action units


def _disp(entries: dict[tuple[int, ...], tuple[float, float]], *, mirror_x: bool = True) -> np.ndarray:
    """Build a 68 x 2 displacement from {landmarks: (dx, dy)} given for the image-left side.

    With ``mirror_x`` each entry is copied to the mirrored landmark with dx negated,
    so left and right move symmetrically.
    """
    d = np.zeros((N_LANDMARKS, 2))
    for idx, (dx, dy) in entries.items():
        for i in idx:
            d[i] = (dx, dy)
            if mirror_x and MIRROR[i] != i:
                d[MIRROR[i]] = (-dx, dy)
    return d


#: FACS action units as landmark displacements (face-width units at intensity 1).
#: The dict is keyed by AU number; dx is given for the image-left side and mirrored.
ACTION_UNITS: dict[int, np.ndarray] = {
    1: _disp({(21,): (0.004, -0.11), (20,): (0.0, -0.065), (19,): (0.0, -0.025), (18,): (0.0, -0.006)}),
    2: _disp({(17,): (-0.004, -0.062), (18,): (0.0, -0.058), (19,): (0.0, -0.038), (20,): (0.0, -0.015)}),
    4: _disp({(21,): (0.042, 0.09), (20,): (0.028, 0.07), (19,): (0.014, 0.048), (18,): (0.004, 0.026),
              (17,): (0.0, 0.01), (37, 38): (0.0, 0.014), (36, 39): (0.0, 0.004)}),
    5: _disp({(37, 38): (0.0, -0.042), (36, 39): (0.0, -0.005), (40, 41): (0.0, 0.006)}),
    6: _disp({(40, 41): (0.0, -0.018), (36,): (0.002, -0.007), (17, 18): (0.0, 0.006)}),
    7: _disp({(40, 41): (0.0, -0.022), (36, 39): (0.0, -0.004), (37, 38): (0.0, 0.01)}),
    9: _disp({(31,): (0.004, -0.034), (32,): (0.0, -0.03), (33,): (0.0, -0.028), (30,): (0.0, -0.016),
              (29,): (0.0, -0.008), (21,): (0.014, 0.03), (20,): (0.008, 0.02),
              (40, 41): (0.0, -0.016), (37, 38): (0.0, 0.008),
              (49,): (0.0, -0.01), (50,): (0.0, -0.016), (51,): (0.0, -0.016), (61,): (0.0, -0.01), (62,): (0.0, -0.01)}),
    10: _disp({(49,): (0.0, -0.034), (50,): (0.0, -0.05), (51,): (0.0, -0.046), (48,): (0.0, -0.012),
               (61,): (0.0, -0.05), (62,): (0.0, -0.05), (60,): (0.0, -0.012)}),
    12: _disp({(48,): (-0.05, -0.06), (60,): (-0.046, -0.055), (49,): (-0.02, -0.025), (59,): (-0.022, -0.03),
               (61,): (-0.015, -0.012), (67,): (-0.015, -0.016), (58,): (0.0, -0.008), (57,): (0.0, -0.004),
               (66,): (0.0, -0.006)}),
    14: _disp({(48,): (0.012, -0.006), (60,): (0.012, -0.006), (49,): (0.004, 0.0), (59,): (0.004, 0.0)}),
    15: _disp({(48,): (0.006, 0.07), (60,): (0.006, 0.062), (49,): (0.0, 0.02), (59,): (0.0, 0.024),
               (61,): (0.0, 0.014), (67,): (0.0, 0.014), (58,): (0.0, 0.008), (57,): (0.0, 0.004), (8,): (0.0, 0.006)}),
    16: _disp({(57,): (0.0, 0.045), (56,): (0.0, 0.042), (55,): (0.0, 0.02), (66,): (0.0, 0.05), (65,): (0.0, 0.045),
               (59,): (0.0, 0.02)}),
    17: _disp({(57,): (0.0, -0.032), (56,): (0.0, -0.028), (55,): (0.0, -0.012), (66,): (0.0, -0.024),
               (65,): (0.0, -0.02), (62,): (0.0, -0.012), (61,): (0.0, -0.008), (51,): (0.0, -0.01),
               (50,): (0.0, -0.008), (8,): (0.0, -0.014), (7,): (0.0, -0.01)}),
    20: _disp({(48,): (-0.05, 0.03), (60,): (-0.048, 0.03), (49,): (-0.024, 0.004), (59,): (-0.024, 0.0),
               (50,): (-0.008, 0.004), (51,): (0.0, 0.004), (58,): (-0.008, 0.004), (57,): (0.0, 0.004),
               (67,): (-0.02, 0.012), (66,): (0.0, 0.014), (61,): (-0.02, -0.004)}),
    23: _disp({(48,): (0.014, 0.0), (60,): (0.014, 0.0), (49,): (0.004, 0.016), (50,): (0.0, 0.02),
               (51,): (0.0, 0.02), (59,): (0.004, -0.016), (58,): (0.0, -0.02), (57,): (0.0, -0.022)}),
    25: _disp({(65, 66, 67): (0.0, 0.024), (55, 56, 57, 58, 59): (0.0, 0.018), (61, 62, 63): (0.0, -0.006)}),
    64: _disp({(37, 38): (0.0, 0.02), (36, 39): (0.0, 0.004)}),
    26: _disp({(57,): (0.0, 0.1), (56,): (0.0, 0.095), (55,): (0.0, 0.075), (66,): (0.0, 0.105),
               (65,): (0.0, 0.097), (54,): (-0.02, 0.03), (64,): (-0.02, 0.028),
               (8,): (0.0, 0.065), (7,): (0.0, 0.06), (6,): (0.0, 0.05), (5,): (0.0, 0.035), (4,): (0.0, 0.018),
               (3,): (0.0, 0.006)}),
}
# Displacements above are written for the image-left half and mirrored; a few entries
# (AU 26's lower lip, for instance) name right-half points, which the mirror fills in.
# AU 1 lifts the brow's inner end most (FACS: the medial brow rises, so a brow raised by
# AU 1 alone or with AU 4 turns oblique, while 1+2 raises the whole brow). AU 64 (eyes
# down) lowers the upper lids as they follow the gaze; the irises turn down in
# :func:`~fer.data.synfer.render.draw_head` (``EYES_DOWN``).

#: FACS names of the action units SynFER models.
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 14: "dimpler", 15: "lip corner depressor", 16: "lower lip depressor",
    17: "chin raiser", 20: "lip stretcher",
    23: "lip tightener", 25: "lips part", 26: "jaw drop", 64: "eyes down",
}

#: Overall gain on :data:`ACTION_UNITS` (1.0 = the values above).
AU_GAIN = 1.25

#: EMFACS prototypes: expression -> action units (Ekman & Friesen's EMFACS; the SynFER
#: page's table). Several emotions have more than one EMFACS prototype; SynFER draws a
#: weak expression in its restrained form and lets it grow into the intense one as the
#: intensity rises (:data:`AU_ONSET`): a smile parts the lips (6+12, then 25), anger opens
#: into a shout with bared teeth (4+5+7+23, then EMFACS's 4+5+7+10+23+25,26), sadness
#: into crying (1+4+15+64, then the cheek raise of EMFACS's 6+15, tightened lids and the
#: lower lip pulled down over parted lips: 6+7+16+25). EMFACS's sadness prototypes carry
#: an optional "54+64" (head and eyes down); SynFER keeps the eyes down (64) and leaves
#: the head's pitch to the pose, so pose statistics stay independent of the class.
#: Disgust is EMFACS's 9+10 with 15+17 (9+17, 10+17), plus a brow lowerer at half strength
#: (AU 4, :data:`AU_SCALE`): FACS describes the nose wrinkler as also drawing the inner brows
#: down, and posed disgust shows the brows lowered; without it SynFER's disgust read as neutral.
PROTOTYPES: dict[str, tuple[int, ...]] = {
    "neutral": (),
    "happy": (6, 12, 25),
    "sad": (1, 4, 15, 64, 6, 7, 16, 25),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 20, 26),
    "disgust": (9, 10, 15, 17, 4),
    "anger": (4, 5, 7, 23, 10, 25, 26),
    "contempt": (12, 14),
}
#: Unilateral action units: applied to one side of the face only.
UNILATERAL = {"contempt": (12, 14)}
#: Relative strength of an action unit in a prototype (1 when absent). Fear opens the mouth
#: less than surprise (FACS: AU 26 often weaker, with AU 25); fear's and sadness's brow
#: lowerer is weaker than anger's, so the inner brows still rise (1+4); disgust's is weaker
#: still, the brows drawn down by the nose wrinkle rather than the frown of anger.
AU_SCALE = {("fear", 26): 0.55, ("fear", 4): 0.5, ("sad", 4): 0.5, ("anger", 5): 0.6, ("anger", 26): 0.4,
            ("disgust", 15): 0.6, ("disgust", 4): 0.5, ("happy", 25): 0.6}
#: Action units that join an expression only as it intensifies: (expression, AU) -> the
#: intensity at which they start; their weight then grows linearly to its full value at 1.
AU_ONSET = {("happy", 25): 0.3, ("anger", 10): 0.3, ("anger", 25): 0.3, ("anger", 26): 0.3,
            ("sad", 6): 0.3, ("sad", 7): 0.3, ("sad", 16): 0.3, ("sad", 25): 0.3}


def prototype_weights(expression: str, intensity: float) -> dict[int, float]:
    """Each prototype action unit's weight for ``expression`` at ``intensity`` (0-1):
    ``intensity`` x :data:`AU_SCALE`, or for the action units of :data:`AU_ONSET`, the scale
    x the share of the way from their onset to 1 (0 below the onset)."""
    if expression not in PROTOTYPES:
        raise ValueError(f"unknown expression {expression!r}; choose from {tuple(PROTOTYPES)}")
    out = {}
    for au in PROTOTYPES[expression]:
        scale = AU_SCALE.get((expression, au), 1.0)
        onset = AU_ONSET.get((expression, au))
        grow = intensity if onset is None else min(max((intensity - onset) / (1.0 - onset), 0.0), 1.0)
        out[au] = float(scale * grow)
    return out


def au_displacement(au: int, *, side: int = 0) -> np.ndarray:
    """Displacement (68 x 2) of action unit ``au`` at intensity 1.

    ``side`` = -1 or 1 keeps only the image-left or image-right half (unilateral
    action, as contempt's AU 12 + 14); 0 keeps both.
    """
    if au not in ACTION_UNITS:
        raise KeyError(f"SynFER has no model of AU {au}; known: {sorted(ACTION_UNITS)}")
    d = ACTION_UNITS[au].copy()
    if side:
        keep = np.sign(MEAN_FACE[:, 0]) == side
        centre = np.abs(MEAN_FACE[:, 0]) < 1e-6
        d[~keep & ~centre] = 0
        d[centre] *= 0.5
    return d


def apply_action_units(shape: np.ndarray, weights: dict[int, float], *, side: int = 0,
                       unilateral: tuple[int, ...] = ()) -> np.ndarray:
    """Displace a 68 x 3 face-frame shape by weighted action units.

    Args:
        shape: neutral shape from :func:`neutral_shape`.
        weights: AU number -> intensity (0 = absent, 1 = the prototype's apex).
        side: which half carries the ``unilateral`` AUs (-1 image-left, 1 image-right).
        unilateral: AUs applied to ``side`` only.
    """
    out = shape.copy()
    scale = AU_GAIN * np.ptp(shape[JAW, 0])  # displacements scale with the face
    for au, w in weights.items():
        if w == 0:
            continue
        d = au_displacement(au, side=side if au in unilateral else 0)
        out[:, :2] += w * scale * d
    # Keep the lips from crossing: inner lower lip never above inner upper lip.
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        if out[lower, 1] < out[upper, 1]:
            mid = (out[lower, 1] + out[upper, 1]) / 2
            out[lower, 1] = out[upper, 1] = mid
    # Outer lip contours stay outside the inner ones.
    for outer, inner in ((50, 61), (51, 62), (52, 63)):
        out[outer, 1] = min(out[outer, 1], out[inner, 1] - 0.004 * scale)
    for outer, inner in ((58, 67), (57, 66), (56, 65)):
        out[outer, 1] = max(out[outer, 1], out[inner, 1] + 0.004 * scale)
    return out


# --------------------------------------------------------------------------- pose


@dataclass(frozen=True)
class Pose:
    """Head pose (degrees), scale (pixels per face width) and centre (pixels)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 60.0
    cx: float = 56.0
    cy: float = 56.0


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Rx(pitch) @ Ry(yaw), angles in degrees; positive yaw turns
    the face towards the image right."""
    return _rotation(float(yaw), float(pitch), float(roll)).copy()


@functools.lru_cache(maxsize=64)
def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    # A face is projected a dozen times under one pose: build its matrix once (read-only).
    a, b, c = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    rot = rz @ rx @ ry
    rot.setflags(write=False)
    return rot


def silhouette(points: np.ndarray, weights: np.ndarray, yaw: float) -> np.ndarray:
    """Move contour points towards the head's silhouette under yaw.

    A point at horizontal radius r on a head cross-section of half-depth d seen at
    yaw t has its silhouette at r' = sqrt(r^2 cos^2 t + d^2 sin^2 t). ``weights``
    (0..1) blends each point between its rigidly rotated position (0, right for
    the chin) and the silhouette (1, right for the jaw near the ears).
    """
    t = np.deg2rad(yaw)
    cos_t, sin_t = np.cos(t), np.sin(t)
    x, z = points[:, 0], points[:, 2]
    sil = np.sign(x) * np.sqrt((np.abs(x) * cos_t) ** 2 + (HEAD_HALF_DEPTH * sin_t) ** 2)
    rigid = x * cos_t + z * sin_t
    out = points.copy()
    if abs(cos_t) > 1e-6:
        # Express the silhouette as an x that the rigid rotation will map there.
        x_rot = weights * sil + (1 - weights) * rigid
        out[:, 0] = (x_rot - z * sin_t) / cos_t
    return out


def project(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Orthographic projection of face-frame points (N x 3) to pixel x, y (N x 2)."""
    rot = _rotation(float(pose.yaw), float(pose.pitch), float(pose.roll))
    out = (points @ rot.T)[:, :2] * pose.scale  # (cx + scale * x, cy + scale * y), the same floats
    out += (pose.cx, pose.cy)
    return out
