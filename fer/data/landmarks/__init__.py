"""Facial landmarks: 68-point detection, a cached pass over a dataset, MANet's eight points.

* :func:`detect` — 68 iBUG 300-W points per image with dlib (CPU, offline) or
  face-alignment (FAN, batched on a GPU), with a per-image outcome
  (:class:`LandmarkResult`: ``landmarks`` N x 68 x 2 with NaN where failed, ``ok``,
  ``detected``, ``boxes``, ``messages``).
* :func:`annotate_dataset` / ``python -m fer.data.landmarks --dataset rafdb --root
  data/rafdb`` — detect once for a whole dataset and cache the result next to the
  data (``landmarks68-<split>.npz``, atomic writes, resumable); loaders read it with
  :func:`read_landmarks` and look items up by path.
* :func:`to_landmarks8` — the eight landmarks of MANet (Gan et al., IEEE Access
  2020, Figure 4) from 68 iBUG points or RAF-DB's 5 manual points; the mapping and
  what cannot be derived are in :mod:`fer.data.landmarks.eight`.

The papers: MAPNet (Ju & Zhao) detects 98 points with PFLD for its face mask; MANet
uses the landmarks shipped with RAF-DB and CK+; the masked-FER paper (Hayashi et
al.) fits face masks to detected points following MaskTheFace, which uses dlib's
68-point predictor, the ``dlib`` backend here.
"""
from __future__ import annotations

from .backends import (
    BACKENDS,
    FACE_ALIGNMENT_WEIGHTS,
    LandmarkResult,
    as_image_list,
    detect,
    dlib_model_path,
    face_alignment_weights_dir,
    landmark_error,
)
from .cache import FORMAT, LandmarkTable, annotate_dataset, item_key, landmarks_path, read_landmarks
from .eight import (
    EYE_HALF_WIDTH,
    IBUG68_TO_MANET8,
    LOWER_LIP_OFFSET,
    MANET_LANDMARKS,
    RAFDB5_NAMES,
    to_landmarks8,
)

__all__ = [
    "BACKENDS",
    "LandmarkResult",
    "detect",
    "as_image_list",
    "landmark_error",
    "dlib_model_path",
    "face_alignment_weights_dir",
    "FACE_ALIGNMENT_WEIGHTS",
    "FORMAT",
    "LandmarkTable",
    "annotate_dataset",
    "read_landmarks",
    "landmarks_path",
    "item_key",
    "MANET_LANDMARKS",
    "IBUG68_TO_MANET8",
    "RAFDB5_NAMES",
    "EYE_HALF_WIDTH",
    "LOWER_LIP_OFFSET",
    "to_landmarks8",
]
