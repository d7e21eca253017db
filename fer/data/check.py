"""``python -m fer.data check``: is a data root ready for the chapters' ``paper`` profile?

For every dataset found under the data root (a folder ``rafdb/``, ``fer2013/``,
``affectnet/``, ``ckplus/`` or ``fedro/``, as ``--data-root`` expects), the check loads
each split with the dataset's own loader (:func:`fer.data.load_dataset`, so the layout and
format checks are the loaders') and reports:

* the layout found, or the loader's error naming what is missing;
* images per split and class beside the published counts (the loader's ``published``,
  ``PUBLISHED`` in each loader module, which states its source);
* listed files that are missing (every one: that needs no decoding) and images that do
  not decode (every image, or with ``quick`` a random sample of ``sample`` per split drawn
  with ``seed``), decoded as the loader does (:meth:`RealFERDataset.decode_errors`);
* the landmark cache of each split (``landmarks68-<split>.npz``, written by
  ``python -m fer.data.landmarks``): present, and for how many of the split's images.

A dataset that is present but broken (a layout or format error, a missing or undecodable
file, an unreadable landmark cache) fails the check, as does a dataset named in
``require`` that is absent, and a root that holds none of the datasets. Each problem names
the dataset, the file and the fix. Counts that differ from the published ones are shown,
not failed: a partial copy is still usable.
"""
from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .datasets import DATA_ROOT_ENV, DATASETS, DatasetFormatError, DatasetLayoutError, load_dataset
from .datasets.base import RealFERDataset
from .labels import CLASSES

__all__ = ["CHAPTERS", "LOAD_KWARGS", "Problem", "SplitReport", "DatasetReport", "CheckReport", "check_data_root",
           "resolve_required", "add_arguments", "main"]

#: The chapters whose ``paper`` profile reads each dataset (DESIGN.md; data/README.md's "used by").
CHAPTERS: dict[str, tuple[str, ...]] = {
    "rafdb": ("manet", "mapnet", "msanet", "masked"),
    "fer2013": ("cbam_vgg",),
    "affectnet": ("mapnet", "msanet"),
    "ckplus": ("manet",),
    "fedro": ("mapnet",),
}
#: Loader arguments of the check beyond the defaults: AffectNet with its eight classes, so the
#: counts cover every published one (the chapters leave contempt out).
LOAD_KWARGS: dict[str, dict[str, Any]] = {"affectnet": {"num_classes": 8}}
#: Where the landmarks come from for datasets that ship their own (the cache is then not read).
_OWN_LANDMARKS = {"affectnet": "the lists' facial_landmarks column", "ckplus": "Landmarks/"}
_FIX_MISSING = ("copy the file again from the dataset's archive; if your copy really lacks it, load with "
                "on_error='skip' (the sample is left out and reported)")
_FIX_DECODE = ("the file is truncated or not an image: copy it again from the dataset's archive (or load with "
               "on_error='skip', which replaces it at access and reports it)")


@dataclass
class Problem:
    """One reason a dataset is unusable: which dataset, what kind, which file, and the fix."""

    dataset: str
    kind: str  # absent | layout | format | missing | undecodable | landmark cache | no dataset found
    file: str
    message: str
    fix: str


@dataclass
class SplitReport:
    """What the check found for one split."""

    split: str
    layout: str = ""
    counts: dict[str, int] | None = None  # images per class (None: the split did not load)
    published: dict[str, int] | None = None  # published images per class (None: not published per class)
    published_total: int | None = None
    listed: int = 0  # samples the loader listed, missing files included
    missing: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    decoded: int = 0  # images decoded
    sampled: bool = False  # decoded a seeded sample, not all
    landmarks: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts.values())


@dataclass
class DatasetReport:
    """What the check found for one dataset."""

    name: str
    root: Path
    present: bool
    required: bool = False
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.present and not self.problems

    @property
    def status(self) -> str:
        if not self.present:
            return "ABSENT (required)" if self.required else "absent"
        return "OK" if self.usable else f"BROKEN ({len(self.problems)} problem(s))"


