"""The MANet chapter (``book/manet/``): protocol, data and runs.

Paper: Y. Gan, J. Chen, Z. Yang and L. Xu, *Multiple Attention Network for Facial
Expression Recognition*, IEEE Access 8, 2020. The models are in
:mod:`fer.models.manet`; this module holds what the chapter's notebooks share:

* the paper's reported numbers as data: :data:`TABLE3` (RAF-DB), :data:`TABLE4` and
  :data:`TABLE6` (confusion matrices), :data:`TABLE5` (CK+), :data:`PAPER_TRAINING`;
* :class:`Setup`, built from a notebook's parameters (:meth:`Setup.from_params`);
  :meth:`Setup.for_profile` ``("paper")`` is the paper's protocol;
* :func:`load_raf` / :func:`load_ck`: RAF-DB and CK+ from ``data_root`` in the
  ``paper`` profile, SynFER's ``wild`` and ``ck`` stand-ins otherwise, cached as uint8
  with the ground-truth region masks of equation (4) (``masks``) and, for SynFER,
  the relevance maps; :func:`ck_folds`: the person-independent 10-fold split;
* :func:`train_config`, :func:`run_model`: one protocol for every row, trained through
  :func:`fer.runs.run` so every page shares one cache; ``manet`` is **one run with two
  stages** (:class:`fer.train.Stage`): stage 1 trains ``model.rasnet`` on the Euclidean
  mask loss, stage 2 trains ERSnet with RASnet frozen;
* :func:`face_pretrain`: the VGG-Face stand-in of the SynFER profiles;
* tables and explanation helpers: :func:`table3`, :func:`table5`, :func:`mask_iou`,
  :func:`region_weights`, :func:`gradcam_maps`, :func:`localisation_table`.

.. note::
   **Iterations and epochs.** The paper counts iterations (20K on RAF-DB, lr x 0.1 every
   5K; 1K on CK+, every 0.5K). :func:`train_config` trains whole epochs: the length is
   ``ceil(iterations / batches per epoch)`` epochs, and the step decay counts iterations
   exactly. The paper does not say how long stage 1 (RASnet) trains; we give it the
   same schedule as stage 2 (``ras_iterations`` changes it).

.. note::
   **Augmentation and model selection.** The paper mentions neither; we train without
   augmentation (a flipped face would also swap the left/right regions' masks) and
   evaluate the final weights.

.. note::
   **"Pre-trained on VGG-Face" without VGG-Face.** As in the VGG16 + CBAM chapter, the
   SynFER profiles stand in for VGG-Face with the same conv base pretrained on a face task
   SynFER labels exactly (:func:`face_pretrain`, on ``wild`` faces that no expression run
   sees): ``pretrain_task``, by default regressing the 68 landmarks (measured against
   telling identities apart, which teaches a network to ignore expressions); the
   ``paper`` profile loads the real VGG-Face weights.

.. note::
   **Optimiser in the SynFER profiles.** The ``paper`` profile is SGD (momentum 0.9, weight
   decay 5e-4, lr 1e-3 x 0.1 every 5K / 0.5K iterations). At the ``demo`` scale (a narrow
   VGG16 without batch norm, a few hundred iterations on a CPU) SGD stayed at the
   majority class in our trials, so ``demo`` uses Adam (lr 1e-3, no weight decay, no
   decay step); ``Setup.optimizer`` says which, and every page states it.

.. note::
   **Batch norm in the SynFER profiles.** With Adam but without batch norm, ``manet``
   stayed at the majority class for the whole ``demo`` run and the two baselines for
   two thirds of it. ``demo`` therefore sets ``Setup.batch_norm``: a batch norm after
   each VGG16 conv (torchvision's ``vgg16_bn`` layout) in all three models and in the
   face stand-in whose conv base they load. VGG-Face has none, so the ``paper``
   profile refuses it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data import CLASSES_7
from ..data.cached import CachedDataset, cache_dataset
from ..data.landmarks import to_landmarks8
from ..data.masks import MANET_REGIONS, region_masks
from ..data.synfer import SynFER
from ..explain import capture
from ..losses import mask_loss
from ..models import WeightFile, create_model, vggface_weight_file
from ..models.cbam_vgg import VGGFACE_MEAN
from ..models.manet import ManetOutput, RasnetOutput, mask_side
from ..runs import RunResult, run
from ..train import Stage, TrainConfig
from . import _common
from ._common import ChapterSplits, ProfileSetup, model_input, random_subset, require_data_root
from ._common import profile_setups as _profile_setups
from .pretraining import check_task, pretrain, pretrain_facts

__all__ = [
    "required_weights",
    "PAPER",
    "PaperRow",
    "TABLE3",
    "TABLE4",
    "TABLE4_ORDER",
    "TABLE5",
    "TABLE6",
    "TABLE6_ORDER",
    "PAPER_TRAINING",
    "RAF_TEXT_ACCURACY",
    "MODELS",
    "MODEL_LABELS",
    "Setup",
    "ChapterData",
    "profile_setups",
    "load_raf",
    "load_ck",
    "with_masks",
    "ck_folds",
    "ck_fold_data",
    "face_pretrain",
    "face_facts",
    "build_model",
    "train_config",
    "run_model",
    "output_to_logits",
    "rasnet_loss",
    "manet_forward",
    "table_model",
    "table3",
    "table5",
    "paper_confusion",
    "reorder_confusion",
    "mask_iou",
    "predicted_masks",
    "region_weights",
    "ma_parameter_table",
    "explain_set",
    "mask_figure",
    "identity_grid",
    "run_raf_rows",
    "runs_ck",
    "ck_not_run_text",
    "run_ck_folds",
    "summed_confusion",
    "CkData",
    "gradcam_maps",
    "guided_maps",
    "localisation_table",
]

PAPER = ("Y. Gan, J. Chen, Z. Yang and L. Xu, Multiple Attention Network for Facial Expression Recognition, "
         "IEEE Access 8, 2020")


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 3 or Table 5: accuracy in % (``scratch``: trained from scratch)."""

    key: str
    label: str
    model: str | None
    pretrained: float | None
    scratch: float | None = None


