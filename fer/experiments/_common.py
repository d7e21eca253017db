"""What every chapter's protocol module shares: the profile plumbing of its ``Setup``.

A chapter's ``Setup`` is a dataclass whose defaults are the ``smoke`` profile; it inherits
:class:`ProfileSetup` for :meth:`~ProfileSetup.for_profile` (the chapter's entry in
``book/profiles.yml`` over those defaults) and :meth:`~ProfileSetup.resolved_device`, and
the chapter's ``profile_setups()`` is :func:`profile_setups` over every profile.

The rest is what several chapters did alike, once, parameterised by what differs; each
chapter keeps its public function (same name and signature) as a thin call into it:
:func:`require_data_root` (the paper profile's missing-data error), :class:`ChapterSplits`
(a ``ChapterData``'s ``counts`` and ``eval_sets``), :func:`load_conv_base` /
:func:`load_face_weights` (starting weights, e.g. a chapter's ``face_pretrain`` run, the
VGG-Face stand-in that :mod:`fer.experiments.pretraining` trains),
:func:`explain_faces`, :func:`gradcam_maps` and :func:`localisation_table` (explanations).
A run's ``build_model`` stays in its chapter module, so runs stay keyed by that chapter.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from .._dry_run import EXPLAIN as DRY_EXPLAIN
from .._dry_run import cap_repetitions, dry_run
from ..data.cached import CachedDataset, cache_dataset
from ..data.synfer import SynFER
from ..data.transforms import model_input  # the one uint8 -> model input path, re-exported for the chapters
from ..explain import cam, localisation_scores
from ..models import load_vggface
from ..models.cbam_vgg import fold_batchnorm
from ..profiles import PROFILES_FILE, ProfileError, chapter_entry, find_root, read_profiles, resolve_device
from ..runs import Run
from ..train import TrainConfig

__all__ = ["ProfileSetup", "profile_setups", "random_subset", "stratified_indices", "model_input",
           "localisation_row", "PRETRAIN_SEED_OFFSET", "EXPLAIN_SEED_OFFSET", "paper_command", "require_data_root",
           "ChapterSplits", "load_conv_base", "load_face_weights", "explain_faces", "gradcam_maps",
           "localisation_table"]

S = TypeVar("S", bound="ProfileSetup")


class ProfileSetup:
    """Mixin for a chapter's ``Setup`` dataclass (it needs ``profile``, ``data_root`` and
    ``device`` fields, and names its chapter in ``chapter``)."""

    #: The chapter key: its ``book/profiles.yml`` entry and its ``book/<chapter>/`` folder.
    chapter: ClassVar[str]
    device: str

    @classmethod
    def from_params(cls: type[S], **params: Any) -> S:
        """From notebook parameters: names that are not fields are ignored, YAML lists become tuples."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in names})

    @classmethod
    def for_profile(cls: type[S], profile: str = "smoke", *, data_root: str | None = None, device: str = "auto",
                    root: str | Path | None = None, **changes: Any) -> S:
        """The chapter's setup for ``profile``: the one call a page makes.

        ``smoke`` is the dataclass defaults; ``demo`` and ``paper`` are the chapter's entry
        in ``book/profiles.yml`` (:func:`fer.profiles.chapter_entry`) over those defaults.
        ``data_root``, ``device`` and ``changes`` (field values) go on top. In a dry run
        (:func:`fer._dry_run.dry_run`) repetitions are capped last
        (:func:`fer._dry_run.cap_repetitions`).
        """
        entry = None if profile == "smoke" else chapter_entry(cls.chapter, profile, root)
        if profile != "smoke" and entry is None:
            raise ProfileError(
                f"{PROFILES_FILE.as_posix()} has no {profile!r} entry for the chapter {cls.chapter!r}: add "
                f"'{cls.chapter}: {{{profile}: {{...}}}}' with the {profile} values of its Setup fields")
        return cls._from_entry(profile, entry or {}, data_root=data_root, device=device, **changes)

    @classmethod
    def _from_entry(cls: type[S], profile: str, entry: Mapping[str, Any], *, data_root: str | None = None,
                    device: str = "auto", **changes: Any) -> S:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(entry) - names)
        if unknown:
            raise ProfileError(
                f"{PROFILES_FILE.as_posix()}: the {profile!r} entry of {cls.chapter!r} sets {', '.join(unknown)}, "
                f"which {cls.__module__}.{cls.__qualname__} has no field for: fix the key, or put a page's own "
                "knob in that page's entry")
        setup = cls.from_params(**{**entry, **changes, "profile": profile, "data_root": data_root, "device": device})
        if dry_run():  # on the built setup, so a repetition left at its default is capped too
            fields = {f.name: getattr(setup, f.name) for f in dataclasses.fields(setup)}  # type: ignore[arg-type]
            capped = {k: v for k, v in cap_repetitions(fields).items() if v is not fields[k]}
            setup = dataclasses.replace(setup, **capped) if capped else setup  # type: ignore[type-var]
        return setup

    def resolved_device(self) -> str:
        """``device`` with ``"auto"`` resolved (:func:`fer.profiles.resolve_device`)."""
        return resolve_device(None if self.device == "auto" else self.device)


