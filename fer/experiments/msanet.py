"""The MSA-Net chapter (``book/msanet/``): protocol, data, runs, tables and explanations.

Paper: C. Ghadai and D. Patra, *Multi-branch Multi-Scale Attention Network for Facial
Expression Recognition (FER) in-the-Wild*, 2022. The models are in :mod:`fer.models.msanet`,
the loss of equation (2) in :class:`fer.losses.BetaCrossEntropy`; this module holds what the
chapter's notebooks share:

* the paper's reported numbers as data: :data:`TABLE1` (RAF-DB), :data:`TABLE2`
  (AffectNet), :data:`PROPOSED` (accuracy and average accuracy of MSA-Net),
  :data:`TABLE3` (the ablation, with its Pose-AffectNet columns);
* :class:`Setup`, built from a notebook's parameters, and :func:`profile_setups`;
* :func:`load_data`: RAF-DB / AffectNet from ``data_root`` in ``paper``, SynFER's ``wild``
  (RAF-DB-like) and ``affectnet`` (AffectNet-like) stand-ins otherwise, with each test
  face's head yaw for the pose subsets (:func:`pose_subsets`);
* :func:`train_config`, :func:`run_row`: one protocol for the four rows of Table 3
  (baseline, MS, AS, full), trained through :func:`fer.runs.run` so that every page
  shares one cache; :func:`five_crop_forward`: the paper's crops (:func:`fer.data.transforms.five_crop`);
* table builders (:func:`comparison_table`, :func:`ablation_frame`, :func:`ablation_table`)
  and explanation helpers (:func:`effective_receptive_field`, :func:`gradcam_maps`,
  :func:`branch_spatial_maps`, :func:`localisation_table`).

.. note::
   **Crops** ("random crops (central, corner, and horizontal flips)"). The training loop's
   :class:`~fer.data.transforms.InputTransform` only flips and shifts, so the crops live in this
   module's ``forward_fn`` (:func:`five_crop_forward`): in training each face is cut to
   a ``crop`` fraction of its side (0.875, i.e. 196 of 224 px) at one of five positions
   (centre or a corner, drawn uniformly) and resized back to the input size; flips come
   from ``TrainConfig.hflip``. Evaluation sees the whole face (no test-time crops: the
   paper does not mention any).

.. note::
   **Unstated training details.** Epochs: not given; the ``paper`` profile trains 30
   epochs (three steps of the "divided by 10 every 10 epochs" schedule). Weight decay:
   not given; 0. Pre-training: not given; the ``paper`` profile starts the ResNet-18
   pre-extractor (and the baseline's ``layer3``/``layer4``) from torchvision's ImageNet
   weights, the common practice for ResNet-18 FER models. The SynFER profiles download
   nothing: they start the same modules from a SynFER pretraining (next note), with a
   reduced input size, width and schedule stated on each page, and with **Adam** instead
   of SGD: in a trial at the demo's scale (1,500 faces,
   64 px, 5-8 epochs) SGD with momentum at lr 0.01-0.2 never left the majority-class
   plateau (mean class accuracy at chance), while Adam at 1e-3 to 3e-3 left it after 5-7 epochs
   with residual blocks initialised as identities (``zero_init_last``). No validation set
   is used for model selection: the final weights are tested.

.. note::
   **"ImageNet-pretrained" without ImageNet** (SynFER profiles). With ``pretrain_task``
   set, one ResNet-18 at the chapter's ``width`` (:func:`fer.models.msanet.resnet18_classifier`)
   is pretrained on SynFER ``wild`` faces the expression data never uses
   (:func:`trunk_pretrain`, :func:`fer.experiments.pretraining.pretrain`), cached as one
   run, and every row loads it where the ``paper`` profile loads ImageNet's weights
   (:func:`fer.models.msanet.load_resnet18`: the pre-extractor, and the baseline's
   ``layer3``/``layer4``). The demo's task is ``"landmarks"``. Measured with seed 0 at
   3,000 RAF-like faces and 8 epochs (issue 17): from scratch the baseline and MSA-Net
   reached 50 and 49 % test accuracy (the majority class holds 41 %), from the landmark
   pretraining 59 and 64 %. A face task, not ImageNet's objects: the banners say so.

.. note::
   **Hierarchy inside a block.** Equation (1) sums ``P_i(X_i)`` cumulatively, while the text
   (and Res2Net, which it follows) has every subset "attain a larger receptive field": each
   ``P_i`` receives ``X_i + Y_(i-1)``. The ``paper`` profile follows the text
   (``hierarchy="res2net"``, also in ``book/profiles.yml``); the literal equation is the
   alternative the Method page measures (effective receptive fields of both). The SynFER
   profiles keep ``"equation"``, the setting their schedules were tried with.

.. note::
   **Split sizes.** The paper trains and tests on 12,264 / 3,061 RAF-DB images and on
   283,901 / 2,992 AffectNet images (:data:`PAPER_SPLITS`) without saying which images of
   the official partitions it left out; the ``paper`` profile uses the official ones as the
   loaders read them, 12,271 / 3,068 and 283,901 / 3,500 (AffectNet's seven-class
   validation set; :data:`OFFICIAL_SPLITS`), so its test sets hold 7 and 508 more faces.

.. note::
   **Pose-AffectNet.** The paper's pose columns are Wang et al.'s Pose-AffectNet lists
   (AffectNet validation faces with pose larger than 30 / 45 degrees). SynFER knows each
   face's yaw: :func:`ablation_frame` scores the AffectNet-like test faces with
   ``|yaw| >= 30`` and ``>= 45`` degrees from the same runs' predictions (no extra
   training), and the SynFER profiles' pages put in their place ``wild`` faces turned that
   far, scored by the RAF-like runs (:func:`fer.experiments.probes.msanet_pose`: the
   AffectNet-like runs stay near chance at this scale, and the demo does not train them).
   In the ``paper`` profile the lists are read from ``<data_root>/affectnet/pose_affectnet/``
   (``pose_30.txt``, ``pose_45.txt``: one ``subDirectory_filePath`` per line).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..data import CLASSES_7
from ..data.cached import CachedDataset, cache_dataset
from ..data.datasets import DATASETS as _LOADERS
from ..data.synfer import SynFER
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, five_crop
from ..explain import capture
from .._dry_run import dry_run
from ..losses import BETA, BetaCrossEntropy
from ..models import WeightFile, create_model, torchvision_weight_file
from ..models.msanet import MsaNet, load_resnet18, resnet18_classifier
from ..runs import Run, RunResult, run
from ..train import TrainConfig
from . import _common
from ._common import ChapterSplits, ProfileSetup, model_input, random_subset, require_data_root
from ._common import profile_setups as _profile_setups
from .pretraining import backbone_facts, backbone_pretrain, check_stand_in, start_phrase, start_run, start_text

__all__ = [
    "required_weights",
    "PAPER",
    "PaperMethod",
    "TABLE1",
    "TABLE2",
    "PROPOSED",
    "TABLE3",
    "TABLE3_COLUMNS",
    "PAPER_PROTOCOL",
    "PAPER_SPLITS",
    "OFFICIAL_SPLITS",
    "ROWS",
    "ROW_LABELS",
    "DATASETS",
    "POSE_THRESHOLDS",
    "Setup",
    "ChapterData",
    "profile_setups",
    "load_data",
    "pose_subsets",
    "five_crop",
    "five_crop_forward",
    "trunk_pretrain",
    "trunk_text",
    "build_model",
    "train_config",
    "run_row",
    "subset_metrics",
    "comparison_table",
    "proposed_vs_ours",
    "datasets_text",
    "measured_text",
    "ablation_frame",
    "ablation_table",
    "parameter_table",
    "effective_receptive_field",
    "erf_summary",
    "explain_set",
    "model_input",
    "gradcam_maps",
    "branch_spatial_maps",
    "localisation_table",
]

PAPER = ("C. Ghadai and D. Patra, Multi-branch Multi-Scale Attention Network for Facial Expression "
         "Recognition (FER) in-the-Wild, 2022")


@dataclass(frozen=True)
class PaperMethod:
    """One row of the paper's Table 1 or 2 (accuracy in %)."""

    method: str
    backbone: str
    year: int
    accuracy: float


