"""Profiles: where a chapter's and a page's settings come from, for library code and the runner.

The book runs in three profiles (``smoke``, ``demo``, ``paper``; see DESIGN.md). One file,
``book/profiles.yml`` under the book root, holds what ``demo`` and ``paper`` change:

* a **chapter entry**, keyed by the chapter (``cbam_vgg``, ``manet``, ``mapnet``,
  ``msanet``, ``masked``: the folder ``book/<key>/`` and the module
  ``fer.experiments.<key>``), maps each profile to values of that chapter's ``Setup``
  fields. ``Setup.for_profile(profile)`` reads it; ``smoke`` is the ``Setup`` defaults.
* a **page entry**, keyed by the notebook path (``book/<key>/<page>.ipynb``), maps each
  profile to the page's own knobs (``rows``, ``n_show``, ...), which ``python -m fer.book``
  injects into the notebook's ``parameters`` cell. Every notebook has one, even if empty.
* keys starting with ``x-`` are not entries: they hold values shared through YAML anchors.
* the key ``schedule`` is not an entry either: it maps each profile to the minutes each page
  is expected to take to execute (:func:`expected_minutes`), which ``--jobs N`` uses to start
  the longest groups of pages first.

This module sits below the experiments and the book runner, so both read profiles and
resolve devices without the library importing the runner.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PROFILES",
    "PROFILES_FILE",
    "ProfileError",
    "find_root",
    "read_profiles",
    "chapter_entry",
    "chapter_entries",
    "page_entries",
    "chapter_of",
    "expected_minutes",
    "resolve_device",
]

#: Profiles a notebook can be run with; ``smoke`` is every notebook's default.
PROFILES: tuple[str, ...] = ("smoke", "demo", "paper")
#: The profiles file, relative to the book root.
PROFILES_FILE = Path("book") / "profiles.yml"
#: Environment variable naming the book root (the runner sets it for its kernels).
ROOT_ENV = "FER_BOOK_ROOT"
#: The top-level key of ``profiles.yml`` holding :func:`expected_minutes` (not an entry).
SCHEDULE_KEY = "schedule"


class ProfileError(RuntimeError):
    """``book/profiles.yml`` or the book root is missing or wrong; the message says the fix."""


def find_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The book root (the folder holding ``_toc.yml``).

    ``root`` if given, else ``$FER_BOOK_ROOT``, the working directory, or the checkout
    this package was installed from (an editable install).
    """
    if root is not None:
        candidates = [Path(root)]
    else:
        env = os.environ.get(ROOT_ENV)
        candidates = ([Path(env)] if env else []) + [Path.cwd(), Path(__file__).resolve().parent.parent]
    for cand in candidates:
        if (cand / "_toc.yml").is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ProfileError(f"no _toc.yml in {tried}: run from the repository root, pass --root DIR "
                       f"or set {ROOT_ENV}")


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")


def _load(path: Path) -> Any:
    """The parsed ``profiles.yml`` at ``path`` (``{}`` when it is missing or empty)."""
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path} is not valid YAML: {exc}") from exc