def profile_setups(setup_cls: type[S], root: str | Path | None = None) -> dict[str, S]:
    """Every profile's setup of a chapter (a profile without a chapter entry is left out)."""
    entries = read_profiles(find_root(root)).get(setup_cls.chapter, {})
    out = {"smoke": setup_cls()}
    for prof in ("demo", "paper"):
        if prof in entries:
            out[prof] = setup_cls._from_entry(prof, entries[prof])
    return out


def random_subset(ds: CachedDataset, n: int | None, seed: int) -> CachedDataset:
    """``n`` items of ``ds`` drawn with ``seed``, in their original order (all of it if ``n`` is None or too big)."""
    if n is None or n >= len(ds):
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).permutation(len(ds))[:n]))


def stratified_indices(targets: Any, n: int, seed: int) -> np.ndarray:
    """``n`` indices into ``targets`` drawn class-stratified with ``seed``, sorted.

    Each class keeps its share of ``targets``: it gets ``n * count / total`` samples,
    rounded down, and the samples left over go to the classes with the largest remainders
    (ties to the lower label). Within a class the samples are drawn uniformly without
    replacement from one ``numpy.random.default_rng(seed)``, class by class in label order.
    All indices when ``n >= len(targets)``.
    """
    y = np.asarray(targets, dtype=np.int64)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(y):
        return np.arange(len(y))
    labels, counts = np.unique(y, return_counts=True)
    exact = n * counts / len(y)
    take = np.floor(exact).astype(np.int64)
    order = sorted(range(len(labels)), key=lambda k: (-(exact[k] - take[k]), labels[k]))
    take[order[: n - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=int(k), replace=False) for c, k in zip(labels, take)]
    return np.sort(np.concatenate(picked))


def localisation_row(heat: Any, relevance: Any, **labels: Any) -> dict[str, Any]:
    """One row of a chapter's localisation table: ``labels`` (e.g. ``model=``, ``map=``), then the
    energy share on SynFER's evidence and the pointing-game hit rate, each with its chance level
    (:func:`fer.explain.localisation_scores`), and the number of faces."""
    s = localisation_scores(heat, relevance)
    return {**labels, "energy on evidence": s["energy"], "energy (chance)": s["energy_chance"],
            "pointing game": s["pointing"], "pointing (chance)": s["pointing_chance"], "faces": s["num_images"]}


# =========================================================================== data


#: Seed offsets of the sets no expression run trains or tests on: the face-identity
#: pretraining faces (:func:`fer.experiments.pretraining.pretrain_faces`) and the explanation
#: faces (:func:`explain_faces`).
PRETRAIN_SEED_OFFSET = 1000
EXPLAIN_SEED_OFFSET = 2000


def paper_command(chapter: str) -> str:
    """The command that renders ``chapter``'s pages in the ``paper`` profile."""
    return f"make book PROFILE=paper DATA_ROOT=<DATA_ROOT> ONLY='book/{chapter}/*'"


def require_data_root(setup: ProfileSetup, *, uses: str, fix: str) -> str:
    """``setup.data_root``, or a ``FileNotFoundError`` saying what the paper profile ``uses``
    (e.g. ``"trains on FER2013"``), the ``fix`` (where the data goes) and the command to run."""
    root = getattr(setup, "data_root", None)
    if root is None:
        raise FileNotFoundError(f"the paper profile {uses}, but no data root was given. Fix: {fix}, and run "
                                f"`{paper_command(setup.chapter)}`")
    return root


class ChapterSplits:
    """Mixin for a chapter's ``ChapterData`` dataclass: its ``train`` and ``test`` sets (cached
    as uint8; the chapter adds its other sets, ``source`` and ``classes``)."""

    train: CachedDataset
    test: CachedDataset

    @property
    def counts(self) -> dict[str, int]:
        """Training faces per class (canonical order)."""
        return dict(self.train.class_counts)

    def eval_sets(self) -> dict[str, CachedDataset]:
        """The sets a run is tested on after training, by split name: ``{"test": ...}``."""
        return {"test": self.test}


# =========================================================================== starting weights