#: Table 1: RAF-DB accuracy of the methods the paper compares with, and its own.
TABLE1: tuple[PaperMethod, ...] = (
    PaperMethod("RLPS", "10-layer DCNN", 2020, 72.89),
    PaperMethod("Sadeghi & Raie", "-", 2019, 76.23),
    PaperMethod("SCN", "ResNet-18", 2020, 78.31),
    PaperMethod("pACNN", "Densenet", 2018, 83.27),
    PaperMethod("ALT", "-", 2019, 84.50),
    PaperMethod("gACNN", "VGG-16", 2019, 85.07),
    PaperMethod("Proposed method", "Manually designed", 2022, 86.32),
)
#: Table 2: AffectNet accuracy.
TABLE2: tuple[PaperMethod, ...] = (
    PaperMethod("pACNN", "Densenet", 2018, 55.33),
    PaperMethod("gACNN", "VGG-16", 2019, 58.78),
    PaperMethod("LDL-ALSG", "ResNet-50", 2020, 59.35),
    PaperMethod("VGG-FACE", "VGG-16", 2020, 60.00),
    PaperMethod("FMPN", "Inception-V3", 2019, 61.52),
    PaperMethod("OADN", "Manually designed", 2020, 61.89),
    PaperMethod("DDA-Loss", "DCNN", 2020, 62.34),
    PaperMethod("LLHF", "VGG", 2018, 63.31),
    PaperMethod("Proposed method", "Manually designed", 2022, 63.61),
)
#: Section 3.2: MSA-Net's accuracy and average (mean per-class) accuracy, in %.
PROPOSED: dict[str, dict[str, float]] = {
    "raf": {"accuracy": 86.32, "mean_class_accuracy": 79.88},
    "affectnet": {"accuracy": 63.61, "mean_class_accuracy": 57.63},
}
#: Columns of Table 3 (our keys): RAF-DB, AffectNet, Pose-AffectNet >= 30 and >= 45 degrees.
TABLE3_COLUMNS = ("raf", "affectnet", "pose30", "pose45")
#: Table 3: accuracy in % of the one-branch ablations (the full network is not in it).
TABLE3: dict[str, dict[str, float]] = {
    "baseline": {"raf": 82.59, "affectnet": 59.4, "pose30": 53.55, "pose45": 52.39},
    "ms": {"raf": 84.33, "affectnet": 61.23, "pose30": 54.85, "pose45": 53.66},
    "as": {"raf": 85.36, "affectnet": 62.11, "pose30": 55.77, "pose45": 54.81},
}
#: What the paper states about training (Section 3.1).
PAPER_PROTOCOL: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.9, "batch_size": 32, "lr": 0.1,
                                  "step_size": 10, "gamma": 0.1, "input_size": 224, "beta": BETA,
                                  "crops": "centre and four corners", "hflip": True}
