"""The masked-FER chapter (``book/masked/``): protocol, data, runs and attention measurements.

Paper: S. Hayashi, Y. Ono, R. Ishibashi, Q. Li and L. Meng, *Facial Expression
Recognition with Face Mask using Attention Mechanism*, ATAIT 2023. The models are in
:mod:`fer.models.masked`; this module holds what the chapter's notebooks share:

* the paper's numbers as data: :data:`TABLE1` (dataset sizes), :data:`TABLE3`
  (per-class and total accuracy), :data:`FIGURE7` (confusion matrices as printed),
  :data:`CLAIMS` (the abstract's and conclusion's totals);
* :class:`Setup` (from a notebook's parameters) and :func:`profile_setups`;
* :func:`load_data`: the MU-dataset (masked / unmasked) and the M-FER-dataset (four
  expressions, all masked): from SynFER in ``smoke``/``demo`` -- half drawn by SynFER's
  own ``masked`` / ``masked_unmasked`` variants, half pasted onto SynFER ``wild`` faces
  by :func:`fer.data.masks.paste_face_mask` -- and from RAF-DB with pasted masks in
  ``paper``;
* :func:`train_config`, :func:`run_mcn` and :func:`run_model`: stage 1, stage 2 and the
  baselines, every one through :func:`fer.runs.run` so all pages share one cache;
* :func:`table3`, :func:`confusions`: Table 3 and Figure 7 over seeds;
* :func:`explain_set`, :func:`attention_maps`, :func:`class_variation`,
  :func:`attention_shares`: Figure 6 and what the paper only shows (how much the maps
  change with the expression, how much attention falls on the eyes versus the mask);
* :func:`parameter_table`: the shared-extractor variant's saving.

.. note::
   **Training protocol** (the paper gives none: no optimiser, learning rate, epochs,
   batch size or input size). ``paper`` profile: 224 px (RAF-DB's 100 px aligned faces
   resized), ImageNet VGG11 weights in every VGG11 part (attention branch's 1x1 convs
   and the last layers fresh), SGD with momentum 0.9, weight decay 5e-4, learning rate
   0.01 divided by 10 at 50% and 75% of the epochs, batch 32, 30 epochs for every
   model, MCN included. SynFER profiles: batch norm (VGG11-BN structure) at a width
   multiplier, Adam, fewer epochs (``book/profiles.yml``), and a SynFER pretraining where
   ImageNet's weights would go (next note).
   All rows share the protocol; final weights are evaluated (the paper has no
   validation split).

.. note::
   **"ImageNet VGG11" without ImageNet** (SynFER profiles). With ``pretrain_task`` set,
   one VGG11 of the chapter's structure (:class:`fer.models.masked.Vgg11`, GAP head) is
   pretrained on SynFER ``wild`` faces the expression data never uses
   (:func:`trunk_pretrain`, :func:`fer.experiments.pretraining.backbone_pretrain`),
   cached as one run, and every model (the MCN, VGG11, ABN and FECN's own layers) loads
   its conv layers where the ``paper`` profile loads ImageNet's
   (:func:`fer.models.masked.load_vgg11_from`); FECN's MCN comes from the MCN run, as in
   the paper. The demo's task is ``"landmarks"``.

.. note::
   **Augmentation**: "parallel shifts and random horizontal flips" -- random shifts of
   up to ``shift`` pixels (zero padding; 1/16 of the input side by default) and flips.

.. note::
   **Dataset sizes and classes.** MU: 500 / 100 faces of every expression, each masked
   with probability 0.5. M-FER: 4,000 training faces drawn at random from the four
   classes (RAF-DB proportions in ``paper``; uniform in SynFER), and a test set of 100
   faces per class (the paper's per-class accuracies are whole numbers, which 100 per
   class gives). The paper also dropped faces it could not classify visually; nothing
   here does.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .._dry_run import dry_run
from ..data.cached import CachedDataset, ConcatCachedDataset, cache_dataset
from ..data.labels import resolve_classes
from ..data.masks import (
    M_FER_CLASSES,
    MU_CLASSES,
    PAPER_MASK_PATTERNS,
    MaskedFERDataset,
    MaskedUnmaskedDataset,
    paste_face_mask,
)
from ..data.synfer import SynFER
from ..data.synfer.regions import region_maps
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..explain import capture, localisation_scores
from ..losses import abn_loss
from ..models import WeightFile, create_model, torchvision_weight_file
from ..models.masked import Abn, Fecn, SharedFecn, load_vgg11_from
from ..runs import Run, RunResult, run, runs_root
from ..train import Stage, TrainConfig
from ._common import ChapterSplits, ProfileSetup, model_input, paper_command, require_data_root
from ._common import profile_setups as _profile_setups
from .pretraining import backbone_facts, backbone_pretrain, check_stand_in, start_phrase, start_run, start_text

__all__ = [
    "required_weights",
    "PAPER",
    "PAPER_CLASSES",
    "PAPER_CLASS_NAME",
    "TABLE1",
    "TABLE3",
    "FIGURE7",
    "CLAIMS",
    "MODELS",
    "Setup",
    "ChapterData",
    "profile_setups",
    "load_data",
    "train_config",
    "model_kwargs",
    "trunk_pretrain",
    "trunk_text",
    "build_model",
    "run_mcn",
    "run_model",
    "TABLE3_MODELS",
    "SHARED_MODELS",
    "STAGE2_MODELS",
    "page_models",
    "shared_not_run_text",
    "run_all",
    "table3",
    "table3_paper_vs_ours",
    "confusions",
    "paper_confusion",
    "explain_set",
    "attention_maps",
    "class_variation",
    "attention_shares",
    "parameter_table",
]

PAPER = ("S. Hayashi, Y. Ono, R. Ishibashi, Q. Li and L. Meng, Facial Expression Recognition with Face Mask "
         "using Attention Mechanism, ATAIT 2023")

#: The four classes in the paper's order (Table 3, Figure 7), canonical names.
PAPER_CLASSES: tuple[str, ...] = ("anger", "happy", "neutral", "surprise")
#: Canonical name -> the paper's word.
PAPER_CLASS_NAME: dict[str, str] = {"anger": "angry", "happy": "happy", "neutral": "normal",
                                    "surprise": "surprised"}
#: Table 1: images per dataset and split.
TABLE1: dict[str, dict[str, Any]] = {
    "MU-dataset": {"classes": MU_CLASSES, "train": 500, "test": 100},
    "M-FER-dataset": {"classes": PAPER_CLASSES, "train": 4000, "test": 400},
}
#: Table 3: test accuracy (%) per class (paper order) and total.
TABLE3: dict[str, dict[str, float]] = {
    "vgg11": {"anger": 71.0, "happy": 94.0, "neutral": 84.0, "surprise": 89.0, "total": 84.4},
    "abn": {"anger": 63.0, "happy": 93.0, "neutral": 89.0, "surprise": 92.0, "total": 84.2},
    "fecn": {"anger": 69.0, "happy": 98.0, "neutral": 90.0, "surprise": 90.0, "total": 86.7},
}
#: Figure 7 as printed: row-normalised confusion matrices (rows true, columns predicted,
#: paper class order), under the paper's captions (a) VGG, (b) ABN, (c) Ours. The
#: diagonals of (a) and (c) are Table 3's FECN and VGG11 rows: the captions look swapped.
FIGURE7: dict[str, list[list[float]]] = {
    "(a) VGG": [[0.69, 0.2, 0.08, 0.03], [0.0, 0.98, 0.01, 0.01], [0.01, 0.05, 0.9, 0.04], [0.0, 0.02, 0.081, 0.9]],
    "(b) ABN": [[0.63, 0.17, 0.13, 0.07], [0.01, 0.93, 0.05, 0.01], [0.01, 0.06, 0.89, 0.04],
                [0.01, 0.03, 0.04, 0.92]],
    "(c) Ours": [[0.71, 0.16, 0.1, 0.03], [0.01, 0.94, 0.04, 0.01], [0.04, 0.07, 0.84, 0.05],
                 [0.03, 0.01, 0.071, 0.89]],
}
#: What the text claims about the totals.
CLAIMS: dict[str, float] = {"abstract_total": 86.8, "abstract_gain_over_vgg": 2.5, "conclusion_total": 86.7}
#: The rows of Stage 2 (Table 3), and the shared-extractor variants the Shared page adds.
TABLE3_MODELS: tuple[str, ...] = ("vgg11", "abn", "fecn")
SHARED_MODELS: tuple[str, ...] = ("fecn_shared", "fecn_shared_ft")
#: Table 3's rows and the shared-extractor variants, in display order.
MODELS: tuple[str, ...] = TABLE3_MODELS + SHARED_MODELS
#: The stage-2 models: they load the trained MCN.
STAGE2_MODELS: tuple[str, ...] = ("fecn",) + SHARED_MODELS
MODEL_LABEL: dict[str, str] = {"vgg11": "VGG11", "abn": "ABN", "fecn": "FECN (ours)",
                               "fecn_shared": "shared extractor, frozen",
                               "fecn_shared_ft": "shared extractor, fine-tuned"}


# =========================================================================== setup


@dataclass(frozen=True)
class Setup(ProfileSetup):
    """A profile's choices, from the notebooks' ``parameters`` cell.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data_root: folder holding ``rafdb/`` with its landmark cache (``paper``).
        n_mu_train, n_mu_test: MU-dataset faces (paper: 500 / 100).
        n_train, n_test: M-FER-dataset faces (paper: 4000 / 400; the test set has
            ``n_test / 4`` per class).
        synfer_own_share: in SynFER profiles, the share of each set drawn by SynFER's
            own masked variants (the rest: masks pasted onto SynFER ``wild`` faces).
        input_size: model input side (images are stored at ``image_size``).
        image_size: stored image side (SynFER renders at it; RAF-DB aligned is 100).
        width, batch_norm, head: VGG11 width multiplier, BN, classifier (``"vgg"``/``"gap"``).
        pretrained: ImageNet VGG11 weights (``paper`` only; SynFER profiles cannot download).
        pretrain_task: the SynFER profiles' stand-in for ImageNet (module note), or ``None``
            (from scratch; ``paper``).
        pretrain_n, pretrain_epochs, pretrain_identities: that pretraining's faces, epochs
            and people.
        epochs, mcn_epochs: stage-2 / baseline epochs and stage-1 epochs.
        batch_size, optimizer, lr, momentum, weight_decay: optimisation.
        shift: max random shift in pixels at ``input_size`` (``None``: ``input_size // 16``).
        seeds: training seeds of every stage-2 row (the MCN trains once, with the first).
        data_seed: seed of the data (fixed across training seeds).
        shared: train the shared-extractor variants (``fecn_shared``, ``fecn_shared_ft``:
            the paper's future work, not its claims) on the Shared page (:func:`page_models`);
            the demo profile leaves them out to stay within the book's CPU budget.
        device: ``auto``, ``cpu``, ``cuda``.
    """

    chapter: ClassVar[str] = "masked"

    profile: str = "smoke"
    data_root: str | None = None
    n_mu_train: int = 64
    n_mu_test: int = 32
    n_train: int = 128
    n_test: int = 32
    synfer_own_share: float = 0.5
    input_size: int = 64
    image_size: int = 64
    width: float = 0.0625
    batch_norm: bool = True
    head: str = "gap"
    pretrained: bool = False
    pretrain_task: str | None = "landmarks"
    pretrain_n: int = 96
    pretrain_epochs: int = 1
    pretrain_identities: int = 8
    epochs: int = 1
    mcn_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    shift: int | None = None
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0
    shared: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.profile not in ("smoke", "demo", "paper"):
            raise ValueError(f"profile must be smoke, demo or paper, got {self.profile!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("seeds must name at least one training seed")
        if self.n_test % len(PAPER_CLASSES):
            raise ValueError(f"n_test must be a multiple of 4 (the test set is class-balanced), got {self.n_test}")
        if not 0.0 <= self.synfer_own_share <= 1.0:
            raise ValueError(f"synfer_own_share must be in [0, 1], got {self.synfer_own_share}")
        if self.pretrained and self.synthetic:
            raise ValueError("pretrained=True needs torchvision's ImageNet weights: only the paper profile uses them")
        check_stand_in(self, chapter="masked")
        if self.head not in ("vgg", "gap"):
            raise ValueError(f"head must be 'vgg' or 'gap', got {self.head!r}")
        if min(self.epochs, self.mcn_epochs) < 1:
            raise ValueError("epochs and mcn_epochs must be >= 1")

    @property
    def synthetic(self) -> bool:
        return self.profile != "paper"

    @property
    def shift_px(self) -> int:
        return self.input_size // 16 if self.shift is None else int(self.shift)

    def scale(self, data: ChapterData | None = None) -> str:
        """One line for the page banner."""
        sizes = (f"MU {len(data.mu_train)}/{len(data.mu_test)}, M-FER {len(data.train)}/{len(data.test)} faces"
                 if data is not None else f"MU {self.n_mu_train}/{self.n_mu_test}, M-FER {self.n_train}/{self.n_test}")
        net = "VGG11" + ("-BN" if self.batch_norm else "") + (f" at width {self.width:g}" if self.width != 1 else "")
        start = start_phrase(self, real="ImageNet weights")
        return (f"{sizes} (train/test); {self.input_size} px; {net}, {self.head} classifier, {start}; "
                f"{self.epochs} epochs (MCN {self.mcn_epochs}), {self.optimizer} lr {self.lr:g}, batch "
                f"{self.batch_size}; seeds {', '.join(map(str, self.seeds))}")


def profile_setups(root: str | Path | None = None) -> dict[str, Setup]:
    """Every profile's :class:`Setup`: ``smoke`` = the defaults, ``demo``/``paper`` from ``book/profiles.yml``."""
    return _profile_setups(Setup, root)


# =========================================================================== data


@dataclass
class ChapterData(ChapterSplits):
    """The MU and M-FER sets, cached as uint8 (``source`` says where they came from)."""

    mu_train: CachedDataset
    mu_test: CachedDataset
    train: CachedDataset
    test: CachedDataset
    source: str
    parts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.train.classes or M_FER_CLASSES)


def _concat(parts: Sequence[CachedDataset], name: str) -> CachedDataset:
    parts = [p for p in parts if len(p)]
    if len(parts) == 1:
        return parts[0]
    fp = hashlib.sha256(":".join(p.fingerprint() for p in parts).encode()).hexdigest()[:16]
    return ConcatCachedDataset(parts, classes=parts[0].classes, source_fingerprint=fp, name=name)


def _split_n(n: int, share: float) -> tuple[int, int]:
    own = int(round(n * share))
    return own, n - own


def _synfer_sets(setup: Setup, progress: bool) -> ChapterData:
    size, seed = setup.image_size, setup.data_seed
    four = PAPER_CLASSES
    sets: dict[str, CachedDataset] = {}
    parts: dict[str, dict[str, int]] = {}
    for split, n_mu, n_fer in (("train", setup.n_mu_train, setup.n_train), ("test", setup.n_mu_test, setup.n_test)):
        balance = "uniform"
        # MU: SynFER's masked_unmasked variant (its renderer draws the masks) + masks pasted on wild faces
        own, pasted = _split_n(n_mu, setup.synfer_own_share)
        a = cache_dataset(SynFER("masked_unmasked", split, n=own, seed=seed, image_size=size,
                                 with_relevance=False), progress=progress, desc=f"SynFER MU {split}") if own else None
        b = cache_dataset(MaskedUnmaskedDataset(SynFER("wild", split, n=pasted, seed=seed + 1, image_size=size,
                                                       with_relevance=False), seed=seed),
                          progress=progress, desc=f"pasted MU {split}") if pasted else None
        sets[f"mu_{split}"] = _concat([x for x in (a, b) if x is not None], f"MU {split}")
        parts[f"MU {split}"] = {"SynFER masked_unmasked": own, "pasted on SynFER wild": pasted}
        # M-FER: SynFER's masked variant + masks pasted on wild faces of the four classes
        own, pasted = _split_n(n_fer, setup.synfer_own_share)
        test = split == "test"
        if test:  # class-balanced: whole classes per source, drawn from a larger pool
            own = (own // len(four)) * len(four)
            pasted = n_fer - own
        draw = (lambda k: int(np.ceil(1.5 * k)) + 16) if test else (lambda k: k)
        a = cache_dataset(SynFER("masked", split, n=draw(own), seed=seed, image_size=size, classes=four,
                                 class_balance=balance, with_relevance=False),
                          progress=progress, desc=f"SynFER M-FER {split}") if own else None
        base = SynFER("wild", split, n=draw(pasted), seed=seed + 1, image_size=size, classes=four,
                      class_balance=balance, with_relevance=False)
        b = cache_dataset(MaskedFERDataset(base, seed=seed), progress=progress,
                          desc=f"pasted M-FER {split}") if pasted else None
        if test:
            a = _balanced(a, own) if a is not None else None
            b = _balanced(b, pasted) if b is not None else None
        sets[split] = _concat([x for x in (a, b) if x is not None], f"M-FER {split}")
        parts[f"M-FER {split}"] = {"SynFER masked": own, "pasted on SynFER wild": pasted}
    src = ("SynFER: MU from its masked_unmasked variant and masks pasted onto wild faces; M-FER (4 classes) "
           "from its masked variant and masks pasted onto wild faces")
    return ChapterData(sets["mu_train"], sets["mu_test"], sets["train"], sets["test"], source=src, parts=parts)


def _balanced(ds: CachedDataset, n: int) -> CachedDataset:
    """Exactly ``n / K`` faces per class (the first ones of each), K = number of classes.

    A dry run over a few faces per class (its data root is a sample) takes as many per class
    as the scarcest class has; a real run with too few is an error.
    """
    k = len(ds.classes or PAPER_CLASSES)
    per = n // k
    labels = ds.labels.numpy()
    if dry_run():
        per = max(1, min(per, *(int((labels == c).sum()) for c in range(k))))
    idx = []
    for c in range(k):
        have = np.flatnonzero(labels == c)
        if len(have) < per:
            raise ValueError(f"{ds.name}: only {len(have)} faces of class {c}, need {per} for a balanced test set")
        idx.extend(have[:per].tolist())
    return ds.subset(np.sort(np.asarray(idx)))


def _data_root(setup: Setup) -> Path:
    cmd = paper_command(setup.chapter)
    root = Path(require_data_root(setup, uses="builds its masked datasets from RAF-DB", fix="put RAF-DB's basic/ "
                                  "contents under <DATA_ROOT>/rafdb/ (see data/README.md) and write its landmark cache "
                                  "with `python -m fer.data.landmarks --dataset rafdb --root <DATA_ROOT>/rafdb`"))
    root = root.expanduser()
    root = root / "rafdb" if (root / "rafdb").is_dir() else root
    from ..data.landmarks import landmarks_path

    for split in ("train", "test"):
        lm = landmarks_path(root, split)
        if not lm.is_file():
            raise FileNotFoundError(
                f"{lm} not found: pasting face masks needs 68 landmarks per RAF-DB face. Fix: "
                f"`python -m fer.data.landmarks --dataset rafdb --root {root}`, then `{cmd}`")
    return root


def _rafdb_sets(setup: Setup, progress: bool) -> ChapterData:
    from ..data import load_dataset

    root = _data_root(setup)
    rng = np.random.default_rng(setup.data_seed)
    sets = {}
    for split, n_mu, n_fer in (("train", setup.n_mu_train, setup.n_train), ("test", setup.n_mu_test, setup.n_test)):
        every = load_dataset("rafdb", root, split)
        mu_idx = np.sort(rng.permutation(len(every))[:n_mu])
        mu = MaskedUnmaskedDataset(torch.utils.data.Subset(every, mu_idx.tolist()), seed=setup.data_seed)
        cached = cache_dataset(mu, progress=progress, desc=f"RAF-DB MU {split}")
        # a Subset has no fingerprint of its own: key the cache on RAF-DB's and the chosen indices
        fp = hashlib.sha256(f"{every.fingerprint()}:{mu.fingerprint()}:{mu_idx.tolist()}".encode()).hexdigest()[:16]
        sets[f"mu_{split}"] = CachedDataset(cached.tensors, classes=MU_CLASSES, source_fingerprint=fp,
                                            name=f"RAF-DB MU {split}")
        four = load_dataset("rafdb", root, split, classes=PAPER_CLASSES)
        fer = MaskedFERDataset(four, seed=setup.data_seed)
        cached = cache_dataset(fer, progress=progress, desc=f"RAF-DB M-FER {split}")
        if split == "test":
            order = cached.subset(np.sort(rng.permutation(len(cached))))
            sets[split] = _balanced(order, n_fer)
        else:
            sets[split] = cached.subset(np.sort(rng.permutation(len(cached))[:n_fer]))
    return ChapterData(sets["mu_train"], sets["mu_test"], sets["train"], sets["test"],
                       source=f"RAF-DB with pasted face masks, from {root}")


def load_data(setup: Setup, *, progress: bool = True) -> ChapterData:
    """The MU and M-FER sets of this profile (module note), cached once as uint8."""
    return _synfer_sets(setup, progress) if setup.synthetic else _rafdb_sets(setup, progress)


# =========================================================================== models, configs, runs


def model_kwargs(setup: Setup) -> dict[str, Any]:
    """The architecture keyword arguments every model of this profile shares."""
    return {"img_size": setup.input_size, "width": setup.width, "batch_norm": setup.batch_norm,
            "head": setup.head}


def _run_name(setup: Setup, what: str) -> str:
    return f"masked-{setup.profile}-{what}"


def trunk_pretrain(setup: Setup, *, progress: bool = True) -> RunResult:
    """The SynFER stand-in for ImageNet (module note): one VGG11 of the chapter's structure
    pretrained on ``setup.pretrain_task`` at ``image_size``, with Adam at ``lr``
    (:func:`fer.experiments.pretraining.backbone_pretrain`), shared by every model."""
    build = partial(create_model, "vgg11", img_size=setup.input_size, width=setup.width,
                    batch_norm=setup.batch_norm, head="gap")
    return backbone_pretrain(setup, build, seed=setup.data_seed, lr=setup.lr, image_size=setup.image_size,
                             progress=progress)


def trunk_text(setup: Setup, trunk: RunResult | None = None) -> str:
    """Where this profile's models start, as a page sentence: ImageNet (``paper``), the
    :func:`trunk_pretrain` run ``trunk`` with what it learned, or scratch."""
    facts = None if trunk is None else backbone_facts(setup, trunk, seed=setup.data_seed, image_size=setup.image_size)
    net = "VGG11" + ("-BN" if setup.batch_norm else "") + f" at width {setup.width:g}"
    return start_text(setup, facts, what="The VGG11 layers of every model (the MCN, VGG11, ABN, FECN's own)",
                      network=net, real="Every VGG11 part starts from torchvision's ImageNet VGG11, as the "
                      "paper's baseline does.")


def build_model(name: str, *, kwargs: Mapping[str, Any], pretrained: bool = False, mcn_run: str | None = None,
                num_classes: int = 4, trunk_run: str | None = None) -> nn.Module:
    """A model of :mod:`fer.models.masked` with this chapter's arguments; ``fecn`` and
    ``fecn_shared`` load the MCN run ``mcn_run`` (a folder name under the runs root). With
    ``trunk_run`` (a :func:`trunk_pretrain` run) its VGG11 layers start from that run's,
    before the MCN is loaded (the shared extractor is the MCN's)."""
    fecn = name in STAGE2_MODELS
    if fecn and mcn_run is None:
        raise ValueError(f"{name} needs the trained MCN: pass mcn_run (the run_mcn result's folder name)")
    extra = {"freeze_extractor": False} if name == "fecn_shared_ft" else {}
    model = create_model(name.replace("_ft", ""), num_classes=num_classes, pretrained=pretrained, **extra, **kwargs)
    if trunk_run is not None:
        state = Run.load(trunk_run).checkpoint()["model"]
        source = create_model("vgg11", width=model.width, batch_norm=model.batch_norm, head="gap",
                              num_classes=int(state["perception.head.fc.weight"].shape[0]))
        source.load_state_dict(state)  # another structure fails here, naming the tensors
        load_vgg11_from(model, source)
    if fecn:
        model.load_mcn(Run.load(runs_root() / mcn_run).checkpoint()["model"])
    return model


def train_config(setup: Setup, name: str, seed: int) -> TrainConfig:
    """The protocol (module note) for model ``name`` (``mcn``, ``vgg11``, ``abn``, ``fecn``,
    ``fecn_shared``) and training seed ``seed``.

    FECN trains everything but its frozen MCN; the shared variant trains only its
    perception branch.
    """
    epochs = setup.mcn_epochs if name == "mcn" else setup.epochs
    stages: list[Stage] = []
    if name == "fecn":
        stages = [Stage(epochs=epochs, frozen=["mcn"], name="stage 2")]
    elif name == "fecn_shared":
        stages = [Stage(epochs=epochs, trainable=["perception"], name="stage 2")]
    elif name == "fecn_shared_ft":
        stages = [Stage(epochs=epochs, trainable=["features", "perception"], name="stage 2")]
    sgd = setup.optimizer == "sgd"
    imagenet = setup.pretrained
    return TrainConfig(
        epochs=epochs, stages=stages, batch_size=setup.batch_size, optimizer=setup.optimizer, lr=setup.lr,
        momentum=setup.momentum, weight_decay=setup.weight_decay,
        schedule="multistep" if sgd else "constant",
        milestones=[max(1, epochs // 2), max(1, (3 * epochs) // 4)] if sgd else [],
        mean=IMAGENET_MEAN if imagenet else (0.5, 0.5, 0.5),
        std=IMAGENET_STD if imagenet else (0.5, 0.5, 0.5),
        input_size=setup.input_size, hflip=True, shift=setup.shift_px, seed=int(seed),
        cpu=setup.resolved_device() == "cpu")


def run_mcn(setup: Setup, data: ChapterData, *, progress: bool = True) -> RunResult:
    """Stage 1: the MCN (ABN, masked vs unmasked) on the MU-dataset, loss L_att + L_per."""
    seed = setup.seeds[0]
    build = partial(build_model, "mcn", kwargs=model_kwargs(setup), pretrained=setup.pretrained, num_classes=2,
                    trunk_run=start_run(setup, trunk_pretrain, progress=progress))
    return run(_run_name(setup, f"mcn-s{seed}"), train_config(setup, "mcn", seed), build, data.mu_train,
               eval_sets={"test": data.mu_test}, loss_fn=abn_loss, spec={"model": "mcn", **model_kwargs(setup)},
               progress=progress)


def run_model(setup: Setup, data: ChapterData, name: str, seed: int, *, mcn: RunResult | None = None,
              progress: bool = True) -> RunResult:
    """A Table 3 row (``vgg11``, ``abn``, ``fecn``) or a shared-extractor variant
    (``fecn_shared``: extractor frozen; ``fecn_shared_ft``: fine-tuned) on the M-FER-dataset
    with training seed ``seed``; stage 2 models use ``mcn`` (trained here when not given)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    mcn_name = None
    if name in STAGE2_MODELS:
        mcn = mcn if mcn is not None else run_mcn(setup, data, progress=progress)
        mcn_name = mcn.path.name
    build = partial(build_model, name, kwargs=model_kwargs(setup), pretrained=setup.pretrained, mcn_run=mcn_name,
                    trunk_run=start_run(setup, trunk_pretrain, progress=progress))
    return run(_run_name(setup, f"{name}-s{seed}"), train_config(setup, name, seed), build, data.train,
               eval_sets={"test": data.test}, loss_fn=abn_loss if name == "abn" else None,
               spec={"model": name, "mcn_run": mcn_name, **model_kwargs(setup)}, progress=progress)


def page_models(setup: Setup, page: str) -> tuple[str, ...]:
    """The rows a page trains (or loads): ``"stage2"`` Table 3's, ``"shared"`` those plus the
    shared-extractor variants where ``setup.shared``."""
    if page not in ("stage2", "shared"):
        raise ValueError(f"page must be 'stage2' or 'shared', got {page!r}")
    return TABLE3_MODELS + (SHARED_MODELS if page == "shared" and setup.shared else ())


def shared_not_run_text(setup: Setup) -> str:
    """What the Shared page says in place of the variants' accuracy where ``setup.shared`` is off."""
    return (f"The {setup.profile} profile does not train the shared-extractor variants: they are the paper's "
            "future work rather than its claims, and their runs cost minutes of the book's CPU budget "
            "(the paper profile trains both, at every seed).")


def run_all(setup: Setup, data: ChapterData, models: Sequence[str] = TABLE3_MODELS, *,
            progress: bool = True) -> tuple[RunResult, dict[str, list[RunResult]]]:
    """The MCN and every model in ``models`` over ``setup.seeds`` (cached)."""
    mcn = run_mcn(setup, data, progress=progress)
    results = {m: [run_model(setup, data, m, s, mcn=mcn, progress=progress) for s in setup.seeds] for m in models}
    return mcn, results


# =========================================================================== tables


def _order(classes: Sequence[str]) -> list[int]:
    """Indices into ``classes`` in the paper's class order."""
    return [list(classes).index(c) for c in PAPER_CLASSES]


def table3(results: Mapping[str, Sequence[RunResult]], classes: Sequence[str] = M_FER_CLASSES):
    """Test accuracy (%) per class (paper order) and total, mean and std over seeds (a ``DataFrame``:
    one row per model and column, with ``paper``, ``ours``, ``std``, ``seeds``)."""
    import pandas as pd

    rows = []
    idx = _order(classes)
    for model, runs in results.items():
        per = np.array([[100.0 * (r.metrics["test"]["per_class_accuracy"][i] or 0.0) for i in idx] for r in runs])
        total = np.array([100.0 * r.metrics["test"]["accuracy"] for r in runs])
        for j, c in enumerate(PAPER_CLASSES + ("total",)):
            vals = per[:, j] if c != "total" else total
            rows.append({"model": MODEL_LABEL.get(model, model), "key": model,
                         "class": PAPER_CLASS_NAME.get(c, c), "paper": TABLE3.get(model, {}).get(c),
                         "ours": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                         "seeds": len(vals)})
    return pd.DataFrame(rows)


def table3_paper_vs_ours(results: Mapping[str, Sequence[RunResult]], classes: Sequence[str] = M_FER_CLASSES):
    """Table 3 wide: one row per model, paper and ours (mean ± std) per class column."""
    import pandas as pd

    long = table3(results, classes)
    out = {}
    for (model, cls), g in long.groupby(["model", "class"], sort=False):
        r = g.iloc[0]
        out.setdefault(model, {})[(cls, "paper")] = r["paper"]
        out[model][(cls, "ours")] = f"{r['ours']:.1f} ± {r['std']:.1f}" if r["seeds"] > 1 else f"{r['ours']:.1f}"
    df = pd.DataFrame.from_dict(out, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    df.index.name = "model"
    return df


def confusions(results: Mapping[str, Sequence[RunResult]], classes: Sequence[str] = M_FER_CLASSES
               ) -> dict[str, np.ndarray]:
    """Test confusion counts summed over seeds, rows/columns in the paper's class order."""
    idx = _order(classes)
    out = {}
    for model, runs in results.items():
        cm = sum(np.asarray(r.metrics["test"]["confusion"], dtype=np.int64) for r in runs)
        out[model] = np.asarray(cm)[np.ix_(idx, idx)]
    return out


def paper_confusion(caption: str) -> np.ndarray:
    """A Figure 7 matrix as printed (rows sum to about 1)."""
    return np.asarray(FIGURE7[caption], dtype=np.float64)


# =========================================================================== attention maps


def explain_set(setup: Setup, n_per_class: int) -> dict[str, Any]:
    """Faces for Figure 6 and the attention measurements, each **with and without** a mask.

    ``n_per_class`` SynFER ``wild`` test faces per class of the four (a seed no run uses),
    with a mask pasted (:func:`fer.data.masks.paste_face_mask`, the paper's three patterns
    in turn). Returns tensors ``unmasked``, ``masked`` (uint8 B x 3 x S x S), ``label``
    (M-FER label order), ``eyes`` (SynFER's eye and brow regions) and ``mask`` (the
    pasted mask's pixels), float B x S x S. SynFER in every profile: real faces have no
    ground truth of where the eyes are.
    """
    n = n_per_class * len(PAPER_CLASSES)
    ds = SynFER("wild", "test", n=n, seed=setup.data_seed + 2000, image_size=setup.image_size,
                classes=PAPER_CLASSES, class_balance=[1.0] * len(PAPER_CLASSES), with_relevance=False)
    # exactly n_per_class per class: take faces in label order from a larger draw if needed
    labels = np.asarray(ds.targets)
    pool = ds
    if min(np.bincount(labels, minlength=4)) < n_per_class:
        pool = SynFER("wild", "test", n=4 * n, seed=setup.data_seed + 2000, image_size=setup.image_size,
                      classes=PAPER_CLASSES, class_balance="uniform", with_relevance=False)
        labels = np.asarray(pool.targets)
    idx = np.concatenate([np.flatnonzero(labels == c)[:n_per_class] for c in range(len(PAPER_CLASSES))])
    out: dict[str, list] = {"unmasked": [], "masked": [], "label": [], "eyes": [], "mask": []}
    for k, i in enumerate(idx):
        item = pool[int(i)]
        lm = item["landmarks"].numpy()
        style, colour = PAPER_MASK_PATTERNS[k % len(PAPER_MASK_PATTERNS)]
        masked, mmap = paste_face_mask(item["image"], lm, style, colour, np.random.default_rng([setup.data_seed, k]))
        maps = region_maps(lm, setup.image_size, item["meta"]["scale"] * setup.image_size)
        eyes = np.maximum(maps["eyes"], maps["brows"]).astype(np.float32) / 255.0
        out["unmasked"].append(item["image"])
        out["masked"].append(masked)
        out["label"].append(int(item["label"]))
        out["eyes"].append(torch.from_numpy(eyes))
        out["mask"].append(mmap.float())
    res: dict[str, Any] = {k: torch.stack(v) if k != "label" else torch.tensor(v) for k, v in out.items()}
    res["classes"] = tuple(resolve_classes(PAPER_CLASSES, 4))
    return res


def attention_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig) -> np.ndarray:
    """The sigmoid attention map ``M(x)`` of an ABN, MCN, FECN (its MCN's) or shared model,
    ``B x h x w`` in (0, 1), read with a forward hook on the attention branch's ``map_gate``."""
    if isinstance(model, Fecn):
        gate = model.mcn.attention.map_gate
    elif isinstance(model, (Abn, SharedFecn)):
        gate = model.attention.map_gate
    else:
        raise TypeError(f"{type(model).__name__} has no attention map (ABN, MCN, FECN and fecn_shared have)")
    model.eval()
    x = model_input(images, config).to(next(model.parameters()).device)
    with torch.no_grad(), capture(model, {"map": gate}) as maps:
        model(x)
    return maps["map"][:, 0].float().cpu().numpy()


def class_variation(maps: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """How much attention maps change with the expression class.

    Each map is first normalised to sum 1 (where it puts its attention, not how much).

    Returns ``between_class_share``: the share of the maps' pixel variance explained by
    the class (eta squared: between-class sum of squares over the total; 0 = the class
    changes nothing, 1 = maps are fixed by their class), ``class_mean_distance``: mean
    total-variation distance between the class-mean maps (0 = the same map for every
    class, 1 = disjoint), and ``within_class_distance``: mean distance of a map to its
    class mean, for scale.
    """
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    m = m / np.clip(m.sum(1, keepdims=True), 1e-12, None)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("class_variation needs maps of at least two classes")
    grand = m.mean(0)
    means = {c: m[y == c].mean(0) for c in classes}
    between = sum((y == c).sum() * ((means[c] - grand) ** 2).sum() for c in classes)
    total = ((m - grand) ** 2).sum()
    pairs = [0.5 * np.abs(means[a] - means[b]).sum() for i, a in enumerate(classes) for b in classes[i + 1:]]
    within = np.mean([0.5 * np.abs(m[k] - means[y[k]]).sum() for k in range(len(m))])
    return {"between_class_share": float(between / total) if total > 0 else 0.0,
            "class_mean_distance": float(np.mean(pairs)), "within_class_distance": float(within)}


def attention_shares(maps: np.ndarray, eyes: Any, mask: Any) -> dict[str, float]:
    """Share of the attention (maps stretched to the image) on the eyes and brows and on the mask,
    each with its chance level (the region's area share), via :func:`fer.explain.localisation_scores`."""
    e = localisation_scores(maps, eyes)
    k = localisation_scores(maps, mask)
    return {"eyes": e["energy"], "eyes_chance": e["energy_chance"], "mask": k["energy"],
            "mask_chance": k["energy_chance"], "eyes_pointing": e["pointing"], "mask_pointing": k["pointing"]}


# =========================================================================== parameters


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def parameter_table(setup: Setup | None = None):
    """Parameters of every model (``setup``'s scale, or the paper's full-size VGG11 at 224 px with
    ``None``): the two-network system (MCN generator + FECN) against the shared extractor."""
    import pandas as pd

    kw = {"img_size": 224} if setup is None else model_kwargs(setup)
    # counting needs no weights: build on the meta device (no memory, no initialisation cost)
    with torch.device("meta"):
        v = create_model("vgg11", num_classes=4, **kw)
        a = create_model("abn", num_classes=4, **kw)
        m = create_model("mcn", **kw)
        f = create_model("fecn", num_classes=4, **kw)
        s = create_model("fecn_shared", num_classes=4, **kw)
    gen = _count(f.mcn)
    rows = [
        ("VGG11", _count(v), "baseline"),
        ("ABN", _count(a), "baseline"),
        ("MCN as trained (stage 1)", _count(m), "ABN, 2 classes"),
        ("MCN cut down to its map (Figure 3)", gen, "extractor + attention branch"),
        ("FECN's own layers", _count(f) - gen, "extractor + perception branch"),
        ("two networks: MCN + FECN", _count(f), "the paper's system at inference"),
        ("shared extractor: MCN + FECN", _count(s), "future work, one extractor"),
        ("saved by sharing", _count(f) - _count(s), "one feature extractor"),
    ]
    return pd.DataFrame(rows, columns=["model", "parameters", "note"])


def required_weights(setup: Setup) -> list[WeightFile]:
    """The pretrained files the chapter loads in ``setup``'s profile: torchvision's ImageNet
    VGG11 (with batch norm when ``setup.batch_norm``) when ``setup.pretrained``."""
    import torchvision

    if not setup.pretrained:
        return []
    enum = torchvision.models.VGG11_BN_Weights if setup.batch_norm else torchvision.models.VGG11_Weights
    return [torchvision_weight_file(enum.IMAGENET1K_V1)]
