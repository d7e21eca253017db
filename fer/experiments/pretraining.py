"""Pretrained starts for the SynFER profiles: candidate stand-ins for VGG-Face and ImageNet.

The papers fine-tune networks pretrained on millions of faces (VGG-Face, VGGFace2) or
images (ImageNet). No such weights for VGG or ResNet load offline, so the SynFER
profiles pretrain the chapter's own backbone on a task SynFER can label, cache that as
a run, and start the expression runs from its conv base
(:func:`fer.experiments._common.load_conv_base`). Which task gives the most fine-tuned
accuracy per minute of CPU is measured, not assumed (``benchmarks/bench_pretrain.py``).

Tasks (:data:`PRETRAIN_TASKS`), each on the same SynFER faces (every expression,
class-balanced, seed ``seed + PRETRAIN_SEED_OFFSET``, which no expression set uses):

``identity``
    tell ``setup.pretrain_identities`` SynFER people apart: what VGG-Face learned, and
    the chapters' stand-in until issue 17 measured it against the others (it learns to
    ignore expressions).
``landmarks``
    regress the 68 iBUG landmarks SynFER drew each face from (exact, not detected), as
    ``x, y`` in units of the half-image (the image's edges at -1 and 1; a point the
    pose pushed out of the frame lies beyond): a face-geometry task that sees the mouth, brows
    and eyes move, as expressions move them. The chapters' stand-in for VGG-Face
    (``face_pretrain`` of :mod:`~fer.experiments.cbam_vgg` and :mod:`~fer.experiments.manet`).
``identity+landmarks``
    both heads on one backbone, the two losses summed (landmarks weighted by
    :data:`LANDMARK_WEIGHT`).
``dlib-distill``
    regress the 128-d descriptor that dlib's face-recognition ResNet (trained on about 3
    million real faces; :mod:`fer.models.dlib_resnet`) computes for each face, by cosine
    distance: what that network learned from real faces, moved into the chapter's
    backbone. The teacher reads each face resized to its 150 px chip.

    .. note:: The descriptors are centred (their mean over the pretraining faces
       subtracted) before the cosine. dlib's descriptors of SynFER faces share a large
       common part, so raw ones are matched to a cosine of 0.93 after one epoch of a
       tiny network while telling nobody apart; centred, only what differs from face to
       face is left to learn.

Every candidate is trained from scratch with Adam at the chapter's learning rate for
``setup.pretrain_epochs`` over ``setup.pretrain_n`` faces, through :func:`fer.runs.run`
(cached, resumable); the tasks that regress positions train without flips (a flip
would move every landmark and swap left and right).
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.cached import CachedDataset, cache_dataset
from ..data.synfer import SynFER
from ..runs import RunResult, run
from ..train import TrainConfig
from ._common import PRETRAIN_SEED_OFFSET

__all__ = ["PRETRAIN_TASKS", "check_task", "LANDMARK_WEIGHT", "LANDMARKS", "task_outputs", "pretrain_faces",
           "pretrain_loss", "identity_logits", "dlib_descriptors", "pretrain", "landmark_rmse_px", "pretrain_facts",
           "TASK_TEXT", "facts_text", "check_stand_in", "start_phrase", "start_run", "BACKBONE_VARIANT",
           "backbone_name", "backbone_pretrain", "backbone_facts", "start_text"]

#: What a pretraining run can learn (module docstring).
PRETRAIN_TASKS: tuple[str, ...] = ("identity", "landmarks", "identity+landmarks", "dlib-distill")
#: Weight of the landmark loss (mean squared error of half-image coordinates) beside the
#: identity cross-entropy: a landmark error of 0.1 of the half-face then costs 0.1.
LANDMARK_WEIGHT: float = 10.0
#: Landmarks per face (iBUG 68), two coordinates each.
LANDMARKS: int = 68
_DESCRIPTOR = 128
_DLIB_SIDE = 150


def check_task(task: str, *, chapter: str) -> None:
    """A ``ValueError`` naming ``book/profiles.yml``'s ``chapter`` entry when a Setup's
    ``pretrain_task`` is not one of :data:`PRETRAIN_TASKS`."""
    if task not in PRETRAIN_TASKS:
        raise ValueError(f"pretrain_task must be one of {PRETRAIN_TASKS}, got {task!r} (book/profiles.yml, {chapter})")


def task_outputs(task: str, identities: int) -> int:
    """The head's width for ``task``: identity logits, then landmark coordinates, or a descriptor."""
    if task not in PRETRAIN_TASKS:
        raise ValueError(f"unknown pretraining task {task!r}; choose from {PRETRAIN_TASKS}")
    return {"identity": identities, "landmarks": 2 * LANDMARKS, "identity+landmarks": identities + 2 * LANDMARKS,
            "dlib-distill": _DESCRIPTOR}[task]


