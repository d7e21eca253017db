"""What every chapter's protocol module shares: the profile plumbing of its ``Setup``.

A chapter's ``Setup`` is a dataclass built from a notebook's parameters; it inherits
:class:`ProfileSetup` for :meth:`~ProfileSetup.from_params` and
:meth:`~ProfileSetup.resolved_device`, and the chapter's ``profile_setups()`` is
:func:`profile_setups` with the notebook whose ``book/profiles.yml`` entry defines it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..explain import localisation_scores
from ..train import CachedDataset, InputTransform, TrainConfig

__all__ = ["ProfileSetup", "profile_setups", "random_subset", "stratified_indices", "model_input",
           "localisation_row"]

S = TypeVar("S", bound="ProfileSetup")


class ProfileSetup:
    """Mixin for a chapter's ``Setup`` dataclass (it needs a ``device`` field)."""

    device: str

    @classmethod
    def from_params(cls: type[S], **params: Any) -> S:
        """From notebook parameters: names that are not fields are ignored, YAML lists become tuples."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in names})

    def resolved_device(self) -> str:
        """``device`` with ``"auto"`` resolved (:func:`fer.book.resolve_device`)."""
        from ..book import resolve_device

        return resolve_device(None if self.device == "auto" else self.device)


def profile_setups(setup_cls: type[S], notebook: str, root: str | Path | None = None) -> dict[str, S]:
    """Every profile's setup: ``smoke`` = the defaults, ``demo``/``paper`` from ``notebook``'s
    entry in ``book/profiles.yml`` (a profile without an entry is left out)."""
    from ..book import find_root, load_profiles

    book_root = find_root(root)
    out = {"smoke": setup_cls()}
    for prof in ("demo", "paper"):
        params = load_profiles(book_root, prof).get(notebook)
        if params is not None:
            out[prof] = setup_cls.from_params(profile=prof, **params)
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


def model_input(images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """uint8 faces -> the evaluation-time model input of a run with ``config`` (resize, normalise; no augmentation)."""
    return InputTransform.from_config(config)({"image": images})["image"]


def localisation_row(heat: Any, relevance: Any, **labels: Any) -> dict[str, Any]:
    """One row of a chapter's localisation table: ``labels`` (e.g. ``model=``, ``map=``), then the
    energy share on SynFER's evidence and the pointing-game hit rate, each with its chance level
    (:func:`fer.explain.localisation_scores`), and the number of faces."""
    s = localisation_scores(heat, relevance)
    return {**labels, "energy on evidence": s["energy"], "energy (chance)": s["energy_chance"],
            "pointing game": s["pointing"], "pointing (chance)": s["pointing_chance"], "faces": s["num_images"]}