#: Table 3's rows -> model names.
ROWS: dict[str, str] = {"baseline": "msanet_baseline", "ms": "msanet_ms", "as": "msanet_as", "full": "msanet"}
ROW_LABELS: dict[str, str] = {"baseline": "Baseline (ResNet-18)", "ms": "MS (1 branch, multi-scale)",
                              "as": "AS (1 branch, multi-scale + CBAM)", "full": "MSA-Net (3 branches)"}


@dataclass(frozen=True)
class _DatasetInfo:
    synfer: str
    real: str
    paper_name: str
    stand_in: str


DATASETS: dict[str, _DatasetInfo] = {
    "raf": _DatasetInfo("wild", "rafdb", "RAF-DB", "SynFER wild (RAF-DB-like)"),
    "affectnet": _DatasetInfo("affectnet", "affectnet", "AffectNet", "SynFER affectnet (AffectNet-like)"),
}
#: Pose subsets: name -> minimum |yaw| in degrees.
POSE_THRESHOLDS: dict[str, int] = {"pose30": 30, "pose45": 45}
#: Section 3.1's split sizes, (train, test) images: "12264 as training samples, and 3061 as
#: testing samples" of RAF-DB; "283,901 images as training data and 2992 images as test data"
#: of AffectNet (seven classes). Which RAF-DB images (7 + 7) or AffectNet test images (508)
#: the paper left out is not said.
PAPER_SPLITS: dict[str, tuple[int, int]] = {"raf": (12264, 3061), "affectnet": (283901, 2992)}


def _official(loader: str, split: str) -> int:
    counts = _LOADERS[loader].published.counts[split]
    return sum(v for c, v in counts.items() if c in CLASSES_7)


#: The split sizes this chapter uses: the official partitions, as the loaders read them
#: (their published counts, seven classes): RAF-DB 12,271 / 3,068; AffectNet's training list
#: 283,901 and its validation set, 3,500 (AffectNet's test set is not public).
OFFICIAL_SPLITS: dict[str, tuple[int, int]] = {k: (_official(info.real, "train"), _official(info.real, "test"))
                                               for k, info in DATASETS.items()}
_COLUMN_NAMES = {"raf": "RAF-DB", "affectnet": "AffectNet", "pose30": "Pose-AffectNet >= 30°",
                 "pose45": "Pose-AffectNet >= 45°"}
_IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)


# =========================================================================== setup


