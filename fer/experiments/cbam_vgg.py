"""The VGG16 + CBAM chapter (``book/cbam_vgg/``): protocol, data and runs.

Paper: A. Ghimire, S. Shrestha and Y. Ibrahim, *Facial Expression Recognition Using
Attention Technique*, 2020. The models are in :mod:`fer.models.cbam_vgg`; this module
holds what the chapter's notebooks share:

* the paper's reported numbers as data: :data:`FIGURE7` (validation and test accuracy
  of every convolutional base), :data:`FIGURE6` (FER2013 class counts),
  :data:`CBAM_PARAMS_CLAIM`, :data:`KAGGLE_TOP`;
* :class:`Setup`, built from a notebook's parameters (profile, sizes, epochs, input
  size, width, what "pre-trained" means in that profile);
* :func:`load_data`: FER2013 from ``data_root`` in ``paper``, SynFER's ``fer2013``
  stand-in otherwise, cached once as uint8;
* :func:`train_config` and :func:`run_row`: one protocol for every row of the paper's
  Figure 7 and for the proposed model, trained through :func:`fer.runs.run` (so the
  Experiment and Results pages share one cache); :func:`run_seeds`: the central
  comparison, CBAM against row (g), over ``seeds``;
* :func:`face_pretrain` and :func:`face_facts`: the stand-in for VGG-Face in the SynFER
  profiles, and what it learned;
* explanation helpers for the Results page: :func:`explain_set`,
  :func:`gradcam_maps`, :func:`cbam_spatial_maps`, :func:`localisation_table`.

.. note::
   **The protocol** (the paper gives the optimiser and the unfreezing, not the epochs or
   the batch size). Models that start from pre-trained weights are trained in
   ``1 + unfreeze`` stages: the conv base frozen while CBAM and the classifier learn at
   ``lr`` (Adam, 1e-3 as in the paper), then the last conv layer, then the last two,
   then the last three are unfrozen, the learning rate divided by 10 at each step
   (1e-3, 1e-4, 1e-5, 1e-6). Each stage starts a fresh Adam, as recompiling a Keras
   model does. Models without pre-trained weights (the small CNN, and in the SynFER
   profiles every row that needs ImageNet weights) train all layers at ``lr`` for the
   same total number of epochs. All rows use the class weights of equation (5) and
   horizontal flips; the paper's "image generator" is not described further. The
   final weights are evaluated (no early stopping on the validation set).

.. note::
   **"Pre-trained on VGG-Face" without VGG-Face.** The SynFER profiles cannot download
   VGG-Face, and a random conv base would make "pre-trained" meaningless. So the
   ``smoke`` and ``demo`` profiles pretrain the same VGG16 on a face task SynFER labels
   exactly (:func:`face_pretrain`, on faces and seeds the expression data never uses),
   and that conv base is what "pre-trained on VGG-Face" loads. The task is
   ``pretrain_task``: ``"landmarks"`` (regress the 68 landmarks SynFER drew each face
   from) by default, chosen by measurement over identities, identities + landmarks and
   distillation from dlib's face network (``benchmarks/bench_pretrain.py``, issue 17):
   an identity base learns to ignore expressions, and fine-tuned from it the demo's
   rows stayed at the majority-class level. The pretraining VGG16 has a batch norm after
   each conv: the plain VGG16 at the demo's width does not train from scratch in the
   demo's budget, the batch-norm one does. The ``paper`` profile loads the real
   VGG-Face weights (:func:`fer.models.load_vggface`) and torchvision's ImageNet weights.

.. note::
   **Batch norm in the SynFER profiles** (``Setup.batch_norm``, a departure the ``demo``
   profile takes and the ``paper`` profile refuses: VGG-Face has none). With it, every
   VGG16 row keeps a batch norm after each conv (torchvision's ``vgg16_bn`` layout) and
   loads the stand-in's conv base as it was trained, norms included. Without it, the
   norms are folded into the plain VGG16's convs
   (:func:`fer.experiments._common.load_conv_base`): the start computes exactly what the
   stand-in learned, but the plain network then fine-tunes badly. Measured on the demo's
   data (seed 0, row g, 12 epochs, 2026-12-03): folded, all layers at lr 1e-4 29.8 %
   test accuracy, at 3e-4 32.3 %, at 1e-3 2.2 % (diverged); with batch norm at 1e-4
   31.3 %, at 1e-3 47.3 % (the proposed model 43.2 %), against a majority class of
   20.8 %. The MANet chapter made the same choice for the same reason.

.. note::
   **Fine-tuning in the demo** (``finetune="all"``, a departure from the paper's staged
   protocol, which the ``paper`` profile keeps). Staged from the SynFER start, the head
   stage learns next to nothing: VGG16's classifier starts at N(0, 0.01) behind two
   dropouts, and in the demo's few head epochs its logits barely move, while every later
   stage has a learning rate ten times smaller. So in the demo every pre-trained row
   trains all its layers from the first step at ``finetune_lr`` for ``sum(stage_epochs)``
   epochs, with the same class weights and flips; rows from scratch train all layers at
   ``lr`` for as many epochs. The demo sets ``finetune_lr`` to ``lr``: with the batch norms
   kept (next note) a tenth of it left row (g) under the learned bar.

.. note::
   **Rows that cannot be built.** Row (c), ResNet-50 pre-trained on VGGFace2, needs
   weights that no library we depend on provides; it is listed with the paper's
   numbers only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..data import CLASSES_7
from ..data.cached import CachedDataset, cache_dataset
from ..data.synfer import SynFER
from ..data.synfer.variants import FER2013_COUNTS
from ..explain import capture
from ..losses import inverse_frequency_weights
from ..models import WeightFile, create_model, torchvision_weight_file, vggface_weight_file
from ..runs import RunResult, run
from ..train import TrainConfig, unfreeze_stages
from . import _common
from ._common import ChapterSplits, ProfileSetup, model_input, random_subset, require_data_root
from ._common import profile_setups as _profile_setups
from .pretraining import check_task, pretrain, pretrain_facts

__all__ = [
    "required_weights",
    "PAPER",
    "PaperRow",
    "FIGURE7",
    "FIGURE6",
    "KAGGLE_TOP",
    "CBAM_PARAMS_CLAIM",
    "PAPER_PROTOCOL",
    "FINETUNE",
    "Setup",
    "ChapterData",
    "profile_setups",
    "load_data",
    "training_counts",
    "face_pretrain",
    "face_facts",
    "norm_text",
    "finetune_text",
    "build_model",
    "row_weights",
    "buildable",
    "train_config",
    "run_row",
    "row_run_name",
    "run_seeds",
    "accuracy_by_seed",
    "rows_text",
    "row_label",
    "figure7_model",
    "figure7_table",
    "schedule_table",
    "cbam_parameter_check",
    "class_weight_table",
    "explain_set",
    "gradcam_maps",
    "cbam_spatial_maps",
    "localisation_table",
]

PAPER = ("A. Ghimire, S. Shrestha and Y. Ibrahim, Facial Expression Recognition Using Attention "
         "Technique, 2020")

Weights = Literal["vggface", "imagenet", "vggface2"]


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Figure 7 (accuracy in %)."""

    key: str
    label: str
    model: str
    weights: Weights | None
    val: float
    test: float


