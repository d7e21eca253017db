"""Execute the book's notebooks with papermill, then build the HTML with Jupyter Book 1.

Run it as ``python -m fer.book`` (``make book`` does)::

    python -m fer.book run [--profile smoke|demo|paper] [--data-root PATH] [--only GLOB]
                           [--device cpu|cuda|cuda:N|auto] [--force] [--no-build]
                           [--strict] [--root DIR] [--jobs N]
    python -m fer.book build [--strict] [--root DIR]

``run`` is the default command: ``python -m fer.book --profile demo ...`` is the same as
``python -m fer.book run --profile demo ...``. ``build`` only runs the jupyter-book
build (step 7) over what ``_build/src/`` already holds: nothing is staged or executed.

What happens, in order:

1. ``_toc.yml`` under the book root lists the pages in reading order. Notebooks
   (``.ipynb``) are executed; every other page (``.md``) is copied as it is.
2. Each notebook gets its parameters: ``{"profile": <profile>}``, then the page entry
   for that notebook and profile in ``book/profiles.yml`` (its own knobs; none for
   ``smoke``: the notebook's own defaults *are* the smoke profile), then ``{"data_root": ...}`` when
   ``--data-root`` is given. Every notebook needs one cell tagged ``parameters`` that
   defines ``profile`` and ``data_root`` and every other key injected into it.
   Notebooks whose ``parameters`` cell also defines ``device`` get ``{"device": ...}``
   from ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the default; the
   notebook resolves it, e.g. with :func:`resolve_device`). Without an explicit
   ``--device``, a ``device`` given for the notebook in ``profiles.yml`` is kept.
   Notebooks that do not define ``device`` get no such parameter.
3. The book source is staged into ``_build/src/`` (``_config.yml``, ``_toc.yml``, the
   non-notebook files under ``book/``, and every page in the toc). Files are only
   rewritten when their bytes change, so Sphinx rebuilds only what changed.
4. Each notebook runs with papermill into ``_build/src/<same path>``. The kernel's
   working directory is the *staged* notebook's folder; notebooks find the repository
   through ``fer.REPO_ROOT``, never through relative paths. The kernel sees
   ``FER_PROFILE=<profile>``, ``FER_DEVICE=<--device>``, ``FER_BOOK_ROOT=<root>``,
   ``FER_CACHE=_build/datasets/<code hash>`` (unless set: the datasets the pages render,
   kept on disk so the next page reads them; :func:`dataset_store`), ``PYTHONHASHSEED=0``,
   ``TQDM_DISABLE=1`` (progress bars would end up in the pages), ``FER_RUNS_QUIET=1``
   (run logs stay out of the pages: :func:`fer.runs.run` logs them) and the headless
   matplotlib inline backend (``MPLBACKEND=module://matplotlib_inline.backend_inline``;
   plain ``Agg`` would drop every figure from the pages). With ``--jobs N``, N kernels
   run side by side, one chapter's pages after another (:func:`page_groups`), the chapters
   expected to take longest first (:func:`longest_first`, from the ``schedule`` minutes of
   ``profiles.yml``), each with the cores shared among the kernels running at once as its
   threads (``OMP_NUM_THREADS`` and the like, unless set: :func:`wave_threads`).
5. Executions are cached under ``_build/cache/<profile>/``. The key hashes the notebook
   bytes, the injected parameters, the chapter entry of ``book/profiles.yml`` that a
   chapter page reads through ``Setup.for_profile`` (:mod:`fer.profiles`), the profile,
   the ``fer`` modules the notebook imports, transitively (:func:`page_code_fingerprint`:
   an edit to the book runner re-executes no page, one to ``fer/plots.py`` those that draw),
   and the python and torch versions; a hit copies the cached notebook
   instead of running it. ``--force`` ignores the cache. ``FER_DEVICE`` is not part
   of the key; the ``device`` parameter is, where a notebook defines it.
6. ``_build/book-report.json`` records per notebook the wall time, whether it came
   from the cache, the profile and the parameters, and the runs its banner names, with
   those that did not learn (:func:`page_runs`, :func:`fer.pages.learned`); plus the
   totals, the count of runs that did not learn among them.
7. Unless ``--no-build``: ``jupyter-book build _build/src --path-output <root>`` with
   execution off, so the book lands at ``<root>/_build/html/index.html``. The build
   fails on Sphinx errors and on warnings that mean a broken book (toc entries,
   missing citations, unresolved references); ``--strict`` fails on any warning.

Every staged notebook carries a stamp in its metadata, ``fer_book: {status, profile,
key, parameters}``: ``status`` is ``ok`` (executed by this run or taken from the cache
under this run's key), ``failed`` or ``not-run``. Before anything executes, every staged
notebook whose stamp does not carry the key this run computed for it is replaced by its
unexecuted source marked ``not-run`` (a ``{warning}`` cell tagged ``fer-book-not-run``
opens it), so a notebook staged by an earlier run with another profile or other
parameters can never pass for this run's.

A notebook that raises stops the run with exit status 1 and a message naming the
notebook and the cell; the HTML is not built. Its page in ``_build/src/`` is then the
partially executed notebook, never an older successful copy: an ``{error}`` admonition
cell (tagged ``fer-book-failed``) opens it and its stamp says ``failed``. The notebooks
the run did not reach stay marked ``not-run``. Failures are not cached.

No HTML page outlives the result it shows. ``build`` records the key of every page it
renders in ``_build/html/fer-book-pages.json``; a run that ends without a build (a
failure, or ``--no-build``) replaces the HTML of every page whose staged notebook
changed since with a marked placeholder saying so (:func:`prune_stale_html`). ``build``
refuses a staged book holding a notebook whose stamp disagrees with the run report
(another profile, another key, or no stamp: :func:`stale_pages`), and warns about the
marked ``failed`` / ``not-run`` pages, which render as such.

Pages state what produced their numbers with :func:`fer.pages.banner`.

``--dry-run`` checks a path before it costs GPU days (``--profile paper --data-root DIR``):
every page executes with the profile's real settings, loaders and weight-loading code, but
each training stage stops after a few optimiser steps of a small batch and each evaluation
after a few batches (``FER_DRY_RUN=1``, read by :mod:`fer.train`); a pretrained file that
is missing is listed, with where to get it, and replaced by random weights
(:func:`fer.models.missing_weights`). Its runs go to ``_build/dry-run/runs`` and nothing
enters a cache; every page's banner says it was a dry run.

Notebooks left out by ``--only`` are staged from a valid cache entry when there is
one, otherwise unexecuted and marked ``not-run``; the report marks them ``"skipped"``.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ._dry_run import cap_page_parameters
from ._hashing import files_fingerprint, import_closure, imported_modules, package_fingerprint
from .profiles import (PROFILES, PROFILES_FILE, ROOT_ENV, ProfileError, chapter_entries, chapter_of, expected_minutes,
                       find_root, page_entries, resolve_device)

import yaml

__all__ = [
    "PROFILES",
    "THREAD_ENV",
    "kernel_threads",
    "REQUIRED_PARAMETERS",
    "FAILED_TAG",
    "BookError",
    "NotebookFailed",
    "BookPaths",
    "NotebookResult",
    "find_root",
    "toc_entries",
    "read_toc",
    "parameter_names",
    "notebook_parameters",
    "package_fingerprint",
    "page_code_fingerprint",
    "page_groups",
    "longest_first",
    "wave_threads",
    "after_all",
    "environment_fingerprint",
    "cache_key",
    "missing_weight_files",
    "page_chapters",
    "stage_sources",
    "run_notebooks",
    "write_report",
    "page_runs",
    "page_claims",
    "write_verdicts_page",
    "VERDICTS_PAGE",
    "build_html",
    "failed_pages",
    "not_run_pages",
    "stale_pages",
    "prune_stale_html",
    "dataset_store",
    "source_hash_of",
    "NOT_RUN_TAG",
    "resolve_device",
    "main",
]

#: Names every notebook's ``parameters`` cell must define.
REQUIRED_PARAMETERS: tuple[str, ...] = ("profile", "data_root")
#: Bump when the meaning of a cache entry changes.
_CACHE_VERSION = "3"  # 2: executed notebooks carry the ``fer_book`` stamp; 3: injected cell hidden
_PAGE_SUFFIXES: tuple[str, ...] = (".ipynb", ".md", ".rst")
_PROFILES_FILE = PROFILES_FILE
_KERNEL_ENV: dict[str, str] = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "PYTHONHASHSEED": "0",
    # tqdm bars would land in the pages as dozens of text lines; papermill shows
    # per-cell progress in the terminal instead.
    "TQDM_DISABLE": "1",
    # fer.runs logs "training: / finished: / cache hit:" instead of printing it on the page.
    "FER_RUNS_QUIET": "1",
    # Use this environment's ``python3`` kernel even if the user has their own.
    "JUPYTER_PREFER_ENV_PATH": "1",
}
#: Values ``--device`` accepts.
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?|auto")
#: Tag of the admonition cell that marks a staged notebook as failed.
FAILED_TAG = "fer-book-failed"
#: Tag of the admonition cell that marks a staged notebook as not executed by the run.
NOT_RUN_TAG = "fer-book-not-run"
#: Notebook metadata key of the stamp every staged notebook carries.
_STAMP = "fer_book"
#: Keys of the pages an HTML build rendered (under ``_build/html``).
_PAGES_FILE = "fer-book-pages.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Build warnings that mean the book is broken, even without ``--strict``.
_FATAL_WARNINGS = re.compile(
    r"toctree|\[etoc\]|nonexisting document|didn't match any documents"
    r"|could not find bibtex key|citation not found|undefined label|unknown document"
    r"|reference target not found|image file not readable|include file .* not found"
)


class BookError(RuntimeError):
    """A problem with the book's sources or configuration; the message says the fix."""


