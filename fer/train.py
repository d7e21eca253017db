"""Training and evaluation: one loop for every chapter.

:func:`fit` trains a model on a dataset of item dicts (``image`` uint8 3 x H x W,
``label`` int, anything else the loss needs) and :func:`evaluate` scores it. The
loop runs on `HF Accelerate <https://huggingface.co/docs/accelerate>`_, so the
same code trains on a CPU, one GPU, or several GPUs / nodes under
``accelerate launch``; on a GPU it uses bf16 autocast, and channels-last memory everywhere.

What the papers need, and where it lives:

* optimisers and schedules (SGD with momentum and weight decay, step decay by 0.1
  every N epochs or iterations; Adam): :class:`TrainConfig`, :func:`build_optimizer`,
  :func:`lr_factor`;
* staged fine-tuning (freeze a backbone, then unfreeze its last layers one at a time
  with the learning rate divided by 10, as the VGG16 + CBAM paper does; two-stage
  training that switches the loss or the trained sub-module): :class:`Stage`,
  :func:`unfreeze_stages`, :func:`apply_stage`;
* class-weighted losses, equation (5) of the VGG16 + CBAM paper:
  :func:`class_weights_inverse`;
* a data pipeline that is not the bottleneck: datasets are decoded once
  (:func:`fer.data.cached.cache_dataset`) and turned into model input on the device
  (:class:`fer.data.transforms.InputTransform`: float, resize, flip, shift, normalise);
* results that survive a crash: with ``run_dir`` set, :func:`fit` writes
  ``history.jsonl`` and ``checkpoint.pt`` atomically (:mod:`fer.io`) after every epoch and
  resumes from the checkpoint; on CPU a resumed run ends bit-identical to an
  uninterrupted one. :mod:`fer.runs` builds the run cache on top;
* the papers' metrics (accuracy, mean class accuracy, confusion matrix):
  :func:`fer.metrics.evaluation_metrics`, the one implementation.

Model outputs may be a tensor, a dict or a dataclass: ``output_to_logits`` picks the
class scores (:func:`default_output_to_logits`) and a loss function receives
``(outputs, batch)``, so multi-output models and losses that need landmarks or masks
fit the same loop.

Example::

    from fer.data.cached import cache_dataset
    from fer.train import TrainConfig, evaluate, fit
    cfg = TrainConfig(epochs=20, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
                      schedule="step", step_size=4, gamma=0.1, hflip=True, class_weights="inverse")
    history = fit(model, cache_dataset(train_ds), cache_dataset(val_ds), cfg, run_dir="runs/demo")
    result = evaluate(model, test_ds, cfg)   # accuracy, mean_class_accuracy, confusion, ...
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ._dry_run import BATCH as DRY_BATCH
from ._dry_run import EVAL_BATCHES as DRY_EVAL_BATCHES
from ._dry_run import STEPS as DRY_STEPS
from ._dry_run import dry_run
from ._progress import bar_disabled
from .data.cached import as_item, bar_kwargs, derive_seed, make_loader
from .data.transforms import PAD_MODES, InputTransform
from .io import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    HISTORY_FILE,
    CheckpointError,
    atomic_write_text,
    clean_temp_files,
    get_rng_state,
    jsonable,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .losses import inverse_frequency_weights as class_weights_inverse  # equation (5), kept here for callers
from .metrics import evaluation_metrics

__all__ = [
    "dry_run_config",
    # configuration
    "Stage",
    "TrainConfig",
    "unfreeze_stages",
    # training and evaluation
    "fit",
    "evaluate",
    "History",
    "metrics_summary",
    # losses and outputs
    "class_weights_inverse",
    "count_labels",
    "default_output_to_logits",
    "logits_loss",
    "LossFn",
    "OutputToLogits",
    "ForwardFn",
    # pieces of the loop
    "seed_everything",
    "apply_stage",
    "frozen_modules",
    "select_parameters",
    "build_optimizer",
    "lr_factor",
    "make_accelerator",
    "use_cpu",
    "use_bf16",
]

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine")
SCHEDULE_UNITS = ("epoch", "iteration")
PRECISIONS = ("auto", "bf16", "fp32")

#: A loss on a whole batch: ``loss_fn(outputs, batch) -> scalar tensor``. ``batch`` is
#: the collated item dict on the device, with ``image`` already normalised.
LossFn = Callable[[Any, Mapping[str, Any]], torch.Tensor]
#: ``output_to_logits(outputs) -> (B, K) tensor`` or ``None`` (no class scores).
OutputToLogits = Callable[[Any], "torch.Tensor | None"]
#: ``forward_fn(module, batch) -> outputs``; default ``module(batch["image"])``.
ForwardFn = Callable[[nn.Module, Mapping[str, Any]], Any]


# =========================================================================== configuration


@dataclass
class Stage:
    """One stage of a staged schedule: what is trained, at which learning rate, on which loss.

    Args:
        epochs: epochs in this stage.
        trainable: parameter-name patterns that are trained in this stage (all others
            are frozen); ``None`` trains every parameter. A pattern matches a parameter
            whose full name (as in ``model.named_parameters()``) equals it, starts with
            ``pattern + "."``, or matches it as a glob (``"features.2[4-8].*"``).
        frozen: patterns frozen even when ``trainable`` matches them.
        lr: this stage's learning rate; ``None``: ``TrainConfig.lr * lr_scale``.
        lr_scale: multiplies ``TrainConfig.lr`` when ``lr`` is ``None`` (0.1, 0.01, ...
            for the VGG16 + CBAM paper's "divided by 10 each time").
        loss: key into the ``losses`` mapping given to :func:`fit`; ``None``: the
            default loss (``loss_fn`` or cross-entropy).
        module: dotted name of the sub-module whose forward is trained and evaluated in
            this stage (``"mcn"``); ``None``: the whole model. Parameters outside it
            receive no gradient.
        name: a label for progress bars and the history.

    Each stage starts a fresh optimizer (as Keras does when a model is recompiled for
    fine-tuning) and restarts the learning-rate schedule.
    """

    epochs: int
    trainable: list[str] | None = None
    frozen: list[str] = field(default_factory=list)
    lr: float | None = None
    lr_scale: float = 1.0
    loss: str | None = None
    module: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise ValueError(f"Stage.epochs must be >= 1, got {self.epochs}")
        self.epochs = int(self.epochs)
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]
        if self.trainable is not None:
            self.trainable = list(self.trainable)
        self.frozen = [self.frozen] if isinstance(self.frozen, str) else list(self.frozen)


@dataclass
class TrainConfig:
    """Everything that determines a training run (JSON-serialisable, hashed by :mod:`fer.runs`).

    Length and batches:
        epochs: total epochs; with ``stages`` it defaults to (and must equal) their sum;
            without, to 10.
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size (default: ``2 * batch_size``).
        drop_last: drop the last incomplete training batch.

    Optimiser (:func:`build_optimizer`):
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr, momentum, nesterov, weight_decay, betas, eps: the usual meanings
            (``momentum``/``nesterov`` for SGD, ``betas``/``eps`` for Adam). Weight
            decay applies to every trained parameter, as in Caffe and Keras.

    Schedule (:func:`lr_factor`, restarted in each stage):
        schedule: ``"constant"``, ``"step"`` (x ``gamma`` every ``step_size``),
            ``"multistep"`` (x ``gamma`` at each of ``milestones``) or ``"cosine"``
            (to ``min_lr``).
        schedule_unit: ``"epoch"`` or ``"iteration"`` (optimizer steps): MANet decays
            every 5K iterations, MAPNet every 4 epochs.

    Stages:
        stages: a list of :class:`Stage` (or dicts); empty: one stage training everything.
        frozen_eval: sub-modules whose parameters are all frozen run in eval mode
            (batch-norm statistics stay fixed, dropout inside them is off): a frozen
            backbone is a fixed feature extractor (:func:`frozen_modules`).

    Loss:
        class_weights: ``None``, a list of per-class weights, or ``"inverse"``: equation
            (5) from the training labels (:func:`class_weights_inverse`). Used by the
            default cross-entropy; an error when a ``loss_fn`` is also given.
        class_weight_mean: how the weighted cross-entropy averages a batch: ``"batch"``
            (default) divides the weighted sum by the batch size, as Keras's
            ``class_weight`` does (the VGG16 + CBAM paper trained with it);
            ``"weights"`` divides by the sum of the batch's weights, as
            ``nn.CrossEntropyLoss(weight=...)`` does (:class:`fer.losses.ClassWeightedCrossEntropy`).
        label_smoothing: for the default cross-entropy.
        grad_clip: max gradient norm; ``None`` (default): no clipping.

    Input (:class:`InputTransform`, on the device):
        mean, std: normalisation of images scaled to [0, 1].
        grayscale: average the channels into one (for ``in_chans=1`` models).
        input_size: resize images (bilinear, antialiased when shrinking) to
            ``input_size x input_size`` on the device before augmenting, as the VGG16 +
            CBAM paper rescales FER2013's 48 px faces to 224 px; ``None``: as stored. The
            uint8 cache keeps the stored size, so memory does not grow with it.
        hflip: random horizontal flips in training.
        shift: random translation by up to ``shift`` pixels (pad by ``shift``, random
            crop back to size), padding with ``pad_mode``.
        augment_keys: other batch keys holding maps aligned with the image (B x H x W or
            B x C x H x W, e.g. ``"relevance"``) that get the same flip and shift.

    Run:
        seed: seeds everything (:func:`seed_everything`); data order and augmentation
            use generators derived from it and the epoch.
        deterministic: also ask torch for deterministic kernels (slower on GPU).
        precision: ``"auto"`` (bf16 autocast on a GPU that supports it, fp32 otherwise),
            ``"bf16"`` or ``"fp32"``.
        channels_last: ``None``: yes (on the CPU as on a GPU: oneDNN's convolutions are
            faster channels-last); ``False``: contiguous NCHW.
        cpu: train on the CPU even when a GPU is present.
        num_workers: ``DataLoader`` workers (not needed for a :class:`CachedDataset`).
        eval_every: evaluate on the validation set every N epochs (and at each stage's end).
        checkpoint_every: write ``checkpoint.pt`` every N epochs (and at the end).
        find_unused_parameters: passed to ``DistributedDataParallel`` (multi-GPU only).
    """

    epochs: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    drop_last: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    schedule_unit: str = "epoch"
    step_size: int = 30
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    min_lr: float = 0.0
    stages: list[Stage] = field(default_factory=list)
    frozen_eval: bool = True
    class_weights: list[float] | str | None = None
    class_weight_mean: str = "batch"
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    grayscale: bool = False
    input_size: int | None = None
    hflip: bool = False
    shift: int = 0
    pad_mode: str = "constant"
    augment_keys: list[str] = field(default_factory=list)
    seed: int = 0
    deterministic: bool = False
    precision: str = "auto"
    channels_last: bool | None = None
    cpu: bool = False
    num_workers: int = 0
    eval_every: int = 1
    checkpoint_every: int = 1
    find_unused_parameters: bool = False

    #: Fields that change how a run executes but not its results; left out of hashes
    #: and of the resume check.
    RUNTIME_FIELDS = ("num_workers", "checkpoint_every", "eval_batch_size")

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, Stage) else Stage(**dict(s)) for s in self.stages]
        if self.stages:
            total = sum(s.epochs for s in self.stages)
            if self.epochs is None:
                self.epochs = total
            elif int(self.epochs) != total:
                raise ValueError(f"TrainConfig.epochs={self.epochs} but the stages add up to {total} epochs; "
                                 f"set epochs={total} or leave it out")
        elif self.epochs is None:
            self.epochs = 10
        self.epochs = int(self.epochs)
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("schedule_unit", self.schedule_unit, SCHEDULE_UNITS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("pad_mode", self.pad_mode, PAD_MODES)
        _check_choice("class_weight_mean", self.class_weight_mean, ("batch", "weights"))
        for name in ("batch_size", "eval_every", "checkpoint_every", "step_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.shift < 0:
            raise ValueError(f"TrainConfig.shift must be >= 0 pixels, got {self.shift}")
        if self.input_size is not None:
            if int(self.input_size) < 1:
                raise ValueError(f"TrainConfig.input_size must be None or >= 1 pixels, got {self.input_size}")
            self.input_size = int(self.input_size)
        if isinstance(self.class_weights, str) and self.class_weights != "inverse":
            raise ValueError(f"TrainConfig.class_weights must be None, a list of floats or 'inverse', "
                             f"got {self.class_weights!r}")
        if self.class_weights is not None and not isinstance(self.class_weights, str):
            self.class_weights = [float(w) for w in self.class_weights]
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"TrainConfig.mean and std differ in length: {self.mean} vs {self.std}")
        self.milestones = [int(m) for m in self.milestones]
        self.augment_keys = list(self.augment_keys)

    # ------------------------------------------------------------------ stages
    def resolved_stages(self) -> list[Stage]:
        """``stages``, or one stage training everything for ``epochs``."""
        return list(self.stages) if self.stages else [Stage(epochs=self.epochs)]

    def stage_lr(self, stage: Stage) -> float:
        """The base learning rate of ``stage``."""
        return float(stage.lr) if stage.lr is not None else float(self.lr) * float(stage.lr_scale)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self, *, runtime: bool = True) -> dict[str, Any]:
        """Plain JSON types; ``runtime=False`` drops :attr:`RUNTIME_FIELDS`."""
        d = jsonable(dataclasses.asdict(self))
        if not runtime:
            for k in self.RUNTIME_FIELDS:
                d.pop(k, None)
        return d

    def to_json(self, *, runtime: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(runtime=runtime), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (listing the valid ones)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``dataclasses.replace``, validated again)."""
        return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"TrainConfig.{name} must be one of {choices}, got {value!r}")


def unfreeze_stages(*, head: Sequence[str], layers: Sequence[str], epochs: int | Sequence[int],
                    lr_factor: float = 0.1, frozen: Sequence[str] = (), module: str | None = None) -> list[Stage]:
    """Staged fine-tuning: train ``head``, then unfreeze ``layers`` one at a time.

    Stage 0 trains the parameters matching ``head`` at ``TrainConfig.lr``; stage ``k``
    also trains ``layers[:k]`` at ``lr * lr_factor ** k``. List ``layers`` from the
    last towards the first, e.g. the VGG16 + CBAM paper's "the last 3 layers of the
    VGG16 convolutional base were fine-tuned ... the learning rate was reduced by factor
    of 10 in each": ``head=["cbam", "head"], layers=["features.28", "features.26",
    "features.24"]`` gives four stages at 1e-3, 1e-4, 1e-5, 1e-6.

    Args:
        head: patterns trained in every stage (attention, classifier).
        layers: patterns of the layers to unfreeze, one more per stage.
        epochs: epochs per stage: one number for all, or one per stage (``len(layers) + 1``).
        lr_factor: learning-rate multiplier per unfreezing step.
        frozen: patterns kept frozen in every stage.
        module: the trained sub-module (see :class:`Stage`).
    """
    n = len(layers) + 1
    per_stage = [int(epochs)] * n if isinstance(epochs, int) else [int(e) for e in epochs]
    if len(per_stage) != n:
        raise ValueError(f"unfreeze_stages: {len(per_stage)} epoch counts for {n} stages "
                         f"(the head stage plus one per layer)")
    return [Stage(epochs=per_stage[k], trainable=list(head) + list(layers[:k]), frozen=list(frozen),
                  lr_scale=lr_factor ** k, module=module, name="head" if k == 0 else f"unfreeze-{k}")
            for k in range(n)]


# =========================================================================== seeding, class weights


def seed_everything(seed: int, *, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (all devices); optionally ask for deterministic kernels.

    Returns ``seed``. ``deterministic=True`` sets ``torch.use_deterministic_algorithms``
    (warn-only) and disables the cuDNN autotuner; CPU training is deterministic without it.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return seed


def _labels_of(ds: Any) -> np.ndarray:
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return np.asarray(targets() if callable(targets) else targets, dtype=np.int64)
    if isinstance(ds, torch.utils.data.Subset):
        return _labels_of(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    return np.asarray([as_item(ds[i])["label"] for i in range(len(ds))], dtype=np.int64)


def count_labels(ds: Dataset, num_classes: int | None = None) -> torch.Tensor:
    """Samples per class in ``ds`` (from ``ds.targets`` when it has them, else by reading items).

    ``num_classes`` defaults to ``len(ds.classes)`` or the largest label + 1.
    """
    labels = _labels_of(ds)
    if num_classes is None:
        classes = getattr(ds, "classes", None)
        num_classes = len(classes) if classes is not None else int(labels.max()) + 1 if len(labels) else 0
    return torch.as_tensor(np.bincount(labels, minlength=num_classes), dtype=torch.int64)


# =========================================================================== model outputs, losses


def default_output_to_logits(outputs: Any) -> torch.Tensor | None:
    """Class scores from a model's output.

    A tensor is returned as is; a mapping or dataclass gives its ``logits`` entry or
    attribute; a tuple or list its first element. Anything else is an error asking for
    an ``output_to_logits`` function.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(f"cannot find class scores in a model output of type {type(outputs).__name__}: return a "
                    f"tensor, or a dict / dataclass with 'logits', or pass output_to_logits=...")


def logits_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                output_to_logits: OutputToLogits = default_output_to_logits) -> LossFn:
    """Adapt a ``loss(logits, target)`` (e.g. ``nn.CrossEntropyLoss``) to ``loss(outputs, batch)``."""

    def batch_loss(outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        return loss(output_to_logits(outputs), batch["label"])

    batch_loss.wrapped = loss  # type: ignore[attr-defined]
    return batch_loss


def _as_batch_loss(loss: Any, output_to_logits: OutputToLogits) -> LossFn:
    """``loss(outputs, batch)``; instances of torch's loss classes are adapted automatically."""
    if isinstance(loss, nn.modules.loss._Loss):
        return logits_loss(loss, output_to_logits=output_to_logits)
    if not callable(loss):
        raise TypeError(f"a loss must be callable as loss(outputs, batch), got {type(loss).__name__}")
    return loss


def _default_forward(module: nn.Module, batch: Mapping[str, Any]) -> Any:
    return module(batch["image"])


# =========================================================================== parameters and stages


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatchcase(name, p) for p in patterns)


def select_parameters(model: nn.Module, patterns: Sequence[str] | None, exclude: Sequence[str] = ()
                      ) -> list[str]:
    """Names of the parameters matching ``patterns`` (all if ``None``) and none of ``exclude``.

    A pattern that matches nothing is an error listing some parameter names: a typo
    must not silently freeze a whole model.
    """
    names = [n for n, _ in model.named_parameters()]
    for p in list(patterns or []) + list(exclude):
        if not any(_matches(n, [p]) for n in names):
            raise ValueError(f"parameter pattern {p!r} matches no parameter of {type(model).__name__}; "
                             f"names look like {names[:4] + (['...'] + names[-3:] if len(names) > 4 else [])}")
    return [n for n in names if (patterns is None or _matches(n, patterns)) and not _matches(n, exclude)]


def apply_stage(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``stage`` and return its trainable parameters (model order).

    Parameters outside ``stage.module`` are frozen too: they get no gradient in this stage.
    """
    root = stage.module
    if root is not None:
        model.get_submodule(root)  # a clear AttributeError for a wrong name
    names = set(select_parameters(model, stage.trainable, stage.frozen))
    params = []
    for n, p in model.named_parameters():
        on = n in names and (root is None or n.startswith(root + "."))
        p.requires_grad_(on)
        if on:
            params.append(p)
    if not params:
        raise ValueError(f"stage {stage.name or stage} trains no parameter: check trainable/frozen/module")
    return params


def frozen_modules(model: nn.Module) -> list[str]:
    """Names of the outermost sub-modules whose parameters are all frozen (and that have some).

    :func:`fit` runs them in eval mode (``TrainConfig.frozen_eval``): a frozen backbone
    keeps its batch-norm statistics and its dropout is off, as a fixed feature extractor.
    """
    out: list[str] = []

    def visit(prefix: str, m: nn.Module) -> None:
        ps = list(m.parameters())
        if ps and not any(p.requires_grad for p in ps):
            out.append(prefix)
            return
        for name, child in m.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    for name, child in model.named_children():
        visit(name, child)
    return out


# =========================================================================== optimiser, schedule


def _fused(params: list[Any]) -> dict[str, bool]:
    """``{"fused": True}`` when torch's fused optimizer step can take every parameter
    (floating point, on the CPU or a CUDA GPU), else ``{}`` (the default for-each step)."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    ok = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return {"fused": True} if ok else {}


def build_optimizer(params: Iterable[nn.Parameter], config: TrainConfig, *, lr: float | None = None
                    ) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over ``params`` (at ``lr``, default ``config.lr``).

    .. note:: The step is torch's fused one (``fused=True``) wherever it can run: the same
       update rule in one kernel over all parameters, about 4.5x faster than the default
       per-parameter step on the CPU (Adam on MAPNet's two ResNet-10s at width 1/4, one
       core: 8.1 -> 1.8 ms a step; SGD 3.4 -> 0.75 ms). Its float rounding differs from the
       default step's in the last bits, so a run trained with it differs from one trained
       with the default step as a run with another seed would (``tests/test_train.py``
       checks the two steps agree to rounding over a few updates).
    """
    params = list(params)
    lr = float(config.lr if lr is None else lr)
    fused = _fused(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay,
                                **fused)
    return torch.optim.AdamW(params, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay,
                             **fused)


def lr_factor(config: TrainConfig, *, epoch: int, iteration: int, epochs: int, iterations_per_epoch: int) -> float:
    """The schedule's multiplier of the stage's learning rate.

    ``epoch`` and ``iteration`` count from the start of the stage (0-based); ``epochs``
    is the stage's length. The schedule is a pure function of the position, so a
    resumed run continues it exactly.
    """
    if config.schedule == "constant":
        return 1.0
    by_iter = config.schedule_unit == "iteration"
    t = iteration if by_iter else epoch
    if config.schedule == "step":
        return config.gamma ** (t // config.step_size)
    if config.schedule == "multistep":
        return config.gamma ** sum(t >= m for m in config.milestones)
    total = max(epochs * iterations_per_epoch if by_iter else epochs, 1)
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def make_accelerator(config: TrainConfig | None = None) -> Any:
    """An ``accelerate.Accelerator`` for ``config``.

    Mixed precision is handled by :func:`fit` itself (bf16 autocast, no loss scaling),
    and the learning rate is set by the loop, so the accelerator is created without
    either; it places the model and batches, wraps the model in DDP under
    ``accelerate launch``, shards the data and gathers evaluation results.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    config = config or TrainConfig()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)
    return Accelerator(cpu=use_cpu(config), kwargs_handlers=[ddp], step_scheduler_with_optimizer=False)


def use_cpu(config: TrainConfig) -> bool:
    """``config.cpu``, or several launched processes (``WORLD_SIZE`` > 1) and no GPU: CPU DDP over gloo."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return bool(config.cpu) or (launched and not torch.cuda.is_available())


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether :func:`fit` / :func:`evaluate` run ``config`` under bf16 autocast on ``device``."""
    if device.type != "cuda" or config.precision == "fp32":
        return False
    if config.precision == "bf16":
        return True
    return torch.cuda.is_bf16_supported()


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# =========================================================================== history


@dataclass
class History:
    """Per-epoch records of a :func:`fit` (one dict per epoch, as in ``history.jsonl``).

    Each record has ``epoch`` (1-based, over all stages), ``stage``, ``stage_name``,
    ``lr``, ``step`` (optimizer steps so far), ``train_loss``, ``train_accuracy``,
    ``val_loss``, ``val_accuracy``, ``val_mean_class_accuracy`` (``None`` when not
    evaluated that epoch) and ``seconds``. ``final_eval`` is the full
    :func:`evaluate` result of the last validation pass of this process (not stored).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, key: int | str) -> Any:
        """``history[i]``: the i-th record; ``history["val_accuracy"]``: that column as a list."""
        if isinstance(key, str):
            return [r.get(key) for r in self.records]
        return self.records[key]

    @property
    def last(self) -> dict[str, Any]:
        if not self.records:
            raise IndexError("the history is empty")
        return self.records[-1]

    def best(self, key: str = "val_accuracy", mode: str = "max") -> dict[str, Any] | None:
        """The record with the best ``key`` (``None`` if no epoch has it)."""
        rows = [r for r in self.records if r.get(key) is not None]
        if not rows:
            return None
        return (max if mode == "max" else min)(rows, key=lambda r: r[key])

    def to_frame(self):  # -> pandas.DataFrame
        """The records as a pandas DataFrame indexed by epoch."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records).set_index("epoch") if self.records else pd.DataFrame()

    def to_jsonl(self) -> str:
        return "".join(json.dumps(jsonable(r), sort_keys=True) + "\n" for r in self.records)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> History:
        path = Path(path)
        records = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i} is not JSON ({err}); delete the run folder to retrain") from err
        return cls(records)


# =========================================================================== evaluation


def metrics_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of an :func:`evaluate` result (no per-sample tensors)."""
    skip = {"predictions", "targets", "logits"}
    return jsonable({k: v for k, v in result.items() if k not in skip})


@torch.no_grad()
def _run_eval(module: nn.Module, loader: Any, *, transform: InputTransform, loss_fn: LossFn | None,
              output_to_logits: OutputToLogits, forward_fn: ForwardFn, accelerator: Any, bf16: bool,
              progress: bool, desc: str, max_batches: int | None = None) -> dict[str, Any]:
    was_training = module.training
    module.eval()
    device = accelerator.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    all_logits, all_targets = [], []
    bar = tqdm(loader, desc=desc, leave=False, disable=bar_disabled(progress) or not accelerator.is_local_main_process,
               **bar_kwargs())
    for i, batch in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            break
        batch = transform(batch, train=False)
        with _autocast(device, bf16):
            outputs = forward_fn(module, batch)
            loss = loss_fn(outputs, batch) if loss_fn is not None else None
        n = len(batch["image"])
        if loss is not None:
            loss_sum += loss.detach().double() * n
            count += n
        logits = output_to_logits(outputs)
        if logits is not None:
            logits, targets = accelerator.gather_for_metrics((logits.float(), batch["label"]))
            all_logits.append(logits.cpu())
            all_targets.append(targets.cpu())
    bar.close()
    module.train(was_training)
    loss_sum, count = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(count, "sum")
    result: dict[str, Any] = {"loss": float(loss_sum / count) if count > 0 else None}
    if all_logits:
        logits, targets = torch.cat(all_logits), torch.cat(all_targets).long()
        result.update(evaluation_metrics(logits, targets))
        result.update(targets=targets, logits=logits, num_samples=len(targets))
    else:
        result.update(accuracy=None, mean_class_accuracy=None, per_class_accuracy=None, confusion=None,
                      predictions=None, targets=None, logits=None, num_samples=None)
    return result


def evaluate(model: nn.Module, ds: Dataset, config: TrainConfig | None = None, *,
             loss_fn: LossFn | nn.Module | None = None,
             output_to_logits: OutputToLogits = default_output_to_logits,
             forward_fn: ForwardFn | None = None, module: str | None = None, batch_size: int | None = None,
             accelerator: Any = None, progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    """Score ``model`` on ``ds``.

    Args:
        model: the model (moved to the accelerator's device).
        ds: a dataset of item dicts (or a :class:`CachedDataset`).
        config: normalisation, precision, batch size and workers (default :class:`TrainConfig`).
        loss_fn: ``loss(outputs, batch)`` or a torch loss class instance; default:
            unweighted cross-entropy on the logits.
        output_to_logits: picks the class scores from the model's output.
        forward_fn: ``forward_fn(module, batch)``; default ``module(batch["image"])``.
        module: dotted name of a sub-module to evaluate instead of the whole model.
        batch_size: default ``config.eval_batch_size`` or ``2 * config.batch_size``.

    Returns:
        ``loss``, ``accuracy``, ``mean_class_accuracy`` (mean of per-class recalls over
        the classes present), ``per_class_accuracy`` (list, ``None`` for absent
        classes), ``confusion`` (K x K int64 tensor, rows = true class),
        ``predictions``, ``targets`` (int64 tensors), ``logits`` (float32 N x K) and
        ``num_samples``. Metrics are ``None`` when the output has no class scores.
    """
    config = config or TrainConfig()
    dry = dry_run()
    if dry:
        config, batch_size = dry_run_config(config), DRY_BATCH
    acc = accelerator or make_accelerator(config)
    device = acc.device
    model.to(device)
    channels_last = _channels_last(config, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    target = model.get_submodule(module) if module else model
    if loss_fn is None:
        loss_fn = nn.CrossEntropyLoss()
    loss = _as_batch_loss(loss_fn, output_to_logits)
    loader = acc.prepare(make_loader(ds, batch_size=batch_size or config.eval_batch_size or 2 * config.batch_size,
                                      shuffle=False, seed=config.seed, num_workers=config.num_workers,
                                      drop_last=False, pin_memory=device.type == "cuda"))
    try:
        return _run_eval(target, loader, transform=InputTransform.from_config(config, channels_last=channels_last),
                         loss_fn=loss, output_to_logits=output_to_logits, forward_fn=forward_fn or _default_forward,
                         accelerator=acc, bf16=use_bf16(config, device), progress=progress, desc=desc,
                         max_batches=DRY_EVAL_BATCHES if dry else None)
    finally:
        if accelerator is None:
            acc.free_memory()


# =========================================================================== training


def dry_run_config(config: TrainConfig) -> TrainConfig:
    """``config`` as a dry run trains it: every stage kept, one epoch each, batches of at most
    :data:`fer._dry_run.BATCH` (:func:`fit` stops each stage after :data:`~fer._dry_run.STEPS` steps)."""
    stages = [dataclasses.replace(s, epochs=1) for s in config.stages]
    return config.replace(stages=stages, epochs=len(stages) or 1, batch_size=min(config.batch_size, DRY_BATCH),
                          eval_batch_size=DRY_BATCH, eval_every=1, checkpoint_every=1, drop_last=False)


def _channels_last(config: TrainConfig, device: torch.device) -> bool:
    # On the CPU too: oneDNN's convolutions run channels-last 1.2-2x faster (a VGG16 at width 1/8
    # and 64 px: 188 -> 85 ms per training batch of 64 on 2 cores; benchmarks/bench_train.py's fer
    # path against its plain NCHW loop).
    return True if config.channels_last is None else bool(config.channels_last)


@dataclass
class _Position:
    epoch: int = 0  # completed epochs, over all stages
    step: int = 0  # optimizer steps, over all stages
    records: list[dict[str, Any]] = field(default_factory=list)


def _resolve_loss(config: TrainConfig, train_ds: Dataset, loss_fn: Any, class_weights: Any,
                  output_to_logits: OutputToLogits, device: torch.device) -> tuple[LossFn, LossFn]:
    """The training loss and the evaluation loss (a given loss_fn for both; else weighted CE, plain CE)."""
    weights = class_weights if class_weights is not None else config.class_weights
    if loss_fn is not None:
        if weights is not None:
            raise ValueError("give either loss_fn or class weights (argument or TrainConfig.class_weights), not "
                             "both: build the weights into your loss")
        loss = _as_batch_loss(loss_fn, output_to_logits)
        return loss, loss
    w = None
    if isinstance(weights, str):  # "inverse"
        w = class_weights_inverse(count_labels(train_ds))
    elif weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float32)
    if w is not None:
        from .losses import ClassWeightedCrossEntropy

        ce: nn.Module = ClassWeightedCrossEntropy(w.to(device), normalize=config.class_weight_mean,
                                                  label_smoothing=config.label_smoothing)
    else:
        ce = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if w is not None:
        log.info("class weights: %s", [round(float(v), 4) for v in w])
    return logits_loss(ce, output_to_logits=output_to_logits), logits_loss(nn.CrossEntropyLoss(),
                                                                           output_to_logits=output_to_logits)


def _check_resumable(ckpt: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    saved = json.loads(ckpt["config"])
    current = config.to_dict(runtime=False)
    for k in TrainConfig.RUNTIME_FIELDS:
        saved.pop(k, None)
    if saved != current:
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise CheckpointError(f"checkpoint {path} was written by a different TrainConfig (differs in {diff}); "
                              f"delete {path} to start over, or train into another run_dir")


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None = None, config: TrainConfig | None = None, *,
        run_dir: str | os.PathLike | None = None, loss_fn: LossFn | nn.Module | None = None,
        losses: Mapping[str, LossFn | nn.Module] | None = None,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        output_to_logits: OutputToLogits = default_output_to_logits, forward_fn: ForwardFn | None = None,
        accelerator: Any = None, resume: bool = True, progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> History:
    """Train ``model`` in place on ``train_ds``; return the per-epoch :class:`History`.

    Args:
        model: any ``nn.Module``; it is moved to the device and left there, in eval mode,
            with every parameter trainable again.
        train_ds: items ``{"image": uint8 3 x H x W, "label": int, ...}`` (wrap it with
            :func:`cache_dataset` to render it once).
        val_ds: evaluated every ``config.eval_every`` epochs and at the end of each stage.
        config: a :class:`TrainConfig`.
        run_dir: when set, ``history.jsonl`` and ``checkpoint.pt`` (model, optimizer,
            schedule, RNG states, epoch, step, stage, history) are written there
            atomically every ``checkpoint_every`` epochs, and an existing checkpoint is
            resumed (``resume=True``). A finished checkpoint returns at once.
        loss_fn: ``loss(outputs, batch) -> scalar`` (``batch`` is the collated item dict
            on the device, ``image`` normalised); instances of torch's loss classes
            (``nn.CrossEntropyLoss(weight=...)``) are called as ``loss(logits, label)``.
            Default: cross-entropy weighted by ``class_weights`` / ``config.class_weights``
            (validation loss: unweighted cross-entropy, as Keras reports it, so that
            ``val_loss`` matches :func:`evaluate`'s default).
        losses: named losses that stages select with ``Stage.loss``.
        class_weights: per-class weights for the default cross-entropy.
        output_to_logits: picks the class scores from the model's output (for accuracy
            and the default loss); may return ``None`` for outputs without class scores.
        forward_fn: ``forward_fn(module, batch) -> outputs``; default ``module(batch["image"])``.
        accelerator: an ``accelerate.Accelerator`` (default :func:`make_accelerator`).
        callbacks: called with each epoch's record on the main process.

    On CPU, a run that is killed and resumed from its checkpoint ends with the same
    weights and metrics as one that never stopped. Under several processes the data
    order and schedule resume exactly; each process's dropout stream restarts from the
    main process's saved state.
    """
    config = config or TrainConfig()
    dry = dry_run()
    if dry:
        config = dry_run_config(config)
    acc = accelerator or make_accelerator(config)
    device = acc.device
    stages = config.resolved_stages()
    losses = dict(losses or {})
    for s in stages:
        if s.loss is not None and s.loss not in losses:
            raise KeyError(f"stage {s.name or stages.index(s)} uses loss {s.loss!r} but fit() got losses="
                           f"{sorted(losses)}")
    forward_fn = forward_fn or _default_forward
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_path / CHECKPOINT_FILE if run_path is not None else None
    main = acc.is_main_process

    seed_everything(config.seed + acc.process_index, deterministic=config.deterministic)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    model.to(device)
    channels_last = _channels_last(config, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    bf16 = use_bf16(config, device)
    transform = InputTransform.from_config(config, channels_last=channels_last)
    default_loss, default_eval_loss = _resolve_loss(config, train_ds, loss_fn, class_weights, output_to_logits,
                                                    device)
    stage_losses = {k: _as_batch_loss(v, output_to_logits) for k, v in losses.items()}

    pin = device.type == "cuda"
    train_loader = acc.prepare(make_loader(train_ds, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                                            num_workers=config.num_workers, drop_last=config.drop_last,
                                            pin_memory=pin))
    val_loader = None
    if val_ds is not None:
        val_loader = acc.prepare(make_loader(val_ds, batch_size=config.eval_batch_size or 2 * config.batch_size,
                                              shuffle=False, seed=config.seed, num_workers=config.num_workers,
                                              drop_last=False, pin_memory=pin))
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"no training batch: {len(train_ds)} samples with batch_size={config.batch_size} and "
                         f"drop_last={config.drop_last}")

    pos, ckpt = _Position(), None
    if run_path is not None:
        if main:
            run_path.mkdir(parents=True, exist_ok=True)
            clean_temp_files(run_path)
        if resume and ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path)
            _check_resumable(ckpt, config, ckpt_path)
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as err:
                raise CheckpointError(f"checkpoint {ckpt_path} does not fit {type(model).__name__} ({str(err)[:300]}); "
                                      f"delete {ckpt_path} to restart the run") from err
            pos = _Position(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), records=list(ckpt["history"]))
            if main:
                atomic_write_text(run_path / HISTORY_FILE, History(pos.records).to_jsonl())
            log.info("resuming %s at epoch %d/%d", run_path, pos.epoch, config.epochs)
        elif main and (run_path / HISTORY_FILE).exists():
            (run_path / HISTORY_FILE).unlink()  # a history without a checkpoint: start over

    history = History(pos.records)
    disable = bar_disabled(progress) or not acc.is_local_main_process
    outer = tqdm(total=config.epochs, initial=pos.epoch, desc="epochs", disable=disable, **bar_kwargs())
    try:
        if ckpt is not None:
            if ckpt.get("finished"):
                return history
            set_rng_state(ckpt["rng"])
        start = 0
        for si, stage in enumerate(stages):
            end = start + stage.epochs
            if pos.epoch >= end:
                start = end
                continue
            params = apply_stage(model, stage)
            frozen = [model.get_submodule(n) for n in frozen_modules(model)] if config.frozen_eval else []
            base_lr = config.stage_lr(stage)
            optimizer = build_optimizer(params, config, lr=base_lr)
            if ckpt is not None and int(ckpt["stage"]) == si and pos.epoch > start:
                optimizer.load_state_dict(ckpt["optimizer"])
            target = model.get_submodule(stage.module) if stage.module else model
            fwd, optimizer = acc.prepare(target, optimizer)
            stage_loss = stage_losses[stage.loss] if stage.loss else default_loss
            eval_loss = stage_losses[stage.loss] if stage.loss else default_eval_loss
            label = stage.name or f"stage {si + 1}/{len(stages)}"
            for epoch in range(max(pos.epoch, start), end):
                record = _train_epoch(
                    fwd, optimizer, train_loader, config=config, transform=transform, loss_fn=stage_loss,
                    output_to_logits=output_to_logits, forward_fn=forward_fn, accelerator=acc, bf16=bf16,
                    params=params, frozen=frozen, base_lr=base_lr, epoch=epoch, stage_start=start,
                    stage_epochs=stage.epochs, pos=pos, steps_per_epoch=steps_per_epoch, disable=disable,
                    desc=f"{label} epoch {epoch + 1}/{config.epochs}", max_steps=DRY_STEPS if dry else None)
                record.update(stage=si, stage_name=stage.name)
                last_of_stage = epoch + 1 == end
                val = None
                evaluate_now = (epoch + 1) % config.eval_every == 0 or last_of_stage
                if dry:  # a dry run scores once, at the end: the path is the same every time
                    evaluate_now = epoch + 1 == config.epochs
                if val_loader is not None and evaluate_now:
                    val = _run_eval(fwd, val_loader, transform=transform, loss_fn=eval_loss,
                                    output_to_logits=output_to_logits, forward_fn=forward_fn, accelerator=acc,
                                    bf16=bf16, progress=not disable, desc="val",
                                    max_batches=DRY_EVAL_BATCHES if dry else None)
                    history.final_eval = val
                record.update(val_loss=val["loss"] if val else None,
                              val_accuracy=val["accuracy"] if val else None,
                              val_mean_class_accuracy=val["mean_class_accuracy"] if val else None)
                pos.epoch = epoch + 1
                pos.records.append(record)
                finished = pos.epoch == config.epochs
                if run_path is not None and main:
                    # a dry run writes its one checkpoint at the end: full-size models make each write slow
                    if finished or (not dry and (pos.epoch % config.checkpoint_every == 0 or last_of_stage)):
                        save_checkpoint(ckpt_path, _checkpoint_state(
                            model, optimizer, config=config, pos=pos, stage=si, finished=finished,
                            schedule={"name": config.schedule, "lr": record["lr"], "base_lr": base_lr,
                                      "unit": config.schedule_unit}))
                    atomic_write_text(run_path / HISTORY_FILE, history.to_jsonl())
                outer.update(1)
                outer.set_postfix(_postfix(record), refresh=False)
                if main:
                    for cb in callbacks:
                        cb(dict(record))
            start = end
        acc.wait_for_everyone()
        return history
    finally:
        outer.close()
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(n, True))
        model.eval()
        if accelerator is None:
            acc.free_memory()


def _postfix(record: Mapping[str, Any]) -> dict[str, str]:
    out = {"loss": record.get("train_loss"), "acc": record.get("train_accuracy"),
           "val_acc": record.get("val_accuracy")}
    return {k: f"{v:.3f}" for k, v in out.items() if v is not None}


def _checkpoint_state(model: nn.Module, optimizer: Any, *, config: TrainConfig, pos: _Position, stage: int,
                      finished: bool, schedule: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": dict(schedule),
        "rng": get_rng_state(),
        "epoch": pos.epoch,
        "step": pos.step,
        "stage": stage,
        "finished": finished,
        "history": jsonable(pos.records),
        "config": config.to_json(),
        "torch": str(torch.__version__),
    }


def _train_epoch(fwd: nn.Module, optimizer: Any, loader: Any, *, config: TrainConfig, transform: InputTransform,
                 loss_fn: LossFn, output_to_logits: OutputToLogits, forward_fn: ForwardFn, accelerator: Any,
                 bf16: bool, params: list[nn.Parameter], frozen: list[nn.Module], base_lr: float, epoch: int,
                 stage_start: int, stage_epochs: int, pos: _Position, steps_per_epoch: int, disable: bool,
                 desc: str, max_steps: int | None = None) -> dict[str, Any]:
    acc = accelerator
    device = acc.device
    t0 = time.perf_counter()
    fwd.train()
    for m in frozen:
        m.eval()
    loader.set_epoch(epoch)
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "augment", epoch, acc.process_index))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    scored = torch.zeros((), dtype=torch.float64, device=device)
    lr = base_lr
    bar = tqdm(loader, desc=desc, leave=False, disable=disable, **bar_kwargs())
    shown = time.monotonic()
    for i, batch in enumerate(bar):
        if max_steps is not None and i >= max_steps:
            break
        if "label" not in batch or "image" not in batch:
            raise KeyError(f"training batches need 'image' and 'label'; got {sorted(batch)}")
        it = (epoch - stage_start) * steps_per_epoch + i
        lr = base_lr * lr_factor(config, epoch=epoch - stage_start, iteration=it, epochs=stage_epochs,
                                 iterations_per_epoch=steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = transform(batch, train=True, generator=gen)
        with _autocast(device, bf16):
            outputs = forward_fn(fwd, batch)
            loss = loss_fn(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if config.grad_clip is not None:
            acc.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        pos.step += 1
        n = len(batch["label"])
        loss_sum += loss.detach().double() * n
        seen += n
        with torch.no_grad():
            logits = output_to_logits(outputs)
            if logits is not None:
                correct += (logits.argmax(1) == batch["label"]).sum().double()
                scored += n
        if not disable and time.monotonic() - shown > 0.5:
            shown = time.monotonic()
            bar.set_postfix(loss=f"{float(loss_sum / seen):.3f}",
                            acc=f"{float(correct / scored):.3f}" if scored > 0 else "-", refresh=False)
    bar.close()
    loss_sum, seen = acc.reduce(loss_sum, "sum"), acc.reduce(seen, "sum")
    correct, scored = acc.reduce(correct, "sum"), acc.reduce(scored, "sum")
    if not torch.isfinite(loss_sum):
        raise FloatingPointError(f"{desc}: the training loss is {float(loss_sum)} (lr={lr:g}); lower the learning "
                                 f"rate or set TrainConfig.grad_clip")
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "step": pos.step,
        "train_loss": float(loss_sum / seen),
        "train_accuracy": float(correct / scored) if scored > 0 else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
