"""Probe faces: SynFER faces drawn for a trained model after its run, one nuisance set at a time.

A chapter's runs are tested on their chapter's test set. Some questions need faces that set
is not made of: turned by a given yaw, with an occluder of a given size, under a face mask cut
to a given height, at a lower resolution. This module draws them, with a seed offset of their
own (:data:`PROBE_SEED_OFFSET`), and scores a trained model on them as its run is evaluated:

* :class:`Probe`, :func:`probe_faces`: the chapter's test variant at its size and classes,
  class-balanced, with overrides of the variant's nuisances (:func:`yaw_overrides`);
* :func:`occlude`, :func:`cover_with_mask`, :func:`lower_resolution`: one nuisance applied to
  faces already drawn, so the faces of two levels differ only in it;
* :func:`probe_logits`: a trained model's class scores, with MAPNet's face masks;
* :data:`POSE_LEVELS`, :func:`turned_faces`, :func:`pose_frame`: the pose subsets that stand
  in for Pose-AffectNet in the SynFER profiles (the MSA-Net chapter's pose claims).

Nothing here trains, and no run's identity covers this module: the comparison page
(:mod:`fer.experiments.compare`) and the MSA-Net ablation page use it after their runs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _dry_run
from ..data.cached import CachedDataset, cache_dataset
from ..data.masks import PAPER_MASK_PATTERNS, paste_face_mask
from ..data.synfer import SynFER
from ..data.transforms import model_input
from ..metrics import accuracy, mean_class_accuracy
from ..train import default_output_to_logits
from . import mapnet

__all__ = [
    "PROBE_SEED_OFFSET",
    "Probe",
    "probe_faces",
    "face_masks_of",
    "probe_logits",
    "yaw_overrides",
    "occlude",
    "cover_with_mask",
    "lower_resolution",
    "POSE_LEVELS",
    "turned_faces",
    "pose_frame",
    "msanet_pose",
    "with_pose",
    "msanet_pose_text",
    "pose_labels",
]


#: Seed offset of the probe faces (:func:`probe_faces`): no run trains or is tested on
#: them, and no chapter explains on them (its training and test faces use the
#: chapter seed, the face pretraining ``+1000``, the explanation faces ``+2000``).
PROBE_SEED_OFFSET = 4000


@dataclass(frozen=True)
class Probe:
    """How a chapter's models see probe faces: the SynFER ``variant`` that stands
    in for the chapter's test data, the ``image_size`` its faces are stored at, the chapter's
    ``classes`` in its label order (``None``: the variant's 7) and the chapter's data ``seed``."""

    chapter: str
    variant: str
    image_size: int
    classes: tuple[str, ...] | None
    seed: int


def probe_faces(probe: Probe, n: int, *, relevance: bool = False, progress: bool = False,
                **overrides: Any) -> CachedDataset:
    """``n`` class-balanced SynFER test faces of ``probe``'s variant, with ``overrides`` of its
    nuisances (e.g. ``occluder_prob=0.0``), drawn with ``probe.seed + PROBE_SEED_OFFSET``:
    ``image``, ``label`` and ``landmarks`` (and ``relevance``), cached. A dry run draws
    :data:`fer._dry_run.EXPLAIN` faces at most."""
    if _dry_run.dry_run():
        n = min(n, _dry_run.EXPLAIN)
    ds = SynFER(probe.variant, "test", n=n, seed=probe.seed + PROBE_SEED_OFFSET, image_size=probe.image_size,
                classes=probe.classes, class_balance="uniform", with_relevance=relevance, **overrides)
    keys = ("image", "label", "landmarks") + (("relevance",) if relevance else ())
    return cache_dataset(ds, keys=keys, progress=progress, desc=f"SynFER {probe.variant} probe")


def face_masks_of(images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """MAPNet's input masks for ``images`` (:func:`fer.experiments.mapnet.face_masks` at their size)."""
    return mapnet.face_masks(landmarks, tuple(images.shape[-2:]))


def probe_logits(chapter: str, model: nn.Module, config: Any, images: torch.Tensor, landmarks: torch.Tensor, *,
                 batch: int = 64) -> torch.Tensor:
    """Class scores of a trained ``model`` of ``chapter`` (run ``config``) on uint8 ``images``, fed
    as the run is evaluated: resized and normalised, with face masks from ``landmarks`` for
    MAPNet, the whole face for MSA-Net. ``N x K`` float32, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            img = images[s:s + batch]
            if chapter == "mapnet":
                x, m = mapnet.model_input({"image": img, "mask": face_masks_of(img, landmarks[s:s + batch])}, config)
                y = model(x.to(device), m.to(device))
            else:
                y = model(model_input(img, config).to(device))
            out.append(default_output_to_logits(y).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def yaw_overrides(level: float) -> dict[str, Any]:
    """SynFER variant overrides that turn every face by ``|yaw| = level`` degrees (either side),
    without occluders: a half-normal this wide is always clipped to ``max_yaw``."""
    return {"max_yaw": float(level), "yaw_sigma": 1e6, "yaw_uniform": 0.0, "occluder_prob": 0.0}


def occlude(images: torch.Tensor, landmarks: torch.Tensor, *, side: float, seed: int) -> torch.Tensor:
    """Each face with one square patch, ``side`` times the face's width (jaw landmarks 1 to 17)
    on a side, centred on one of its inner landmarks (18 to 68), of one flat colour (grey on a
    grey face). Centre and colour are drawn per face from ``seed`` alone, so faces differ
    between sides only in size."""
    out = images.clone()
    size = images.shape[-1]
    lm = landmarks.float().numpy()
    for i in range(len(images)):
        rng = np.random.default_rng([seed, i])
        cx, cy = lm[i, rng.integers(17, 68)]
        colour = torch.as_tensor(rng.integers(0, 256, size=3), dtype=torch.uint8)
        if bool((images[i] == images[i, :1]).all()):  # a grey face (FER2013-like) gets a grey patch
            colour = colour[:1].expand(3)
        half = 0.5 * side * float(np.linalg.norm(lm[i, 16] - lm[i, 0]))
        if half <= 0:
            continue
        x0, x1 = (int(np.clip(round(v), 0, size)) for v in (cx - half, cx + half))
        y0, y1 = (int(np.clip(round(v), 0, size)) for v in (cy - half, cy + half))
        out[i, :, y0:y1, x0:x1] = colour[:, None, None]
    return out


def cover_with_mask(images: torch.Tensor, landmarks: torch.Tensor, *, coverage: float, seed: int) -> torch.Tensor:
    """Each face with a face mask (:func:`fer.data.masks.paste_face_mask`, the masked-FER
    paper's three patterns in turn) of which only the lowest ``coverage`` share of its height
    is kept: 1 = the whole mask (nose bridge to under the chin), 0.5 = from the mouth down, 0 =
    no mask."""
    if not 0 <= coverage <= 1:
        raise ValueError(f"coverage must be in [0, 1], got {coverage}")
    out = images.clone()
    if coverage == 0:
        return out
    for i in range(len(images)):
        style, colour = PAPER_MASK_PATTERNS[i % len(PAPER_MASK_PATTERNS)]
        covered, where = paste_face_mask(images[i], landmarks[i], style, colour, np.random.default_rng([seed, i]))
        if coverage >= 1:
            out[i] = covered
            continue
        rows = torch.nonzero(where.any(dim=1)).flatten()
        if len(rows) == 0:
            continue
        top, bottom = int(rows.min()), int(rows.max()) + 1
        keep = where.bool().clone()
        keep[: int(round(bottom - coverage * (bottom - top)))] = False
        out[i] = torch.where(keep, covered, images[i])
    return out


def lower_resolution(images: torch.Tensor, *, scale: float) -> torch.Tensor:
    """``images`` brought down to ``scale`` of their side (area averaging) and back up (bilinear):
    the detail of a smaller face at the same input size."""
    size = images.shape[-1]
    small = max(4, int(round(size * scale)))
    if small >= size:
        return images.clone()
    x = torch.nn.functional.interpolate(images.float(), size=(small, small), mode="area")
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


#: The pose subsets of the SynFER profiles: name -> the |yaw| levels (degrees) their faces are
#: turned by, in equal parts. They stand in for Pose-AffectNet's faces with |yaw| >= 30 and
#: >= 45 (Wang et al., 2020); SynFER's in-the-wild variants turn faces by 60 degrees at most.
POSE_LEVELS: dict[str, tuple[float, ...]] = {"pose30": (30.0, 40.0, 50.0, 60.0), "pose45": (45.0, 50.0, 55.0, 60.0)}


def turned_faces(probe: Probe, subset: str, n: int, *, progress: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, landmarks)``: about ``n`` probe faces of :data:`POSE_LEVELS` ``subset``,
    an equal share at each of its yaws, each share other faces (its own seed, ``probe.seed + 100 k``
    for the k-th yaw), class-balanced and without occluders."""
    if subset not in POSE_LEVELS:
        raise ValueError(f"unknown pose subset {subset!r}; choose from {list(POSE_LEVELS)}")
    levels = POSE_LEVELS[subset]
    parts = [probe_faces(replace(probe, seed=probe.seed + 100 * k), max(1, n // len(levels)), progress=progress,
                         **yaw_overrides(y)).tensors for k, y in enumerate(levels)]
    return tuple(torch.cat([t[k] for t in parts]) for k in ("image", "label", "landmarks"))  # type: ignore[return-value]


def pose_frame(results: Mapping[tuple[str, int], Any], probe: Probe, n: int, *, chapter: str = "msanet",
               progress: bool = False):
    """Each run's accuracy and mean per-class accuracy (%) on the :data:`POSE_LEVELS` subsets
    (:func:`turned_faces`, about ``n`` faces each): one row per (row, subset, seed), in the
    layout of :func:`fer.experiments.msanet.ablation_frame` (``row``, ``column``, ``seed``,
    ``accuracy``, ``mean_class_accuracy``, ``n``).

    ``results``: ``{(row, seed): RunResult}`` of runs trained on ``probe``'s variant.
    """
    import pandas as pd

    recs = []
    for subset in POSE_LEVELS:
        x, y, lm = turned_faces(probe, subset, n, progress=progress)
        for (row, seed), res in results.items():
            logits = probe_logits(chapter, res.model, res.run.config, x, lm)
            recs.append({"row": row, "column": subset, "seed": int(seed), "accuracy": 100.0 * accuracy(logits, y),
                         "mean_class_accuracy": 100.0 * mean_class_accuracy(logits, y), "n": int(len(y))})
    return pd.DataFrame(recs)


def msanet_pose(results: Mapping[tuple[str, str, int], Any], setup: Any, n: int, *, progress: bool = False):
    """The MSA-Net chapter's pose columns in a SynFER profile: its RAF-like runs (``results``,
    ``{(row, dataset, seed): RunResult}`` as the ablation page holds them) scored on
    :func:`turned_faces` of SynFER ``wild`` at the chapter's input size (:func:`pose_frame`).

    Why not the AffectNet-like test faces with |yaw| >= 30 / 45, as the ``paper`` profile takes
    Pose-AffectNet from AffectNet: at the SynFER profiles' scale the AffectNet-like runs stay
    near chance (the demo's profile note), and one seed of them cannot carry a verdict. The
    turned faces ask Table 3's question (does attention help on turned faces?) of runs that learn,
    with every RAF-like seed.
    """
    from . import msanet

    probe = Probe("msanet", msanet.DATASETS["raf"].synfer, int(setup.input_size), None, int(setup.data_seed))
    raf = {(row, seed): res for (row, dataset, seed), res in results.items() if dataset == "raf"}
    return pose_frame(raf, probe, n, progress=progress)


def with_pose(frame: Any, pose: Any):
    """``frame`` (:func:`fer.experiments.msanet.ablation_frame`) with its pose columns
    (:data:`POSE_LEVELS`' names) replaced by ``pose`` (:func:`msanet_pose`)."""
    import pandas as pd

    return pd.concat([frame[~frame["column"].isin(list(POSE_LEVELS))], pose], ignore_index=True)


def msanet_pose_text(synthetic: bool, n: int) -> str:
    """What the MSA-Net chapter's pose columns are made of in a profile, for its pages."""
    if not synthetic:
        return ("AffectNet's test faces with |yaw| >= 30 and >= 45 degrees (Pose-AffectNet's subsets), "
                "scored from the AffectNet runs")
    lv = {k: f"{v[0]:g} to {v[-1]:g}" for k, v in POSE_LEVELS.items()}
    return (f"SynFER wild faces turned by |yaw| {lv['pose30']} degrees (|yaw| >= 30) and {lv['pose45']} degrees "
            f"(|yaw| >= 45), about {n} per subset from a seed no run uses, scored with the RAF-like runs of every "
            "seed (the AffectNet-like set's runs, where a profile trains them, stay near chance at this scale)")


def pose_labels(table: Any, synthetic: bool):
    """:func:`fer.experiments.msanet.ablation_table` with its pose columns named for what ours
    are in a SynFER profile (the paper's number stays Pose-AffectNet's); unchanged in ``paper``."""
    if not synthetic:
        return table
    out = table.copy()
    out["column"] = out["column"].str.replace(r"^Pose-AffectNet (>= \d+°)$", r"|yaw| \1 (paper: Pose-AffectNet; "
                                              r"ours: SynFER wild, turned)", regex=True)
    return out