@dataclass(frozen=True)
class Setup(ProfileSetup):
    """A profile's choices for the chapter, from the notebooks' ``parameters`` cell.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data_root: folder holding ``rafdb/`` and ``affectnet/`` (``paper``).
        n_train, n_test: faces per split and dataset (``None``: all).
        input_size: model input side (paper: 224).
        width: ResNet-18 channel multiplier (paper: 1.0).
        epochs, batch_size, lr, momentum, step_size, gamma: the step schedule
            (paper: ?, 32, 0.1, 0.9, 10, 0.1).
        optimizer: ``"sgd"`` (paper, with ``momentum``) or ``"adam"`` (the SynFER profiles:
            see the module note).
        beta: equation (2)'s scale (paper: 0.6).
        crop: side of the five training crops as a fraction of the input (1: no crops).
        datasets: the training sets the pages train on, from :data:`DATASETS` (``raf``
            always: the explanation page and the pose columns use it). The demo leaves
            out the AffectNet-like set (its runs stayed near chance and one seed carried
            no verdict); the comparison page then shows the paper's Table 2 alone.
        seeds: training seeds of the ablation on the RAF-like set (the first one is used by
            the comparison and explanation pages); ``affectnet_seeds``: on the
            AffectNet-like set (``None``: the same).
        hierarchy: equation (1) as printed (``"equation"``) or the text's reading, Res2Net's
            (``"res2net"``); ``None`` (default): the profile's, ``res2net`` in ``paper`` and
            ``equation`` in the SynFER profiles (module note).
        zero_init_last: start every residual block as an identity (last BN weight 0), as
            timm's res2net and torchvision's ``zero_init_residual`` can; not in the paper.
        pretrained: ImageNet weights in the pre-extractor (``paper``: yes; SynFER: no).
        pretrain_task: the SynFER profiles' stand-in for ImageNet (module note): a task of
            :data:`fer.experiments.pretraining.PRETRAIN_TASKS`, or ``None`` (from scratch;
            ``paper``).
        pretrain_n, pretrain_epochs, pretrain_identities: that pretraining's faces, epochs
            and people.
        data_seed: seed of the SynFER stand-ins.
        device: ``auto``, ``cpu``, ``cuda``.
    """

    chapter: ClassVar[str] = "msanet"

    profile: str = "smoke"
    data_root: str | None = None
    n_train: int | None = 128
    n_test: int | None = 96
    input_size: int = 48
    width: float = 0.125
    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 0.002
    momentum: float = 0.9
    step_size: int = 10
    gamma: float = 0.1
    beta: float = BETA
    crop: float = 0.875
    datasets: tuple[str, ...] = ("raf", "affectnet")
    seeds: tuple[int, ...] = (0,)
    affectnet_seeds: tuple[int, ...] | None = None
    hierarchy: str | None = None
    zero_init_last: bool = True
    pretrained: bool = False
    pretrain_task: str | None = "landmarks"
    pretrain_n: int = 96
    pretrain_epochs: int = 1
    pretrain_identities: int = 8
    data_seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.profile not in ("smoke", "demo", "paper"):
            raise ValueError(f"profile must be smoke, demo or paper, got {self.profile!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown or "raf" not in self.datasets:
            raise ValueError(f"datasets must include 'raf' and name only {list(DATASETS)}, got {list(self.datasets)} "
                             f"(book/profiles.yml, msanet)")
        object.__setattr__(self, "datasets", tuple(d for d in DATASETS if d in self.datasets))  # in table order
        if self.affectnet_seeds is not None:
            object.__setattr__(self, "affectnet_seeds", tuple(int(s) for s in self.affectnet_seeds))
        if not self.seeds:
            raise ValueError("seeds needs at least one seed")
        if not 0 < self.crop <= 1:
            raise ValueError(f"crop must be in (0, 1], got {self.crop}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.hierarchy is None:
            object.__setattr__(self, "hierarchy", "res2net" if self.profile == "paper" else "equation")
        if self.hierarchy not in ("equation", "res2net"):
            raise ValueError(f"hierarchy must be 'equation' or 'res2net', got {self.hierarchy!r}")
        if self.pretrained and self.synthetic:
            raise ValueError("pretrained ImageNet weights are for the paper profile (the SynFER profiles download "
                             "nothing: they start from pretrain_task)")
        check_stand_in(self, chapter="msanet")

    @property
    def synthetic(self) -> bool:
        """``True`` in the SynFER profiles (``smoke``, ``demo``)."""
        return self.profile != "paper"

    def seeds_for(self, dataset: str) -> tuple[int, ...]:
        """Training seeds of the ablation on ``dataset`` (``raf`` or ``affectnet``)."""
        if dataset == "affectnet" and self.affectnet_seeds is not None:
            return self.affectnet_seeds
        return self.seeds

    def scale(self, data: Mapping[str, ChapterData] | ChapterData | None = None) -> str:
        """One line for the page banner: sizes, input, width, schedule."""
        if isinstance(data, ChapterData):
            data = {data.dataset: data}
        sizes = ("; ".join(f"{DATASETS[k].paper_name}-like {len(d.train)}/{len(d.test)}" if self.synthetic
                           else f"{DATASETS[k].paper_name} {len(d.train)}/{len(d.test)}" for k, d in data.items())
                 + " faces (train/test)") if data else f"n = {self.n_train}/{self.n_test}"
        width = "full-width ResNet-18" if self.width == 1 else f"ResNet-18 channels x {self.width:g}"
        start = start_phrase(self, real="ImageNet pre-extractor")
        opt = "SGD (momentum 0.9)" if self.optimizer == "sgd" else "Adam"
        return (f"{sizes}; {self.input_size} px; {width}, {start}; {opt} lr {self.lr:g} (/10 every "
                f"{self.step_size} epochs), {self.epochs} epochs, batch {self.batch_size}; beta {self.beta:g}")


def profile_setups(root: str | Path | None = None) -> dict[str, Setup]:
    """Every profile's :class:`Setup`: ``smoke`` = the defaults, ``demo``/``paper`` from ``book/profiles.yml``."""
    return _profile_setups(Setup, root)


# =========================================================================== data


@dataclass
class ChapterData(ChapterSplits):
    """One dataset's train and test splits (uint8 cache), the test faces' |yaw|, and the source."""

    dataset: str
    train: CachedDataset
    test: CachedDataset
    source: str
    abs_yaw: np.ndarray | None = None
    pose_indices: dict[str, np.ndarray] | None = None
    classes: tuple[str, ...] = CLASSES_7


def _data_root(setup: Setup, dataset: str) -> str:
    return require_data_root(setup, uses=f"trains on {DATASETS[dataset].paper_name}", fix="place RAF-DB under "
                             "<DATA_ROOT>/rafdb/ and AffectNet under <DATA_ROOT>/affectnet/ (see data/README.md)")


def load_data(setup: Setup, dataset: str, *, progress: bool = True) -> ChapterData:
    """RAF-DB / AffectNet (``paper``) or their SynFER stand-ins, train and test.

    Args:
        dataset: ``"raf"`` or ``"affectnet"``.

    The SynFER stand-ins are rendered at ``setup.input_size`` with the real dataset's class
    proportions; ``abs_yaw`` holds each test face's |yaw| in degrees.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    info = DATASETS[dataset]
    if setup.synthetic:
        parts, yaw = {}, None
        for split, n in (("train", setup.n_train), ("test", setup.n_test)):
            ds = SynFER(info.synfer, split, n=n, seed=setup.data_seed, image_size=setup.input_size,
                        with_relevance=False)
            parts[split] = cache_dataset(ds, progress=progress, desc=f"SynFER {info.synfer} {split}")
            if split == "test":
                yaw = np.abs(np.array([ds.describe(i)["yaw"] for i in range(len(ds))], dtype=np.float64))
        pose = {k: np.flatnonzero(yaw >= t) for k, t in POSE_THRESHOLDS.items()} if dataset == "affectnet" else None
        return ChapterData(dataset, parts["train"], parts["test"],
                           source=f"{info.stand_in}, {setup.input_size} px", abs_yaw=yaw, pose_indices=pose)
    from ..data import load_dataset

    root = _data_root(setup, dataset)
    raw_test = load_dataset(info.real, root, "test", image_size=setup.input_size)
    # decoded once: in memory, or on disk under $FER_CACHE when over the memory budget (AffectNet's 284K faces)
    parts = {"train": random_subset(cache_dataset(load_dataset(info.real, root, "train", image_size=setup.input_size),
                                            progress=progress, desc=f"{info.paper_name} train", num_workers=None),
                              setup.n_train, setup.data_seed),
             "test": cache_dataset(raw_test, progress=progress, desc=f"{info.paper_name} test", num_workers=None)}
    pose = _pose_affectnet(root, raw_test) if dataset == "affectnet" else None
    return ChapterData(dataset, parts["train"], parts["test"],
                       source=f"{info.paper_name} from {Path(root) / info.real}", pose_indices=pose)


def _pose_affectnet(root: str, test: Any) -> dict[str, np.ndarray]:
    folder = Path(root) / "affectnet" / "pose_affectnet"
    names = {}
    images_dir = Path(root) / "affectnet"
    for i, s in enumerate(test.samples):
        p = Path(s.path)
        try:
            rel = p.relative_to(images_dir / "Manually_Annotated_Images")
        except ValueError:
            rel = Path(p.parent.name) / p.name
        names[rel.as_posix()] = i
    out = {}
    for key, t in POSE_THRESHOLDS.items():
        f = folder / f"pose_{t}.txt"
        if not f.is_file():
            raise FileNotFoundError(
                f"Pose-AffectNet list {f} not found. Fix: save Wang et al.'s Pose-AffectNet list of AffectNet "
                f"validation images with pose > {t} degrees (https://github.com/kaiwang960112/Challenge-condition-"
                f"FER-dataset) as {f}, one subDirectory_filePath per line")
        wanted = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        out[key] = np.array(sorted(names[w] for w in wanted if w in names), dtype=np.int64)
    return out


def pose_subsets(data: ChapterData) -> dict[str, np.ndarray]:
    """Test-set indices of the pose subsets (``pose30``, ``pose45``) of the AffectNet(-like) data."""
    if data.pose_indices is None:
        raise ValueError(f"pose subsets exist for the AffectNet(-like) data only, not {data.dataset!r}")
    return data.pose_indices


# =========================================================================== crops, models and runs


def five_crop_forward(module: nn.Module, batch: Mapping[str, Any], *, crop: float = 0.875) -> Any:
    """``forward_fn`` for :func:`fer.train.fit`: :func:`five_crop` in training, the whole face otherwise."""
    x = batch["image"]
    if module.training and crop < 1:
        x = five_crop(x, crop)
    return module(x)


def trunk_pretrain(setup: Setup, *, progress: bool = True) -> RunResult:
    """The SynFER stand-in for ImageNet (module note): one ResNet-18 at ``setup.width``
    pretrained on ``setup.pretrain_task`` at ``input_size``, with Adam at ``lr``
    (:func:`fer.experiments.pretraining.backbone_pretrain`), shared by every row."""
    return backbone_pretrain(setup, partial(resnet18_classifier, width=setup.width), seed=setup.data_seed,
                             lr=setup.lr, image_size=setup.input_size, progress=progress)


def trunk_text(setup: Setup, trunk: RunResult | None = None) -> str:
    """Where this profile's rows start, as a page sentence: ImageNet (``paper``), the
    :func:`trunk_pretrain` run ``trunk`` with what it learned, or scratch."""
    facts = None if trunk is None else backbone_facts(setup, trunk, seed=setup.data_seed, image_size=setup.input_size)
    return start_text(setup, facts, what="The pre-extractor of every row (the baseline: all four stages)",
                      network=f"ResNet-18 at width {setup.width:g}",
                      real="Every row starts its pre-extractor (the baseline all four stages) from torchvision's "
                      "ImageNet ResNet-18, the common practice the paper's protocol implies.")


def build_model(row: str, *, input_size: int, width: float = 1.0, hierarchy: str = "equation",
                zero_init_last: bool = False, pretrained: bool = False, num_classes: int = 7,
                trunk_run: str | None = None) -> nn.Module:
    """Table 3's row ``row`` (``baseline``, ``ms``, ``as``, ``full``) at this chapter's scale;
    with ``trunk_run`` (a :func:`trunk_pretrain` run folder, or its name under the runs root)
    its ResNet-18 modules start from that run's weights."""
    if row not in ROWS:
        raise ValueError(f"row must be one of {list(ROWS)}, got {row!r}")
    kw: dict[str, Any] = {"num_classes": num_classes, "img_size": input_size, "width": width,
                          "zero_init_last": zero_init_last}
    if row != "baseline":
        kw["hierarchy"] = hierarchy
    model = create_model(ROWS[row], pretrained=pretrained, **kw)
    if trunk_run is not None:
        load_resnet18(model, Run.load(trunk_run).checkpoint()["model"])
    return model


def train_config(setup: Setup, *, seed: int | None = None) -> TrainConfig:
    """The paper's protocol at this profile's scale: SGD (momentum) or Adam, step decay, flips."""
    mean, std = _IMAGENET if setup.pretrained else ((0.5,) * 3, (0.5,) * 3)
    return TrainConfig(epochs=setup.epochs, batch_size=setup.batch_size, optimizer=setup.optimizer, lr=setup.lr,
                       momentum=setup.momentum, weight_decay=0.0, schedule="step", step_size=setup.step_size,
                       gamma=setup.gamma, hflip=True, input_size=setup.input_size, mean=mean, std=std,
                       seed=setup.seeds[0] if seed is None else int(seed), cpu=setup.resolved_device() == "cpu")


def run_row(setup: Setup, data: ChapterData, row: str, *, seed: int | None = None,
            progress: bool = True) -> RunResult:
    """Train (or load) row ``row`` on ``data`` with ``seed`` (default: ``setup.seeds[0]``)."""
    seed = setup.seeds[0] if seed is None else int(seed)
    trunk = start_run(setup, trunk_pretrain, progress=progress)
    build = partial(build_model, row, input_size=setup.input_size, width=setup.width, hierarchy=setup.hierarchy,
                    zero_init_last=setup.zero_init_last, pretrained=setup.pretrained, trunk_run=trunk)
    config = train_config(setup, seed=seed)
    spec = {"row": row, "model": ROWS[row], "width": setup.width, "hierarchy": setup.hierarchy,
            "zero_init_last": setup.zero_init_last, "pretrained": setup.pretrained, "trunk_run": trunk,
            "crop": setup.crop, "beta": setup.beta}
    return run(f"msanet-{setup.profile}-{data.dataset}-{row}-s{seed}", config, build, data.train,
               eval_sets=data.eval_sets(), spec=spec, loss_fn=BetaCrossEntropy(setup.beta),
               forward_fn=partial(five_crop_forward, crop=setup.crop), progress=progress)


def subset_metrics(result: RunResult, indices: np.ndarray | None = None, split: str = "test") -> dict[str, float]:
    """Accuracy and mean per-class accuracy (in %) of a run on ``split`` or its subset ``indices``.

    A dry run scores only the first faces of ``split`` (:data:`fer._dry_run.EVAL_BATCHES`
    batches): ``indices`` past them are left out. In a real run an index past the
    predictions is an error.
    """
    preds = result.run.predictions()[split]
    p, t = preds["predictions"].numpy(), preds["targets"].numpy()
    if indices is not None:
        indices = np.asarray(indices)
        if dry_run():
            indices = indices[indices < len(t)]
        p, t = p[indices], t[indices]
    if len(t) == 0:
        return {"accuracy": float("nan"), "mean_class_accuracy": float("nan"), "n": 0}
    per_class = [float((p[t == c] == c).mean()) for c in np.unique(t)]
    return {"accuracy": 100.0 * float((p == t).mean()), "mean_class_accuracy": 100.0 * float(np.mean(per_class)),
            "n": int(len(t))}


# =========================================================================== tables


def comparison_table(dataset: str, ours: RunResult | None = None, *, label: str = "MSA-Net, ours"):
    """Table 1 (``raf``) or 2 (``affectnet``) as the paper prints it, with our row appended."""
    import pandas as pd

    table = TABLE1 if dataset == "raf" else TABLE2
    rows = [{"method": m.method, "backbone": m.backbone, "year": m.year, "acc. (%)": m.accuracy,
             "source": "paper"} for m in table]
    if ours is not None:
        rows.append({"method": label, "backbone": "ResNet-18 stem + 3 branches", "year": None,
                     "acc. (%)": subset_metrics(ours)["accuracy"], "source": "ours (this profile's data)"})
    return pd.DataFrame(rows)


_STAND_IN_NAMES = {"raf": "the RAF-like set", "affectnet": "the AffectNet-like set"}


def _set_name(setup: Setup, dataset: str) -> str:
    return _STAND_IN_NAMES[dataset] if setup.synthetic else DATASETS[dataset].paper_name


def datasets_text(setup: Setup) -> str:
    """The sets ``setup`` trains on, in words, and what a profile that leaves one out leaves out."""
    trained = " and ".join(_set_name(setup, d) for d in setup.datasets)
    left = [d for d in DATASETS if d not in setup.datasets]
    if not left:
        return trained
    return (f"{trained} only: the {setup.profile} profile leaves out " + " and ".join(_set_name(setup, d) for d in left)
            + " to stay within the book's CPU budget (the paper profile trains on every set)")


def measured_text(setup: Setup, dataset: str, value: str) -> str:
    """``value`` (a number as the page prints it) when ``setup`` trains on ``dataset``, else
    a phrase saying that this profile does not measure it."""
    if dataset in setup.datasets:
        return value
    return f"not measured (the {setup.profile} profile does not train on {_set_name(setup, dataset)})"


def proposed_vs_ours(results: Mapping[str, RunResult], setup: Setup) -> list[dict[str, Any]]:
    """Rows for :func:`fer.plots.paper_vs_ours`: accuracy and average accuracy per dataset."""
    out = []
    for dataset, res in results.items():
        m = subset_metrics(res)
        for key, name in (("accuracy", "accuracy"), ("mean_class_accuracy", "average accuracy")):
            out.append({"model": "MSA-Net", "dataset": DATASETS[dataset].paper_name,
                        "ours on": DATASETS[dataset].stand_in if setup.synthetic else DATASETS[dataset].paper_name,
                        "metric": name, "paper": PROPOSED[dataset][key], "ours": m[key]})
    return out


def ablation_frame(results: Mapping[tuple[str, str, int], RunResult], data: Mapping[str, ChapterData]):
    """Long ``DataFrame``: one row per (row, column, seed) with accuracy and mean class accuracy in %.

    ``results`` maps ``(row, dataset, seed)`` to runs; the pose columns come from the
    AffectNet(-like) runs' test predictions.
    """
    import pandas as pd

    recs = []
    for (row, dataset, seed), res in results.items():
        cols: dict[str, np.ndarray | None] = {dataset: None}
        if dataset == "affectnet":
            cols.update(pose_subsets(data["affectnet"]))
        for col, idx in cols.items():
            m = subset_metrics(res, idx)
            recs.append({"row": row, "column": col, "seed": seed, **m})
    return pd.DataFrame(recs)


def ablation_table(frame, *, metric: str = "accuracy"):
    """Table 3's layout: per row and column, paper's number, our mean and std over seeds, seeds."""
    import pandas as pd

    out = []
    for row in ROWS:
        for col in TABLE3_COLUMNS:
            sub = frame[(frame["row"] == row) & (frame["column"] == col)]
            vals = sub[metric].to_numpy(dtype=float)
            out.append({"method": ROW_LABELS[row], "column": _COLUMN_NAMES[col],
                        "paper": TABLE3.get(row, {}).get(col) if metric == "accuracy" else None,
                        "ours (mean)": float(np.mean(vals)) if len(vals) else None,
                        "ours (std)": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                        "seeds": len(vals), "test faces": int(sub["n"].iloc[0]) if len(sub) else None})
    return pd.DataFrame(out)


def parameter_table(*, img_size: int = 224, width: float = 1.0):
    """Parameters of each part of every Table 3 model (``DataFrame``)."""
    import pandas as pd

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    rows = []
    for row, name in ROWS.items():
        m = create_model(name, num_classes=7, img_size=img_size, width=width)
        rec: dict[str, Any] = {"row": ROW_LABELS[row], "model": name, "pre-extractor": count(m.stem)}
        if isinstance(m, MsaNet):
            rec["branches (multi-scale)"] = sum(count(b.blocks) for b in m.branches)
            rec["CBAM"] = sum(count(b.attn) for b in m.branches)
        else:
            rec["layer3 + layer4"] = count(m.layer3) + count(m.layer4)
        rec["classifier"] = count(m.fc)
        rec["total"] = count(m)
        rows.append(rec)
    df = pd.DataFrame(rows).fillna(0)
    cols = ["row", "model", "pre-extractor", "layer3 + layer4", "branches (multi-scale)", "CBAM", "classifier", "total"]
    return df[cols].astype({c: int for c in cols[2:]})


# =========================================================================== receptive fields


def effective_receptive_field(model: MsaNet, branch: int, *, img_size: int = 224, n: int = 4,
                              seed: int = 0) -> np.ndarray:
    """Mean |d (centre unit of branch ``branch``'s multi-scale module) / d input| over ``n`` random inputs.

    Measured at the output of the branch's multi-scale module (``branch.blocks``), before
    CBAM: CBAM's channel attention pools over the whole map, so after it every unit depends
    on every input pixel. The "centre unit" is the sum over channels at the central
    position (Luo et al., 2016, *Understanding the effective receptive field*). Returns an
    ``img_size x img_size`` map normalised to sum 1. The model is used in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_chans, img_size, img_size, generator=g).requires_grad_(True)
    was = model.training
    model.eval()
    try:
        with capture(model, {"out": model.branches[branch].blocks}, detach=False) as out:
            model.forward_features(x)
        y = out["out"]
        h, w = y.shape[-2:]
        y[:, :, h // 2, w // 2].sum().backward()
    finally:
        model.train(was)
    grad = x.grad.abs().sum(1).mean(0).numpy().astype(np.float64)
    return grad / grad.sum()


def erf_summary(erf: np.ndarray, *, mass: float = 0.9) -> dict[str, float]:
    """Radius (px, from the map's centre of mass) holding ``mass`` of the ERF, its RMS radius and support side."""
    h, w = erf.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = float((erf * yy).sum()), float((erf * xx).sum())
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(erf.ravel()[order])
    radius = float(r[order][min(np.searchsorted(cum, mass), len(r) - 1)])
    rows, cols = np.nonzero(erf > 0)
    support = int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)) if len(rows) else 0
    return {f"radius holding {mass:.0%} (px)": radius, "RMS radius (px)": float(np.sqrt((erf.ravel() * r ** 2).sum())),
            "gradient support (px)": support}


# =========================================================================== explanations


def explain_set(setup: Setup, n: int, *, progress: bool = False) -> CachedDataset:
    """``n`` class-balanced SynFER ``wild`` test faces with relevance maps (a seed no run uses)."""
    return _common.explain_faces("wild", n, seed=setup.data_seed, progress=progress, image_size=setup.input_size)


def gradcam_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig, *, targets: Any = None,
                 target_layer: Any = None) -> np.ndarray:
    """Grad-CAM (default layer ``model.cam_layer``), ``B x S x S`` in [0, 1]."""
    return _common.gradcam_maps(model.cpu(), images, config, targets=targets, target_layer=target_layer)