#: The paper's Figure 7: validation (FER2013 PublicTest) and test (PrivateTest) accuracy.
FIGURE7: tuple[PaperRow, ...] = (
    PaperRow("a", "Small Convolutional Network + Classifier", "small_cnn", None, 20.70, 20.28),
    PaperRow("b", "ResNet50 pre-trained on ImageNet + Classifier", "resnet50", "imagenet", 25.24, 25.01),
    PaperRow("c", "ResNet50 pre-trained on VGGFace + Classifier", "resnet50", "vggface2", 25.80, 26.45),
    PaperRow("d", "VGG16 pre-trained on ImageNet + Flatten + Classifier", "vgg16_flatten", "imagenet", 33.80, 32.20),
    PaperRow("e", "InceptionV3 pre-trained on ImageNet + GAP + Classifier", "inception_v3", "imagenet", 58.76, 60.78),
    PaperRow("f", "VGG16 pre-trained on VGGFace + Flatten + Classifier", "vgg16_flatten", "vggface", 60.25, 61.01),
    PaperRow("g", "VGG16 pre-trained on VGGFace + GAP + Classifier", "vgg16_gap", "vggface", 68.78, 69.67),
    PaperRow("cbam", "VGG16 pre-trained on VGGFace + Attention + GAP + Classifier", "vgg16_cbam", "vggface",
             70.78, 71.43),
)
_ROWS = {r.key: r for r in FIGURE7}
#: The paper's Figure 6: FER2013 images per class and split (canonical class names).
FIGURE6: dict[str, dict[str, int]] = {split: dict(c) for split, c in FER2013_COUNTS.items()}
#: Kaggle leaderboard winner the paper compares with (public = val, private = test), in %.
KAGGLE_TOP = {"val": 69.76, "test": 71.16}
#: "by just addition of 66K extra parameters".
CBAM_PARAMS_CLAIM = 66_000
#: What the paper states about training.
PAPER_PROTOCOL = {"optimizer": "adam", "lr": 1e-3, "lr_factor": 0.1, "unfreeze": 3, "input_size": 224,
                  "class_weights": "equation (5)"}

#: How rows that start from pre-trained weights are fine-tuned (:class:`Setup`, module note).
FINETUNE: tuple[str, ...] = ("staged", "all")

