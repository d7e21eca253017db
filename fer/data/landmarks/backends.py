"""68-point landmark detection: the dlib and face-alignment backends behind :func:`detect`.

Both return the 68 iBUG 300-W points (x, y in pixels of the given image, the
convention of :class:`fer.data.SynFER`'s ``landmarks``) of **one face per image**
(the detector's most confident face), with a per-image outcome instead of an
exception, so one bad image never stops a pass over a dataset.

* ``dlib`` (CPU, offline): dlib's HOG frontal face detector, then the ensemble of
  regression trees of Kazemi & Sullivan (CVPR 2014) trained on iBUG 300-W, read from
  ``shape_predictor_68_face_landmarks.dat`` inside the ``face-recognition-models``
  package (``pip install dlib-bin face-recognition-models``).
* ``face_alignment`` (GPU, batched): Bulat & Tzimiropoulos' FAN (ICCV 2017) with the
  S3FD detector, from the ``face-alignment`` package, which is *not* a dependency of
  :mod:`fer`: install it on a GPU machine (``pip install face-alignment``). It
  downloads its weights on first use into torch.hub's cache
  (:func:`face_alignment_weights_dir`); offline, put the files there by hand.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "LandmarkResult",
    "detect",
    "as_image_list",
    "dlib_model_path",
    "face_recognition_models_file",
    "face_alignment_weights_dir",
    "FACE_ALIGNMENT_WEIGHTS",
    "landmark_error",
]

#: Names accepted by ``detect(..., backend=...)``.
BACKENDS = ("dlib", "face_alignment")
#: face-alignment's weight files for 2D landmarks with the default S3FD detector:
#: file name -> download address (from ``face_alignment/api.py`` and
#: ``face_alignment/detection/sfd/sfd_detector.py``, face-alignment 1.5.0).
FACE_ALIGNMENT_WEIGHTS: dict[str, str] = {
    "2DFAN4-11f355bf06.pth.tar": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}
_DLIB_MODEL = "shape_predictor_68_face_landmarks.dat"
_DLIB_ENV = "FER_DLIB_LANDMARKS"


# ---------------------------------------------------------------------------- result
@dataclass
class LandmarkResult:
    """What :func:`detect` returns for N images.

    Attributes:
        landmarks: float32 N x 68 x 2 (pixel x, y); NaN where ``ok`` is False.
        ok: bool N: landmarks were produced.
        detected: bool N: a face detector found the face. False with ``ok`` True
            means the fallback box (see :func:`detect`'s ``fallback``) was used.
        boxes: float32 N x 4 (x0, y0, x1, y1) of the face box the landmarks were
            fitted in; NaN where none.
        messages: one string per image: ``""`` when a face was detected, else why not
            and what was done.
        backend: the backend's name.
    """

    landmarks: np.ndarray
    ok: np.ndarray
    detected: np.ndarray
    boxes: np.ndarray
    messages: list[str]
    backend: str = ""

    @classmethod
    def empty(cls, n: int, backend: str = "") -> "LandmarkResult":
        return cls(np.full((n, 68, 2), np.nan, np.float32), np.zeros(n, bool), np.zeros(n, bool),
                   np.full((n, 4), np.nan, np.float32), [""] * n, backend)

    @classmethod
    def concatenate(cls, parts: Sequence["LandmarkResult"], backend: str = "") -> "LandmarkResult":
        if not parts:
            return cls.empty(0, backend)
        return cls(np.concatenate([p.landmarks for p in parts]), np.concatenate([p.ok for p in parts]),
                   np.concatenate([p.detected for p in parts]), np.concatenate([p.boxes for p in parts]),
                   [m for p in parts for m in p.messages], backend or parts[0].backend)

    def __len__(self) -> int:
        return len(self.ok)

    def __repr__(self) -> str:
        n = len(self)
        return (f"LandmarkResult(n={n}, ok={int(self.ok.sum())}, detected={int(self.detected.sum())}, "
                f"backend={self.backend!r})")


# ---------------------------------------------------------------------------- inputs
def _to_hwc3(img: np.ndarray, what: str) -> np.ndarray:
    if img.dtype != np.uint8:
        raise TypeError(f"{what}: expected uint8 pixels (0-255), got dtype {img.dtype}; convert with "
                        "(x * 255).round().clip(0, 255).astype(np.uint8) for images in [0, 1]")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an H x W x 3 or H x W image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _one_image(x: Any, what: str) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        from PIL import Image

        with Image.open(x) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        return _to_hwc3(t.numpy(), what)
    if hasattr(x, "convert") and hasattr(x, "size"):  # PIL image
        return np.ascontiguousarray(np.asarray(x.convert("RGB")))
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)
    return _to_hwc3(arr, what)


def as_image_list(images: Any) -> list[np.ndarray]:
    """Normalise ``images`` to a list of RGB uint8 H x W x 3 arrays.

    Accepts one image or many: a uint8 tensor 3 x H x W or N x 3 x H x W (the
    layout of :class:`fer.data.SynFER`'s ``image``), an array H x W x 3, H x W or
    N x H x W x 3, a PIL image, a path, or a list of any of these (sizes may differ).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return [_one_image(t, f"images[{i}]") for i, t in enumerate(images)]
        return [_one_image(images, "image")]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3):
                images = images.transpose(0, 2, 3, 1)
            return [_to_hwc3(a, f"images[{i}]") for i, a in enumerate(images)]
        return [_one_image(images, "image")]
    if isinstance(images, (list, tuple)):
        return [_one_image(x, f"images[{i}]") for i, x in enumerate(images)]
    return [_one_image(images, "image")]


def _fallback_box(h: int, w: int, inset: float) -> np.ndarray:
    return np.array([inset * w, inset * h, (1 - inset) * w - 1, (1 - inset) * h - 1], np.float32)


# ---------------------------------------------------------------------------- dlib
def dlib_model_path(model_path: str | os.PathLike | None = None) -> Path:
    """Where dlib's 68-point model is: ``model_path``, else ``$FER_DLIB_LANDMARKS``,
    else ``shape_predictor_68_face_landmarks.dat`` inside the installed
    ``face-recognition-models`` package (see :func:`face_recognition_models_file`).

    Raises:
        FileNotFoundError: naming the places looked at and how to get the file.
    """
    return face_recognition_models_file(
        _DLIB_MODEL, model_path, _DLIB_ENV, what="dlib's 68-point landmark model",
        url="http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2")


def face_recognition_models_file(filename: str, model_path: str | os.PathLike | None = None,
                                 env: str | None = None, what: str = "dlib model file",
                                 url: str | None = None, arg: str = "model_path") -> Path:
    """Where one of dlib's model files is: ``model_path``, else ``$env``, else
    ``filename`` inside the installed ``face-recognition-models`` package.

    The package is located without importing it (its ``__init__`` needs
    ``pkg_resources``, which recent setuptools no longer ship). Shared by
    :func:`dlib_model_path` and :func:`fer.models.dlib_resnet.dlib_resnet_path`.

    Args:
        filename: the file's name in the package's ``models`` folder.
        model_path: an explicit path (never silently replaced when it is missing).
        env: name of an environment variable that may hold the path.
        what: how error messages call the file.
        url: where dlib publishes it (``.bz2``), for the error message.
        arg: the caller's name for ``model_path``, for the error message.

    Raises:
        FileNotFoundError: naming the places looked at and how to get the file.
    """
    explicit = ((model_path, arg),) + (((os.environ.get(env), f"${env}"),) if env else ())
    for cand, origin in explicit:
        if cand:  # an explicit choice is never silently replaced
            p = Path(cand).expanduser()
            if p.is_file():
                return p
            raise FileNotFoundError(
                f"{p} (from {origin}): no such file. Point it at dlib's {filename}, or leave it unset to "
                "use the copy in the face-recognition-models package (pip install face-recognition-models)")
    tried: list[str] = []
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "models" / filename
            if p.is_file():
                return p
            tried.append(str(p))
    else:
        tried.append("package face_recognition_models (not installed)")
    download = f"download {url}, unpack it" if url else f"get {filename} from dlib.net"
    env_hint = f" or set ${env} to its path" if env else ""
    raise FileNotFoundError(
        f"{what} {filename} was not found (looked at: {'; '.join(tried)}). "
        "Install it with `pip install face-recognition-models` (it ships the file), or "
        f"{download} and pass {arg}=...{env_hint}.")


def _import_dlib():
    try:
        import dlib
    except ImportError as e:
        raise ImportError("backend='dlib' needs dlib: `pip install dlib-bin face-recognition-models` "
                          "(prebuilt wheels; `pip install dlib` builds from source)") from e
    return dlib


@functools.lru_cache(maxsize=4)
def _dlib_models(model_path: str):
    dlib = _import_dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(model_path)


def _dlib_one(img: np.ndarray, detector, predictor, *, upsample: int, min_size: int, fallback: str,
              fallback_inset: float) -> tuple[np.ndarray | None, np.ndarray | None, bool, str]:
    dlib = _import_dlib()
    h, w = img.shape[:2]
    work = img
    if min(h, w) < min_size:  # small faces (48-100 px crops): enlarge so the HOG detector can see them
        s = min_size / min(h, w)
        work = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
    k = np.array([work.shape[1] / w, work.shape[0] / h] * 2)  # x, y, x, y scale factors
    rects, scores, _ = detector.run(work, upsample, 0.0)
    if len(rects):
        r = rects[int(np.argmax(scores))]
        box_w = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64)
        detected, msg = True, ""
    elif fallback == "image":
        box_w = (_fallback_box(h, w, fallback_inset).astype(np.float64) + 0.5) * k - 0.5  # to work pixels
        r = dlib.rectangle(*[int(round(v)) for v in box_w])
        detected, msg = False, f"no face detected; landmarks fitted in the image box inset by {fallback_inset:g}"
    else:
        return None, None, False, "no face detected"
    shape = predictor(work, r)
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)
    # back to the input's pixels (pixel centres: x_in = (x_work + 0.5) / k - 0.5)
    pts = (pts + 0.5) / k[:2] - 0.5
    box = (box_w + 0.5) / k - 0.5
    return pts.astype(np.float32), box.astype(np.float32), detected, msg