@dataclass
class CheckReport:
    """The whole check: one :class:`DatasetReport` per known dataset, and the verdict."""

    data_root: Path
    datasets: list[DatasetReport]
    quick: bool
    sample: int
    seed: int
    problems: list[Problem] = field(default_factory=list)  # not tied to one dataset (none found)

    @property
    def found(self) -> list[DatasetReport]:
        return [d for d in self.datasets if d.present]

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems + [p for d in self.datasets for p in d.problems]

    @property
    def ok(self) -> bool:
        return not self.all_problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def format(self) -> str:
        """The report as text: one block per dataset found, then the problems and the verdict."""
        how = (f"decoding a random sample of up to {self.sample:,} images per split (seed {self.seed}; --quick)"
               if self.quick else "decoding every image")
        out = [f"fer.data check: {self.data_root} ({how}; every listed file checked for existence)", ""]
        for d in self.found:
            out += _format_dataset(d) + [""]
        absent = [d.name + (" (required)" if d.required else "") for d in self.datasets if not d.present]
        out.append("found: " + (", ".join(f"{d.name} {d.status}" for d in self.found) or "none")
                   + "; absent: " + (", ".join(absent) or "none"))
        problems = self.all_problems
        if problems:
            out += ["", f"PROBLEMS ({len(problems)}):"] + _format_problems(problems)
            out += ["", f"FAIL: {len(problems)} problem(s), listed above with their fixes"]
        else:
            out += ["", "PASS: every dataset found is usable"]
        return "\n".join(out)


# ---------------------------------------------------------------------- the check
def resolve_required(names: Iterable[str]) -> set[str]:
    """Dataset names from ``--require``: dataset names (``rafdb``, ``RAF-DB``, ``ck+`` ...) or
    chapter keys (``mapnet``: every dataset that chapter reads)."""
    out: set[str] = set()
    for raw in names:
        key = raw.strip().lower().replace("-", "").replace("+", "plus")
        if not key:
            continue
        if key.replace("_", "") in DATASETS:
            out.add(key.replace("_", ""))
            continue
        chapters = {c for cs in CHAPTERS.values() for c in cs}
        if key not in chapters:
            raise ValueError(f"--require: unknown dataset or chapter {raw!r}; datasets: {', '.join(DATASETS)}; "
                             f"chapters: {', '.join(sorted(chapters))}")
        out |= {name for name, cs in CHAPTERS.items() if key in cs}
    return out


def check_data_root(data_root: str | os.PathLike, *, quick: bool = False, sample: int = 200, seed: int = 0,
                    require: Iterable[str] = (), progress: bool = True) -> CheckReport:
    """Check every dataset under ``data_root`` (see the module docstring).

    Args:
        data_root: the folder holding ``<name>/`` for each dataset (``--data-root``).
        quick: decode a seeded random sample of ``sample`` images per split, not all of them.
        sample, seed: the sample's size and seed with ``quick``.
        require: datasets (or chapters, see :func:`resolve_required`) that must be present.
        progress: tqdm bars while decoding.
    """
    if sample < 1:
        raise ValueError(f"sample must be at least 1, got {sample}")
    root = Path(data_root).expanduser()
    required = resolve_required(require)
    reports = []
    for name in DATASETS:
        d = DatasetReport(name, root / name, (root / name).is_dir(), name in required)
        if d.present:
            _check_dataset(d, root, quick=quick, sample=sample, seed=seed, progress=progress)
        elif d.required:
            d.problems.append(Problem(name, "absent", str(d.root), f"{name}: required but {d.root} does not exist",
                                      f"place the dataset there as data/README.md's '{name}' tree shows; "
                                      f"request it from {DATASETS[name].source}"))
        reports.append(d)
    report = CheckReport(root, reports, quick, sample, seed)
    if not report.found:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
        what = (f"{root} does not exist" if not root.exists() else
                f"{root} holds none of them" + (f" (it holds: {', '.join(held[:10])}"
                                                 f"{' ...' if len(held) > 10 else ''})" if held else " (it is empty)"))
        key = root.name.lower().replace("-", "").replace("_", "").replace("+", "plus")
        parent = (f"{root} looks like the {key} folder itself: pass its parent, --data-root {root.parent}"
                  if key in DATASETS else
                  "pass the folder that holds the dataset folders (not a dataset's own folder), named as above")
        report.problems.append(Problem(
            "data root", "no dataset found", str(root),
            f"expected one or more of {', '.join(n + '/' for n in DATASETS)} under the data root; {what}",
            f"{parent}; data/README.md gives each tree and where to request the data"))
    return report


def _check_dataset(d: DatasetReport, root: Path, *, quick: bool, sample: int, seed: int, progress: bool) -> None:
    cls = DATASETS[d.name]
    seen: set[tuple[str, str]] = set()
    layout_of_train = None
    for split in cls.splits:
        if d.name == "fer2013" and split == "val" and layout_of_train == "folders":
            d.splits.append(SplitReport(split, layout="-", notes=["the folder copy has no val split (PublicTest "
                                                                  "is inside its test/)"]))
            continue
        rep, problems, ds = _check_split(d.name, root, split, quick=quick, sample=sample, seed=seed,
                                         progress=progress)
        if ds is not None and d.name == "fer2013":
            layout_of_train = ds.layout
        d.splits.append(rep)
        for p in problems:  # one missing label file breaks every split: report it once
            if (p.kind, p.file) not in seen:
                seen.add((p.kind, p.file))
                d.problems.append(p)


