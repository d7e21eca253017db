"""What every chapter's protocol module shares: the profile plumbing of its ``Setup``.

A chapter's ``Setup`` is a dataclass whose defaults are the ``smoke`` profile; it inherits
:class:`ProfileSetup` for :meth:`~ProfileSetup.for_profile` (the chapter's entry in
``book/profiles.yml`` over those defaults) and :meth:`~ProfileSetup.resolved_device`, and
the chapter's ``profile_setups()`` is :func:`profile_setups` over every profile.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..data.cached import CachedDataset
from ..data.transforms import model_input  # the one uint8 -> model input path, re-exported for the chapters
from ..explain import localisation_scores
from ..profiles import PROFILES_FILE, ProfileError, chapter_entry, resolve_device

__all__ = ["ProfileSetup", "profile_setups", "random_subset", "stratified_indices", "model_input",
           "localisation_row"]

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
        ``data_root``, ``device`` and ``changes`` (field values) go on top.
        """
        params: dict[str, Any] = {}
        if profile != "smoke":
            entry = chapter_entry(cls.chapter, profile, root)
            if entry is None:
                raise ProfileError(
                    f"{PROFILES_FILE.as_posix()} has no {profile!r} entry for the chapter {cls.chapter!r}: add "
                    f"'{cls.chapter}: {{{profile}: {{...}}}}' with the {profile} values of its Setup fields")
            names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            unknown = sorted(set(entry) - names)
            if unknown:
                raise ProfileError(
                    f"{PROFILES_FILE.as_posix()}: the {profile!r} entry of {cls.chapter!r} sets {', '.join(unknown)}, "
                    f"which {cls.__module__}.{cls.__qualname__} has no field for: fix the key, or put a page's own "
                    "knob in that page's entry")
            params.update(entry)
        params.update(changes)
        return cls.from_params(**{**params, "profile": profile, "data_root": data_root, "device": device})

    def resolved_device(self) -> str:
        """``device`` with ``"auto"`` resolved (:func:`fer.profiles.resolve_device`)."""
        return resolve_device(None if self.device == "auto" else self.device)


def profile_setups(setup_cls: type[S], root: str | Path | None = None) -> dict[str, S]:
    """Every profile's setup of a chapter (a profile without a chapter entry is left out)."""
    out = {"smoke": setup_cls()}
    for prof in ("demo", "paper"):
        if chapter_entry(setup_cls.chapter, prof, root) is not None:
            out[prof] = setup_cls.for_profile(prof, root=root)
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