def load_conv_base(model: nn.Module, run_dir: str | Path, *, module: str = "features") -> nn.Module:
    """Load the ``module`` weights (the conv base) of the run ``run_dir``'s checkpoint into ``model``.

    ``run_dir``: a run folder, or its name under the runs root (:meth:`fer.runs.Run.load`).
    A conv base trained with a batch norm after each conv (a SynFER pretraining) loads
    into the same convs without them, each norm folded into its conv
    (:func:`fer.models.cbam_vgg.fold_batchnorm`): the paper's VGG16 then starts from
    what the pretrained network computed.
    """
    state = Run.load(run_dir).checkpoint()["model"]
    prefix = f"{module}."
    base = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    target = model.get_submodule(module)
    if set(base) == set(target.state_dict()):
        target.load_state_dict(base)
        return model
    # A conv base pretrained with batch norm, loaded into the same convs without it:
    # each norm folded into its conv (what the pair computed in eval mode).
    convs = [m for m in target.modules() if isinstance(m, nn.Conv2d)]
    folded = fold_batchnorm(base)
    has_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in target.modules())
    if has_norm or len(folded) != len(convs) or any(
            w.shape != c.weight.shape for (w, _), c in zip(folded, convs)):
        raise ValueError(f"the {module!r} weights of run {run_dir} do not fit {type(model).__name__}'s {module!r}: "
                         f"{len(folded)} convs (batch norm: {any(k.endswith('running_mean') for k in base)}) "
                         f"against {len(convs)} (batch norm: {has_norm}); pretrain the same architecture")
    if any(c.bias is None for c in convs):  # checked before any weight is copied: no half-loaded model
        raise ValueError(f"{type(model).__name__}'s convs have no bias to take a folded batch norm")
    with torch.no_grad():
        for (w, b), conv in zip(folded, convs):
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    return model


def load_face_weights(model: nn.Module, weights: str | None, face_run: str | None, *,
                      choices: str = "None, 'vggface' or 'synfer-face'") -> nn.Module:
    """A VGG16 chapter model's face weights: ``None`` (as built), ``"vggface"``
    (:func:`fer.models.load_vggface`) or ``"synfer-face"`` (the conv base of the
    chapter's ``face_pretrain`` run ``face_run``); ``choices`` is what the chapter accepts, for
    the error."""
    if weights == "vggface":
        load_vggface(model)
    elif weights == "synfer-face":
        if face_run is None:
            raise ValueError("weights='synfer-face' needs face_run, the face_pretrain run folder")
        load_conv_base(model, face_run)
    elif weights is not None:
        raise ValueError(f"weights must be {choices}, got {weights!r}")
    return model


# =========================================================================== explanations


def explain_faces(variant: str, n: int, *, seed: int, split: str = "test",
                  keys: Sequence[str] = ("image", "label", "relevance"), progress: bool = False,
                  **synfer_kw: Any) -> CachedDataset:
    """``n`` class-balanced SynFER ``variant`` faces with their relevance maps, drawn with
    ``seed + EXPLAIN_SEED_OFFSET`` (neither training nor test faces of any run), cached with ``keys``.

    Used in every profile: real faces have no ground truth of where the evidence is. A dry
    run explains :data:`fer._dry_run.EXPLAIN` faces at most.
    ``synfer_kw`` go to :class:`fer.data.SynFER` (``image_size``...).
    """
    if dry_run():
        n = min(n, DRY_EXPLAIN)
    ds = SynFER(variant, split, n=n, seed=seed + EXPLAIN_SEED_OFFSET, with_relevance=True, class_balance="uniform",
                **synfer_kw)
    return cache_dataset(ds, keys=tuple(keys), progress=progress, desc="SynFER explain set")


def gradcam_maps(model: nn.Module, images: torch.Tensor, config: TrainConfig, *, targets: Any = None,
                 **cam_kw: Any) -> np.ndarray:
    """Grad-CAM (:func:`fer.explain.cam`, ``cam_kw``: ``method``, ``target_layer``) of uint8 ``images``
    given as a run with ``config`` sees them (:func:`model_input`), ``B x S x S`` in [0, 1]."""
    return cam(model, model_input(images, config), targets, **cam_kw)


#: ``maps(model, config, targets) -> {map name: B x h x w}``: the maps a localisation table scores.
MapsFn = Callable[[nn.Module, TrainConfig, Any], Mapping[str, np.ndarray]]


def localisation_table(models: Mapping[str, tuple[nn.Module, TrainConfig]], ds: CachedDataset, maps: MapsFn, *,
                       targets: Literal["label", "predicted"] = "label", map_column: str | None = "map",
                       index: str | None = None):
    """Where each model looks on SynFER: a ``DataFrame`` row (:func:`localisation_row`) per model
    and map that ``maps`` gives, scored against ``ds``'s ``relevance``.

    Args:
        models: name -> (trained model, its run's config).
        ds: explanation faces with ``relevance`` (:func:`explain_faces`).
        maps: the chapter's maps of one model (Grad-CAM, attention maps) for the true classes
            (``targets="label"``) or the predicted ones (``None`` targets).
        map_column: the column naming the map (``None``: no such column, one map per model).
        index: a column to index the table by.
    """
    import pandas as pd

    rel = ds.tensors["relevance"]
    explain = ds.labels.tolist() if targets == "label" else None
    rows = []
    for name, (model, config) in models.items():
        for kind, heat in maps(model, config, explain).items():
            labels = {"model": name, **({map_column: kind} if map_column else {})}
            rows.append(localisation_row(heat, rel, **labels))
    df = pd.DataFrame(rows)
    return df.set_index(index) if index else df