def _check_split(name: str, root: Path, split: str, *, quick: bool, sample: int, seed: int, progress: bool
                 ) -> tuple[SplitReport, list[Problem], RealFERDataset | None]:
    rep = SplitReport(split)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the loader's skip reports become this report's problems
            ds = load_dataset(name, root, split, on_error="skip", **LOAD_KWARGS.get(name, {}))
    except DatasetLayoutError as err:
        rep.layout = "not as expected: " + ", ".join(err.missing[:3]) + (" ..." if len(err.missing) > 3 else "")
        fix = (f"put {'it' if len(err.missing) == 1 else 'them'} where the expected tree above shows "
               f"(data/README.md, section '{name}')")
        return rep, [Problem(name, "layout", err.missing[0] if err.missing else str(err.root), str(err), fix)], None
    except DatasetFormatError as err:
        rep.layout = "malformed file"
        return rep, [Problem(name, "format", err.path or "", str(err),
                             "correct that line, or copy the file again from the dataset's archive (the loaders never "
                             "skip a malformed label file)")], None
    problems: list[Problem] = []
    rep.layout = _layout(ds)
    rep.counts = dict(ds.class_counts)
    rep.published, rep.published_total = ds.published_counts(), ds.published_total()
    rep.missing = list(ds.skipped)
    rep.listed = len(ds) + len(rep.missing)
    problems += [Problem(name, "missing", p, f"listed by {_listed_by(ds, p)} but not on disk: {p}", _FIX_MISSING)
                 for p in rep.missing]
    n = len(ds)
    indices = None
    if quick and n > sample:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        rep.sampled = True
    errors = ds.decode_errors(indices, progress=progress)
    rep.decoded = n if indices is None else len(indices)
    for i, err in errors:
        path = str(getattr(err, "path", None) or ds.samples[i].path)
        rep.undecodable.append(path)
        problems.append(Problem(name, "undecodable", path, str(err), _FIX_DECODE))
    rep.landmarks, lm_problem = _landmark_cache(ds)
    if lm_problem is not None:
        problems.append(lm_problem)
    rep.notes += _notes(ds, rep)
    return rep, problems, ds


def _listed_by(ds: Any, missing: str) -> str:
    """The file that lists a missing file (what to look at besides the file itself)."""
    if ds.name == "rafdb":
        return "EmoLabel/list_patition_label.txt"
    if ds.name == "affectnet":
        return _rel(ds.list_file, ds.root)
    if ds.name == "ckplus":  # the last frames (and their landmark files) of a labelled sequence
        subject, sequence = Path(missing).parts[-3:-1]
        return f"the labelled sequence Emotion/{subject}/{sequence}/"
    return "the dataset"


def _layout(ds: Any) -> str:
    nested = " (inside basic/)" if ds.name == "rafdb" and ds.root.name == "basic" else ""
    if ds.name == "rafdb":
        return f"EmoLabel/list_patition_label.txt + Image/{ds.images}/{nested}"
    if ds.name == "fer2013":
        return "fer2013.csv" if ds.layout == "csv" else f"folder copy: {ds.split}/<class>/"
    if ds.name == "affectnet":
        return f"{_rel(ds.list_file, ds.root)} + Manually_Annotated_Images/"
    if ds.name == "ckplus":
        return "cohn-kanade-images/ + Emotion/" + (" + Landmarks/" if ds.landmarks_dir.is_dir() else "")
    if ds.name == "fedro":
        folders = sorted({s.info[0] for s in ds.samples})
        return f"{len(folders)} class folders: {', '.join(folders)}"
    return str(ds.root)


def _landmark_cache(ds: RealFERDataset) -> tuple[str, Problem | None]:
    from .landmarks import item_key, landmarks_path, read_landmarks

    path = landmarks_path(ds.root, ds.split)
    own = _OWN_LANDMARKS.get(ds.name)
    suffix = f" (not needed: {ds.name} ships landmarks in {own})" if own else ""
    make = f"python -m fer.data.landmarks --dataset {ds.name} --root {ds.root} --split {ds.split}"
    if not path.is_file():
        partial = path.with_name(path.name[:-len(".npz")] + ".partial.npz")
        if partial.is_file():
            return f"none: an interrupted pass left {partial.name}; resume it with `{make}`{suffix}", None
        return f"none (`{make}` writes {path.name}){suffix}", None
    try:
        table = read_landmarks(path)
    except ValueError as err:
        if own:  # the loader never reads it
            return f"unreadable: {path.name} ({err}){suffix}", None
        return f"unreadable: {path.name}", Problem(ds.name, "landmark cache", str(path), str(err),
                                                   f"delete {path} and run `{make}` again")
    covered = sum(table.get(item_key({"path": str(s.path)}, i, ds.root)) is not None
                  for i, s in enumerate(ds.samples))
    return (f"{path.name}: landmarks for {covered:,} of {len(ds):,} images "
            f"({table.summary()['ok']:,} of {len(table):,} entries found a face; backend {table.info.get('backend')})"
            f"{suffix}"), None