def read_profiles(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Every entry of ``root/book/profiles.yml``: ``{key: {profile: {name: value}}}``.

    Keys starting with ``x-`` and :data:`SCHEDULE_KEY` are dropped; a profile written without values
    (``demo:``) reads as ``{}``. A missing file reads as no entries.
    """
    path = root / PROFILES_FILE
    data = _load(path)
    if not isinstance(data, dict):
        raise ProfileError(f"{path} must map chapters and notebook paths to {{profile: {{name: value}}}}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, per_profile in data.items():
        key = str(key)
        if key.startswith("x-") or key == SCHEDULE_KEY:
            continue
        if not isinstance(per_profile, dict):
            raise ProfileError(f"{path}: entry {key!r} must map profile names to parameter dicts")
        unknown = sorted(set(per_profile) - set(PROFILES[1:]))
        if unknown:
            raise ProfileError(
                f"{path}: entry {key!r} has profile(s) {unknown}; only {list(PROFILES[1:])} belong there "
                "(smoke is the notebook's own defaults and the Setup's)"
            )
        entry: dict[str, dict[str, Any]] = {}
        for prof, params in per_profile.items():
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise ProfileError(f"{path}: {key!r} -> {prof!r} must be a mapping of parameters")
            entry[prof] = dict(params)
        out[key] = entry
    return out


def _is_page(key: str) -> bool:
    return "/" in key


def chapter_of(notebook: str | os.PathLike[str]) -> str | None:
    """The chapter of a notebook path ``book/<chapter>/<page>.ipynb`` (None elsewhere)."""
    parts = Path(notebook).parts
    return parts[1] if len(parts) == 3 and parts[0] == "book" else None


def chapter_entry(chapter: str, profile: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The ``Setup`` values of ``chapter`` for ``profile`` (None: the chapter has no such entry).

    ``smoke`` has none by definition: it is the ``Setup`` defaults.
    """
    _check_profile(profile)
    if profile == "smoke":
        return None
    entry = read_profiles(find_root(root)).get(chapter)
    return None if entry is None or profile not in entry else dict(entry[profile])


def page_entries(root: Path, profile: str) -> dict[str, dict[str, Any]]:
    """Per-notebook injected knobs for ``profile``: ``{notebook path: {name: value}}``.

    For ``demo`` and ``paper`` the file must exist (``smoke`` needs none).
    """
    _check_profile(profile)
    path = root / PROFILES_FILE
    if not path.is_file() and profile != "smoke":
        raise ProfileError(f"{path} is missing: it holds the {profile!r} parameters of every notebook")
    return {key: entry[profile] for key, entry in read_profiles(root).items()
            if _is_page(key) and profile in entry}


def chapter_entries(root: Path, profile: str) -> dict[str, dict[str, Any]]:
    """Every chapter entry for ``profile``: ``{chapter: {field: value}}``."""
    _check_profile(profile)
    return {key: entry[profile] for key, entry in read_profiles(root).items()
            if not _is_page(key) and profile in entry}


def expected_minutes(root: Path, profile: str) -> dict[str, float]:
    """``{notebook path: minutes}``: how long each page is expected to take to execute in
    ``profile`` from an empty cache on the book's reference machine (2 CPU cores, ``--jobs 2``),
    from the ``schedule`` key of ``profiles.yml``. Not parameters and not in any cache key:
    ``python -m fer.book --jobs N`` starts the groups of pages with the most minutes first.
    A page left out has no estimate (the runner counts it as a short page).
    """
    _check_profile(profile)
    path = root / PROFILES_FILE
    data = _load(path)
    per_profile = data.get(SCHEDULE_KEY) if isinstance(data, dict) else None
    if per_profile is None:
        return {}
    if not isinstance(per_profile, dict) or not all(isinstance(v, dict) or v is None for v in per_profile.values()):
        raise ProfileError(f"{path}: {SCHEDULE_KEY!r} must map profile names to {{notebook path: minutes}}")
    minutes = per_profile.get(profile) or {}
    bad = {k: v for k, v in minutes.items()
           if not _is_page(str(k)) or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
    if bad:
        raise ProfileError(f"{path}: {SCHEDULE_KEY} -> {profile}: each key must be a notebook path and each value "
                           f"a number of minutes >= 0; got {bad}")
    return {str(k): float(v) for k, v in minutes.items()}


def resolve_device(device: str | None = None) -> str:
    """The torch device for ``device`` (a notebook's parameter).

    ``None`` reads ``FER_DEVICE`` (set by the runner; ``auto`` when unset); ``auto``
    becomes ``cuda`` when torch sees a GPU, else ``cpu``; anything else is returned.
    """
    device = device or os.environ.get("FER_DEVICE") or "auto"
    if device != "auto":
        return device
    import torch  # deferred: slow to import

    return "cuda" if torch.cuda.is_available() else "cpu"