def dlib_descriptors(images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """dlib's 128-d face descriptors of uint8 faces ``N x 3 x H x W`` (resized to its 150 px chips).

    The teacher of ``dlib-distill``: :func:`fer.models.dlib_resnet.face_descriptor_model`
    with the weights of ``face-recognition-models`` (offline), on the CPU threads torch has.
    """
    from ..models.dlib_resnet import dlib_preprocess, face_descriptor_model

    model = face_descriptor_model()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if chunk.shape[-1] != _DLIB_SIDE:
                chunk = F.interpolate(chunk.float(), size=(_DLIB_SIDE, _DLIB_SIDE), mode="bilinear",
                                      align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
            out.append(model(dlib_preprocess(chunk)))
    return torch.cat(out) if out else torch.zeros(0, _DESCRIPTOR)


def pretrain_faces(task: str, variant: str, *, n: int, identities: int, seed: int, label: str = "SynFER pretraining",
                   progress: bool = True, **synfer_kw: Any) -> tuple[CachedDataset, CachedDataset, float]:
    """The pretraining faces of ``task``: ``(train, val, teacher_seconds)``.

    ``n`` training faces of ``identities`` people, and the tail of the same draw (a tenth
    as many, at least one per person) to score them. Tensors: ``image``,
    ``label`` (the identity), ``landmarks`` (``136`` floats, x then y per point, the
    image's edges at -1 and 1) and, for ``dlib-distill``, ``descriptor`` (the teacher's, minus their mean over
    the draw; ``teacher_seconds`` is what computing them took, 0 otherwise).
    """
    task_outputs(task, identities)  # validates the task
    n_val = max(identities, n // 10)
    ds = SynFER(variant, "train", n=n + n_val, seed=seed + PRETRAIN_SEED_OFFSET, identities=identities,
                class_balance="uniform", **synfer_kw)
    cached = cache_dataset(ds, keys=("image", "label", "landmarks"), progress=progress, desc=label)
    side = float(ds.image_size)
    tensors = {"image": cached.images, "label": torch.as_tensor(ds.identities(), dtype=torch.long),
               "landmarks": (cached.tensors["landmarks"].reshape(len(cached), -1) / side * 2 - 1).float()}
    teacher_seconds = 0.0
    if task == "dlib-distill":
        start = time.perf_counter()
        descriptors = dlib_descriptors(cached.images)
        tensors["descriptor"] = descriptors - descriptors.mean(0)
        teacher_seconds = time.perf_counter() - start
    full = CachedDataset(tensors, classes=tuple(f"id{i}" for i in range(identities)),
                         source_fingerprint=f"{ds.fingerprint()}:pretrain-{task}", name=label)
    return full.subset(np.arange(n)), full.subset(np.arange(n, len(full))), teacher_seconds


def pretrain_loss(outputs: torch.Tensor, batch: Mapping[str, Any], *, task: str, identities: int,
                  landmark_weight: float = LANDMARK_WEIGHT) -> torch.Tensor:
    """The loss of ``task`` on the head's ``outputs`` (:func:`task_outputs` wide)."""
    if task == "identity":
        return F.cross_entropy(outputs, batch["label"])
    if task == "landmarks":
        return landmark_weight * F.mse_loss(outputs.float(), batch["landmarks"])
    if task == "identity+landmarks":
        return (F.cross_entropy(outputs[:, :identities], batch["label"])
                + landmark_weight * F.mse_loss(outputs[:, identities:].float(), batch["landmarks"]))
    if task == "dlib-distill":
        return (1 - F.cosine_similarity(outputs.float(), batch["descriptor"], dim=1)).mean()
    raise ValueError(f"unknown pretraining task {task!r}; choose from {PRETRAIN_TASKS}")


def identity_logits(outputs: torch.Tensor, *, task: str, identities: int) -> torch.Tensor | None:
    """The identity scores in ``outputs`` (the run's accuracy), or ``None`` for a task without them."""
    return outputs[:, :identities] if task in ("identity", "identity+landmarks") else None


def pretrain(setup: Any, name: str, build: Callable[..., nn.Module], *, task: str, variant: str, seed: int,
             lr: float, progress: bool = True, **synfer_kw: Any) -> tuple[RunResult, float]:
    """Pretrain ``build`` (the chapter's backbone builder) on ``task``: ``(run, teacher_seconds)``.

    ``build(num_classes=...)`` must return the chapter's model with a head of that width;
    only its conv base is reused. ``setup`` gives ``pretrain_n``, ``pretrain_identities``,
    ``pretrain_epochs``, ``batch_size``, ``input_size`` and the device. The run's history
    and ``metrics.json`` hold the task's validation loss (and identity accuracy where the
    task has identities).
    """
    if not setup.synthetic:
        raise ValueError("SynFER pretraining is the SynFER profiles' stand-in; the paper profile loads real weights")
    k = setup.pretrain_identities
    train, val, teacher_seconds = pretrain_faces(task, variant, n=setup.pretrain_n, identities=k, seed=seed,
                                                 progress=progress, **synfer_kw)
    config = TrainConfig(epochs=setup.pretrain_epochs, batch_size=setup.batch_size, optimizer="adam", lr=lr,
                         input_size=setup.input_size, hflip=task == "identity", seed=seed,
                         cpu=setup.resolved_device() == "cpu")
    result = run(name, config, partial(build, num_classes=task_outputs(task, k)), train, val,
                 loss_fn=partial(pretrain_loss, task=task, identities=k),
                 output_to_logits=partial(identity_logits, task=task, identities=k),
                 spec={"task": task, "variant": variant}, progress=progress)
    return result, teacher_seconds


def landmark_rmse_px(val_loss: float, side: int, *, landmark_weight: float = LANDMARK_WEIGHT) -> float:
    """Root-mean-square landmark coordinate error in pixels of a ``side``-px input, from a
    ``landmarks`` run's validation loss (``landmark_weight`` x the mean squared error in
    half-image units, :func:`pretrain_loss`)."""
    return float(np.sqrt(max(val_loss, 0.0) / landmark_weight) * side / 2)


def pretrain_facts(setup: Any, result: RunResult, *, task: str, variant: str, seed: int,
                   progress: bool = False, **synfer_kw: Any) -> dict[str, Any]:
    """What a :func:`pretrain` run learned, for a page: ``task``, ``faces``, ``identities``,
    ``epochs``, and the task's held-out score beside what knowing nothing scores.

    ``identity``: ``accuracy`` and ``chance`` (1 / identities). ``landmarks``: ``rmse_px``
    (:func:`landmark_rmse_px` at ``setup.input_size``, else the faces' stored side) and
    ``mean_shape_rmse_px``, the error of answering every face with the training faces'
    mean landmarks (the same faces, re-read from the dataset cache). Other tasks: ``val_loss``.
    """
    val = result.metrics.get("val") or {}
    facts: dict[str, Any] = {"task": task, "faces": setup.pretrain_n, "identities": setup.pretrain_identities,
                             "epochs": setup.pretrain_epochs, "val_loss": val.get("loss")}
    if task == "identity":
        facts.update(accuracy=val.get("accuracy"), chance=1.0 / setup.pretrain_identities)
    elif task == "landmarks":
        train, held_out, _ = pretrain_faces(task, variant, n=setup.pretrain_n, identities=setup.pretrain_identities,
                                            seed=seed, progress=progress, **synfer_kw)
        mean = train.tensors["landmarks"].mean(0)
        mse = float(((held_out.tensors["landmarks"] - mean) ** 2).mean())
        side = setup.input_size or int(train.images.shape[-1])  # no input_size: the model saw the stored side
        facts.update(rmse_px=landmark_rmse_px(float(val.get("loss")), side),
                     mean_shape_rmse_px=landmark_rmse_px(LANDMARK_WEIGHT * mse, side))
    return facts


#: What each task is, for a page's sentence "pretrained to ...".
TASK_TEXT: dict[str, str] = {
    "identity": "tell {identities} SynFER people apart",
    "landmarks": "regress the 68 landmarks SynFER drew each face from",
    "identity+landmarks": "tell {identities} SynFER people apart and regress their 68 landmarks",
    "dlib-distill": "reproduce dlib's face-recognition descriptors",
}


def check_stand_in(setup: Any, *, chapter: str) -> None:
    """A ``ValueError`` naming ``book/profiles.yml``'s ``chapter`` entry when a Setup asks for a
    SynFER pretraining (``pretrain_task``) where it has no place: with real data, or beside
    the real ``pretrained`` weights. ``pretrain_task=None`` (no pretraining) always passes."""
    if setup.pretrain_task is None:
        return
    if not setup.synthetic or setup.pretrained:
        raise ValueError(f"pretrain_task is the SynFER profiles' stand-in for pretrained weights; with real data or "
                         f"pretrained=true set pretrain_task: null (book/profiles.yml, {chapter})")
    check_task(setup.pretrain_task, chapter=chapter)


def start_phrase(setup: Any, *, real: str, prefix: str = "", stand_in: str = "ImageNet") -> str:
    """Where a chapter's rows start, for a banner's model scale: ``real`` (the ``pretrained``
    weights), ``"from scratch"`` (``pretrain_task=None``), or ``prefix`` + ``"pretrained on
    SynFER to <task>, the stand-in for <stand_in>"``."""
    if setup.pretrained:
        return real
    if setup.pretrain_task is None:
        return "from scratch"
    task = TASK_TEXT[setup.pretrain_task].format(identities=setup.pretrain_identities)
    return f"{prefix}pretrained on SynFER to {task}, the stand-in for {stand_in}"


def start_run(setup: Any, pretrain_fn: Callable[..., RunResult], *, progress: bool = True) -> str | None:
    """The run a chapter's rows start from, as ``build_model``'s ``trunk_run``: the folder
    name of ``pretrain_fn(setup)`` (the chapter's cached :func:`backbone_pretrain`), or
    ``None`` when ``setup.pretrain_task`` is ``None``."""
    return pretrain_fn(setup, progress=progress).path.name if setup.pretrain_task is not None else None


#: The faces every chapter's backbone pretraining (:func:`backbone_pretrain`) draws.
BACKBONE_VARIANT = "wild"


def backbone_name(setup: Any) -> str:
    """The run name of ``setup``'s chapter's :func:`backbone_pretrain`."""
    return f"{setup.chapter}-{setup.profile}-trunk-pretrain"


def backbone_pretrain(setup: Any, build: Callable[..., nn.Module], *, seed: int, lr: float, image_size: int,
                      progress: bool = True) -> RunResult:
    """A chapter's SynFER stand-in for ImageNet: ``build`` (its backbone with a head of any
    width) pretrained on ``setup.pretrain_task`` (:func:`pretrain`) from ``pretrain_n``
    SynFER :data:`BACKBONE_VARIANT` faces at ``image_size`` (every expression, a seed no
    expression set uses), with Adam at ``lr``; cached as one run (:func:`backbone_name`)
    that every row of the chapter starts from."""
    if setup.pretrain_task is None:
        raise ValueError(f"this {setup.chapter} setup starts from random weights (pretrain_task=None): there is "
                         f"no pretraining")
    result, _ = pretrain(setup, backbone_name(setup), build, task=setup.pretrain_task, variant=BACKBONE_VARIANT,
                         seed=seed, lr=lr, progress=progress, image_size=image_size)
    return result


def backbone_facts(setup: Any, result: RunResult, *, seed: int, image_size: int) -> dict[str, Any]:
    """:func:`pretrain_facts` of a :func:`backbone_pretrain` run (same ``seed`` and ``image_size``)."""
    return pretrain_facts(setup, result, task=setup.pretrain_task, variant=BACKBONE_VARIANT, seed=seed,
                          image_size=image_size)


def start_text(setup: Any, facts: Mapping[str, Any] | None, *, what: str, network: str, real: str,
               stand_in: str = "ImageNet") -> str:
    """Where a chapter's rows start, as a page sentence: ``real`` (the ``paper`` profile's
    ``pretrained`` weights), random weights (``pretrain_task=None``), or ``what`` (e.g.
    ``"Both trunks of every row"``) from one ``network`` pretrained on SynFER, with the
    held-out score of its :func:`backbone_facts` ``facts`` and what it stands in for."""
    if setup.pretrained:
        return real
    if setup.pretrain_task is None:
        return "Every row starts from random weights (no pretraining in this profile)."
    if facts is None:
        raise ValueError("pass the facts of the pretraining run this setup's rows start from")
    text = facts_text(facts)
    return (f"{what} start from one {network} pretrained on SynFER {BACKBONE_VARIANT} faces {text['task']}, which "
            f"reached {text['score']} on held-out faces ({text['baseline']}). It stands in for the paper's "
            f"{stand_in} weights, with a face task that SynFER labels exactly in place of {stand_in}'s.")


def facts_text(facts: Mapping[str, Any]) -> dict[str, str]:
    """Page strings of :func:`pretrain_facts`: ``task`` (what it learned, on how many faces,
    how long), ``score`` (its held-out score) and ``baseline`` (what knowing nothing scores)."""
    task = TASK_TEXT[facts["task"]].format(identities=facts["identities"])
    out = {"task": f"to {task} ({facts['faces']:,} faces, {facts['epochs']} epochs)"}
    if facts.get("rmse_px") is not None:
        out["score"] = f"a landmark error of {facts['rmse_px']:.2f} px (root mean square)"
        out["baseline"] = f"{facts['mean_shape_rmse_px']:.2f} px for the mean face shape"
    elif facts.get("accuracy") is not None:
        out["score"] = f"{100 * facts['accuracy']:.1f}% identification accuracy"
        out["baseline"] = f"{100 * facts['chance']:.1f}% by chance"
    else:
        out["score"] = f"validation loss {facts['val_loss']:.3f}"
        out["baseline"] = "no reference score"
    return out