def branch_spatial_maps(model: MsaNet, images: torch.Tensor, config: TrainConfig) -> dict[str, np.ndarray]:
    """CBAM's spatial map ``M_s`` of every branch (``"7x7"``: ``B x h x w``), read with forward hooks."""
    if not isinstance(model, MsaNet) or not hasattr(model.branches[0].attn, "spatial_gate"):
        raise ValueError(f"{type(model).__name__} has no CBAM in its branches")
    hooks = {f"{b.kernel_size}x{b.kernel_size}": b.attn.spatial_gate for b in model.branches}
    model.cpu().eval()
    with torch.no_grad(), capture(model, hooks) as maps:
        model(model_input(images, config))
    return {k: v[:, 0].float().numpy() for k, v in maps.items()}


def localisation_table(models: Mapping[str, tuple[nn.Module, TrainConfig]], ds: CachedDataset, *,
                       targets: Literal["label", "predicted"] = "label"):
    """Share of Grad-CAM (and per-branch CBAM spatial) energy on SynFER's evidence, with chance levels."""
    def maps(model: nn.Module, config: TrainConfig, explain: Any) -> dict[str, np.ndarray]:
        out = {"Grad-CAM": gradcam_maps(model, ds.images, config, targets=explain)}
        if isinstance(model, MsaNet) and hasattr(model.branches[0].attn, "spatial_gate"):
            out.update({f"CBAM spatial {k}": v for k, v in branch_spatial_maps(model, ds.images, config).items()})
        return out

    return _common.localisation_table(models, ds, maps, targets=targets)


def required_weights(setup: Setup) -> list[WeightFile]:
    """The pretrained files the chapter loads in ``setup``'s profile: torchvision's ImageNet
    ResNet-18 (the pre-extractor) when ``setup.pretrained``."""
    import torchvision

    return [torchvision_weight_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)] if setup.pretrained else []
