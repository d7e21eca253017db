"""The eight landmarks of MANet (Gan et al., IEEE Access 2020, Figure 4 and Table 2).

MANet draws its eight ground-truth region masks (:func:`fer.data.masks.region_masks`)
from eight points ``l1 .. l8`` that its Figure 4 marks on RAF-DB faces. The figure
is an image; what pins the points down is how Table 2 uses them:

========  ==========================================  ==========================
point     Table 2 uses it as                          what it must be
========  ==========================================  ==========================
``l1``    centre of *nose*; ``(l1 + l8) / 2`` is the  nose tip
          centre of *mouth together with nose*
``l2``    ``(l2 + l3) / 2`` = centre of *left eye*;   image-left eye, outer corner
          ``(l2 + l5) / 2`` = centre of *eyes with
          brows*
``l3``    ``(l2 + l3) / 2`` = centre of *left eye*    image-left eye, inner corner
``l4``    ``(l4 + l5) / 2`` = centre of *right eye*   image-right eye, inner corner
``l5``    ``(l4 + l5) / 2``; ``(l2 + l5) / 2``        image-right eye, outer corner
``l6``    centre of *left mouth corner*               image-left mouth corner
``l7``    centre of *right mouth corner*              image-right mouth corner
``l8``    ``(l1 + l8) / 2`` = centre of *mouth        bottom of the lower lip
          together with nose*
========  ==========================================  ==========================

From the 68 iBUG points (:data:`IBUG68_TO_MANET8`): ``l1`` = 30 (nose tip),
``l2`` = 36, ``l3`` = 39, ``l4`` = 42, ``l5`` = 45 (eye corners), ``l6`` = 48,
``l7`` = 54 (mouth corners), ``l8`` = 57 (lower-lip bottom, outer contour). These
are exact: every one is an iBUG point, so the eye centres ``(l2 + l3) / 2`` are the
midpoints of the eye corners (within 1.5 % of the inter-ocular distance of the mean
of the six eye-contour points on the 300-W mean shape).

RAF-DB's 5 manual points (eye centres, nose tip, mouth corners,
:data:`RAFDB5_NAMES`) give ``l1``, ``l6``, ``l7`` exactly. ``l2 .. l5`` are not
annotated; they are placed on the line through the two eye centres at
``+-`` :data:`EYE_HALF_WIDTH` inter-ocular distances from each centre (the
300-W mean shape's eye width is 0.40 inter-ocular distances), so the eye centres,
which are all Table 2 uses them for, are exact. ``l8`` cannot be derived: it is
extrapolated from the eye and mouth midpoints, ``m + 0.24 (m - e)``
(:data:`LOWER_LIP_OFFSET`, from the mean shape), which is right for a closed mouth
and too high for an open one (surprise, fear), so the *mouth with nose* box sits
slightly high on those faces. RAF-DB's 37 automatic points are not reduced: their
order is not documented in the papers or in RAF-DB's README; pass ``index_map``
(eight indices into the 37) or, better, run the 68-point detector
(``python -m fer.data.landmarks``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "MANET_LANDMARKS",
    "IBUG68_TO_MANET8",
    "RAFDB5_NAMES",
    "EYE_HALF_WIDTH",
    "LOWER_LIP_OFFSET",
    "to_landmarks8",
]

#: Names of MANet's eight landmarks ``l1 .. l8`` ("left" = image left).
MANET_LANDMARKS: tuple[str, ...] = (
    "nose_tip",
    "left_eye_outer",
    "left_eye_inner",
    "right_eye_inner",
    "right_eye_outer",
    "left_mouth_corner",
    "right_mouth_corner",
    "lower_lip",
)
#: iBUG 68-point indices (0-based) of ``l1 .. l8``.
IBUG68_TO_MANET8: tuple[int, ...] = (30, 36, 39, 42, 45, 48, 54, 57)
#: Order of RAF-DB's 5 manual points (``Annotation/manual/*_manu_attri.txt``).
RAFDB5_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "left_mouth_corner", "right_mouth_corner")
#: Half the eye width (corner to corner), in inter-ocular (eye-centre) distances, on
#: the 300-W mean shape (OpenFace's template): 0.396 / 2.
EYE_HALF_WIDTH = 0.198
#: Lower-lip bottom (iBUG 57) below the mouth-corner midpoint, in eye-to-mouth
#: distances, on the same mean shape.
LOWER_LIP_OFFSET = 0.237


def _from_68(p: np.ndarray) -> np.ndarray:
    return p[..., list(IBUG68_TO_MANET8), :]


def _from_rafdb5(p: np.ndarray) -> np.ndarray:
    le, re, nose, lm, rm = (p[..., k, :] for k in range(5))
    axis = re - le  # inter-ocular vector; its length is the inter-ocular distance
    half = EYE_HALF_WIDTH * axis
    e = (le + re) / 2
    m = (lm + rm) / 2
    l8 = m + LOWER_LIP_OFFSET * (m - e)
    return np.stack([nose, le - half, le + half, re - half, re + half, lm, rm, l8], axis=-2)


def to_landmarks8(points: Any, *, layout: str | None = None, index_map: Sequence[int] | None = None) -> Any:
    """Reduce landmarks to MANet's eight (``... x 8 x 2``, in :data:`MANET_LANDMARKS` order).

    Args:
        points: ``... x K x 2`` pixel (x, y) points, numpy or torch.
        layout: ``"ibug68"``, ``"rafdb5"``, ``"manet8"`` (returned as is), or ``None``
            to infer it from K (68, 5, 8).
        index_map: eight indices into K points, for any other layout (e.g. RAF-DB's
            37 automatic points, whose order we do not know).

    Returns:
        float32 ``... x 8 x 2``, numpy or torch like ``points``.

    .. note::
        The mapping is inferred from Table 2 (Figure 4 is not in the text): see
        the module docstring. From RAF-DB's 5 points, the eye corners are placed
        at the mean eye width around each eye centre and ``l8`` (lower lip) is
        extrapolated; both are approximations.
    """
    is_torch = isinstance(points, torch.Tensor)
    p = (points.detach().cpu().numpy() if is_torch else np.asarray(points)).astype(np.float64)
    if p.ndim < 2 or p.shape[-1] != 2:
        raise ValueError(f"expected ... x K x 2 landmarks, got shape {p.shape}")
    k = p.shape[-2]
    if index_map is not None:
        idx = [int(i) for i in index_map]
        if len(idx) != 8 or min(idx) < -k or max(idx) >= k:
            raise ValueError(f"index_map must be 8 indices into {k} points, got {list(index_map)}")
        out = p[..., idx, :]
    else:
        layout = layout or {68: "ibug68", 5: "rafdb5", 8: "manet8"}.get(k)
        expected = {"ibug68": 68, "rafdb5": 5, "manet8": 8}
        if layout is None:
            raise ValueError(
                f"cannot reduce {k} landmarks to MANet's eight: known layouts are 68 (iBUG), 5 (RAF-DB manual) "
                "and 8. RAF-DB's 37 automatic points have no documented order: pass index_map=[8 indices] "
                "or detect 68 points with `python -m fer.data.landmarks`")
        if expected.get(layout) != k:
            raise ValueError(f"layout {layout!r} needs {expected.get(layout, '?')} points, got {k}")
        out = {"ibug68": _from_68, "rafdb5": _from_rafdb5, "manet8": lambda a: a}[layout](p)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return torch.from_numpy(out) if is_torch else out