#: Models that take the ``width`` multiplier as is (the small CNN scales its widths instead).
_WIDTH_MODELS = ("vgg16_flatten", "vgg16_gap", "vgg16_cbam")


# =========================================================================== setup


@dataclass(frozen=True)
class Setup(ProfileSetup):
    """A profile's choices for the chapter, from the notebooks' ``parameters`` cell.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data_root: folder holding ``fer2013/`` (``paper``); ignored otherwise.
        n_train, n_val, n_test: faces per split (``None``: all, the ``paper`` default).
        input_size: model input side; FER2013's 48 px faces are resized to it on the
            device (paper: 224).
        width: VGG conv-base width multiplier (paper: 1.0); the small CNN's widths
            are scaled by the same factor.
        stage_epochs: epochs of the head stage and of each unfreezing stage (their sum
            is the epochs of models trained from scratch).
        batch_size, lr, seed: as in :class:`fer.train.TrainConfig`.
        pretrain_identities, pretrain_n, pretrain_epochs: the VGG-Face stand-in
            (:func:`face_pretrain`, SynFER profiles only): people, faces and epochs.
        pretrain_task: what the stand-in learns
            (:data:`fer.experiments.pretraining.PRETRAIN_TASKS`; default ``"landmarks"``).
        finetune: ``"staged"`` (the paper's protocol: head first, then one conv layer at a
            time) or ``"all"`` (every layer from the first step at ``finetune_lr``; the demo's,
            module note) for rows that start from pre-trained weights.
        finetune_lr: the learning rate of ``finetune="all"`` (``None``: ``lr / 10``).
        batch_norm: a batch norm after each conv of every VGG16 row, the stand-in's norms
            loaded as trained (SynFER profiles only; module note). ``False``: the paper's
            plain VGG16, the stand-in's norms folded into its convs.
        seeds: training seeds of the paper's central comparison, CBAM against row (g)
            (:func:`run_seeds`); ``None``: ``(seed,)``. Every seed trains on the same data
            draw (``seed``) from the same pre-trained start: what varies is the head's
            initialisation, the batches' order, the flips and the dropout.
        device: ``auto``, ``cpu``, ``cuda``.
    """

    chapter: ClassVar[str] = "cbam_vgg"

    profile: str = "smoke"
    data_root: str | None = None
    n_train: int | None = 96
    n_val: int | None = 48
    n_test: int | None = 48
    input_size: int = 64
    width: float = 0.0625
    stage_epochs: tuple[int, ...] = (1, 1, 1, 1)
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    pretrain_identities: int = 8
    pretrain_n: int = 96
    pretrain_epochs: int = 1
    pretrain_task: str = "landmarks"
    finetune: str = "staged"
    finetune_lr: float | None = None
    batch_norm: bool = False
    seeds: tuple[int, ...] | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.profile not in ("smoke", "demo", "paper"):
            raise ValueError(f"profile must be smoke, demo or paper, got {self.profile!r}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"finetune must be one of {FINETUNE}, got {self.finetune!r} (book/profiles.yml, cbam_vgg)")
        check_task(self.pretrain_task, chapter="cbam_vgg")
        if self.batch_norm and self.profile == "paper":
            raise ValueError("batch_norm is a SynFER-profile departure: VGG-Face (the paper profile) has no batch "
                             "norm; remove it from book/profiles.yml, cbam_vgg: paper")
        object.__setattr__(self, "stage_epochs", tuple(int(e) for e in self.stage_epochs))
        seeds = (self.seed,) if self.seeds is None else tuple(int(x) for x in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds} (book/profiles.yml, cbam_vgg)")
        object.__setattr__(self, "seeds", seeds)
        if len(self.stage_epochs) < 1 or min(self.stage_epochs) < 1:
            raise ValueError(f"stage_epochs needs the head stage and >= 1 epoch per stage, got {self.stage_epochs}")

    @property
    def synthetic(self) -> bool:
        """``True`` in the SynFER profiles (``smoke``, ``demo``)."""
        return self.profile != "paper"

    @property
    def all_layers_lr(self) -> float:
        """The learning rate of pre-trained rows under ``finetune="all"``."""
        return self.lr / 10 if self.finetune_lr is None else float(self.finetune_lr)

    @property
    def unfreeze(self) -> int:
        """Conv layers unfrozen one at a time after the head stage (paper: 3)."""
        return len(self.stage_epochs) - 1

    @property
    def epochs(self) -> int:
        return sum(self.stage_epochs)

    @property
    def data_name(self) -> str:
        return "FER2013" if not self.synthetic else "SynFER fer2013 stand-in"

    def scale(self, data: ChapterData | None = None) -> str:
        """One line for the page banner: sizes, input, width, epochs."""
        sizes = (f"{len(data.train)}/{len(data.val)}/{len(data.test)} faces (train/val/test)" if data is not None
                 else f"n = {self.n_train}/{self.n_val}/{self.n_test}")
        width = "VGG16 full width" if self.width == 1 else f"VGG16 at width {self.width:g} (channels x {self.width:g})"
        if self.batch_norm:
            width += " with a batch norm after each conv"
        stages = " + ".join(str(e) for e in self.stage_epochs)
        schedule = (f"epochs {stages} (head + {self.unfreeze} unfreezing stages)" if self.finetune == "staged"
                    else f"{self.epochs} epochs, all layers (pre-trained rows at lr {self.all_layers_lr:g})")
        return f"{sizes}; 48 px faces resized to {self.input_size} px; {width}; {schedule}, batch {self.batch_size}"


def profile_setups(root: str | Path | None = None) -> dict[str, Setup]:
    """Every profile's :class:`Setup`: ``smoke`` = the defaults, ``demo``/``paper`` from ``book/profiles.yml``."""
    return _profile_setups(Setup, root)


# =========================================================================== data


@dataclass
class ChapterData(ChapterSplits):
    """The three splits, cached as uint8, and where they came from."""

    train: CachedDataset
    val: CachedDataset
    test: CachedDataset
    source: str
    classes: tuple[str, ...] = CLASSES_7


def _data_root(setup: Setup) -> str:
    return require_data_root(setup, uses="trains on FER2013", fix="place Kaggle's fer2013.csv as "
                             "<DATA_ROOT>/fer2013/fer2013.csv (see data/README.md)")


def load_data(setup: Setup, *, progress: bool = True) -> ChapterData:
    """FER2013 (``paper``: ``data_root/fer2013``) or SynFER's ``fer2013`` stand-in.

    The real splits are the paper's: Training / PublicTest (``val``) / PrivateTest
    (``test``); ``n_*`` draws a fixed random subset when set. SynFER follows the
    published FER2013 class proportions of each split.
    """
    sizes = {"train": setup.n_train, "val": setup.n_val, "test": setup.n_test}
    if setup.synthetic:
        parts = {split: cache_dataset(SynFER("fer2013", split, n=n, seed=setup.seed), progress=progress,
                                      desc=f"SynFER fer2013 {split}") for split, n in sizes.items()}
        return ChapterData(**parts, source="SynFER fer2013 stand-in (48 px gray, FER2013 class proportions)")
    from ..data import load_dataset

    root = _data_root(setup)
    parts = {}
    for split, n in sizes.items():
        ds = load_dataset("fer2013", root, split)
        parts[split] = random_subset(cache_dataset(ds, progress=progress, desc=f"FER2013 {split}"), n, setup.seed)
    return ChapterData(**parts, source=f"FER2013 from {Path(setup.data_root) / 'fer2013'}")


def training_counts(setup: Setup) -> tuple[dict[str, int], str]:
    """Training images per class (canonical order) and where they come from.

    SynFER draws its labels without rendering; FER2013's whole training split is
    counted from its labels, and a subset (``n_train``) from the loaded subset.
    """
    if setup.synthetic:
        ds = SynFER("fer2013", "train", n=setup.n_train, seed=setup.seed)
        return dict(ds.class_counts), f"SynFER fer2013 stand-in, n = {len(ds)}"
    if setup.n_train is not None:
        subset = load_data(setup, progress=False).train
        return dict(subset.class_counts), f"FER2013 training subset under {setup.data_root}"
    from ..data import load_dataset

    ds = load_dataset("fer2013", _data_root(setup), "train")
    return dict(ds.class_counts), f"FER2013 training set under {setup.data_root}"


# =========================================================================== models and runs


def _run_name(setup: Setup, what: str) -> str:
    return f"cbam_vgg-{setup.profile}-{what}"


def face_pretrain(setup: Setup, *, progress: bool = True) -> RunResult:
    """The VGG-Face stand-in: VGG16 (at ``setup.width``, a batch norm after each conv)
    pretrained on ``setup.pretrain_task`` (module note).

    ``pretrain_n`` faces of ``pretrain_identities`` people (every expression, the
    FER2013-like rendering, a seed the expression data never uses), all layers trained
    from scratch with Adam for ``pretrain_epochs`` (:func:`fer.experiments.pretraining.pretrain`);
    a tenth as many faces of the same draw score it. Only its conv base is reused: as
    trained where ``setup.batch_norm``, else its norms folded into the plain VGG16's convs
    (:func:`build_model`).
    """
    build = partial(create_model, "vgg16_gap", img_size=setup.input_size, width=setup.width,
                    norm_layer=nn.BatchNorm2d)
    result, _ = pretrain(setup, _run_name(setup, "face-pretrain"), build, task=setup.pretrain_task,
                         variant="fer2013", seed=setup.seed, lr=setup.lr, progress=progress)
    return result


def face_facts(setup: Setup, face: RunResult) -> dict[str, Any]:
    """What the :func:`face_pretrain` run ``face`` learned, for the pages
    (:func:`fer.experiments.pretraining.pretrain_facts`: task, faces, epochs, held-out score
    and what knowing nothing scores)."""
    return pretrain_facts(setup, face, task=setup.pretrain_task, variant="fer2013", seed=setup.seed)


def norm_text(setup: Setup) -> str:
    """How the stand-in's batch norms reach the VGG16 rows in this profile, for the pages
    (module note on batch norm)."""
    if setup.batch_norm:
        return ("with a batch norm after each conv, which this profile keeps in every VGG16 row (a departure: "
                "the paper's VGG16 has none, but with its norms folded away the narrow network fine-tuned far "
                "worse on this data; the measurement is in the module notes of fer.experiments.cbam_vgg)")
    return ("with a batch norm after each conv that is folded into the plain VGG16's convs when it loads "
            "(the paper's VGG16 has none)")


def finetune_text(setup: Setup) -> str:
    """How this profile fine-tunes pre-trained rows, for the pages (module notes)."""
    if setup.finetune == "staged":
        return "as the paper does: head first, then one more conv layer per stage"
    return (f"differently: every layer trains from the first step at learning rate {setup.all_layers_lr:g} "
            f"for {setup.epochs} epochs, "
            "because staged from the SynFER start the head stage learns next to nothing (a classifier "
            "initialised at N(0, 0.01) behind two dropouts barely moves in a few epochs, and every later "
            "stage learns ten times slower)")


def row_weights(row: str | PaperRow, setup: Setup) -> str | None:
    """The weights row ``row`` starts from in this profile, or ``None`` (from scratch).

    ``"vggface"`` (the file), ``"synfer-face"`` (:func:`face_pretrain`), ``"imagenet"``
    (torchvision); rows that need ImageNet weights train from scratch in the SynFER
    profiles (no download), and VGGFace2 weights are never available.
    """
    r = _ROWS[row] if isinstance(row, str) else row
    if r.weights == "vggface":
        return "synfer-face" if setup.synthetic else "vggface"
    if r.weights == "imagenet":
        return None if setup.synthetic else "imagenet"
    return None


def buildable(row: str | PaperRow) -> bool:
    """Whether a row can be trained at all (row (c) cannot: no VGGFace2 ResNet-50 weights)."""
    r = _ROWS[row] if isinstance(row, str) else row
    return r.weights != "vggface2"


def build_model(name: str, *, input_size: int, width: float = 1.0, weights: str | None = None,
                face_run: str | None = None, num_classes: int = 7, load: bool = True,
                batch_norm: bool = False) -> nn.Module:
    """A Figure 7 model at this chapter's scale, with its starting weights loaded.

    Args:
        name: a :mod:`fer.models.cbam_vgg` model name.
        input_size: model input side (sets ``img_size``).
        width: conv width multiplier: VGG models take it as is; the small CNN scales its
            widths by it; ResNet-50 and Inception-v3 have none (must be 1 or ignored).
        weights: ``None``, ``"vggface"``, ``"imagenet"`` or ``"synfer-face"``.
        face_run: the :func:`face_pretrain` run folder, or its name under the runs root
            (for ``"synfer-face"``).
        load: load ``weights``; ``False`` builds the same model with the ``pretrained_cfg``
            (normalisation) of ``weights`` but reads no file: the probe that
            :func:`run_row` takes its :func:`train_config` from.
        batch_norm: a batch norm after each conv of a VGG16 (``Setup.batch_norm``); real
            VGG-Face and ImageNet VGG16 weights have none and refuse it.
    """
    kw: dict[str, Any] = {"num_classes": num_classes, "img_size": input_size}
    if name in _WIDTH_MODELS:
        kw["width"] = width
        if batch_norm:
            if weights in ("vggface", "imagenet"):
                raise ValueError(f"{weights} VGG16 weights have no batch norm: build {name} with batch_norm=False")
            kw["norm_layer"] = nn.BatchNorm2d
    elif name == "small_cnn":
        kw["widths"] = tuple(max(4, int(round(c * width))) for c in (32, 64, 128, 256))
    if weights == "imagenet":
        if name in _WIDTH_MODELS:  # VGG builders default to VGG-Face's pretrained_cfg: name the weights
            kw["weights"] = "imagenet"
        return create_model(name, pretrained=load, **kw)
    model = create_model(name, **kw)
    if not load:
        return model
    return _common.load_face_weights(model, weights, face_run,
                                     choices="None, 'vggface', 'imagenet' or 'synfer-face'")


def _last_conv_paths(model: nn.Module, n: int) -> list[str]:
    paths = {id(m): p for p, m in model.named_modules()}
    return [paths[id(conv)] for _, conv in model.conv_layers()[:n]]


def train_config(setup: Setup, model: nn.Module, *, pretrained: bool) -> TrainConfig:
    """The chapter's one protocol (module notes): for pre-trained bases staged, or all layers at
    ``setup.all_layers_lr`` (``setup.finetune``); from scratch all layers at ``lr``.

    Normalisation follows the starting weights (VGG-Face: mean pixel, std 1/255;
    ImageNet: its mean/std); the SynFER stand-in and models from scratch use 0.5/0.5.
    The input side is ``setup.input_size``, raised to the model's ``min_size`` where it
    has one (Inception-v3 needs 75 px).
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    real_weights = pretrained and not setup.synthetic
    mean = tuple(cfg.get("mean", (0.5,) * 3)) if real_weights else (0.5, 0.5, 0.5)
    std = tuple(cfg.get("std", (0.5,) * 3)) if real_weights else (0.5, 0.5, 0.5)
    stages = []
    lr = setup.lr
    if pretrained and setup.finetune == "all":
        lr = setup.all_layers_lr
    elif pretrained:
        head = ["head"] + (["attn"] if any(True for _ in model.attn.parameters()) else [])
        stages = unfreeze_stages(head=head, layers=_last_conv_paths(model, setup.unfreeze),
                                 epochs=list(setup.stage_epochs))
    return TrainConfig(epochs=setup.epochs, stages=stages, batch_size=setup.batch_size, optimizer="adam",
                       lr=lr, class_weights="inverse", hflip=True,
                       input_size=max(setup.input_size, int(getattr(model, "min_size", 0))),
                       mean=mean, std=std, seed=setup.seed, cpu=setup.resolved_device() == "cpu")


def run_row(setup: Setup, data: ChapterData, row: str, *, face: RunResult | None = None,
            seed: int | None = None, progress: bool = True) -> RunResult:
    """Train (or load) Figure 7's row ``row`` (``"a"`` ... ``"g"``, ``"cbam"``) under the protocol.

    ``face`` is the :func:`face_pretrain` result for rows starting from VGG-Face in
    the SynFER profiles (trained here when not given). ``seed``: the training seed
    (default ``setup.seed``; the data stay those of ``setup.seed``); a run at another
    seed is named with ``-s<seed>``.
    """
    r = _ROWS[row]
    if not buildable(r):
        raise ValueError(f"row ({row}) {r.label!r} cannot be built: no VGGFace2 ResNet-50 weights")
    weights = row_weights(r, setup)
    face_run = None
    if weights == "synfer-face":
        face = face if face is not None else face_pretrain(setup, progress=progress)
        face_run = str(face.path)
    # The pre-training run is named by its folder (name-hash) under the runs root, so the
    # hash of this run follows it and does not depend on where the repository lives.
    face_name = None if face_run is None else Path(face_run).name
    # Only a VGG16 takes batch_norm, and only when set (runs without it keep their names).
    norm = {"batch_norm": True} if setup.batch_norm and r.model in _WIDTH_MODELS else {}
    build = partial(build_model, r.model, input_size=setup.input_size, width=setup.width, weights=weights,
                    face_run=face_name, **norm)
    # The probe carries the pretrained_cfg of the weights the run loads (no file read), so the
    # normalisation is theirs: ImageNet VGG16 (row d) must not get VGG-Face's mean pixel.
    probe = build_model(r.model, input_size=setup.input_size, width=setup.width, weights=weights,
                        face_run=face_name, load=False, **norm)
    config = train_config(setup, probe, pretrained=weights is not None)
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    spec = {"row": r.key, "model": r.model, "weights": weights, "width": setup.width,
            "face_run": face_name, **norm}
    return run(row_run_name(setup, row, seed), config, build, data.train, data.val,
               eval_sets=data.eval_sets(), spec=spec, progress=progress)


def row_run_name(setup: Setup, row: str, seed: int | None = None) -> str:
    """The run name of row ``row`` at training seed ``seed`` (:func:`run_row`): ``-s<seed>``
    is added for a seed other than ``setup.seed``."""
    r = _ROWS[row]
    suffix = "" if seed is None or seed == setup.seed else f"-s{seed}"
    return _run_name(setup, f"{r.key}-{r.model}{suffix}")


def run_seeds(setup: Setup, data: ChapterData, rows: Sequence[str] = ("g", "cbam"), *,
              face: RunResult | None = None, progress: bool = True) -> dict[str, list[RunResult]]:
    """Rows ``rows`` once per seed of ``setup.seeds`` (:func:`run_row`), from one pre-trained
    start: ``{row: [run per seed]}``, seeds in ``setup.seeds`` order."""
    if face is None and setup.synthetic and any(row_weights(r, setup) == "synfer-face" for r in rows):
        face = face_pretrain(setup, progress=progress)
    return {r: [run_row(setup, data, r, face=face, seed=s, progress=progress) for s in setup.seeds] for r in rows}


def accuracy_by_seed(runs: Mapping[str, Sequence[RunResult]], split: str = "test", *,
                     metric: str = "accuracy") -> dict[str, dict[int, float]]:
    """``{row: {training seed: metric in %}}`` of :func:`run_seeds`' runs on ``split``."""
    return {row: {int(r.run.config.seed): 100.0 * float(r.metrics[split][metric]) for r in rs}
            for row, rs in runs.items()}


def rows_text(rows: Sequence[str]) -> str:
    """Which of Figure 7's rows a page trains and which it leaves to the ``paper`` profile, for the pages."""
    unknown = [r for r in rows if r not in _ROWS]
    if unknown:
        raise ValueError(f"unknown Figure 7 rows {unknown}: choose from {list(_ROWS)} "
                         "(book/profiles.yml, the page's rows)")
    def names(keys: Sequence[str]) -> str:
        return ", ".join(f"({k})" for k in keys)
    left = [r.key for r in FIGURE7 if buildable(r) and r.key != "cbam" and r.key not in rows]
    if not left:
        return f"This profile trains every buildable row: {names(rows)}."
    text = f"This profile trains row{'s' if len(rows) != 1 else ''} {names(rows)}"
    return (text + f"; rows {names(left)} are left out of it to spend its CPU budget on seeds and training "
            "length instead (the `paper` profile trains every buildable row).")


def row_label(row: str, setup: Setup) -> str:
    """What row ``row`` is in this profile, e.g. "vgg16_gap, SynFER-face stand-in"."""
    r = _ROWS[row]
    w = row_weights(r, setup)
    start = {"vggface": "VGG-Face", "imagenet": "ImageNet", "synfer-face": "SynFER face stand-in",
             None: "from scratch"}[w]
    return f"{r.model} ({start})"


def figure7_model(row: str) -> str:
    """The ``model`` that :func:`figure7_table` gives row ``row`` (for ``paper_vs_ours(baseline=...)``)."""
    r = _ROWS[row]
    return f"({r.key}) {r.label}" if r.key != "cbam" else f"proposed: {r.label}"


def figure7_table(results: Mapping[str, RunResult], setup: Setup, *, splits: Sequence[str] = ("val", "test")
                  ) -> list[dict[str, Any]]:
    """Rows for :func:`fer.plots.paper_vs_ours`: every Figure 7 row, ours where it was run."""
    out = []
    for r in FIGURE7:
        res = results.get(r.key)
        for split in splits:
            ours = None if res is None else 100.0 * float(res.metrics[split]["accuracy"])
            out.append({"model": figure7_model(r.key),
                        "ours as": row_label(r.key, setup) if buildable(r) else "not buildable",
                        "split": split, "paper": getattr(r, split), "ours": ours})
    return out


def schedule_table(setup: Setup, *, model: str = "vgg16_cbam", full_size: bool = True):
    """The paper's staged schedule of a pre-trained ``model``: per stage, its epochs, learning
    rate, conv layers trained and trainable parameters (a ``DataFrame``), with ``setup``'s
    epochs and learning rate (also where ``setup.finetune`` is ``"all"``).

    ``full_size``: count on the paper's full-width model (else at ``setup``'s scale).
    """
    import pandas as pd

    from ..train import apply_stage

    setup = dataclasses.replace(setup, finetune="staged")
    m = (create_model(model, num_classes=7) if full_size
         else build_model(model, input_size=setup.input_size, width=setup.width))
    cfg = train_config(setup, m, pretrained=True)
    paths = {id(mod): p for p, mod in m.named_modules()}
    conv_name = {paths[id(conv)]: name for name, conv in m.conv_layers()}
    rows = []
    for stage in cfg.stages:
        trainable = apply_stage(m, stage)
        convs = [conv_name[p] for p in stage.trainable or [] if p in conv_name]
        rows.append({"stage": stage.name, "epochs": stage.epochs, "learning rate": cfg.stage_lr(stage),
                     "conv layers trained": ", ".join(convs) or "none (base frozen)",
                     "trainable parameters": sum(p.numel() for p in trainable)})
    return pd.DataFrame(rows)


# =========================================================================== method facts


def cbam_parameter_check(**cbam_kw: Any) -> dict[str, int]:
    """Parameters CBAM adds to the full-width VGG16 (``vgg16_cbam`` minus ``vgg16_gap``) and the claim.

    Keyword arguments go to ``vgg16_cbam`` (``cbam_rd_ratio``, ``cbam_kernel_size``,
    ``cbam_mlp_bias``, ``cbam_spatial_norm``).
    """
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    gap = create_model("vgg16_gap", num_classes=7)
    cbam_model = create_model("vgg16_cbam", num_classes=7, **cbam_kw)
    return {"conv_base": count(gap.features), "classifier": count(gap.head), "vgg16_gap": count(gap),
            "vgg16_cbam": count(cbam_model), "cbam": count(cbam_model) - count(gap),
            "cbam_channel": count(cbam_model.attn.channel), "cbam_spatial": count(cbam_model.attn.spatial),
            "claim": CBAM_PARAMS_CLAIM}


def class_weight_table(counts: Mapping[str, int]):
    """Equation (5) per class: count, share and weight, as a ``DataFrame`` indexed by class."""
    import pandas as pd

    names = list(counts)
    n = np.array([counts[c] for c in names], dtype=np.int64)
    w = inverse_frequency_weights(n).numpy()
    df = pd.DataFrame({"images": n, "share %": 100.0 * n / n.sum(), "weight (eq. 5)": w}, index=names)
    df.index.name = "class"
    return df


# =========================================================================== explanations


def explain_set(setup: Setup, n: int, *, progress: bool = False) -> CachedDataset:
    """``n`` class-balanced SynFER ``fer2013`` test faces with their relevance maps.

    A seed of their own, so they are neither training nor test faces of any run. Used
    in every profile: real FER2013 has no ground truth of where the evidence is.
    """
    return _common.explain_faces("fer2013", n, seed=setup.seed, progress=progress)


def gradcam_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig, *,
                 targets: Any = None, method: str = "gradcam") -> np.ndarray:
    """Grad-CAM at ``model.cam_layer`` (CBAM's output for ``vgg16_cbam``), B x S x S in [0, 1].

    ``images``: uint8 B x 3 x 48 x 48 faces; ``targets``: class per image (default:
    the true labels are not known here, so each image's predicted class).
    """
    return _common.gradcam_maps(model, images, config, targets=targets, method=method)