#: Table 3 (RAF-DB, accuracy %): pre-trained / from scratch (the * column).
TABLE3: tuple[PaperRow, ...] = (
    PaperRow("ours", "Ours (MANet)", "manet", 85.69, 75.59),
    PaperRow("se", "VGG+SE", "manet_vgg16_se", 83.28, 73.27),
    PaperRow("vgg", "VGG fine-tuning", "manet_vgg16", 83.89, 73.63),
    PaperRow("pgcnn", "PG-CNN [10]", None, 83.27),
    PaperRow("dlpcnn", "DLP-CNN [14] (from scratch)", None, None, 74.20),
    PaperRow("mrecnn", "MRE-CNN [20]", None, 76.73),
    PaperRow("fsn", "FSN [21]", None, 72.46),
    PaperRow("ghosh", "Ghosh et al. [2] (not said)", None, 77.48),
)
#: The text of section IV.C says 85.82% for ours; Table 3 and the abstract say 85.69%.
RAF_TEXT_ACCURACY = 85.82
#: Table 5 (CK+, person-independent 10-fold, 7 classes with contempt), accuracy %.
TABLE5: tuple[PaperRow, ...] = (
    PaperRow("ours", "Ours (MANet)", "manet", 96.28),
    PaperRow("se", "VGG+SE", "manet_vgg16_se", 93.11),
    PaperRow("vgg", "VGG fine-tuning", "manet_vgg16", 92.27),
)
#: Table 4's class order (RAF-DB's: surprise, fear, disgust, happiness, sadness, anger, neutral).
TABLE4_ORDER: tuple[str, ...] = ("surprise", "fear", "disgust", "happy", "sad", "anger", "neutral")
#: Table 4: RAF-DB confusion matrix of MANet, % of each true class (rows in TABLE4_ORDER).
TABLE4: tuple[tuple[float, ...], ...] = (
    (85.11, 2.13, 1.52, 2.74, 2.43, 1.52, 4.56),
    (16.22, 58.11, 0.00, 5.41, 9.46, 5.41, 5.41),
    (1.25, 1.88, 60.62, 9.38, 8.13, 5.63, 13.13),
    (0.51, 0.00, 0.68, 94.60, 1.35, 0.17, 2.70),
    (0.63, 0.84, 2.72, 3.56, 82.85, 1.05, 8.37),
    (2.47, 2.47, 4.94, 7.41, 1.23, 75.93, 5.56),
    (1.91, 0.15, 2.21, 4.85, 6.91, 0.29, 83.68),
)
#: Table 6's class order (CK+: anger, contempt, disgust, fear, happiness, sadness, surprise).
TABLE6_ORDER: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happy", "sad", "surprise")
#: Table 6: CK+ confusion matrix of MANet, % (as printed: the fear row sums to 90).
TABLE6: tuple[tuple[float, ...], ...] = (
    (89.57, 0, 2.33, 0, 0, 8.10, 0),
    (5.00, 88.33, 0, 5.00, 0, 1.67, 0),
    (0, 0, 100.00, 0, 0, 0, 0),
    (0, 0, 0, 84.17, 5.83, 0, 0),
    (0, 0, 0, 0, 100.00, 0, 0),
    (5.00, 0, 0, 0, 0, 95.00, 0),
    (0, 1.67, 0, 0, 0, 0, 98.33),
)
#: What section IV.B states about training.
PAPER_TRAINING: dict[str, Any] = {
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "dropout": 0.5, "batch_size": 42, "lr": 1e-3,
    "gamma": 0.1, "raf_step": 5000, "raf_iterations": 20000, "ck_step": 500, "ck_iterations": 1000,
    "input_size": 224, "init": "VGG-Face for the five conv blocks, Xavier for the rest", "framework": "Caffe",
}

#: The three models of the chapter: key -> model name.
MODELS: dict[str, str] = {"ours": "manet", "se": "manet_vgg16_se", "vgg": "manet_vgg16"}
MODEL_LABELS: dict[str, str] = {"ours": "Ours (MANet)", "se": "VGG+SE", "vgg": "VGG fine-tuning",
                                "gt": "MANet, ground-truth masks"}


# =========================================================================== setup