class NotebookFailed(BookError):
    """A notebook raised while papermill executed it.

    ``results`` holds what happened to every notebook handled before the stop.
    """

    def __init__(self, message: str, results: Sequence["NotebookResult"] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


@dataclass(frozen=True)
class BookPaths:
    """Where the runner reads and writes, all under one book root."""

    root: Path

    @property
    def build(self) -> Path:
        """``<root>/_build``."""
        return self.root / "_build"

    @property
    def src(self) -> Path:
        """Staged book source handed to jupyter-book."""
        return self.build / "src"

    @property
    def cache(self) -> Path:
        """Executed notebooks, one folder per profile."""
        return self.build / "cache"

    @property
    def html(self) -> Path:
        """Where jupyter-book writes the HTML (``--path-output <root>``)."""
        return self.build / "html"

    @property
    def report(self) -> Path:
        """The JSON run report."""
        return self.build / "book-report.json"

    @property
    def datasets(self) -> Path:
        """Rendered datasets the kernels share (``FER_CACHE``), one folder per training-code hash."""
        return self.build / "datasets"

    @property
    def dry_runs(self) -> Path:
        """Where a dry run's training runs go (emptied at its start; never the runs cache)."""
        return self.build / "dry-run" / "runs"


@dataclass
class NotebookResult:
    """How one notebook got into the staged book."""

    notebook: str
    profile: str
    parameters: dict[str, Any]
    seconds: float = 0.0
    cached: bool = False
    status: str = "executed"  # executed | cached | skipped | failed
    key: str = ""
    runs: list[str] = field(default_factory=list)  # the runs its banner names (page_runs)
    not_learned: list[str] = field(default_factory=list)  # those the banner lists as not learned
    claims: list[dict[str, Any]] = field(default_factory=list)  # its tested claims (page_claims)

    def to_json(self) -> dict[str, Any]:
        """The report entry for this notebook (everything but its name)."""
        out = asdict(self)
        out.pop("notebook")
        return out


# --------------------------------------------------------------------------- sources


def toc_entries(node: Any) -> Iterator[tuple[str, str]]:
    """Yield ``("file"|"glob", value)`` for every entry of a parsed ``_toc.yml``."""
    if isinstance(node, dict):
        for kind in ("root", "file", "glob"):
            if kind in node:
                yield ("glob" if kind == "glob" else "file"), str(node[kind])
        for key in ("parts", "chapters", "sections", "subtrees", "entries"):
            for child in node.get(key) or ():
                yield from toc_entries(child)
    elif isinstance(node, list):
        for child in node:
            yield from toc_entries(child)


def _resolve_page(root: Path, entry: str) -> Path:
    """Map a toc entry (with or without suffix) to an existing file, relative to root."""
    rel = Path(entry)
    if rel.suffix in _PAGE_SUFFIXES:
        if (root / rel).is_file():
            return rel
    else:
        found = [rel.with_suffix(s) for s in _PAGE_SUFFIXES if (root / rel.with_suffix(s)).is_file()]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.as_posix() for p in found)
            raise BookError(
                f"_toc.yml entry {entry!r} is ambiguous ({names}): keep one of them "
                "or write the suffix in _toc.yml"
            )
    raise BookError(
        f"_toc.yml lists {entry!r} but no {entry}{{{','.join(_PAGE_SUFFIXES)}}} exists under "
        f"{root}: create the page or remove the entry from _toc.yml"
    )


def read_toc(root: Path) -> list[Path]:
    """Pages of the book in toc order, as paths relative to ``root`` with suffixes."""
    toc_path = root / "_toc.yml"
    try:
        toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BookError(f"cannot read {toc_path}: {exc}") from exc
    if not isinstance(toc, dict) or "root" not in toc:
        raise BookError(f"{toc_path} has no 'root:' entry: it must be a jb-book toc")
    pages: list[Path] = []
    for kind, value in toc_entries(toc):
        if kind == "file":
            found = [_resolve_page(root, value)]
        else:  # a glob over docnames, i.e. paths without their suffix
            found = sorted(
                p.relative_to(root)
                for suffix in _PAGE_SUFFIXES
                for p in root.glob(value + suffix)
                if p.is_file()
            )
        pages.extend(p for p in found if p not in pages)
    return pages


def _parameters_cell(nb: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first cell tagged ``parameters``, or None."""
    for cell in nb.get("cells", []):
        if "parameters" in (cell.get("metadata", {}).get("tags") or []):
            return cell
    return None


def parameter_names(nb_path: Path) -> set[str]:
    """Names assigned at top level in the notebook's ``parameters`` cell."""
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BookError(f"{nb_path}: not a readable notebook ({exc})") from exc
    cell = _parameters_cell(nb)
    if cell is None:
        raise BookError(
            f"{nb_path}: no cell tagged 'parameters'. Add one code cell with the tag "
            f"'parameters' defining {', '.join(REQUIRED_PARAMETERS)} and the notebook's "
            "knobs (its defaults are the smoke profile)"
        )
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise BookError(f"{nb_path}: the 'parameters' cell is not plain Python ({exc})") from exc
    names: set[str] = set()
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Tuple):
                names.update(e.id for e in target.elts if isinstance(e, ast.Name))
    return names


def notebook_parameters(
    nb_rel: str,
    defined: set[str],
    profile: str,
    profiles: Mapping[str, Mapping[str, Any]],
    data_root: str | None,
    *,
    device: str | None = None,
    override_device: bool = True,
) -> dict[str, Any]:
    """Parameters injected into ``nb_rel``, checked against the names it ``defined``.

    ``device`` is injected only if the notebook defines ``device``; with
    ``override_device=False`` a ``device`` from ``profiles.yml`` is kept.
    """
    missing = [name for name in REQUIRED_PARAMETERS if name not in defined]
    if missing:
        raise BookError(
            f"{nb_rel}: its 'parameters' cell does not define {', '.join(missing)}; "
            f"every notebook defines {', '.join(REQUIRED_PARAMETERS)} "
            "(e.g. profile = \"smoke\"; data_root = None)"
        )
    params: dict[str, Any] = {"profile": profile}
    if profile != "smoke":
        if nb_rel not in profiles:
            raise BookError(
                f"{_PROFILES_FILE.as_posix()} has no {profile!r} entry for {nb_rel}: add "
                f"'{nb_rel}: {{{profile}: {{}}}}' (with the {profile} values of its knobs)"
            )
        params.update(profiles[nb_rel])
    if data_root is not None:
        params["data_root"] = data_root
    if device is not None and "device" in defined and (override_device or "device" not in params):
        params["device"] = device
    unknown = sorted(set(params) - defined)
    if unknown:
        raise BookError(
            f"{nb_rel}: {_PROFILES_FILE.as_posix()} injects {', '.join(unknown)} for profile "
            f"{profile!r} but the notebook's 'parameters' cell does not define "
            f"{'it' if len(unknown) == 1 else 'them'}: define a smoke default in that cell "
            "or fix the key in profiles.yml"
        )
    return params


