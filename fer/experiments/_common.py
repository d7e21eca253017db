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

from ..train import CachedDataset

__all__ = ["ProfileSetup", "profile_setups", "random_subset"]

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