def _notes(ds: Any, rep: SplitReport) -> list[str]:
    notes = []
    if ds.excluded:
        notes.append("left out by the protocol: " + ", ".join(f"{k} {v:,}" for k, v in ds.excluded.items()))
    if getattr(ds, "ignored", None):
        notes.append(f"{len(ds.ignored)} non-image file(s) ignored in class folders, first: {ds.ignored[0]}")
    if ds.name == "ckplus":
        labelled = len({(s.info[0], s.info[1]) for s in ds.samples})
        notes.append(f"{labelled} labelled + {ds.unlabelled_sequences} unlabelled sequences from "
                     f"{len(set(ds.subjects))} subjects, {ds.frames} frames per labelled sequence")
    return notes


# ---------------------------------------------------------------------- formatting
def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _format_dataset(d: DatasetReport) -> list[str]:
    cls = DATASETS[d.name]
    out = [f"{d.name}  [{d.status}]  {d.root}", f"  used by: {', '.join(CHAPTERS.get(d.name, ()))}"]
    classes = [c for c in CLASSES if any(c in (s.counts or {}) for s in d.splits)] or list(cls.default_classes)
    header = ["split", "", "total", "vs published", *classes]
    rows: list[list[str]] = []
    layouts = {s.layout for s in d.splits if s.layout != "-"}
    if len(layouts) == 1:
        out.append(f"  layout: {layouts.pop()}")
    else:
        out += [f"  layout ({s.split}): {s.layout}" for s in d.splits]
    for s in d.splits:
        if s.counts is None:
            continue
        diff = "" if s.published_total is None else f"{s.total - s.published_total:+,}"
        rows.append([s.split, "found", _num(s.total), diff, *(_num(s.counts.get(c)) for c in classes)])
        pub = s.published or {}
        rows.append(["", "published", _num(s.published_total), "",
                     *(_num(pub.get(c)) if s.published is not None else "?" for c in classes)])
    if rows:
        out += ["  " + line for line in _table(header, rows)]
    for s in d.splits:
        if s.counts is None:
            continue
        what = (f"decoded a seeded sample of {s.decoded:,} of {s.total:,}" if s.sampled
                else f"decoded all {s.decoded:,}")
        out.append(f"  {s.split}: files: {s.listed:,} listed, {len(s.missing):,} missing, "
                   f"{len(s.undecodable):,} undecodable ({what})")
        out.append(f"  {s.split}: landmark cache: {s.landmarks}")
    out += [f"  note: {s.split}: {n}" for s in d.splits for n in s.notes]
    if cls.published is not None:
        out.append(f"  published counts: {cls.published.source}"
                   + (f"; {cls.published.notes}" if cls.published.notes else ""))
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [str(v).ljust(w) if k < 2 else str(v).rjust(w) for k, (v, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _format_problems(problems: Sequence[Problem]) -> list[str]:
    out: list[str] = []
    groups: dict[tuple[str, str, str], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.dataset, p.kind, p.fix), []).append(p)
    for (dataset, kind, fix), ps in groups.items():
        out.append(f"{dataset}: {kind}" + (f" ({len(ps)} files)" if len(ps) > 1 else f": {ps[0].file}"))
        for p in ps:
            out += ["    " + line for line in p.message.splitlines()]
        out.append(f"  fix: {fix}")
    return out


# ---------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``check`` subcommand's options."""
    p.add_argument("--data-root", default=os.environ.get(DATA_ROOT_ENV, "data"),
                   help=f"the folder holding rafdb/, fer2013/, affectnet/, ckplus/, fedro/ "
                        f"(default: ${DATA_ROOT_ENV}, else data)")
    p.add_argument("--quick", action="store_true",
                   help="decode a seeded random sample of --sample images per split instead of every image "
                        "(missing files are still all found)")
    p.add_argument("--sample", type=int, default=200, help="images decoded per split with --quick (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --quick sample (default 0)")
    p.add_argument("--require", default="",
                   help="comma-separated datasets (rafdb, fer2013, affectnet, ckplus, fedro) or chapters (cbam_vgg, "
                        "manet, mapnet, msanet, masked) that must be present and usable")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """Run the check from parsed arguments; print the report; return the exit status."""
    try:
        report = check_data_root(args.data_root, quick=args.quick, sample=args.sample, seed=args.seed,
                                 require=args.require.split(","), progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    print(report.format())
    return report.exit_code