def cbam_spatial_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig) -> np.ndarray:
    """CBAM's spatial attention map ``M_s`` (equation 4), B x h x w, read with a forward hook."""
    attn = getattr(model, "attn", None)
    if attn is None or not hasattr(attn, "spatial_gate"):
        raise ValueError(f"{type(model).__name__} has no CBAM (model.attn.spatial_gate)")
    model.eval()
    with torch.no_grad(), capture(model, {"spatial": attn.spatial_gate}) as maps:
        model(model_input(images, config))
    return maps["spatial"][:, 0].float().numpy()


def localisation_table(models: Mapping[str, tuple[nn.Module, TrainConfig]], ds: CachedDataset, *,
                       targets: Literal["label", "predicted"] = "label"):
    """Where each model looks on SynFER: share of Grad-CAM (and CBAM) energy on the evidence.

    Args:
        models: name -> (trained model, its run's config).
        ds: :func:`explain_set` faces (with ``relevance``).
        targets: explain the true class (default) or the predicted one.

    Returns a ``DataFrame`` with one row per (model, map): energy share and its chance
    level, pointing-game hit rate and its chance level (:func:`fer.explain.localisation_scores`).
    """
    def maps(model: nn.Module, config: TrainConfig, explain: Any) -> dict[str, np.ndarray]:
        out = {"Grad-CAM": gradcam_maps(model, ds.images, config, targets=explain)}
        attn = getattr(model, "attn", None)
        if attn is not None and hasattr(attn, "spatial_gate"):
            out["CBAM spatial"] = cbam_spatial_maps(model, ds.images, config)
        return out

    return _common.localisation_table(models, ds, maps, targets=targets)


