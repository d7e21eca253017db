"""``python -m fer.predict PHOTO... --run RUN``: find the faces in photos, classify and explain each.

For every photo:

1. **Detect every face** with dlib's HOG frontal detector (CPU, offline), then fit the
   68 iBUG landmarks in each box with dlib's shape predictor (the models behind
   :func:`fer.data.landmarks.detect`, which keeps one face per image; here every
   detection is kept).
2. **Align and crop** each face the way the run's training faces were framed: a
   similarity transform (rotation, scale, shift) takes the face's eye and nose
   landmarks onto where SynFER draws them, i.e. the mean landmarks of frontal faces
   of the SynFER variant the run trained on (``wild``: colour, face 0.6-0.8 of the
   image width; ``fer2013``: grey; ``ck``: grey, frontal), at that variant's stored
   image size (never above the model input). The run's own evaluation transform
   (:class:`fer.data.transforms.InputTransform` from its config: resize to ``input_size``,
   normalise) then makes the model input, as in :func:`fer.train.evaluate`.
3. **Classify** with the run's model (built by the run's recorded ``build_model``,
   weights from its ``checkpoint.pt``); models that take landmark masks get them from
   the detected landmarks: MAPNet its face mask (:func:`fer.data.masks.face_mask`),
   MANet with ground-truth masks its eight region masks
   (:func:`fer.data.masks.region_masks` of :func:`fer.data.landmarks.to_landmarks8`).
4. **Explain**: the model's own spatial attention where it has one (CBAM's spatial
   gate, averaged over MSA-Net's branches; the ABN attention map of the masked-face
   models), Grad-CAM (:func:`fer.explain.cam`, at the model's ``cam_layer``) otherwise,
   or whichever ``explain=`` asks for.

It writes, per photo, ``<out>/<stem>.predict.png`` (the photo with each face's box,
its number, its top-3 classes with probabilities, and the explanation map overlaid
on the face) and ``<out>/<stem>.predict.json`` (photo, detector settings, model, run
id, classes and, per face, box, detector score, 68 landmarks, the probability of every
class and what the map shows), both written atomically (:func:`fer.io.atomic_write_json`,
:func:`fer.io.atomic_write_bytes`).

Python::

    from fer.predict import Predictor
    pred = Predictor.from_run("runs/cbam_vgg-demo-cbam-vgg16_cbam-0123456789ab")
    result = pred.predict_file("me.jpg", out_dir="predictions")
    result.faces[0]["probabilities"]

Detector settings (``upsample``, ``score_threshold``), measured on
``skimage.data.astronaut()`` (512 x 512, one face) with dlib 20.0.1 (dlib-bin; the test
``tests/test_predict.py::test_detector_settings_on_the_astronaut`` asserts the counts):

=========================  ==========  ============================================
settings                   detections  what fires
=========================  ==========  ============================================
upsample 1, threshold 0.5  1           the face (score 1.16): **the default**
upsample 1, threshold 0    2           the face and the mission patch (score 0.12)
upsample 0, threshold 0    1           the face (1.53; the patch scores -0.05)
=========================  ==========  ============================================

``threshold 0`` is dlib's own default and ``upsample 1`` that of
:func:`fer.data.landmarks.detect`. Upsampling once finds faces down to about 40 px
wide (80 px without); the 0.5 threshold drops the weak detections it adds (the
patch). Lower the threshold or raise ``upsample`` when a real face is missed;
raise the threshold when something else is taken for a face.

.. note::
    **Framing of runs trained on real data.** The runs record their data only as
    fingerprints, so the crop follows the SynFER stand-in of the run's dataset (the
    ``variant``: ``fer2013`` for the VGG16 + CBAM chapter's runs, ``ck`` for runs
    whose name says CK+, ``wild``, the RAF-DB stand-in, otherwise; ``variant=`` /
    ``--variant`` overrides it). For ``paper`` runs on RAF-DB's aligned faces,
    FER2013's crops or CK+ this is the stand-in's framing, which was made to look
    like those crops, not their exact alignment.

.. note::
    **Class names.** Runs do not record their class names, only their number (the
    model's outputs). The default names follow the package's conventions for that
    number: 7 = :data:`fer.data.CLASSES_7` (CK+'s seven with contempt for the ``ck``
    variant), 8 = :data:`fer.data.CLASSES`, 4 = the masked-FER paper's four
    (:data:`fer.data.masks.M_FER_CLASSES`), 2 = masked / unmasked
    (:data:`fer.data.masks.MU_CLASSES`). ``classes=`` (``--classes``) names them
    otherwise; a count that differs from the model's outputs is an error, and so is
    ``num_classes=`` (``--num-classes``) when it differs.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from . import __version__
from .data.datasets.base import ImageDecodeError, decode_image
from .data.labels import CLASSES, CLASSES_7, resolve_classes
from .data.landmarks import to_landmarks8
from .data.landmarks.backends import _dlib_models, dlib_model_path
from .data.masks import M_FER_CLASSES, MU_CLASSES, face_mask, region_masks, resize_mask
from .data.synfer import SynFER
from .data.synfer.variants import VARIANTS, get_variant
from .data.transforms import InputTransform
from .explain import cam, capture
from .io import CHECKPOINT_FILE, atomic_write_bytes, atomic_write_json, load_weights
from .layers import CbamModule
from .models import create_model
from .models.manet import mask_side
from .models.mapnet import MapNet, MaskChannelInput
from .runs import Run
from .train import TrainConfig, default_output_to_logits

__all__ = [
    "DEFAULT_UPSAMPLE",
    "DEFAULT_SCORE_THRESHOLD",
    "DEFAULT_MAX_SIDE",
    "EXPLAIN_METHODS",
    "Face",
    "NoFaceError",
    "ClassMismatchError",
    "PhotoResult",
    "Predictor",
    "detect_faces",
    "align_face",
    "face_template",
    "default_classes",
    "read_photo",
    "annotate",
    "AGREEMENT_MARGIN",
    "judge_agreement",
    "main",
]

#: dlib's detector doubles the image this many times (faces down to ~40 px wide).
DEFAULT_UPSAMPLE = 1
#: Detections scoring below this are dropped (dlib's own default is 0; see the module docstring).
DEFAULT_SCORE_THRESHOLD = 0.5
#: Photos are shrunk so that their long side is at most this for detection (landmarks use full resolution).
DEFAULT_MAX_SIDE = 1600
#: Photos whose short side is below this are enlarged for detection (as :func:`fer.data.landmarks.detect`).
MIN_DETECT_SIDE = 160
#: ``explain=`` choices: ``auto`` = the model's own attention where it has one, else Grad-CAM.
EXPLAIN_METHODS = ("auto", "gradcam", "attention")
#: Landmarks the alignment is fitted on: eyes (36-47) and nose (27-35), which expressions move least.
ALIGN_POINTS: tuple[int, ...] = tuple(range(27, 48))
#: Frontal SynFER faces averaged into the alignment template.
TEMPLATE_FACES = 32


class NoFaceError(ValueError):
    """No face was detected in a photo (the message names the photo and the detector settings)."""


class ClassMismatchError(ValueError):
    """The caller's classes (``--classes`` / ``--num-classes``) do not match the model's outputs."""


# =========================================================================== photos and faces


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """A photo as RGB uint8 H x W x 3 (:func:`fer.data.datasets.base.decode_image`).

    Raises:
        ImageDecodeError: missing, truncated or not an image; the message names the file.
    """
    return decode_image(path)


@dataclass
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1) and ``landmarks`` (68 x 2) in photo pixels, ``score``."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def _detection_scale(h: int, w: int, max_side: int | None) -> float:
    f = 1.0
    if max_side and max(h, w) > max_side:
        f = max_side / max(h, w)
    if min(h, w) * f < MIN_DETECT_SIDE:
        f = MIN_DETECT_SIDE / min(h, w)
    return f


def detect_faces(image: np.ndarray, *, upsample: int = DEFAULT_UPSAMPLE,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, max_side: int | None = DEFAULT_MAX_SIDE,
                 model_path: str | os.PathLike | None = None) -> list[Face]:
    """Every face dlib's frontal detector finds in ``image`` (RGB uint8 H x W x 3), best first.

    Args:
        upsample: times the detector doubles the image (finds smaller faces, slower,
            and more false detections).
        score_threshold: keep detections scoring at least this (dlib's SVM score;
            dlib's own default is 0).
        max_side: shrink the photo to this long side for detection (``None``: never);
            photos with a short side under :data:`MIN_DETECT_SIDE` are enlarged to it.
        model_path: dlib's 68-point model (see :func:`fer.data.landmarks.dlib_model_path`).

    The 68 landmarks are fitted at the photo's full resolution in each box
    (mapped back from the detection scale, pixel centres at integers).
    """
    if upsample < 0:
        raise ValueError(f"upsample must be >= 0, got {upsample}")
    detector, predictor = _dlib_models(str(dlib_model_path(model_path)))
    import dlib

    h, w = image.shape[:2]
    f = _detection_scale(h, w, max_side)
    work = image if f == 1.0 else cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))),
                                             interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    kx, ky = work.shape[1] / w, work.shape[0] / h
    rects, scores, _ = detector.run(work, int(upsample), float(score_threshold))
    faces = []
    for r, s in zip(rects, scores):
        box_w = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64)
        box = (box_w + 0.5) / np.array([kx, ky, kx, ky]) - 0.5  # back to photo pixels
        rect = dlib.rectangle(*[int(round(v)) for v in box])
        shape = predictor(image, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
        faces.append(Face(box.astype(np.float32), float(s), pts))
    faces.sort(key=lambda fc: -fc.score)
    return faces


# =========================================================================== alignment


@functools.lru_cache(maxsize=16)
def face_template(variant: str, size: int) -> np.ndarray:
    """Where SynFER variant ``variant`` draws a frontal face's 68 landmarks in a ``size`` px image.

    The mean landmarks of :data:`TEMPLATE_FACES` SynFER faces (people and expressions)
    of that variant drawn frontal (no yaw, pitch, roll or shift) at the middle of the
    variant's face-size range: the framing the run's training faces had, taken from
    the generator itself.
    """
    v = get_variant(variant)
    split = "all" if "all" in v.sizes else "test"
    mid = float(np.mean(v.scale))
    ds = SynFER(variant, split, n=TEMPLATE_FACES, image_size=int(size), seed=0, with_relevance=False,
                max_yaw=0.0, max_pitch=0.0, max_roll=0.0, shift=0.0, scale=(mid, mid))
    return np.stack([ds[i]["landmarks"].numpy() for i in range(len(ds))]).astype(np.float64).mean(0)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) taking ``src`` points onto ``dst``: a 2 x 3 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ e @ vt
    scale = float(np.trace(np.diag(sig) @ e) / (s ** 2).sum(1).mean())
    a = scale * rot
    return np.concatenate([a, (mu_d - a @ mu_s)[:, None]], axis=1)


def align_face(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int, *,
               grayscale: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp ``image`` so that the face's eye and nose landmarks land on ``template``'s.

    Returns the ``size x size`` RGB uint8 crop, the 68 landmarks in crop pixels and
    the 2 x 3 matrix taking photo pixels to crop pixels. Shrinking is antialiased
    (the photo is first reduced with area interpolation). ``grayscale`` makes the crop
    grey in three channels, as SynFER's grey variants are.
    """
    idx = list(ALIGN_POINTS)
    m = _similarity(np.asarray(landmarks, np.float64)[idx], np.asarray(template, np.float64)[idx])
    k = math.sqrt(abs(np.linalg.det(m[:, :2])))
    src, m_src = image, m
    if k < 0.75:  # reduce first so the warp does not alias
        h, w = image.shape[:2]
        src = cv2.resize(image, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        kx, ky = src.shape[1] / w, src.shape[0] / h
        # photo p = (s + 0.5) / k - 0.5 for a pixel s of the reduced copy
        back = np.array([[1 / kx, 0, 0.5 / kx - 0.5], [0, 1 / ky, 0.5 / ky - 0.5]])
        m_src = m[:, :2] @ back[:, :2]
        m_src = np.concatenate([m_src, (m[:, :2] @ back[:, 2] + m[:, 2])[:, None]], axis=1)
    crop = cv2.warpAffine(src, m_src, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if grayscale:
        crop = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    pts = np.asarray(landmarks, np.float64) @ m[:, :2].T + m[:, 2]
    return np.ascontiguousarray(crop), pts.astype(np.float32), m


# =========================================================================== classes


def default_classes(num_outputs: int, variant: str = "wild") -> tuple[str, ...]:
    """The package's class names for a model with ``num_outputs`` outputs (module note)."""
    if num_outputs == 7:
        return tuple(get_variant(variant).default_classes or CLASSES_7)
    table = {8: CLASSES, 4: M_FER_CLASSES, 2: MU_CLASSES}
    if num_outputs not in table:
        raise ClassMismatchError(f"the model has {num_outputs} outputs and the package has no default names for "
                                 f"{num_outputs} classes: name them with --classes (comma-separated, in label order)")
    return tuple(table[num_outputs])


def _resolve_classes(num_outputs: int, classes: Sequence[str] | None, num_classes: int | None, variant: str,
                     what: str) -> tuple[tuple[str, ...], str]:
    if classes is not None:
        names = [str(c).strip() for c in classes if str(c).strip()]
        if len(names) != num_outputs:
            raise ClassMismatchError(
                f"{what} was trained on {num_outputs} classes (its model has {num_outputs} outputs), but --classes "
                f"names {len(names)}: {', '.join(names)}. Pass {num_outputs} names, or use a run trained on "
                f"{len(names)} classes")
        if num_classes is not None and num_classes != num_outputs:
            raise ClassMismatchError(f"--num-classes {num_classes} and --classes ({len(names)} names) disagree")
        if all(n.lower() in CLASSES for n in names):  # expression names: labels follow canonical order
            return resolve_classes(names, len(names)), "given (in the package's canonical label order)"
        return tuple(names), "given"
    names = default_classes(num_outputs, variant)
    if num_classes is not None and num_classes != num_outputs:
        raise ClassMismatchError(
            f"{what} was trained on {num_outputs} classes (its model has {num_outputs} outputs: "
            f"{', '.join(names)}), but --num-classes {num_classes} asks for {num_classes}. Use a run trained on "
            f"{num_classes} classes, or drop --num-classes to read this run's {num_outputs}")
    return names, f"the package's default names for {num_outputs} outputs"


#: :func:`judge_agreement`: a side whose top class leads its runner-up by less than this singles out no class.
AGREEMENT_MARGIN = 0.05


def judge_agreement(model: Mapping[str, float], judge: Mapping[str, float], *,
                    margin: float = AGREEMENT_MARGIN) -> dict[str, Any]:
    """Whether a model and a judge (the FER judge, :mod:`fer.models.fer_judge`) read one face alike.

    ``model`` and ``judge`` map class names to probabilities. Each side's top class is
    its most probable one (ties go to the class named first); it *singles out* that class
    when the class leads the side's runner-up by at least ``margin`` (a side with one
    class always does). The verdict, checked in this order:

    * ``"undecided"``: the model or the judge singles out no class (a model still on
      the uniform plateau, or torn between two classes): its top class is noise, not an
      answer, so neither agreement nor disagreement is claimed;
    * ``"not comparable"``: the model's top class is one the judge does not know
      (``contempt`` of a CK+ run, ``masked`` of a 2-class run);
    * ``"agree"``: both top classes are the same class; ``"disagree"``: they differ.

    Names are compared case-insensitively; the model's other classes that the judge
    lacks do not change the verdict.

    Returns ``model_top``, ``model_p``, ``model_margin`` (top minus runner-up),
    ``judge_top``, ``judge_p``, ``judge_margin``, ``verdict``, ``agree``
    (``verdict == "agree"``), ``undecided`` (the sides that single out no class:
    ``[]``, ``["model"]``, ``["judge"]`` or both), ``reason`` (the verdict in a
    sentence), and ``judge_p_of_model_top`` / ``judge_rank``: the probability and the
    rank (1 = the judge's top, ties ranked as above) the judge gives the model's top
    class (``None`` when the judge does not know it).
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"judge_agreement: margin must be a finite number >= 0, got {margin}")

    def read(probs: Mapping[str, float], who: str) -> tuple[dict[str, float], str, float, float]:
        if not probs:
            raise ValueError(f"judge_agreement: the {who}'s probabilities are empty")
        values = {str(k).lower(): float(v) for k, v in probs.items()}
        if len(values) != len(probs):
            raise ValueError(f"judge_agreement: the {who} names a class twice (ignoring case): {list(probs)}")
        bad = [k for k, v in values.items() if not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(f"judge_agreement: the {who}'s probabilities must be finite and >= 0, not for {bad}")
        name = max(values, key=values.__getitem__)  # max keeps the first of equal values
        rest = [v for k, v in values.items() if k != name]
        return values, name, values[name], values[name] - (max(rest) if rest else 0.0)

    _, m_top, m_p, m_margin = read(model, "model")
    judged, j_top, j_p, j_margin = read(judge, "judge")
    undecided = [who for who, gap in (("model", m_margin), ("judge", j_margin)) if gap < margin]
    p_of = rank = None
    if m_top in judged:
        p_of = judged[m_top]
        at = list(judged).index(m_top)
        rank = 1 + sum(1 for i, v in enumerate(judged.values()) if v > p_of or (v == p_of and i < at))
    if undecided:
        verdict = "undecided"
        reason = (" and ".join(f"the {who}'s" for who in undecided)
                  + f" top class leads {'their' if len(undecided) > 1 else 'its'} runner-up by less than "
                  + f"{100 * margin:g} percentage points: {'they single' if len(undecided) > 1 else 'it singles'} "
                  + "out no class")
    elif p_of is None:
        verdict, reason = "not comparable", f"the judge has no class {m_top!r}"
    elif m_top == j_top:
        verdict, reason = "agree", f"both single out {m_top}"
    else:
        verdict, reason = "disagree", f"the model singles out {m_top}, the judge {j_top}"
    return {"model_top": m_top, "model_p": m_p, "model_margin": m_margin, "judge_top": j_top, "judge_p": j_p,
            "judge_margin": j_margin, "verdict": verdict, "agree": verdict == "agree", "undecided": undecided,
            "reason": reason, "judge_p_of_model_top": p_of, "judge_rank": rank}


# =========================================================================== models


def _resolve(dotted: str) -> Callable[..., Any]:
    module, _, qual = dotted.rpartition(".")
    while module:
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError:
            module, _, head = module.rpartition(".")
            qual = f"{head}.{qual}"
            continue
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"cannot import {dotted!r}")


#: Builder keywords that only choose *starting* weights; the checkpoint replaces them.
_START_WEIGHTS = {"pretrained": False, "weights": None}


def _build_from_record(run: Run) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model, built as :func:`fer.runs.run` built it (its recorded ``build_model``)."""
    spec = (run.spec or {}).get("build_model") if isinstance(run.spec, Mapping) else None
    if isinstance(spec, Mapping) and "partial" in spec:
        target, args, kwargs = spec["partial"], list(spec.get("args", [])), dict(spec.get("kwargs", {}))
    elif isinstance(spec, str):
        target, args, kwargs = spec, [], {}
    else:
        raise ValueError(f"run {run} records no build_model in {run.path / 'config.json'} (spec.build_model); "
                         f"predict with --model NAME --checkpoint {run.checkpoint_path} instead")
    if "<lambda>" in target or "<locals>" in target:
        raise ValueError(f"run {run} was built by a lambda or local function ({target}), which cannot be rebuilt; "
                         f"predict with --model NAME --checkpoint {run.checkpoint_path}")
    try:
        fn = _resolve(target)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"run {run} was built by {target}, which no longer exists ({err}); predict with "
                         f"--model NAME --checkpoint {run.checkpoint_path}") from err
    for k, v in _START_WEIGHTS.items():  # no download, no face run needed: the checkpoint has every weight
        if k in kwargs:
            kwargs[k] = v
    # Builders that load another run by folder name (MCN for FECN) look it up under the runs root:
    # the run's own folder is where its siblings are.
    old = os.environ.get("FER_RUNS")
    os.environ["FER_RUNS"] = str(run.path.resolve().parent)
    try:
        model = fn(*args, **kwargs)
    except Exception as err:
        raise RuntimeError(f"cannot rebuild the model of run {run} with {target}(*{args}, **{kwargs}): "
                           f"{type(err).__name__}: {err}") from err
    finally:
        if old is None:
            os.environ.pop("FER_RUNS", None)
        else:
            os.environ["FER_RUNS"] = old
    named = run.spec.get("spec") if isinstance(run.spec.get("spec"), Mapping) else {}
    name = named.get("model") or (args[0] if args and isinstance(args[0], str) else None) or type(model).__name__
    return model, {"name": name, "class": f"{type(model).__module__}.{type(model).__qualname__}",
                   "builder": target, "builder_kwargs": kwargs}


class _FixedMasks(nn.Module):
    """One-tensor wrapper for Grad-CAM: ``forward(x) = model(x, masks)`` (MANet with ground-truth masks)."""

    def __init__(self, model: nn.Module, masks: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.masks = masks

    @property
    def cam_layer(self) -> Any:
        return self.model.cam_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return default_output_to_logits(self.model(x, self.masks.to(x.device)))


def _mask_kind(model: nn.Module) -> str | None:
    if isinstance(model, MapNet):
        return "face_mask"
    if getattr(model, "mask_source", None) == "gt":
        return "region_masks"
    return None


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's own spatial attention maps: CBAM spatial gates and ABN attention-map gates."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, CbamModule) and not isinstance(getattr(m, "spatial", None), nn.Identity):
            out[f"{name}.spatial_gate" if name else "spatial_gate"] = m.spatial_gate
        elif name == "attention.map_gate" or name.endswith(".attention.map_gate"):
            out[name] = m
    return out


# =========================================================================== results


@dataclass
class PhotoResult:
    """What :meth:`Predictor.predict_file` wrote for one photo."""

    photo: Path
    json_path: Path | None
    image_path: Path | None
    record: dict[str, Any]
    annotated: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def faces(self) -> list[dict[str, Any]]:
        return self.record["faces"]


class Predictor:
    """A model ready to classify and explain faces in photos (see the module docstring).

    Build one with :meth:`from_run` or :meth:`from_checkpoint`; then
    :meth:`predict_image` (an array) or :meth:`predict_file` (a path, writes the outputs).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, classes: Sequence[str], *, variant: str = "wild",
                 crop_size: int | None = None, info: Mapping[str, Any] | None = None,
                 upsample: int = DEFAULT_UPSAMPLE, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 max_side: int | None = DEFAULT_MAX_SIDE, explain: str = "auto", device: str | None = "cpu",
                 top_k: int = 3) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown SynFER variant {variant!r} for the crop; choose from {sorted(VARIANTS)}")
        if explain not in EXPLAIN_METHODS:
            raise ValueError(f"explain must be one of {EXPLAIN_METHODS}, got {explain!r}")
        self.device = torch.device(_device(device))
        self.model = model.to(self.device).eval()
        self.config = config
        self.classes = tuple(classes)
        self.variant = variant
        v = get_variant(variant)
        self.crop_size = int(crop_size or min(v.image_size, _input_side(model, config, variant)))
        self.grayscale = bool(v.grayscale)
        self.transform = InputTransform.from_config(config)
        self.info = dict(info or {})
        self.upsample, self.score_threshold, self.max_side = int(upsample), float(score_threshold), max_side
        self.explain = explain
        self.top_k = int(top_k)
        self.mask_kind = _mask_kind(model)
        self.attention = _attention_modules(model)
        if explain == "attention" and not self.attention:
            raise ValueError(f"{type(model).__name__} has no attention map of its own (CBAM spatial gate or ABN "
                             f"attention map); use explain='gradcam' or 'auto'")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run: str | os.PathLike | Run, *, classes: Sequence[str] | None = None,
                 num_classes: int | None = None, variant: str = "auto", **kwargs: Any) -> Predictor:
        """The trained model of a run folder (``runs/<name>-<hash>``).

        Raises:
            FileNotFoundError: not a run folder, or a run without ``checkpoint.pt``.
            ClassMismatchError: ``classes`` / ``num_classes`` differ from the model's outputs.
        """
        r = run if isinstance(run, Run) else Run.load(run)
        if not r.checkpoint_path.is_file():
            raise FileNotFoundError(
                f"run {r} has no {CHECKPOINT_FILE} (looked for {r.checkpoint_path}): it never finished an epoch. "
                f"Train it first (rerun the notebook or `python -m fer.runs train` that made it), or pass another "
                f"run folder")
        if not r.complete:
            warnings.warn(f"run {r} is incomplete (no metrics.json): predicting with its last checkpoint",
                          RuntimeWarning, stacklevel=2)
        chosen, why = _auto_variant(r) if variant == "auto" else (variant, "given")
        model, model_info = _build_from_record(r)
        ckpt = r.checkpoint()
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise RuntimeError(f"the checkpoint {r.checkpoint_path} does not fit the model its run builds "
                               f"({err}); the run folder is damaged or from another version of fer") from err
        config = r.config
        n_out = _num_outputs(model, config, _input_side(model, config, chosen))
        names, source = _resolve_classes(n_out, classes, num_classes, chosen, f"run {r.path.name}")
        info = {"model": model_info, "run": {"id": r.path.name, "name": r.name, "hash": r.hash,
                                              "path": str(r.path), "complete": r.complete,
                                              "epoch": int(ckpt.get("epoch", 0))},
                "checkpoint": str(r.checkpoint_path), "classes_source": source,
                "variant_source": why}
        return cls(model, config, names, variant=chosen, info=info, **kwargs)

    @classmethod
    def from_checkpoint(cls, model_name: str, checkpoint: str | os.PathLike, *,
                        classes: Sequence[str] | None = None, num_classes: int | None = None,
                        input_size: int = 112, mean: Sequence[float] = (0.5, 0.5, 0.5),
                        std: Sequence[float] = (0.5, 0.5, 0.5), variant: str = "wild",
                        model_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> Predictor:
        """A registered model (``fer.models.create_model(model_name, ...)``) with weights from ``checkpoint``
        (a run's ``checkpoint.pt`` or a state dict), fed ``input_size`` px faces normalised by ``mean``/``std``."""
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        variant = "wild" if variant == "auto" else variant
        k = len(classes) if classes is not None else (num_classes or 7)
        model_kw = {"num_classes": k, "img_size": int(input_size), **dict(model_kwargs or {})}
        model = create_model(model_name, **model_kw)
        load_weights(model, path)
        config = TrainConfig(input_size=int(input_size), mean=tuple(mean), std=tuple(std))
        n_out = _num_outputs(model, config, _input_side(model, config, variant))
        names, source = _resolve_classes(n_out, classes, num_classes, variant, f"{path}")
        info = {"model": {"name": model_name, "class": f"{type(model).__module__}.{type(model).__qualname__}",
                          "builder": "fer.models.create_model", "builder_kwargs": model_kw},
                "run": None, "checkpoint": str(path), "classes_source": source, "variant_source": "given"}
        return cls(model, config, names, variant=variant, info=info, **kwargs)


    # ------------------------------------------------------------------ prediction
    def _masks(self, landmarks: np.ndarray, x: torch.Tensor) -> torch.Tensor | None:
        """The landmark masks the model takes, for crops whose landmarks are ``landmarks`` (B x 68 x 2)."""
        size = (self.crop_size, self.crop_size)
        if self.mask_kind == "face_mask":  # as fer.experiments.mapnet.with_face_masks: hull, at the crop's size
            return torch.as_tensor(face_mask(landmarks, size, missing="ones")).unsqueeze(1)
        if self.mask_kind == "region_masks":  # as fer.experiments.manet.with_masks, at the model input / 16
            return torch.as_tensor(region_masks(to_landmarks8(landmarks), size, mask_side(int(x.shape[-1]))))
        return None

    def _forward(self, x: torch.Tensor, masks: torch.Tensor | None) -> Any:
        x = x.to(self.device)
        if masks is None:
            return self.model(x)
        return self.model(x, masks.to(self.device))

    def _explain(self, x: torch.Tensor, masks: torch.Tensor | None, targets: list[int]
                 ) -> tuple[np.ndarray, dict[str, Any]]:
        use_attention = self.explain == "attention" or (self.explain == "auto" and self.attention)
        if use_attention:
            with torch.no_grad(), capture(self.model, self.attention) as maps:
                self._forward(x, masks)
            size = x.shape[-2:]
            heat = torch.stack([torch.nn.functional.interpolate(maps[k].float().cpu(), size=size, mode="bilinear",
                                                                align_corners=False)[:, 0]
                                for k in self.attention]).mean(0).numpy()
            lo = heat.reshape(len(heat), -1).min(1)[:, None, None]
            hi = heat.reshape(len(heat), -1).max(1)[:, None, None]
            heat = (heat - lo) / np.maximum(hi - lo, 1e-12)
            return heat.astype(np.float32), {"method": "attention", "modules": list(self.attention),
                                              "note": "the model's own attention map (scaled to [0, 1] per face); "
                                                      "it does not depend on the class"}
        # one-tensor wrappers, built in eval mode: fer.explain.cam restores the mode it finds
        if self.mask_kind == "face_mask":
            mask = resize_mask(masks.float(), tuple(x.shape[-2:]))
            model: nn.Module = MaskChannelInput(self.model).eval()
            inp = MaskChannelInput.pack(x, mask)
        elif self.mask_kind == "region_masks":
            model, inp = _FixedMasks(self.model, masks).eval(), x
        else:
            model, inp = self.model, x
        heat = cam(model, inp, targets, batch_size=max(1, len(inp)))
        return heat, {"method": "gradcam", "layer": _layer_names(self.model),
                      "note": "Grad-CAM of each face's top class (scaled to [0, 1] per face)"}

    def predict_image(self, image: np.ndarray, *, name: str = "image") -> tuple[dict[str, Any], np.ndarray]:
        """Detect, align, classify and explain every face of ``image`` (RGB uint8 H x W x 3).

        Returns the JSON record (see the module docstring) and the annotated image.

        Raises:
            NoFaceError: no face detected (naming ``name``).
        """
        faces = detect_faces(image, upsample=self.upsample, score_threshold=self.score_threshold,
                             max_side=self.max_side)
        if not faces:
            raise NoFaceError(
                f"no face found in {name} (dlib frontal detector, upsample={self.upsample}, "
                f"score_threshold={self.score_threshold:g}): the detector finds frontal and near-frontal faces at "
                f"least ~40 px wide at upsample 1; try --upsample 2 or a lower --score-threshold (e.g. 0)")
        template = face_template(self.variant, self.crop_size)
        crops, lms, mats = [], [], []
        for f in faces:
            crop, lm, m = align_face(image, f.landmarks, template, self.crop_size, grayscale=self.grayscale)
            crops.append(crop)
            lms.append(lm)
            mats.append(m)
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        x = self.transform({"image": images})["image"]
        masks = self._masks(np.stack(lms), x)
        with torch.no_grad():
            logits = default_output_to_logits(self._forward(x, masks)).float().cpu()
        probs = torch.softmax(logits, dim=1).numpy().astype(np.float64)
        top = probs.argmax(1).tolist()
        heat, how = self._explain(x, masks, top)
        if heat.shape[-1] != self.crop_size:  # model-input size -> crop size, for the overlay
            heat = torch.nn.functional.interpolate(torch.from_numpy(heat)[:, None], size=(self.crop_size,) * 2,
                                                   mode="bilinear", align_corners=False)[:, 0].numpy()
        records = []
        for i, f in enumerate(faces):
            order = np.argsort(-probs[i])[: self.top_k]
            records.append({
                "index": i,
                "box": [round(float(v), 2) for v in f.box],
                "score": round(f.score, 4),
                "landmarks": np.round(f.landmarks.astype(np.float64), 2).tolist(),
                "probabilities": {c: float(p) for c, p in zip(self.classes, probs[i])},
                "top": [[self.classes[j], float(probs[i, j])] for j in order],
                "predicted": self.classes[top[i]],
                "explanation": dict(how, **({"target": self.classes[top[i]]} if how["method"] == "gradcam" else {})),
                "crop_to_photo": np.round(cv2.invertAffineTransform(mats[i]), 6).tolist(),
            })
        record = {
            "photo": name,
            "image_size": [int(image.shape[1]), int(image.shape[0])],
            "fer_version": __version__,
            **self.info,
            "classes": list(self.classes),
            "detector": {"backend": "dlib frontal (HOG) + 68-point shape predictor", "upsample": self.upsample,
                         "score_threshold": self.score_threshold, "max_side": self.max_side,
                         "faces": len(faces)},
            "alignment": {"variant": self.variant, "crop_size": self.crop_size, "grayscale": self.grayscale,
                          "input_size": self.config.input_size, "mean": list(self.config.mean),
                          "std": list(self.config.std), "points": "iBUG 27-47 (nose, eyes)",
                          "masks": self.mask_kind},
            "faces": records,
        }
        return record, annotate(image, faces, probs, heat, mats, self.classes, self.top_k)

    def predict_file(self, photo: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
                     stem: str | None = None) -> PhotoResult:
        """:meth:`predict_image` on a file; writes ``<out_dir>/<stem>.predict.png`` and ``.json`` atomically.

        ``out_dir``: default the photo's folder. Raises :class:`ImageDecodeError` for an
        unreadable file and :class:`NoFaceError` when no face is found (nothing is written).
        """
        path = Path(photo)
        image = read_photo(path)
        record, annotated = self.predict_image(image, name=str(path))
        out = Path(out_dir) if out_dir is not None else path.parent
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or path.stem
        png, js = out / f"{stem}.predict.png", out / f"{stem}.predict.json"
        record["outputs"] = {"image": str(png), "json": str(js)}
        ok, buf = cv2.imencode(".png", cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
            raise RuntimeError(f"cannot encode the annotated image for {path}")
        atomic_write_bytes(png, buf.tobytes())
        atomic_write_json(js, record)
        return PhotoResult(path, js, png, record, annotated)


def _device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _input_side(model: nn.Module, config: TrainConfig, variant: str) -> int:
    """The side of the faces the model was trained on: the run's ``input_size``, else the model's
    nominal input (``pretrained_cfg``, set from its ``img_size``), else the variant's stored size."""
    if config.input_size:
        return int(config.input_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
    if size:
        return int(size[-1])
    return int(get_variant(variant).image_size)


def _num_outputs(model: nn.Module, config: TrainConfig, size: int) -> int:
    """Classes the model outputs, from one forward pass on a grey face-sized input (all-ones masks)."""
    model.eval()
    dev = next(model.parameters()).device
    x = InputTransform.from_config(config)({"image": torch.full((1, 3, size, size), 128, dtype=torch.uint8)})["image"]
    x = x.to(dev)
    kind = _mask_kind(model)
    with torch.no_grad():
        if kind == "face_mask":
            out = model(x, torch.ones(1, 1, size, size, device=dev))
        elif kind == "region_masks":
            side = mask_side(int(x.shape[-1]))
            out = model(x, torch.ones(1, 8, side, side, device=dev))
        else:
            out = model(x)
    return int(default_output_to_logits(out).shape[1])


def _layer_names(model: nn.Module) -> list[str]:
    from .explain import resolve_target_layers

    names = {id(m): n for n, m in model.named_modules()}
    try:
        return [names.get(id(m), type(m).__name__) for m in resolve_target_layers(model)]
    except (ValueError, TypeError):
        return []


_CK = re.compile(r"(^|[-_])ck\d*([-_]|$)")


def _auto_variant(run: Run) -> tuple[str, str]:
    """The SynFER variant whose framing and colour a run's training faces had (module note)."""
    spec = run.spec.get("build_model") if isinstance(run.spec, Mapping) else None
    target = spec.get("partial", "") if isinstance(spec, Mapping) else str(spec or "")
    if target.startswith("fer.experiments.cbam_vgg."):
        return "fer2013", "the VGG16 + CBAM chapter trains on FER2013 or its SynFER stand-in (48 px, grey)"
    if _CK.search(run.name):
        return "ck", "the run's name says CK+ (SynFER ck: grey, frontal)"
    return "wild", "default: RAF-DB's SynFER stand-in (colour, face 0.6-0.8 of the crop width)"


# =========================================================================== drawing


def annotate(image: np.ndarray, faces: Sequence[Face], probs: np.ndarray, heat: np.ndarray,
             mats: Sequence[np.ndarray], classes: Sequence[str], top_k: int = 3) -> np.ndarray:
    """The photo with, per face, its explanation map overlaid on the crop area, its box, number and
    top-``top_k`` classes with probabilities (RGB uint8, same size as ``image``).

    ``heat``: B x S x S maps in [0, 1] on the aligned crops; ``mats``: the 2 x 3 matrices
    taking photo pixels to crop pixels (:func:`align_face`).
    """
    out = image.astype(np.float32).copy()
    h, w = image.shape[:2]
    for hm, m in zip(heat, mats):
        inv = cv2.invertAffineTransform(m)
        back = cv2.warpAffine(hm.astype(np.float32), inv, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
        area = cv2.warpAffine(np.ones_like(hm, np.float32), inv, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
        colour = cv2.applyColorMap(np.uint8(np.clip(back, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
        alpha = (0.45 * area)[..., None]
        out = out * (1 - alpha) + colour.astype(np.float32) * alpha
    out = np.clip(out, 0, 255).astype(np.uint8)
    thick = max(1, round(min(h, w) / 300))
    for i, f in enumerate(faces):
        x0, y0, x1, y1 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 255), thick + 1, cv2.LINE_AA)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 160, 255), thick, cv2.LINE_AA)
        order = np.argsort(-probs[i])[:top_k]
        lines = [f"#{i + 1}"] + [f"{classes[j]} {probs[i, j]:.2f}" for j in order]
        scale = max(0.4, min(1.2, (x1 - x0) / 160))
        _text_block(out, lines, (x0, y1 + 4), scale, thick)
    return out


def _text_block(img: np.ndarray, lines: Sequence[str], origin: tuple[int, int], scale: float, thick: int) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(t, font, scale, thick)[0] for t in lines]
    lh = max(s[1] for s in sizes) + int(8 * scale) + 2
    bw = max(s[0] for s in sizes) + 8
    bh = lh * len(lines) + 4
    h, w = img.shape[:2]
    x, y = origin
    if y + bh > h:  # no room below the box: above it
        y = max(0, origin[1] - bh)
    x = min(max(0, x), max(0, w - bw))
    sub = img[y:y + bh, x:x + bw]
    sub[:] = (sub.astype(np.float32) * 0.35).astype(np.uint8)
    for k, t in enumerate(lines):
        cv2.putText(img, t, (x + 4, y + lh * (k + 1) - 4), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


# =========================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fer.predict",
        description="Detect every face in each photo, classify its expression with a trained run, explain it "
                    "(the model's attention or Grad-CAM); writes <out>/<stem>.predict.png and .json per photo.",
        epilog="Example: python -m fer.predict me.jpg --run runs/cbam_vgg-demo-cbam-vgg16_cbam-0123456789ab")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, ...)")
    src = p.add_argument_group("model (one of)")
    src.add_argument("--run", help="a run folder (runs/<name>-<hash>, or its name under $FER_RUNS / runs/)")
    src.add_argument("--model", help="a registered model name (fer.models.list_models()), with --checkpoint")
    src.add_argument("--checkpoint", help="weights for --model: a run's checkpoint.pt or a state dict")
    src.add_argument("--input-size", type=int, default=112, help="--model only: model input side (default 112)")
    src.add_argument("--mean", type=float, nargs="+", default=[0.5, 0.5, 0.5], help="--model only: normalisation")
    src.add_argument("--std", type=float, nargs="+", default=[0.5, 0.5, 0.5], help="--model only: normalisation")
    p.add_argument("--classes", help="comma-separated class names the model's outputs stand for (must match its "
                                     "number of outputs)")
    p.add_argument("--num-classes", type=int, help="the number of classes you expect (an error if the model "
                                                   "has another)")
    p.add_argument("--variant", default="auto", choices=["auto", *sorted(VARIANTS)],
                   help="SynFER variant whose framing and colour the crop follows (default: from the run)")
    p.add_argument("--crop-size", type=int, help="aligned crop side before the run's resize (default: the "
                                                 "variant's image size, at most the model input)")
    det = p.add_argument_group("face detector (dlib)")
    det.add_argument("--upsample", type=int, default=DEFAULT_UPSAMPLE,
                     help=f"times the detector doubles the photo (default {DEFAULT_UPSAMPLE})")
    det.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                     help=f"minimum detection score (default {DEFAULT_SCORE_THRESHOLD}; dlib's own is 0)")
    det.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                     help=f"shrink photos to this long side for detection (default {DEFAULT_MAX_SIDE}; 0: never)")
    p.add_argument("--explain", default="auto", choices=EXPLAIN_METHODS,
                   help="auto: the model's own attention where it has one, else Grad-CAM")
    p.add_argument("--out", default=None, help="output folder (default: next to each photo)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--top-k", type=int, default=3, help="classes printed per face (default 3)")
    return p


def _stems(photos: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for ph in photos:
        n = seen.get(ph.stem, 0)
        seen[ph.stem] = n + 1
        out.append(ph.stem if n == 0 else f"{ph.stem}-{n + 1}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns 0 when every photo was processed, 1 when some failed, 2 for a bad setup."""
    args = build_parser().parse_args(argv)
    classes = [c for c in args.classes.split(",")] if args.classes else None
    common = dict(classes=classes, num_classes=args.num_classes, upsample=args.upsample,
                  score_threshold=args.score_threshold, max_side=args.max_side or None, explain=args.explain,
                  device=args.device, top_k=args.top_k, crop_size=args.crop_size)
    try:
        if (args.run is None) == (args.model is None):
            raise ValueError("pass either --run RUN_DIR or --model NAME --checkpoint FILE")
        if args.run is not None:
            if args.checkpoint:
                raise ValueError("--checkpoint goes with --model; a run brings its own checkpoint.pt")
            pred = Predictor.from_run(args.run, variant=args.variant, **common)
        else:
            if not args.checkpoint:
                raise ValueError("--model needs --checkpoint FILE (a run's checkpoint.pt or a state dict)")
            pred = Predictor.from_checkpoint(args.model, args.checkpoint, input_size=args.input_size,
                                             mean=args.mean, std=args.std, variant=args.variant, **common)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    photos = [Path(p) for p in args.photos]
    failed = 0
    for photo, stem in zip(photos, _stems(photos)):
        try:
            res = pred.predict_file(photo, out_dir=args.out, stem=stem)
        except (ImageDecodeError, NoFaceError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        for f in res.faces:
            tops = ", ".join(f"{c} {p:.2f}" for c, p in f["top"])
            print(f"{photo}: face {f['index'] + 1} at {[round(v) for v in f['box']]}: {tops}")
        print(f"wrote {res.image_path} and {res.json_path}")
    if failed:
        print(f"{failed} of {len(photos)} photo(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