@dataclass(frozen=True)
class Setup(ProfileSetup):
    """A profile's choices for the chapter, from the notebooks' ``parameters`` cell.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data_root: folder holding ``rafdb/`` and ``ckplus/`` (``paper``).
        n_train, n_test: RAF-DB (stand-in) faces per split (``None``: all).
        n_ck: CK+ stand-in images (``None``: 981, the paper's count).
        input_size: model input side (paper: 224; the masks are ``input_size // 16``).
        width: VGG16 (and RASnet) width multiplier (paper: 1.0).
        batch_norm: batch norm after each VGG16 conv (``vgg16_bn`` layout), in every model
            and in the face stand-in; a SynFER-profile departure (paper: ``False``, VGG-Face
            has none).
        batch_size, lr, gamma: batch, base learning rate and step factor.
        optimizer: ``"sgd"`` (the paper's: momentum 0.9, weight decay 5e-4) or ``"adam"``
            (a SynFER-profile departure, no weight decay).
        ras_lr: stage 1 (RASnet) learning rate; ``None``: ``lr``.
        raf_iterations, raf_step: iterations of each stage on RAF-DB and the lr step.
        ck_iterations, ck_step: the same on CK+.
        ras_iterations: stage 1 (RASnet) iterations; ``None``: as stage 2.
        seeds: training seeds of the RAF-DB rows (spread in the demo profile).
        folds: the CK+ folds run (of 10); all ten in ``paper``; none in ``demo``
            (:func:`runs_ck`: Table 5 and Figures 7-8 then show the paper's side only).
        pretrain_identities, pretrain_n, pretrain_epochs: the VGG-Face stand-in: people,
            faces and epochs.
        pretrain_task: what the stand-in learns
            (:data:`fer.experiments.pretraining.PRETRAIN_TASKS`; default ``"landmarks"``).
        device: ``auto``, ``cpu``, ``cuda``.
    """

    chapter: ClassVar[str] = "manet"

    profile: str = "smoke"
    data_root: str | None = None
    n_train: int | None = 96
    n_test: int | None = 48
    n_ck: int | None = 120
    input_size: int = 64
    width: float = 0.0625
    batch_norm: bool = False
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    ras_lr: float | None = None
    gamma: float = 0.1
    raf_iterations: int = 3
    raf_step: int = 2
    ck_iterations: int = 3
    ck_step: int = 2
    ras_iterations: int | None = None
    seeds: tuple[int, ...] = (0,)
    folds: tuple[int, ...] = (0,)
    num_folds: int = 10
    pretrain_identities: int = 8
    pretrain_n: int = 96
    pretrain_epochs: int = 1
    pretrain_task: str = "landmarks"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.profile not in ("smoke", "demo", "paper"):
            raise ValueError(f"profile must be smoke, demo or paper, got {self.profile!r}")
        if self.batch_norm and not self.synthetic:
            raise ValueError("batch_norm is a SynFER-profile departure: VGG-Face (the paper profile) has no batch norm")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' (the paper's) or 'adam', got {self.optimizer!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "folds", tuple(int(f) for f in self.folds))
        if not self.seeds:
            raise ValueError("seeds needs at least one seed")
        check_task(self.pretrain_task, chapter="manet")
        bad = [f for f in self.folds if not 0 <= f < self.num_folds]
        if bad or len(set(self.folds)) != len(self.folds):
            raise ValueError(f"folds must be distinct, in 0..{self.num_folds - 1}, got {list(self.folds)}")
        for name in ("raf_iterations", "raf_step", "ck_iterations", "ck_step", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        mask_side(self.input_size)

    @property
    def synthetic(self) -> bool:
        return self.profile != "paper"

    @property
    def seed0(self) -> int:
        """The first seed: data draws and single-seed runs use it."""
        return int(self.seeds[0])

    @property
    def mask_side(self) -> int:
        return mask_side(self.input_size)

    def scale(self, data: ChapterData | None = None) -> str:
        """One line for the page banner."""
        sizes = (f"{len(data.train)}/{len(data.test)} faces (train/test)" if data is not None
                 else f"RAF n = {self.n_train}/{self.n_test}, CK n = {self.n_ck}")
        width = "VGG16 full width" if self.width == 1 else f"VGG16 and RASnet at width {self.width:g}"
        if self.batch_norm:
            width += " (VGG16 with batch norm)"
        return (f"{sizes}; {self.input_size} px input, masks {self.mask_side} x {self.mask_side}; {width}; "
                f"{'SGD' if self.optimizer == 'sgd' else 'Adam'} lr {self.lr:g} x {self.gamma:g} every "
                f"{self.raf_step} (RAF) / {self.ck_step} (CK) iterations, "
                f"{self.raf_iterations} / {self.ck_iterations} iterations per stage, batch {self.batch_size}")


def profile_setups(root: str | Path | None = None) -> dict[str, Setup]:
    """Every profile's :class:`Setup`: ``smoke`` = the defaults, ``demo``/``paper`` from ``book/profiles.yml``."""
    return _profile_setups(Setup, root)


# =========================================================================== data


@dataclass
class ChapterData(ChapterSplits):
    """A train/test pair cached as uint8 with their masks (and where they came from)."""

    train: CachedDataset
    test: CachedDataset
    source: str
    classes: tuple[str, ...] = CLASSES_7


def with_masks(ds: CachedDataset, input_size: int) -> CachedDataset:
    """``ds`` plus ``masks``: the eight ground-truth region masks (equation 4) at ``input_size // 16``.

    Made from the cached ``landmarks`` (68 iBUG points or 5 RAF-DB points, reduced
    with :func:`fer.data.landmarks.to_landmarks8`) in the stored image's pixels.
    """
    if "landmarks" not in ds.tensors:
        raise KeyError("with_masks needs cached 'landmarks' (cache_dataset(..., keys=('image', 'label', "
                       "'landmarks')))")
    side = mask_side(input_size)
    l8 = to_landmarks8(ds.tensors["landmarks"].float())
    masks = region_masks(l8, tuple(ds.images.shape[-2:]), side)
    tensors = {**ds.tensors, "masks": torch.as_tensor(masks, dtype=torch.float32)}
    return CachedDataset(tensors, classes=ds.classes, source_fingerprint=f"{ds.fingerprint()}:masks{side}",
                         name=ds.name)


def _data_root(setup: Setup, what: str) -> str:
    return require_data_root(setup, uses=f"trains on {what}", fix="place RAF-DB as <DATA_ROOT>/rafdb/ "
                             "(EmoLabel/list_patition_label.txt, Image/aligned/) and CK+ as <DATA_ROOT>/ckplus/ "
                             "(cohn-kanade-images/, Emotion/, Landmarks/), see data/README.md")


_SYN_KEYS = ("image", "label", "landmarks", "relevance")


def load_raf(setup: Setup, *, progress: bool = True) -> ChapterData:
    """RAF-DB (``paper``: ``data_root/rafdb``, its train/test lists) or SynFER's ``wild`` stand-in.

    Images are cached at their stored size (SynFER renders at ``input_size``) with
    68 landmarks and the masks of equation (4). Real RAF-DB needs landmarks for the
    aligned faces: the landmark cache written by ``python -m fer.data.landmarks``.
    """
    if setup.synthetic:
        parts = {}
        for split, n in (("train", setup.n_train), ("test", setup.n_test)):
            ds = SynFER("wild", split, n=n, seed=setup.seed0, image_size=setup.input_size, with_relevance=True)
            parts[split] = with_masks(cache_dataset(ds, keys=_SYN_KEYS, progress=progress,
                                                    desc=f"SynFER wild {split}"), setup.input_size)
        return ChapterData(**parts, source="SynFER wild stand-in for RAF-DB (in-the-wild nuisances, RAF-DB "
                                           "class proportions)")
    from ..data import load_dataset

    root = _data_root(setup, "RAF-DB")
    parts = {}
    for split, n in (("train", setup.n_train), ("test", setup.n_test)):
        ds = load_dataset("rafdb", root, split)
        try:
            cached = cache_dataset(ds, keys=("image", "label", "landmarks"), progress=progress, desc=f"RAF-DB {split}")
        except KeyError as err:
            raise FileNotFoundError(
                f"RAF-DB {split} has no landmarks for its aligned faces; MANet's masks need them. Fix: "
                f"`python -m fer.data.landmarks --dataset rafdb --root {root}` writes the landmark cache") from err
        parts[split] = random_subset(with_masks(cached, setup.input_size), n, 0)
    return ChapterData(**parts, source=f"RAF-DB from {Path(root) / 'rafdb'}")


@dataclass
class CkData:
    """The whole CK+ (stand-in) set, cached, with each image's subject id."""

    all: CachedDataset
    subjects: list[str]
    source: str
    classes: tuple[str, ...]


def load_ck(setup: Setup, *, progress: bool = True) -> CkData:
    """CK+ (``paper``: ``data_root/ckplus``, last three frames, 7 classes) or SynFER's ``ck`` stand-in."""
    if setup.synthetic:
        ds = SynFER("ck", "all", n=setup.n_ck, seed=setup.seed0, image_size=setup.input_size, with_relevance=True)
        cached = with_masks(cache_dataset(ds, keys=_SYN_KEYS, progress=progress, desc="SynFER ck"), setup.input_size)
        subjects = [f"S{int(s):03d}" for s in ds.identities()]
        return CkData(cached, subjects, "SynFER ck stand-in for CK+ (frontal, gray, 3 frames per sequence, "
                                        "subject ids)", tuple(ds.classes))
    from ..data import load_dataset

    root = _data_root(setup, "CK+")
    ds = load_dataset("ckplus", root, "all", landmarks=True, image_size=setup.input_size)
    cached = with_masks(cache_dataset(ds, keys=("image", "label", "landmarks"), progress=progress, desc="CK+"),
                        setup.input_size)
    return CkData(cached, list(ds.subjects), f"CK+ from {Path(root) / 'ckplus'}", tuple(ds.classes))


def ck_folds(subjects: Sequence[str], num_folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """MANet's person-independent folds: subject ids sorted ascending, every ``num_folds``-th
    subject in one fold (:func:`fer.data.datasets.ckplus.subject_folds`).

    Returns ``num_folds`` pairs ``(train indices, test indices)`` into ``subjects``.
    """
    from ..data.datasets.ckplus import subject_folds

    fold_of = subject_folds(subjects, num_folds)
    f = np.array([fold_of[s] for s in subjects])
    return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in range(num_folds)]


def ck_fold_data(ck: CkData, fold: int, num_folds: int = 10) -> ChapterData:
    """Fold ``fold`` of :func:`ck_folds` as a :class:`ChapterData`."""
    train, test = ck_folds(ck.subjects, num_folds)[fold]
    return ChapterData(ck.all.subset(train), ck.all.subset(test), f"{ck.source}, fold {fold + 1}/{num_folds}",
                       ck.classes)


# =========================================================================== models and runs


def _run_name(setup: Setup, what: str) -> str:
    return f"manet-{setup.profile}-{what}"


def face_pretrain(setup: Setup, *, progress: bool = True) -> RunResult:
    """The VGG-Face stand-in: VGG16 (at ``setup.width``, with the chapter's ``batch_norm``)
    pretrained on ``setup.pretrain_task`` (module note).

    ``pretrain_n`` ``wild`` faces of ``pretrain_identities`` people (a seed no expression
    set uses), all layers from scratch with Adam (:func:`fer.experiments.pretraining.pretrain`);
    only the conv base is reused.
    """
    build = partial(create_model, "manet_vgg16", img_size=setup.input_size, width=setup.width,
                    **_bn_kw(setup.batch_norm))
    result, _ = pretrain(setup, _run_name(setup, "face-pretrain"), build, task=setup.pretrain_task, variant="wild",
                         seed=setup.seed0, lr=1e-3, progress=progress, image_size=setup.input_size,
                         with_relevance=False)
    return result


def face_facts(setup: Setup, face: RunResult) -> dict[str, Any]:
    """What the :func:`face_pretrain` run ``face`` learned, for the pages
    (:func:`fer.experiments.pretraining.pretrain_facts`)."""
    return pretrain_facts(setup, face, task=setup.pretrain_task, variant="wild", seed=setup.seed0,
                          image_size=setup.input_size, with_relevance=False)


def _bn_kw(batch_norm: bool) -> dict[str, Any]:
    # Only passed when set, so that runs without batch norm keep their cache hashes.
    return {"batch_norm": True} if batch_norm else {}


def build_model(name: str, *, input_size: int, width: float = 1.0, weights: str | None = None,
                face_run: str | None = None, num_classes: int = 7, mask_source: str = "rasnet",
                batch_norm: bool = False) -> nn.Module:
    """A chapter model with its starting weights: ``None`` (scratch), ``"vggface"`` or
    ``"synfer-face"`` (the conv base of the :func:`face_pretrain` run ``face_run``, built
    with the same ``batch_norm``)."""
    kw: dict[str, Any] = {"num_classes": num_classes, "img_size": input_size, "width": width,
                          **_bn_kw(batch_norm)}
    if name == "manet":
        kw["mask_source"] = mask_source
    return _common.load_face_weights(create_model(name, **kw), weights, face_run)


def output_to_logits(outputs: Any) -> torch.Tensor | None:
    """Expression logits of the chapter's outputs; ``None`` for RASnet's (stage 1 has no classes)."""
    if isinstance(outputs, RasnetOutput):
        return None
    if isinstance(outputs, ManetOutput):
        return outputs.logits
    return outputs


def rasnet_loss(outputs: RasnetOutput, batch: Mapping[str, Any]) -> torch.Tensor:
    """Stage 1's loss: equations (2)-(3) between RASnet's masks and the batch's ``masks``."""
    return mask_loss(outputs.masks, batch["masks"])


def manet_forward(module: nn.Module, batch: Mapping[str, Any]) -> Any:
    """Forward for ``mask_source="gt"`` models: ``module(image, masks)``; others ``module(image)``."""
    if getattr(module, "mask_source", None) == "gt":
        return module(batch["image"], batch["masks"])
    return module(batch["image"])


def _epochs(iterations: int, n: int, batch_size: int) -> int:
    return max(1, math.ceil(iterations / max(1, math.ceil(n / batch_size))))


def train_config(setup: Setup, *, model: str, n_train: int, dataset: str = "raf", seed: int = 0,
                 pretrained: bool = True, mask_source: str = "rasnet") -> TrainConfig:
    """The paper's protocol for ``model`` on ``dataset`` (``"raf"`` or ``"ck"``).

    SGD (momentum 0.9, weight decay 5e-4), lr x ``gamma`` every ``*_step`` iterations,
    ``*_iterations`` per stage rounded up to whole epochs, no augmentation. ``manet`` with
    RASnet masks trains in two stages: ``rasnet`` (module ``rasnet``, loss ``mask``),
    then ``ersnet`` (RASnet frozen, cross-entropy).
    """
    iters, step = (setup.raf_iterations, setup.raf_step) if dataset == "raf" else (setup.ck_iterations,
                                                                                    setup.ck_step)
    epochs = _epochs(iters, n_train, setup.batch_size)
    stages: list[Stage] = []
    if model == "manet" and mask_source == "rasnet":
        ras = _epochs(setup.ras_iterations or iters, n_train, setup.batch_size)
        stages = [Stage(epochs=ras, trainable=["rasnet"], module="rasnet", loss="mask", name="rasnet",
                        lr=setup.ras_lr),
                  Stage(epochs=epochs, frozen=["rasnet"], name="ersnet")]
    real = pretrained and not setup.synthetic
    # VGG-Face: its mean pixel, std 1 (in 0-255 units); the SynFER stand-in and scratch rows: 0.5 / 0.5.
    mean = tuple(m / 255.0 for m in VGGFACE_MEAN) if real else (0.5, 0.5, 0.5)
    decay = PAPER_TRAINING["weight_decay"] if setup.optimizer == "sgd" else 0.0
    std = (1 / 255.0,) * 3 if real else (0.5, 0.5, 0.5)
    return TrainConfig(epochs=sum(s.epochs for s in stages) if stages else epochs, stages=stages,
                       batch_size=setup.batch_size, optimizer=setup.optimizer, lr=setup.lr, momentum=0.9,
                       weight_decay=decay, schedule="step", schedule_unit="iteration",
                       step_size=step, gamma=setup.gamma, input_size=setup.input_size, mean=mean, std=std,
                       seed=seed, cpu=setup.resolved_device() == "cpu")


def run_model(setup: Setup, data: ChapterData, key: str, *, pretrained: bool = True, seed: int | None = None,
              dataset: str = "raf", tag: str = "", face: RunResult | None = None, mask_source: str = "rasnet",
              progress: bool = True) -> RunResult:
    """Train (or load) one row: ``key`` in :data:`MODELS` (``ours``, ``se``, ``vgg``).

    ``pretrained``: VGG-Face (``paper``) or its SynFER stand-in (``face``, trained here when
    not given). ``dataset`` picks the RAF-DB or CK+ schedule; ``tag`` names the fold.

    The run is tested on ``data.test`` under the name ``"test"``, as every chapter's runs
    are. The paper has no validation set; its test set is also the run's per-epoch monitor
    (``val_ds``: the ``val_*`` columns of the history, e.g. RASnet's stage-1 loss on
    held-out faces), which leaves the training exactly as it was.
    """
    name = MODELS[key]
    seed = setup.seed0 if seed is None else seed
    weights = None
    face_name = None
    if pretrained:
        if setup.synthetic:
            face = face if face is not None else face_pretrain(setup, progress=progress)
            weights, face_name = "synfer-face", face.path.name
        else:
            weights = "vggface"
    num_classes = len(data.classes)
    build = partial(build_model, name, input_size=setup.input_size, width=setup.width, weights=weights,
                    face_run=face_name, num_classes=num_classes, mask_source=mask_source,
                    **_bn_kw(setup.batch_norm))
    config = train_config(setup, model=name, n_train=len(data.train), dataset=dataset, seed=seed,
                          pretrained=pretrained, mask_source=mask_source)
    init = "pre" if pretrained else "scratch"
    what = f"{dataset}{tag}-{key}{'-gt' if mask_source == 'gt' else ''}-{init}-s{seed}"
    spec = {"model": name, "weights": weights, "width": setup.width, "face_run": face_name,
            "mask_source": mask_source, **_bn_kw(setup.batch_norm)}
    gt = mask_source == "gt"
    return run(_run_name(setup, what), config, build, data.train, data.test, eval_sets=data.eval_sets(),
               spec=spec, losses={"mask": rasnet_loss} if config.stages else None, output_to_logits=output_to_logits,
               forward_fn=manet_forward if gt else None, progress=progress)


def run_raf_rows(setup: Setup, data: ChapterData, *, face: RunResult | None = None, scratch: bool = True,
                 keys: Sequence[str] = ("ours", "se", "vgg"), progress: bool = True
                 ) -> dict[tuple[str, bool], list[RunResult]]:
    """Table 3's rows: every model in ``keys``, pre-trained (and from scratch), once per seed.

    Returns ``{(key, pretrained): [run per seed]}``.
    """
    if face is None and setup.synthetic:
        face = face_pretrain(setup, progress=progress)
    out: dict[tuple[str, bool], list[RunResult]] = {}
    for pre in (True, False) if scratch else (True,):
        for key in keys:
            out[(key, pre)] = [run_model(setup, data, key, pretrained=pre, seed=s, face=face, progress=progress)
                               for s in setup.seeds]
    return out


def runs_ck(setup: Setup) -> bool:
    """Whether ``setup`` trains on the CK+ stand-in at all (the demo profile does not: its
    ``folds`` is empty, to stay within the book's CPU budget)."""
    return bool(setup.folds)


def ck_not_run_text(setup: Setup) -> str:
    """What the CK+ pages say in place of the numbers a profile without CK+ runs does not measure."""
    return (f"not measured: the {setup.profile} profile trains no CK+ fold, to stay within the book's CPU budget "
            f"(the paper profile runs all {setup.num_folds})")


def run_ck_folds(setup: Setup, ck: CkData, *, face: RunResult | None = None,
                 keys: Sequence[str] = ("ours", "se", "vgg"), progress: bool = True) -> dict[str, list[RunResult]]:
    """Table 5's rows: every model in ``keys`` (pre-trained) on each fold in ``setup.folds``.

    Returns ``{key: [run per fold]}``, folds in ``setup.folds`` order.
    """
    if face is None and setup.synthetic and runs_ck(setup):
        face = face_pretrain(setup, progress=progress)
    out: dict[str, list[RunResult]] = {k: [] for k in keys}
    for fold in setup.folds:
        data = ck_fold_data(ck, fold, setup.num_folds)
        for key in keys:
            out[key].append(run_model(setup, data, key, dataset="ck", tag=f"f{fold}", face=face, seed=setup.seed0,
                                      progress=progress))
    return out


def summed_confusion(runs: Sequence[RunResult]) -> np.ndarray:
    """Test confusion counts summed over runs (folds)."""
    return np.sum([np.asarray(r.metrics["test"]["confusion"], dtype=np.int64) for r in runs], axis=0)


# =========================================================================== tables


def _acc(res: RunResult | None) -> float | None:
    return None if res is None else 100.0 * float(res.metrics["test"]["accuracy"])


def table_model(key: str) -> str:
    """The ``model`` that :func:`table3` and :func:`table5` give row ``key`` (``"ours"``, ``"se"``,
    ``"vgg"``, ...), for ``paper_vs_ours(baseline=...)``."""
    for r in (*TABLE3, *TABLE5):
        if r.key == key:
            return r.label
    raise ValueError(f"no row {key!r} in Table 3 or 5; rows: {sorted({r.key for r in (*TABLE3, *TABLE5)})}")


def table3(results: Mapping[tuple[str, bool], Sequence[RunResult]], setup: Setup) -> list[dict[str, Any]]:
    """Rows for :func:`fer.plots.paper_vs_ours`: Table 3 with ours (mean over seeds) where run.

    ``results[(key, pretrained)]`` = the runs (one per seed) of that row.
    """
    rows = []
    for r in TABLE3:
        for pre, paper in ((True, r.pretrained), (False, r.scratch)):
            if paper is None:
                continue
            runs = results.get((r.key, pre), ())
            accs = [_acc(x) for x in runs]
            init = ("VGG-Face" if not setup.synthetic else "SynFER-face stand-in") if pre else "from scratch"
            rows.append({"model": r.label, "initialisation": init if r.model else ("pre-trained" if pre else
                                                                                    "from scratch"),
                         "paper": paper, "ours": float(np.mean(accs)) if accs else None,
                         "ours sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                         "seeds": len(accs) or None})
    return rows


def table5(results: Mapping[str, Sequence[RunResult]]) -> list[dict[str, Any]]:
    """Rows for :func:`fer.plots.paper_vs_ours`: Table 5's three rows, ours = mean over the folds run."""
    rows = []
    for r in TABLE5:
        accs = [_acc(x) for x in results.get(r.key, ())]
        rows.append({"model": r.label, "paper": r.pretrained, "ours": float(np.mean(accs)) if accs else None,
                     "ours sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                     "folds": len(accs) or None})
    return rows


def paper_confusion(table: str = "4"):
    """Table 4 (RAF-DB) or Table 6 (CK+) as a ``DataFrame`` in % (paper's class order)."""
    import pandas as pd

    data, order = (TABLE4, TABLE4_ORDER) if str(table) == "4" else (TABLE6, TABLE6_ORDER)
    return pd.DataFrame(np.array(data, dtype=float), index=list(order), columns=list(order))


def reorder_confusion(counts: Any, classes: Sequence[str], order: Sequence[str]):
    """A counts matrix (rows true, canonical ``classes``) as row-% in the paper's ``order``."""
    import pandas as pd

    cm = np.asarray(counts, dtype=float)
    idx = [list(classes).index(c) for c in order]
    cm = cm[np.ix_(idx, idx)]
    rows = cm.sum(1, keepdims=True)
    pct = np.divide(100.0 * cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    return pd.DataFrame(pct, index=list(order), columns=list(order))


# =========================================================================== masks and region weights


def predicted_masks(model: nn.Module, images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """RASnet's masks (``B x 8 x s x s``) for uint8 ``images``: ``model`` is a ``manet`` or a RASnet."""
    ras = getattr(model, "rasnet", None) or model
    ras.eval()
    with torch.no_grad():
        return ras(model_input(images, config).to(next(ras.parameters()).device)).masks.float().cpu()


def mask_iou(model: nn.Module, ds: CachedDataset, config: TrainConfig, *, threshold: float = 0.5):
    """RASnet's mask quality per region on ``ds``: IoU of the thresholded masks with the
    ground truth (pooled over faces), and the mean squared error per cell (a ``DataFrame``)."""
    import pandas as pd

    pred = predicted_masks(model, ds.images, config)
    gt = ds.tensors["masks"].float()
    hard = pred >= threshold
    truth = gt >= 0.5
    inter = (hard & truth).sum(dim=(0, 2, 3)).double()
    union = (hard | truth).sum(dim=(0, 2, 3)).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    mse = (pred - gt).pow(2).mean(dim=(0, 2, 3))
    area = truth.float().mean(dim=(0, 2, 3))
    df = pd.DataFrame({"IoU": iou.numpy(), "MSE per cell": mse.numpy(), "ground-truth area": area.numpy()},
                      index=list(MANET_REGIONS))
    df.index.name = "region"
    return df


def region_weights(model: nn.Module, ds: CachedDataset, config: TrainConfig, classes: Sequence[str]):
    """Mean region weight ``q`` (the weight branch's output, read with a hook) per true
    expression: a ``DataFrame`` expressions x regions."""
    import pandas as pd

    model.eval()
    device = next(model.parameters()).device
    qs = []
    with torch.no_grad(), capture(model, {"q": model.attn.weight_branch}) as out:
        for i in range(0, len(ds), 128):
            model(model_input(ds.images[i:i + 128], config).to(device))
            qs.append(out["q"].float().cpu())
    q = torch.cat(qs).numpy()
    labels = ds.labels.numpy()
    rows = {c: q[labels == k].mean(0) for k, c in enumerate(classes) if (labels == k).any()}
    return pd.DataFrame(rows, index=list(MANET_REGIONS)).T


def ma_parameter_table(num_classes: int = 7, img_size: int = 224, width: float = 1.0):
    """Parameters of each part of ``manet`` and of the baselines (a ``DataFrame``)."""
    import pandas as pd

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    kw = {"num_classes": num_classes, "img_size": img_size, "width": width}
    ours, se, vgg = (create_model(n, **kw) for n in ("manet", "manet_vgg16_se", "manet_vgg16"))
    ma = ours.attn
    rows = [
        ("VGG16 conv blocks 1-5", count(vgg.features)),
        ("VGG16 fc layers (3)", count(vgg.head_hidden) + count(vgg.fc)),
        ("manet_vgg16 (VGG fine-tuning)", count(vgg)),
        ("SE block (VGG+SE)", count(se.attn)),
        ("manet_vgg16_se (VGG+SE)", count(se)),
        ("MA: one sub-branch (1x1 buffer + SE)", count(ma.branches[0])),
        ("MA: 8 sub-branches", sum(count(b) for b in ma.branches)),
        ("MA: weight-learning branch", count(ma.weight_branch)),
        ("MA block", count(ma)),
        ("RASnet", count(ours.rasnet)),
        ("manet (ERSnet + RASnet)", count(ours)),
    ]
    return pd.DataFrame(rows, columns=["part", "parameters"])


# =========================================================================== explanations


def identity_grid(setup: Setup, n_people: int, classes: Sequence[str], *, variant: str = "wild") -> CachedDataset:
    """The same ``n_people`` SynFER people showing each of ``classes`` at full intensity
    (rows: people, in ``classes`` order), with relevance maps and masks: Figures 6 and 8."""
    ds = SynFER(variant, "all" if variant == "ck" else "test", n=max(n_people * 3, 3), seed=setup.seed0 + 3000,
                image_size=setup.input_size, with_relevance=True)
    cls = list(ds.classes)
    items = []
    for p in range(n_people):
        for c in classes:
            item = ds.render(ds.with_expression(p * 3, c))
            item["label"] = cls.index(c)
            items.append(item)
    tensors = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("image", "landmarks", "relevance")}
    tensors["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    cached = CachedDataset(tensors, classes=ds.classes, source_fingerprint=f"{ds.fingerprint()}:grid{n_people}",
                           name="SynFER identity grid")
    return with_masks(cached, setup.input_size)


def mask_figure(images: torch.Tensor, maps: Mapping[str, Any], *, titles: Sequence[str] | None = None,
                cell: float = 1.4, alpha: float = 0.55):
    """Masks over their faces, cell by cell (nearest, 0 transparent to 1 opaque yellow): a row per
    entry of ``maps`` (name -> ``B x s x s`` in [0, 1]), a column per image, the faces on top."""
    import matplotlib.pyplot as plt

    from ..plots import to_hwc

    rows = ["face", *maps]
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n, cell * len(rows)), squeeze=False)
    for c in range(n):
        img = to_hwc(images[c])
        h, w = img.shape[:2]
        for r, name in enumerate(rows):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            if name != "face":
                m = np.asarray(torch.as_tensor(maps[name][c]).float())
                rgba = np.zeros((*m.shape, 4))
                rgba[..., 0], rgba[..., 1], rgba[..., 3] = 1.0, 0.85, alpha * np.clip(m, 0, 1)
                ax.imshow(rgba, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0 and titles is not None:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    return fig


def explain_set(setup: Setup, n: int, *, variant: str = "wild", progress: bool = False) -> CachedDataset:
    """``n`` class-balanced SynFER faces with relevance maps and masks, from a seed no run uses."""
    split = "all" if variant == "ck" else "test"
    ds = _common.explain_faces(variant, n, seed=setup.seed0, split=split, keys=_SYN_KEYS, progress=progress,
                               image_size=setup.input_size)
    return with_masks(ds, setup.input_size)


def gradcam_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig, *, targets: Any = None,
                 method: str = "gradcam") -> np.ndarray:
    """Grad-CAM at ``model.cam_layer`` (conv5_3's ReLU), ``B x S x S`` in [0, 1]."""
    return _common.gradcam_maps(model, images, config, targets=targets, method=method)


def guided_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig, *, targets: Any = None) -> np.ndarray:
    """Guided Grad-CAM (``B x S x S x C`` in [0, 1], 0.5 = no evidence)."""
    from ..explain import guided_gradcam

    return guided_gradcam(model, model_input(images, config), targets)


def localisation_table(models: Mapping[str, tuple[nn.Module, TrainConfig]], ds: CachedDataset):
    """Share of each model's Grad-CAM energy on SynFER's evidence regions (true class explained),
    the pointing game, and their chance levels (:func:`fer.explain.localisation_scores`)."""
    def maps(model: nn.Module, config: TrainConfig, explain: Any) -> dict[str, np.ndarray]:
        return {"Grad-CAM": gradcam_maps(model, ds.images, config, targets=explain)}

    return _common.localisation_table(models, ds, maps, map_column=None)


def required_weights(setup: Setup) -> list[WeightFile]:
    """The pretrained files the chapter loads in ``setup``'s profile: VGG-Face in ``paper``
    (the pre-trained column), none in the SynFER profiles (their stand-in is trained here)."""
    return [] if setup.synthetic else [vggface_weight_file()]