#: The torchvision ImageNet weights each Figure 7 architecture loads in the ``paper`` profile.
_IMAGENET_WEIGHTS = {"vgg16_flatten": "VGG16_Weights", "vgg16_gap": "VGG16_Weights", "vgg16_cbam": "VGG16_Weights",
                     "resnet50": "ResNet50_Weights", "inception_v3": "Inception_V3_Weights"}


def required_weights(setup: Setup, rows: Sequence[str] | None = None) -> list[WeightFile]:
    """The pretrained files ``rows`` (default: every buildable row and the proposed model) load
    in ``setup``'s profile: VGG-Face and torchvision's ImageNet files in ``paper``, none in the
    SynFER profiles. The book runner checks them before a paper run starts."""
    import torchvision

    files: dict[Path, WeightFile] = {}
    for key in rows if rows is not None else [r.key for r in FIGURE7]:
        if not buildable(key):
            continue
        weights = row_weights(key, setup)
        if weights == "vggface":
            f = vggface_weight_file()
        elif weights == "imagenet":
            enum = getattr(torchvision.models, _IMAGENET_WEIGHTS[_ROWS[key].model])
            f = torchvision_weight_file(enum.IMAGENET1K_V1)
        else:
            continue
        files.setdefault(f.path, f)
    return list(files.values())