# --------------------------------------------------------------------------- cache


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def environment_fingerprint() -> str:
    """Python and torch versions (read from metadata: importing torch is slow)."""
    return f"python={platform.python_version()};torch={_dist_version('torch')}"


def cache_key(
    nb_bytes: bytes,
    parameters: Mapping[str, Any],
    profile: str,
    package_fp: str,
    env_fp: str,
) -> str:
    """The cache key of one notebook execution."""
    digest = hashlib.sha256()
    for part in (
        _CACHE_VERSION.encode(),
        nb_bytes,
        json.dumps(dict(parameters), sort_keys=True, default=str).encode(),
        profile.encode(),
        package_fp.encode(),
        env_fp.encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _cache_entry(paths: BookPaths, profile: str, nb_rel: Path) -> tuple[Path, Path]:
    """(cached notebook, its metadata JSON)."""
    nb_path = paths.cache / profile / nb_rel
    return nb_path, nb_path.with_name(nb_path.name + ".json")


def _cache_lookup(paths: BookPaths, profile: str, nb_rel: Path, key: str) -> Path | None:
    nb_path, meta_path = _cache_entry(paths, profile, nb_rel)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return nb_path if meta.get("key") == key and nb_path.is_file() else None


def _atomic_write_text(dest: Path, text: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)


def _atomic_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _cache_store(paths: BookPaths, result: NotebookResult, executed: Path) -> None:
    nb_path, meta_path = _cache_entry(paths, result.profile, Path(result.notebook))
    _atomic_copy(executed, nb_path)
    meta = {"key": result.key, "seconds": result.seconds, "parameters": result.parameters}
    tmp = meta_path.with_name(f".{meta_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, meta_path)


# --------------------------------------------------------------------------- staging


def _sync_file(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` unless the bytes are already there (keeps mtimes)."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size:
        if dest.read_bytes() == src.read_bytes():
            return
    _atomic_copy(src, dest)


def stage_sources(paths: BookPaths, pages: Sequence[Path]) -> None:
    """Copy config, toc, non-notebook book files, non-notebook pages and the ``fer``
    package's ``*.py`` (for the pages' ``literalinclude`` of ``/fer/...``) into ``src``.

    Files in ``src`` that no longer belong to the book are removed; notebooks are
    left for :func:`run_notebooks` to write.
    """
    root, src = paths.root, paths.src
    wanted: set[Path] = {Path("_config.yml"), Path("_toc.yml")}
    wanted.update(p for p in pages if p.suffix != ".ipynb")
    book_dir = root / "book"
    if book_dir.is_dir():
        for path in book_dir.rglob("*"):
            rel = path.relative_to(root)
            skip = {".ipynb_checkpoints", "__pycache__"} & set(rel.parts)
            if path.is_file() and path.suffix != ".ipynb" and not skip:
                wanted.add(rel)
    package = root / "fer"
    if package.is_dir():  # pages show the package's code with ``literalinclude`` (``/fer/...``)
        wanted.update(p.relative_to(root) for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    if not (root / "_config.yml").is_file():
        raise BookError(f"{root / '_config.yml'} is missing: jupyter-book needs it")
    notebooks = {p for p in pages if p.suffix == ".ipynb"}
    if src.is_dir():
        for path in sorted(src.rglob("*"), reverse=True):
            rel = path.relative_to(src)
            if path.is_file() and rel not in wanted and rel not in notebooks:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    for rel in sorted(wanted):
        _sync_file(root / rel, src / rel)


# --------------------------------------------------------------------------- execution


#: The thread-count variables a kernel's PyTorch, NumPy and OpenCV read at import.
THREAD_ENV: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def kernel_threads(jobs: int, cpus: int | None = None) -> int | None:
    """CPU threads each kernel may use when ``jobs`` run at once: the machine's ``cpus``
    shared out (at least 1), so ``--jobs`` kernels do not oversubscribe the cores; ``None``
    (each library's default) for one job at a time."""
    if jobs <= 1:
        return None
    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) // jobs)


def wave_threads(jobs: int, groups: int, cpus: int | None = None) -> int:
    """CPU threads each kernel of a wave of ``groups`` page groups gets under ``--jobs jobs``:
    :func:`kernel_threads` of the kernels that actually run at once. The comparison page,
    which starts alone once every chapter has finished, gets every core instead of one."""
    at_once = min(jobs, groups)
    if at_once > 1:
        return kernel_threads(at_once, cpus) or 1
    return max(1, cpus if cpus is not None else os.cpu_count() or 1)


@contextlib.contextmanager
def _kernel_environment(profile: str, device: str = "auto", root: Path | None = None,
                        dry_runs: Path | None = None, datasets: Path | None = None,
                        threads: int | None = None) -> Iterator[None]:
    """Set the environment the kernels inherit; restore it afterwards.

    ``dry_runs``: a dry run, whose training runs go to that folder (``FER_RUNS``).
    ``datasets``: where the kernels keep the datasets they render (``FER_CACHE``), unless
    the user's environment names a folder already.
    ``threads``: each kernel's CPU threads (:data:`THREAD_ENV`), unless the user's
    environment sets them already.
    """
    updates = dict(_KERNEL_ENV, FER_PROFILE=profile, FER_DEVICE=device)
    if threads is not None:
        updates.update({name: str(threads) for name in THREAD_ENV if not os.environ.get(name)})
    if dry_runs is not None:
        updates.update(FER_DRY_RUN="1", FER_RUNS=str(dry_runs))
    if datasets is not None and not os.environ.get("FER_CACHE"):
        updates["FER_CACHE"] = str(datasets)
    if root is not None:
        updates[ROOT_ENV] = str(root)  # where ``Setup.for_profile`` reads book/profiles.yml
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _execute(src: Path, dest: Path, parameters: Mapping[str, Any], progress: bool) -> None:
    """Run one notebook with papermill from ``src`` into ``dest`` (cwd = dest's folder)."""
    import papermill  # deferred: slow to import, and not needed for cache hits

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(src),
            str(dest),
            parameters=dict(parameters),
            cwd=str(dest.parent),
            kernel_name="python3",
            language="python",
            progress_bar=progress,
            log_output=False,
        )
    except papermill.PapermillExecutionError as exc:
        source = "\n".join("    " + line for line in (exc.source or "").splitlines()[:15])
        raise NotebookFailed(
            f"notebook {src} failed in cell {exc.cell_index} of the executed notebook "
            f"(execution count {exc.exec_count}): {exc.ename}: {exc.evalue}\n  cell source:\n{source}\n"
            f"  partially executed notebook: {dest}"
        ) from exc
    except Exception as exc:  # kernel died, bad notebook JSON, ...
        raise NotebookFailed(
            f"notebook {src} could not be executed: {type(exc).__name__}: {exc}\n"
            f"  partially executed notebook (if any): {dest}"
        ) from exc


@dataclass(frozen=True)
class _Job:
    rel: Path
    parameters: dict[str, Any]
    key: str
    selected: bool


def _plan(
    paths: BookPaths,
    notebooks: Sequence[Path],
    profile: str,
    data_root: str | None,
    only: str | None,
    package_dir: Path,
    device: str | None = None,
    dry_run: bool = False,
) -> list[_Job]:
    """Check every notebook's parameters and compute its cache key, before running any."""
    profiles = page_entries(paths.root, profile)
    chapters = chapter_entries(paths.root, profile)
    env_fp = environment_fingerprint()
    jobs = []
    for rel in notebooks:
        path = paths.root / rel
        pkg_fp = page_code_fingerprint(path, package_dir)
        params = notebook_parameters(
            rel.as_posix(), parameter_names(path), profile, profiles, data_root,
            device=device or "auto", override_device=device is not None,
        )
        if dry_run:  # how many faces a page draws or explains: a few prove the path
            params = cap_page_parameters(params)
        # The page reads its chapters' entries itself (``Setup.for_profile``): key on them too.
        used = [c for c in page_chapters(paths.root, rel) if c in chapters]
        keyed = params
        if used == [chapter_of(rel)]:
            keyed = {**params, "chapter setup": chapters[used[0]]}  # the key every chapter page has always had
        elif used:
            keyed = {**params, "chapter setups": {c: chapters.get(c) for c in used}}
        if dry_run:  # never the key of a real execution: a later real run re-executes the page
            keyed = {**keyed, "dry run": True}
        key = cache_key(path.read_bytes(), keyed, profile, pkg_fp, env_fp)
        jobs.append(_Job(rel, params, key, _matches(rel, only)))
    if only is not None and not any(job.selected for job in jobs):
        listed = "\n  ".join(r.as_posix() for r in notebooks) or "(none)"
        raise BookError(f"--only {only!r} matches no notebook in _toc.yml; they are:\n  {listed}")
    return jobs


def _matches(rel: Path, pattern: str | None) -> bool:
    if pattern is None:
        return True
    posix = rel.as_posix()
    return fnmatch.fnmatch(posix, pattern) or fnmatch.fnmatch(posix[: -len(rel.suffix)], pattern)


#: Why a notebook is staged ``not-run``.
_NOT_REACHED = ("the run stopped before executing it (a notebook before it failed, or the run "
                "was interrupted)")
_NOT_SELECTED = ("it was left out by --only and no cached execution matches its current "
                 "source and parameters")


def _run_one(paths: BookPaths, job: _Job, profile: str, force: bool, progress: bool,
             dry_run: bool = False) -> NotebookResult:
    """Stage one notebook: from the cache, by executing it, or (not selected) marked ``not-run``.

    A dry run neither reads nor writes the cache: its numbers are not results.
    """
    result = NotebookResult(job.rel.as_posix(), profile, job.parameters, key=job.key)
    dest = paths.src / job.rel
    hit = None if (force and job.selected) or dry_run else _cache_lookup(paths, profile, job.rel, job.key)
    if hit is not None:
        _sync_file(hit, dest)
        result.cached, result.status = True, "cached"
        _read_page_outputs(result, dest)
        return result
    if not job.selected:
        _stage_marked(paths.root / job.rel, dest, _stamp(job, profile, "not-run", reason=_NOT_SELECTED))
        result.status = "skipped"
        return result
    start = time.perf_counter()
    # An older successful copy must not survive a failure as if it were fresh.
    dest.unlink(missing_ok=True)
    try:
        _execute(paths.root / job.rel, dest, job.parameters, progress)
        _write_stamp(dest, _stamp(job, profile, "ok", **({"dry_run": True} if dry_run else {})))
    except NotebookFailed as exc:
        summary = str(exc).splitlines()[0]
        _stage_marked(dest, dest, _stamp(job, profile, "failed", error=summary),
                      fallback=paths.root / job.rel)
        raise
    finally:
        result.seconds = round(time.perf_counter() - start, 2)
    _read_page_outputs(result, dest)
    if not dry_run:
        _cache_store(paths, result, dest)
    return result


def _read_page_outputs(result: NotebookResult, executed: Path) -> None:
    """What the report and the verdicts page take from an executed page: its runs and claims
    (the notebook is parsed once for both)."""
    html = list(_html_outputs(executed))
    result.runs, result.not_learned = _runs_in(html)
    result.claims = _claims_in(html)


def _html_outputs(nb_path: Path) -> Iterator[str]:
    """The ``text/html`` of every code cell output of the notebook ``nb_path``."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            html = out.get("data", {}).get("text/html", "")
            yield "".join(html) if isinstance(html, list) else html


_CLAIMS = re.compile(r"""<table class="fer-claims" data-fer-claims='([^']*)'>""")


def page_claims(nb_path: Path) -> list[dict[str, Any]]:
    """The claims an executed notebook tested: the records of every
    :func:`fer.experiments.claims.claims_table` among its outputs, in page order."""
    return _claims_in(_html_outputs(nb_path))


def _claims_in(outputs: Iterable[str]) -> list[dict[str, Any]]:
    from html import unescape

    return [rec for html in outputs for found in _CLAIMS.findall(html) for rec in json.loads(unescape(found))]


_BANNER_RUNS = re.compile(r"""<div class="[^"]*\bfer-banner\b[^"]*" data-fer-runs='([^']*)' """
                          r"""data-fer-not-learned='([^']*)'>""")


def page_runs(nb_path: Path) -> tuple[list[str], list[str]]:
    """The runs an executed notebook's banners name, and those they list as not learned.

    Read from the ``data-fer-runs`` / ``data-fer-not-learned`` attributes that
    :func:`fer.pages.banner` writes into its HTML output (the kernel decided, with
    :func:`fer.pages.learned`); ids in first-seen order, each once. A page without a
    banner names none.
    """
    return _runs_in(_html_outputs(nb_path))


def _runs_in(outputs: Iterable[str]) -> tuple[list[str], list[str]]:
    from html import unescape

    runs: dict[str, None] = {}
    failing: dict[str, None] = {}
    for html in outputs:
        for named, missed in _BANNER_RUNS.findall(html):
            runs.update(dict.fromkeys(json.loads(unescape(named))))
            failing.update(dict.fromkeys(json.loads(unescape(missed))))
    return list(runs), list(failing)


def _stamp(job: _Job, profile: str, status: str, **extra: Any) -> dict[str, Any]:
    """The ``fer_book`` metadata of ``job``'s staged notebook."""
    return {"status": status, "profile": profile, "key": job.key,
            "parameters": json.loads(json.dumps(job.parameters, default=str)), **extra}


def _write_notebook(nb: Any, dest: Path) -> None:
    import nbformat

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, dest)


def _write_stamp(path: Path, stamp: Mapping[str, Any]) -> None:
    """Stamp the executed notebook ``path`` (papermill's output) in place."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata[_STAMP] = dict(stamp)
    for cell in nb.cells:  # the values papermill injected: on the page, collapsed like the defaults
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
    _write_notebook(nb, path)


def _marker_cell(stamp: Mapping[str, Any]) -> Any:
    """The admonition that opens a ``failed`` or ``not-run`` page."""
    import nbformat

    profile = stamp["profile"]
    if stamp["status"] == "failed":
        text = (
            "```{error}\n"
            f"**This page failed to execute** when the book was run with profile `{profile}`. "
            "What follows is the partially executed notebook: its numbers and figures are "
            "missing or incomplete, and none of them comes from an earlier run.\n\n"
            f"`{str(stamp.get('error', '')).replace('`', chr(39))}`\n"
            "```"
        )
        tag = FAILED_TAG
    else:
        text = (
            "```{warning}\n"
            f"**This page was not executed** by the latest run of the book (profile `{profile}`): "
            f"{stamp.get('reason', '')}. It shows the notebook's code without results; none of "
            "its numbers or figures comes from an earlier run.\n"
            "```"
        )
        tag = NOT_RUN_TAG
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = [tag]
    return cell


def _stage_marked(src: Path, dest: Path, stamp: Mapping[str, Any], fallback: Path | None = None) -> None:
    """Stage ``src`` (else ``fallback``) at ``dest``, opened by its marker cell and stamped.

    For ``failed``, ``src`` is the partially executed notebook papermill left and
    ``fallback`` the source notebook; if neither can be read, ``dest`` is removed.
    Nothing is rewritten when ``dest`` already carries the same stamp.
    """
    import nbformat

    if src != dest and _read_stamp(dest) == json.loads(json.dumps(dict(stamp), default=str)):
        return
    nb = None
    for candidate in (src, fallback):
        if candidate is None:
            continue
        try:
            nb = nbformat.read(candidate, as_version=4)
            break
        except Exception:  # missing, truncated or invalid JSON: try the next one
            continue
    if nb is None:
        dest.unlink(missing_ok=True)
        return
    cell = _marker_cell(stamp)
    if nb.get("nbformat_minor", 0) < 5:
        cell.pop("id", None)
    nb.cells.insert(0, cell)
    nb.metadata[_STAMP] = dict(stamp)
    _write_notebook(nb, dest)


def _read_stamp(path: Path) -> dict[str, Any] | None:
    """The ``fer_book`` stamp of a staged notebook, or None (missing, unreadable, unstamped)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    stamp = meta.get(_STAMP) if isinstance(meta, dict) else None
    return stamp if isinstance(stamp, dict) else None


def _staged_notebooks(paths: BookPaths) -> list[Path]:
    return sorted(paths.src.rglob("*.ipynb")) if paths.src.is_dir() else []


def _pages_with_status(paths: BookPaths, status: str) -> list[str]:
    return [
        path.relative_to(paths.src).as_posix()
        for path in _staged_notebooks(paths)
        if (_read_stamp(path) or {}).get("status") == status
    ]


def failed_pages(paths: BookPaths) -> list[str]:
    """Staged notebooks (relative to ``paths.src``) marked as failed by a run."""
    return _pages_with_status(paths, "failed")


def not_run_pages(paths: BookPaths) -> list[str]:
    """Staged notebooks marked as not executed by the run that staged them."""
    return _pages_with_status(paths, "not-run")


def _read_report(paths: BookPaths) -> dict[str, Any] | None:
    try:
        report = json.loads(paths.report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def stale_pages(paths: BookPaths) -> dict[str, str]:
    """Staged notebooks that show results the last run did not produce, and why.

    A notebook is stale when it has no ``fer_book`` stamp, or when its stamp says
    ``ok`` but names another profile than the run report, or a key the report does
    not hold for it (a run stopped half way, or files copied in by hand). Notebooks
    marked ``failed`` or ``not-run`` are not stale: their page says what they are.
    """
    report = _read_report(paths)
    entries = (report or {}).get("notebooks") or {}
    stale: dict[str, str] = {}
    for path in _staged_notebooks(paths):
        rel = path.relative_to(paths.src).as_posix()
        stamp = _read_stamp(path)
        if stamp is None:
            stale[rel] = "it carries no fer_book stamp, so no run of python -m fer.book staged it"
        elif stamp.get("status") in ("failed", "not-run"):
            continue
        elif report is None:
            stale[rel] = f"there is no run report ({paths.report}) to check it against"
        elif stamp.get("profile") != report.get("profile"):
            stale[rel] = (f"it was executed with profile {stamp.get('profile')!r}, the last run "
                          f"used {report.get('profile')!r}")
        elif (entries.get(rel) or {}).get("key") != stamp.get("key"):
            stale[rel] = "it is not the execution the last run recorded for it (its key differs)"
    return stale


def _built_pages(paths: BookPaths) -> dict[str, str]:
    try:
        pages = json.loads((paths.html / _PAGES_FILE).read_text(encoding="utf-8")).get("pages")
    except (OSError, ValueError, AttributeError):
        return {}
    return pages if isinstance(pages, dict) else {}


def _write_built_pages(paths: BookPaths, pages: Mapping[str, str]) -> None:
    paths.html.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(paths.html / _PAGES_FILE, json.dumps({"pages": dict(pages)}, indent=1, sort_keys=True))


def _current_key(path: Path) -> str | None:
    """The key a staged notebook was executed under, or None unless its stamp says ``ok``."""
    stamp = _read_stamp(path) or {}
    return stamp.get("key") if stamp.get("status") == "ok" else None


_STALE_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Out of date: {rel}</title></head>
<body><div class="admonition error fer-book-stale">
<p class="admonition-title">This page is out of date and was withdrawn</p>
<p>The latest run of the book (profile <code>{profile}</code>) did not produce the results
this page showed: {why}. Its old version was removed so that no result from an earlier
run is shown as current. Rebuild the book (<code>python -m fer.book run</code>, or
<code>python -m fer.book build</code> after a successful run) to see it.</p>
</div></body></html>
"""


def prune_stale_html(paths: BookPaths, profile: str) -> list[str]:
    """Withdraw the HTML of every page whose staged notebook changed since the last build.

    Each such ``_build/html/<page>.html`` is replaced by a marked placeholder (and its
    copy under ``_sources`` removed); returns the pages withdrawn. Called when a run
    ends without a build, so the HTML never shows a result the staged book lost.
    """
    if not paths.html.is_dir():
        return []
    built = _built_pages(paths)
    withdrawn = []
    for path in _staged_notebooks(paths):
        rel = path.relative_to(paths.src).as_posix()
        page = paths.html / Path(rel).with_suffix(".html")
        key = _current_key(path)
        if not page.is_file() or (key is not None and built.get(rel) == key):
            continue
        status = (_read_stamp(path) or {}).get("status")
        why = {"failed": "the notebook failed to execute",
               "not-run": "the notebook was not executed"}.get(
            status, "the notebook was executed again and the HTML was not rebuilt")
        _atomic_write_text(page, _STALE_HTML.format(rel=rel, profile=profile, why=why))
        for source in (paths.html / "_sources").glob(Path(rel).as_posix() + "*"):
            source.unlink(missing_ok=True)
        built[rel] = "withdrawn"
        withdrawn.append(rel)
    if withdrawn:
        _write_built_pages(paths, built)
    return withdrawn


def source_hash_of(package_dir: Path) -> str:
    """16 hex digits of :func:`fer.runs.source_hash`: the code that training runs."""
    from .runs import source_hash

    return source_hash(package_dir)[:16]


def dataset_store(paths: BookPaths, package_dir: Path) -> Path:
    """The folder the kernels render datasets into (``FER_CACHE``): ``_build/datasets/<hash>``.

    Every page of a chapter renders the same SynFER sets; with ``FER_CACHE`` set,
    :func:`fer.data.cached.cache_dataset` keeps each one on disk, keyed by its fingerprint,
    and the next page (or build) reads the files instead of rendering again. ``<hash>``
    is the hash of the code training runs (:func:`fer.runs.source_hash`: data, models,
    protocols; not the presentation modules), so an edit to a renderer, a mask or a
    protocol starts an empty store (its runs retrain anyway), while an edit to a figure
    reuses it. Folders of other hashes are removed.
    """
    folder = paths.datasets / source_hash_of(package_dir)
    if paths.datasets.is_dir():
        for old in paths.datasets.iterdir():
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def page_code_fingerprint(nb_path: Path, package_dir: Path) -> str:
    """The fingerprint of the package code a page executes: the modules its code cells import
    and, transitively, every ``fer`` module those import (:func:`fer._hashing.import_closure`,
    a static over-approximation that counts imports inside functions too).

    So an edit to a module no page reaches (the book runner, the command lines) re-executes
    no page, while an edit to ``fer/plots.py`` re-executes the pages that draw with it (their
    runs load from the runs cache). A code cell that is not plain Python makes the page depend
    on the whole package, as before.
    """
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    modules: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        try:
            modules |= imported_modules("".join(source) if isinstance(source, list) else source)
        except SyntaxError:
            return package_fingerprint(package_dir)
    return files_fingerprint(package_dir, import_closure(package_dir, modules))


#: Notebook metadata key listing the chapters a page outside ``book/<chapter>/`` takes runs from.
CHAPTERS_METADATA = "fer_chapters"


def page_chapters(root: Path, rel: Path) -> list[str]:
    """The chapters whose setup (``book/profiles.yml`` entry) and runs a page uses.

    A page in ``book/<chapter>/`` uses its chapter; a page elsewhere (``book/beyond/``)
    names the chapters it takes runs from in its notebook metadata,
    ``"fer_chapters": ["cbam_vgg"]``. Its cache key then covers those entries, and a paper
    run checks those chapters' pretrained weights.
    """
    own = chapter_of(rel)
    try:
        meta = json.loads((root / rel).read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError) as exc:
        raise BookError(f"{root / rel}: not a readable notebook ({exc})") from exc
    named = meta.get(CHAPTERS_METADATA, [])
    if not isinstance(named, list) or not all(isinstance(c, str) for c in named):
        raise BookError(f"{rel}: notebook metadata {CHAPTERS_METADATA!r} must be a list of chapter keys, "
                        f"like [\"cbam_vgg\"]; got {named!r}")
    return list(dict.fromkeys(([own] if own is not None else []) + named))


def page_groups(root: Path, notebooks: Sequence[Path]) -> list[list[Path]]:
    """``notebooks`` grouped by the chapter whose runs they train or load, each group in book
    order: what ``--jobs N`` executes side by side (a group's pages one after another).

    A page's group is the chapter its metadata names (:func:`page_chapters`: so
    ``book/beyond/photo``, which loads the CBAM chapter's runs, follows that chapter's pages),
    else its folder. A page that names several chapters (``book/beyond/compare``, which loads
    every chapter's runs) goes into a last group of such pages, which the runner starts only
    when every other group has finished (:func:`after_all`). Two pages that share runs are
    then never executed at once, and no run is trained twice.
    """
    groups: dict[str, list[Path]] = {}
    last: list[Path] = []
    for rel in notebooks:
        if after_all(root, rel):
            last.append(rel)
            continue
        named = [c for c in page_chapters(root, rel) if c != chapter_of(rel)]
        key = named[0] if named else (chapter_of(rel) or "/".join(rel.parts[:-1]))
        groups.setdefault(key, []).append(rel)
    return list(groups.values()) + ([last] if last else [])


#: Minutes :func:`longest_first` counts for a page that ``profiles.yml`` gives no estimate
#: (:func:`fer.profiles.expected_minutes`).
SHORT_PAGE_MINUTES = 0.5


def longest_first(groups: Sequence[Sequence[Path]], minutes: Mapping[Path, float], *,
                  keep_last: bool = False) -> list[list[Path]]:
    """``groups`` (:func:`page_groups`) ordered by their pages' total expected ``minutes``,
    most first (ties keep book order); ``keep_last`` leaves the last group last (the pages
    that run after every other group).

    ``--jobs N`` hands groups to its N workers in this order, so the longest chapters start
    first and the short ones fill in around them: the longest-processing-time-first rule,
    which keeps the workers busy to the end instead of leaving one long chapter running
    alone. (In book order the demo book's short datasets group went first and the longest
    chapter's last pages ran with one core idle.)
    """
    head = list(groups[:-1] if keep_last else groups)
    order = sorted(range(len(head)), key=lambda i: -sum(minutes.get(rel, 0.0) for rel in head[i]))
    return [list(head[i]) for i in order] + ([list(groups[-1])] if keep_last and groups else [])


def _needs_no_kernel(paths: BookPaths, job: _Job, profile: str, force: bool, dry_run: bool) -> bool:
    """Whether :func:`_run_one` will stage ``job`` without executing it (cached or not selected)."""
    if not job.selected:
        return True
    return not (force or dry_run) and _cache_lookup(paths, profile, job.rel, job.key) is not None


def after_all(root: Path, rel: Path) -> bool:
    """Whether page ``rel`` names more than one chapter other than its own (:func:`page_chapters`):
    it uses their runs, so ``--jobs N`` executes it after every chapter (:func:`page_groups`)."""
    return len([c for c in page_chapters(root, rel) if c != chapter_of(rel)]) > 1


def missing_weight_files(paths: BookPaths, notebooks: Sequence[Path], profile: str) -> list[Any]:
    """The pretrained-weight files (:class:`fer.models.WeightFile`) that the chapters of
    ``notebooks`` (:func:`page_chapters`) load in ``profile`` and that are not where they must be.

    A chapter is a folder ``book/<key>/`` with a module ``fer.experiments.<key>`` that has a
    ``Setup`` and ``required_weights(setup)``; other folders need none.
    """
    import importlib

    missing: dict[Path, Any] = {}
    for chapter in sorted({c for rel in notebooks for c in page_chapters(paths.root, rel)}):
        try:
            module = importlib.import_module(f"fer.experiments.{chapter}")
        except ModuleNotFoundError:
            continue
        if not hasattr(module, "required_weights"):
            continue
        setup = module.Setup.for_profile(profile, root=paths.root)
        for file in module.required_weights(setup):
            if not file.present:
                missing.setdefault(file.path, file)
    return list(missing.values())


def _check_weights(paths: BookPaths, notebooks: Sequence[Path], profile: str) -> None:
    """Refuse a run whose chapters need pretrained weights that are missing (before anything runs)."""
    missing = missing_weight_files(paths, notebooks, profile)
    if missing:
        listed = "\n".join(f"  {f.path}\n    {f.fix.splitlines()[-1]}" for f in missing)
        raise BookError(
            f"the {profile} profile starts from pretrained weights that are missing ({len(missing)} file(s)):\n"
            f"{listed}\n"
            "Nothing was run. Put the files there, or check everything else first with --dry-run "
            "(it lists these files and uses random weights instead).")


def run_notebooks(
    paths: BookPaths,
    notebooks: Sequence[Path],
    profile: str,
    *,
    data_root: str | None = None,
    only: str | None = None,
    force: bool = False,
    jobs: int = 1,
    package_dir: Path | None = None,
    device: str | None = None,
    dry_run: bool = False,
) -> list[NotebookResult]:
    """Stage every notebook of the book into ``paths.src``, executing where needed.

    ``dry_run`` executes every selected notebook with ``FER_DRY_RUN=1`` (each training
    stage capped at a few optimiser steps of a small batch, evaluations at a few batches,
    missing pretrained weights replaced by random ones and listed) and its runs under
    :attr:`BookPaths.dry_runs`, emptied first: nothing enters the runs or page caches.

    ``device`` (``None`` means ``"auto"`` without overriding ``profiles.yml``) goes to
    the notebooks that define ``device`` and into ``FER_DEVICE``.
    A failed notebook is left in ``paths.src`` marked as failed (see the module doc).
    Raises :class:`BookError` before running anything if a notebook's parameters are
    wrong, and :class:`NotebookFailed` (after the running ones finish) if one raises.
    """
    from tqdm.auto import tqdm

    package_dir = package_dir or Path(__file__).resolve().parent
    if device is not None and not _DEVICE.fullmatch(device):
        raise BookError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
    plan = _plan(paths, notebooks, profile, data_root, only, package_dir, device, dry_run)
    if profile == "paper" and not dry_run:
        _check_weights(paths, [job.rel for job in plan if job.selected], profile)
    if dry_run:
        shutil.rmtree(paths.dry_runs, ignore_errors=True)
        paths.dry_runs.mkdir(parents=True)
    # Whatever an earlier run staged under another key (profile, parameters, sources) is
    # withdrawn first: if this run stops, those pages say they were not executed.
    for job in plan:
        if _current_key(paths.src / job.rel) != job.key:
            _stage_marked(paths.root / job.rel, paths.src / job.rel,
                          _stamp(job, profile, "not-run", reason=_NOT_REACHED))
    results: dict[Path, NotebookResult] = {}
    failure: NotebookFailed | None = None
    stop = threading.Event()  # set by the first failure: later notebooks do not start

    done: queue.Queue[tuple[_Job, NotebookResult | None, NotebookFailed | None] | None] = queue.Queue()

    def work(group: list[_Job]) -> None:
        """Execute ``group``'s notebooks in order; report each, then ``None`` (the group ended)."""
        try:
            for job in group:
                if stop.is_set():
                    return
                try:
                    done.put((job, _run_one(paths, job, profile, force, progress=jobs == 1, dry_run=dry_run), None))
                except NotebookFailed as exc:
                    stop.set()
                    done.put((job, None, exc))
                    return
        finally:
            done.put(None)

    groups = page_groups(paths.root, [job.rel for job in plan]) if jobs > 1 else [[job.rel] for job in plan]
    by_rel = {job.rel: job for job in plan}
    # Pages that use several chapters' runs (the last group, page_groups) start after the others.
    last_waits = jobs > 1 and bool(groups) and all(after_all(paths.root, r) for r in groups[-1])
    if jobs > 1:
        minutes = expected_minutes(paths.root, profile)
        groups = longest_first(groups, {job.rel: 0.0 if _needs_no_kernel(paths, job, profile, force, dry_run)
                                        else minutes.get(job.rel.as_posix(), SHORT_PAGE_MINUTES) for job in plan},
                               keep_last=last_waits)
    bar = tqdm(total=len(plan), desc=f"notebooks ({profile})", unit="nb")
    env = _kernel_environment(profile, device or "auto", paths.root, threads=kernel_threads(jobs),
                              dry_runs=paths.dry_runs if dry_run else None,
                              datasets=None if dry_run else dataset_store(paths, package_dir))
    waves = [groups[:-1], groups[-1:]] if last_waits else [groups]
    owned = [name for name in THREAD_ENV if not os.environ.get(name)]  # the user's own settings win
    with env, concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        running = 0
        while running or waves:
            if not running:
                wave = waves.pop(0)
                if failure is not None:
                    break
                if jobs > 1:  # a wave narrower than --jobs (the last one) shares the cores among fewer kernels
                    threads = wave_threads(jobs, len(wave))
                    os.environ.update({name: str(threads) for name in owned})
                for group in wave:
                    pool.submit(work, [by_rel[rel] for rel in group])
                running = len(wave)
                if not running:
                    continue
            item = done.get()
            if item is None:
                running -= 1
                continue
            job, result, exc = item
            bar.update()
            if exc is not None:
                failure = failure or exc
                results[job.rel] = NotebookResult(
                    job.rel.as_posix(), profile, job.parameters, status="failed", key=job.key
                )
                continue
            if result is None:
                continue
            results[job.rel] = result
            how = {"cached": "cached", "skipped": "skipped (not in --only)"}.get(
                result.status, f"executed in {result.seconds:.1f} s"
            )
            bar.write(f"  {result.notebook}: {how}", file=sys.stderr)
    bar.close()
    ordered = [results[job.rel] for job in plan if job.rel in results]
    if failure is not None:
        raise NotebookFailed(str(failure), ordered) from failure
    return ordered


#: The page that lists every claim the book's pages test, with its verdict (issue 17 §5).
VERDICTS_PAGE = Path("book/beyond/verdicts.md")
#: The line of :data:`VERDICTS_PAGE` that the staged copy replaces with the table.
VERDICTS_MARKER = "<!-- fer-book: the verdicts table goes here -->"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdicts_markdown(results: Sequence[NotebookResult], profile: str, *, dry_run: bool = False) -> str:
    """The verdicts table (MyST Markdown) of every claim in ``results``' pages, in book order.

    Beside each verdict: how many of the runs its evidence page names learned (issue 17
    §2's bar). A verdict whose runs did not learn judges models that never left the
    majority-class plateau, and says little about the paper's mechanism; the column and
    the line under the table make that visible. A dry run's table opens with a warning:
    its numbers mean nothing.
    """
    from .experiments.claims import mean_se_text

    rows = [(r.notebook, c) for r in results for c in r.claims]
    if not rows:
        return f"*No page of this build (`{profile}` profile) tested a claim: none of the pages that test one ran.*"
    counts = {v: sum(c["verdict"] == v for _, c in rows) for v in ("holds", "does not hold", "inconclusive")}
    warning = (["```{warning}", "Dry run (`--dry-run`): every run stopped after a few steps, so these numbers and "
                "verdicts mean nothing.", "```", ""] if dry_run else [])
    lines = [*warning, f"{len(rows)} claims tested with the `{profile}` profile: "
             + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
             "| paper | claim | the paper | ours (mean ± SE) | seeds | verdict | runs learned | evidence |",
             "|---|---|---|---|---|---|---|---|"]
    pages = {r.notebook: r for r in results}
    weak = 0
    for nb, c in rows:
        page = pages[nb]
        learned = (f"{len(page.runs) - len(page.not_learned)} of {len(page.runs)}" if page.runs else "—")
        weak += bool(page.not_learned)
        unit = c.get("unit", " points")
        paper = "—" if c.get("paper_value") is None else f"{c['paper_value']:+.1f}{unit}"
        link = Path(os.path.relpath(nb, VERDICTS_PAGE.parent.as_posix())).as_posix()
        name = Path(nb).with_suffix("").as_posix().removeprefix("book/")
        lines.append(f"| {_cell(c['paper'])} | {_cell(c['claim'])} | {paper} | {mean_se_text(c['gain'], c['se'], unit)}"
                     f" | {c['seeds']} | **{_cell(c['verdict'])}** | {learned} | [{name}]({link}) |")
    rules = dict.fromkeys(c.get("rule") for _, c in rows if c.get("rule"))
    lines += ["", *(f"**The rule.** {rule}" for rule in rules)]
    if weak:
        lines += ["", f"**Runs that did not learn.** {weak} of {len(rows)} verdicts come from pages where some runs "
                  "did not learn (test accuracy less than 15 points above the majority class's share, or mean "
                  "per-class accuracy under twice chance; *runs learned* counts the runs each evidence page "
                  "names). Such a verdict compares models that barely left the majority-class plateau: it says "
                  "what happened at this scale, not what the paper's mechanism does. Each page lists its runs "
                  "that did not learn in a warning box."]
    return "\n".join(lines)


def write_verdicts_page(paths: BookPaths, results: Sequence[NotebookResult], profile: str, *,
                        dry_run: bool = False) -> Path | None:
    """Fill the staged :data:`VERDICTS_PAGE` with :func:`verdicts_markdown` at its marker.

    A book without that page gets none (``None``); a page without the marker is an error.
    """
    page = paths.src / VERDICTS_PAGE
    if not page.is_file():
        return None
    text = page.read_text(encoding="utf-8")
    if VERDICTS_MARKER not in text:
        raise BookError(f"{paths.root / VERDICTS_PAGE} lacks the line {VERDICTS_MARKER!r} where the verdicts "
                        f"table goes; put it back")
    _atomic_write_text(page, text.replace(VERDICTS_MARKER, verdicts_markdown(results, profile, dry_run=dry_run)))
    return page


def write_report(
    paths: BookPaths,
    profile: str,
    data_root: str | None,
    results: Sequence[NotebookResult],
    seconds: float,
    build_seconds: float | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Write ``_build/book-report.json`` and return what was written."""
    named = {run: None for r in results for run in r.runs}
    failing = {run: None for r in results for run in r.not_learned}
    claims = [{"page": r.notebook, **c} for r in results for c in r.claims]
    report = {
        "profile": profile,
        "dry_run": dry_run,
        "data_root": data_root,
        "notebooks": {r.notebook: r.to_json() for r in results},
        "runs": len(named),
        "runs_not_learned": list(failing),
        "claims": claims,
        "notebook_seconds": round(sum(r.seconds for r in results), 2),
        "build_seconds": None if build_seconds is None else round(build_seconds, 2),
        "total_seconds": round(seconds, 2),
        "html": str(paths.html / "index.html") if build_seconds is not None else None,
    }
    paths.build.mkdir(parents=True, exist_ok=True)
    tmp = paths.report.with_name(paths.report.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, paths.report)
    return report


# --------------------------------------------------------------------------- build


def build_html(paths: BookPaths, *, strict: bool = False) -> list[str]:
    """Run ``jupyter-book build`` on the staged source; return its warning lines.

    The HTML lands in ``<root>/_build/html``. Raises :class:`BookError` before
    building when a staged notebook is stale (:func:`stale_pages`), and when the
    build fails, when a warning means a broken book, or (``strict``) on any warning.
    On success the key of every rendered notebook is recorded for
    :func:`prune_stale_html`.
    """
    stale = stale_pages(paths)
    if stale:
        listed = "\n  ".join(f"{rel}: {why}" for rel, why in stale.items())
        raise BookError(
            f"refusing to build: these staged notebooks are not what the last run produced:\n  {listed}\n"
            "rerun them with 'python -m fer.book run --profile <profile>' (add --only GLOB for a few)"
        )
    rendered = {path.relative_to(paths.src).as_posix(): _current_key(path) or str(_read_stamp(path)["status"])
                for path in _staged_notebooks(paths)}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(paths.src),
        "--path-output",
        str(paths.root),
    ]
    if strict:
        cmd += ["-W", "--keep-going"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log = _ANSI.sub("", proc.stdout + proc.stderr)
    (paths.build / "jupyter-book.log").write_text(log, encoding="utf-8")
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    for line in warnings:
        print(f"  {line}", file=sys.stderr)
    index = paths.html / "index.html"
    fatal = [line for line in warnings if _FATAL_WARNINGS.search(line)]
    if proc.returncode != 0 or not index.is_file():
        tail = "\n".join(log.splitlines()[-30:])
        raise BookError(
            f"jupyter-book build failed (exit {proc.returncode}); full log in "
            f"{paths.build / 'jupyter-book.log'}; its end:\n{tail}"
        )
    if fatal:
        raise BookError(
            "the book built but is broken:\n  " + "\n  ".join(fatal)
            + f"\nfix these (full log in {paths.build / 'jupyter-book.log'})"
        )
    _write_built_pages(paths, rendered)
    return warnings


# --------------------------------------------------------------------------- pages


# --------------------------------------------------------------------------- CLI


def _device_arg(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: use cpu, cuda, cuda:N or auto")
    return value


def _parser(prog: str = "python -m fer.book run") -> argparse.ArgumentParser:
    """Options of ``run`` (also the top-level form ``python -m fer.book [options]``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Execute the book's notebooks with papermill (cached) and build the HTML.",
        epilog="Commands: 'run' (the default: 'python -m fer.book --profile demo' = "
               "'python -m fer.book run --profile demo') and 'build' (only the jupyter-book "
               "build of what _build/src holds; see 'python -m fer.book build --help').",
    )
    parser.add_argument("--profile", choices=PROFILES, default="demo",
                        help="parameter profile injected into every notebook (default: demo)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder with the real datasets, injected as data_root")
    parser.add_argument("--only", metavar="GLOB", default=None,
                        help="execute only notebooks whose path matches, e.g. 'book/manet/*'")
    parser.add_argument("--device", type=_device_arg, default=None, metavar="DEV",
                        help="cpu, cuda, cuda:N or auto (default): injected as 'device' into "
                             "notebooks whose parameters cell defines it, and exported as "
                             "FER_DEVICE to the kernels")
    parser.add_argument("--force", action="store_true", help="ignore the execution cache")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the whole path in minutes: every training stage capped at a few steps of a "
                             "small batch, evaluations at a few batches, missing pretrained weights listed and "
                             "replaced by random ones; nothing is cached (use with --profile paper --data-root)")
    parser.add_argument("--no-build", action="store_true", help="execute, do not build the HTML")
    parser.add_argument("--strict", action="store_true", help="fail the build on any warning")
    parser.add_argument("--root", type=Path, default=None,
                        help="book root holding _toc.yml (default: cwd, else the fer checkout)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1); each chapter's pages still run in order, "
                        "one chapter beside another (page_groups), the longest chapters first "
                        "(profiles.yml's schedule)")
    parser.add_argument("--package-dir", type=Path, default=None,
                        help="package whose *.py files enter the cache key (default: fer itself)")
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer.book build",
        description="Build the HTML from what _build/src already holds (no staging, no "
                    "execution): the book lands at <root>/_build/html/index.html.",
    )
    parser.add_argument("--strict", action="store_true", help="fail the build on any warning")
    parser.add_argument("--root", type=Path, default=None,
                        help="book root holding _toc.yml (default: cwd, else the fer checkout)")
    return parser


def _build_command(argv: Sequence[str]) -> int:
    args = _build_parser().parse_args(argv)
    try:
        paths = BookPaths(find_root(args.root))
        if not (paths.src / "_toc.yml").is_file():
            raise BookError(f"nothing is staged in {paths.src}: run 'python -m fer.book run' first")
        failed, not_run = failed_pages(paths), not_run_pages(paths)
        start = time.perf_counter()
        warnings = build_html(paths, strict=args.strict)
        seconds = time.perf_counter() - start
        with contextlib.suppress(OSError, ValueError, AttributeError):
            report = json.loads(paths.report.read_text(encoding="utf-8"))
            report.update(build_seconds=round(seconds, 2), html=str(paths.html / "index.html"))
            paths.report.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    except (BookError, ProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"book built in {seconds:.1f} s with {len(warnings)} warning(s): "
          f"{paths.html / 'index.html'}")
    if failed:
        print("warning: these pages are failed notebooks (marked as such on the page): "
              + ", ".join(failed), file=sys.stderr)
    if not_run:
        print("warning: these pages were not executed by the last run (marked as such on the "
              "page): " + ", ".join(not_run), file=sys.stderr)
    return 0


def _report_not_learned(report: Mapping[str, Any]) -> None:
    failing = report.get("runs_not_learned") or []
    if report.get("runs"):
        print(f"{len(failing)} of {report['runs']} runs named on the pages did not learn"
              + (f" (listed in a warning box on their pages): {', '.join(failing)}" if failing else ""))


def _report_withdrawn(withdrawn: Sequence[str], paths: BookPaths) -> None:
    if withdrawn:
        print(f"warning: withdrew the HTML of {len(withdrawn)} page(s) whose results this run did "
              f"not reproduce (each now says so in {paths.html}): " + ", ".join(withdrawn),
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 on any failure).

    ``argv`` starts with ``run`` or ``build``; without either it is ``run``'s options.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        return _build_command(argv[1:])
    if argv[:1] == ["run"]:
        args = _parser().parse_args(argv[1:])
    else:
        args = _parser("python -m fer.book").parse_args(argv)
    start = time.perf_counter()
    data_root = None
    paths: BookPaths | None = None
    try:
        if args.data_root is not None:
            if not args.data_root.is_dir():
                raise BookError(f"--data-root {args.data_root} is not a directory")
            data_root = str(args.data_root.resolve())
        paths = BookPaths(find_root(args.root))
        pages = read_toc(paths.root)
        stage_sources(paths, pages)
        notebooks = [p for p in pages if p.suffix == ".ipynb"]
        results = run_notebooks(
            paths, notebooks, args.profile, data_root=data_root, only=args.only,
            force=args.force, jobs=args.jobs, package_dir=args.package_dir, device=args.device,
            dry_run=args.dry_run,
        )
        write_verdicts_page(paths, results, args.profile, dry_run=args.dry_run)
        report = write_report(paths, args.profile, data_root, results, time.perf_counter() - start,
                              dry_run=args.dry_run)
        print(f"notebooks staged in {paths.src} ({time.perf_counter() - start:.1f} s)")
        _report_not_learned(report)
        if args.no_build:
            _report_withdrawn(prune_stale_html(paths, args.profile), paths)
            return 0
        build_start = time.perf_counter()
        warnings = build_html(paths, strict=args.strict)
        build_seconds = time.perf_counter() - build_start
        write_report(paths, args.profile, data_root, results,
                     time.perf_counter() - start, build_seconds, dry_run=args.dry_run)
        print(f"book built in {build_seconds:.1f} s with {len(warnings)} warning(s): "
              f"{paths.html / 'index.html'}")
        return 0
    except NotebookFailed as exc:
        if paths is not None:
            write_report(paths, args.profile, data_root, exc.results, time.perf_counter() - start,
                         dry_run=args.dry_run)
        print(f"error: {exc}", file=sys.stderr)
        print("error: the HTML was not built; the failed notebook is staged marked as "
              "failed, not as its last successful run", file=sys.stderr)
        if paths is not None:
            _report_withdrawn(prune_stale_html(paths, args.profile), paths)
        return 1
    except (BookError, ProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