def _detect_dlib(imgs: list[np.ndarray], *, upsample: int = 1, min_size: int = 160, fallback: str = "image",
                 fallback_inset: float = 0.1, model_path: str | os.PathLike | None = None,
                 progress: bool = False) -> LandmarkResult:
    detector, predictor = _dlib_models(str(dlib_model_path(model_path)))
    res = LandmarkResult.empty(len(imgs), "dlib")
    for i, img in enumerate(_progress(imgs, progress, "dlib landmarks")):
        pts, box, det, msg = _dlib_one(img, detector, predictor, upsample=upsample, min_size=min_size,
                                       fallback=fallback, fallback_inset=fallback_inset)
        _store(res, i, pts, box, det, msg)
    return res


# ---------------------------------------------------------------------------- face-alignment
def face_alignment_weights_dir() -> Path:
    """The folder face-alignment reads (and downloads) its weights from:
    ``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``
    (default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _import_face_alignment():
    try:
        import face_alignment
    except ImportError as e:
        raise ImportError(
            "backend='face_alignment' needs the face-alignment package, which fer does not install: "
            "`pip install face-alignment` on the GPU machine (or use backend='dlib', CPU and offline)") from e
    return face_alignment


def _weights_help(err: BaseException) -> str:
    wdir = face_alignment_weights_dir()
    missing = [n for n in FACE_ALIGNMENT_WEIGHTS if not (wdir / n).is_file()]
    files = "; ".join(f"{n} <- {FACE_ALIGNMENT_WEIGHTS[n]}" for n in (missing or FACE_ALIGNMENT_WEIGHTS))
    return (f"face-alignment could not load its weights ({type(err).__name__}: {err}). It downloads them on "
            f"first use; on a machine without internet, download them elsewhere and copy them into {wdir} "
            f"(torch.hub's cache: $TORCH_HOME/hub/checkpoints) under these names: {files}")


@functools.lru_cache(maxsize=2)
def _fa_model(device: str, detector: str, flip_input: bool, max_batch_size: int):
    fa = _import_face_alignment()
    lt = getattr(fa.LandmarksType, "TWO_D", None) or fa.LandmarksType._2D  # 1.5 / older releases
    params = inspect.signature(fa.FaceAlignment.__init__).parameters
    kw: dict[str, Any] = {"device": device, "flip_input": flip_input, "face_detector": detector}
    if "compile" in params:
        kw["compile"] = False
    if "max_batch_size" in params:
        kw["max_batch_size"] = max_batch_size
    try:
        return fa.FaceAlignment(lt, **kw)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        raise RuntimeError(_weights_help(e)) from e


def _best_face(boxes: Any) -> int | None:
    if boxes is None or len(boxes) == 0:
        return None
    scores = [float(b[4]) if len(b) > 4 else float((b[2] - b[0]) * (b[3] - b[1])) for b in boxes]
    return int(np.argmax(scores))


def _detect_face_alignment(imgs: list[np.ndarray], *, device: str | torch.device | None = None,
                           batch_size: int = 32, fallback: str = "image", fallback_inset: float = 0.1,
                           face_detector: str = "sfd", flip_input: bool = True,
                           progress: bool = False) -> LandmarkResult:
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _fa_model(dev, face_detector, bool(flip_input), int(batch_size))
    res = LandmarkResult.empty(len(imgs), "face_alignment")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(imgs):  # the detector batches images of one size
        groups.setdefault(img.shape, []).append(i)
    chunks = [idx[s:s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
    for chunk in _progress(chunks, progress, "face-alignment landmarks"):
        batch = torch.from_numpy(np.stack([imgs[i] for i in chunk])).permute(0, 3, 1, 2)
        batch = batch.to(dev, dtype=torch.float32)
        with torch.no_grad():
            lms, _, boxes = model.get_landmarks_from_batch(batch, return_bboxes=True)
        for j, i in enumerate(chunk):
            k = _best_face(boxes[j] if boxes is not None else None)
            pts = np.asarray(lms[j]) if lms is not None and len(lms[j]) else None
            if k is not None and pts is not None and len(pts) >= 68 * (k + 1):
                _store(res, i, pts[68 * k:68 * (k + 1), :2], np.asarray(boxes[j][k][:4]), True, "")
            elif fallback == "image":
                h, w = imgs[i].shape[:2]
                box = _fallback_box(h, w, fallback_inset)
                # float64: face-alignment's crop() assigns the box's scale into a torch tensor,
                # which accepts a Python float (np.float64) but not np.float32
                out = model.get_landmarks_from_image(imgs[i], detected_faces=[box.astype(np.float64)])
                pts = np.asarray(out[0])[:, :2] if out else None
                _store(res, i, pts, box, False,
                       f"no face detected; landmarks fitted in the image box inset by {fallback_inset:g}"
                       if pts is not None else "no face detected; the fallback box gave no landmarks")
            else:
                _store(res, i, None, None, False, "no face detected")
    return res


# ---------------------------------------------------------------------------- helpers
def _store(res: LandmarkResult, i: int, pts: np.ndarray | None, box: np.ndarray | None, detected: bool,
           msg: str) -> None:
    if pts is not None:
        res.landmarks[i] = pts
        res.ok[i] = bool(np.isfinite(pts).all())
    if box is not None:
        res.boxes[i] = box
    res.detected[i] = detected and res.ok[i]
    res.messages[i] = msg


def _progress(it: Sequence[Any], on: bool, desc: str):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc)


def _from_callable(fn: Callable[..., Any], imgs: list[np.ndarray], **kw: Any) -> LandmarkResult:
    out = fn(imgs, **kw)
    if isinstance(out, LandmarkResult):
        return out
    lm = np.asarray(out, np.float32).reshape(len(imgs), 68, 2)
    ok = np.isfinite(lm).all(axis=(1, 2))
    name = getattr(fn, "__name__", "callable")
    return LandmarkResult(lm, ok, ok.copy(), np.full((len(imgs), 4), np.nan, np.float32),
                          ["" if k else f"{name} returned no landmarks" for k in ok], name)


# ---------------------------------------------------------------------------- API
def detect(
    images: Any,
    backend: str | Callable[..., Any] = "dlib",
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    fallback: str = "image",
    fallback_inset: float = 0.1,
    upsample: int = 1,
    min_size: int = 160,
    model_path: str | os.PathLike | None = None,
    progress: bool = False,
    **backend_kwargs: Any,
) -> LandmarkResult:
    """68 iBUG landmarks of the main face in each image.

    Args:
        images: one image or many (see :func:`as_image_list`): uint8 RGB, e.g. a
            SynFER ``image`` tensor (3 x H x W), a batch N x 3 x H x W, an H x W x 3
            array, a path, or a list of these.
        backend: ``"dlib"`` (CPU, offline; default) or ``"face_alignment"`` (FAN,
            batched on ``device``; needs ``pip install face-alignment`` and its
            weights, see :func:`face_alignment_weights_dir`), or a callable taking
            the list of H x W x 3 arrays and returning a :class:`LandmarkResult` or
            an N x 68 x 2 array.
        device: torch device for ``face_alignment`` (default: CUDA when available).
        batch_size: images per forward pass (``face_alignment``).
        fallback: what to do when no face is detected: ``"image"`` fits the
            landmarks in the image box inset by ``fallback_inset`` on each side
            (``ok`` True, ``detected`` False, a message says so), or ``"none"``
            (NaN landmarks, ``ok`` False).
        fallback_inset: fraction of the width/height cut from each side of the
            image for the fallback box.
        upsample: times dlib's detector doubles the image to find small faces.
        min_size: dlib: images whose short side is smaller are enlarged to it
            (bicubic) before detection; the points are mapped back.
        model_path: dlib's ``shape_predictor_68_face_landmarks.dat`` (default: from
            ``face-recognition-models``, see :func:`dlib_model_path`).
        progress: show a tqdm bar.
        **backend_kwargs: ``face_alignment`` only: ``face_detector`` (``"sfd"``) and
            ``flip_input`` (True), passed to ``face_alignment.FaceAlignment``.

    Returns:
        :class:`LandmarkResult` with one row per image (N = 1 for a single image).

    .. note::
        **No-face fallback.** The papers' datasets are face crops (RAF-DB's aligned
        100 x 100 faces, FER2013's 48 x 48, AffectNet's boxes), where the face *is*
        the image, and dlib's HOG detector misses many tight or low-resolution
        crops. So the default fallback fits the landmarks in the image box, which
        is what the detector box would have been; on SynFER face crops at 224 px
        this gives a mean error of about 5 % of the inter-ocular distance, the same
        as with a detected box. On images that are not face crops use
        ``fallback="none"`` so failures stay NaN; ``detected`` tells the two apart
        in either case.

    .. note::
        **One face per image**: the detector's highest-scoring face (dlib: the HOG
        score; S3FD: its confidence), not the largest.
    """
    if fallback not in ("image", "none"):
        raise ValueError(f"fallback must be 'image' or 'none', got {fallback!r}")
    if not 0 <= fallback_inset < 0.5:
        raise ValueError(f"fallback_inset must be in [0, 0.5), got {fallback_inset}")
    imgs = as_image_list(images)
    if callable(backend):
        return _from_callable(backend, imgs)
    name = str(backend).replace("-", "_").lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown landmark backend {backend!r}; choose from {BACKENDS} or pass a callable")
    if not imgs:
        return LandmarkResult.empty(0, name)
    if name == "dlib":
        if backend_kwargs:
            raise TypeError(f"backend 'dlib' takes no extra keyword arguments, got {sorted(backend_kwargs)}")
        return _detect_dlib(imgs, upsample=upsample, min_size=min_size, fallback=fallback,
                            fallback_inset=fallback_inset, model_path=model_path, progress=progress)
    bad = sorted(set(backend_kwargs) - {"face_detector", "flip_input"})
    if bad:
        raise TypeError(f"backend 'face_alignment' got unexpected keyword argument(s) {bad}")
    return _detect_face_alignment(imgs, device=device, batch_size=batch_size, fallback=fallback,
                                  fallback_inset=fallback_inset, progress=progress, **backend_kwargs)


def landmark_error(pred: Any, target: Any, *, normalise: str = "inter_ocular") -> np.ndarray:
    """Per-face mean point-to-point error, normalised (the NME of 300-W).

    Args:
        pred, target: ... x 68 x 2.
        normalise: ``"inter_ocular"`` (outer eye corners 36-45, 300-W's convention)
            or ``"inter_pupil"`` (distance between the centres of the two eye
            contours), or ``"none"`` (pixels).

    Returns:
        float64 array of shape ``pred.shape[:-2]``; NaN where ``pred`` has NaN.
    """
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    err = np.linalg.norm(p - t, axis=-1).mean(axis=-1)
    if normalise == "none":
        return err
    if normalise == "inter_ocular":
        d = np.linalg.norm(t[..., 36, :] - t[..., 45, :], axis=-1)
    elif normalise == "inter_pupil":
        d = np.linalg.norm(t[..., 36:42, :].mean(-2) - t[..., 42:48, :].mean(-2), axis=-1)
    else:
        raise ValueError(f"normalise must be 'inter_ocular', 'inter_pupil' or 'none', got {normalise!r}")
    return err / d
