"""The book's training runs as a list: what each page trains, and how to train one outside the notebooks.

:func:`plan` lists every run that the book's pages train for a profile, without loading
any data or training anything::

    runs = plan("paper", data_root="/data/fer")
    [(r.name, r.chapter, r.row, r.seed, r.images) for r in runs]

:func:`train` trains some of them by calling the chapter functions that the notebooks call,
with the arguments the notebooks pass (the page knobs of ``book/profiles.yml`` over the
notebooks' ``parameters`` cells, as :mod:`fer.book` injects them). So a run trained here has
the hash that the notebook computes, and a later ``make book`` loads it from the cache.
``python -m fer.runs plan|train`` is the command line for both (:mod:`fer.runs`).

Each chapter has one planner below (``_cbam_vgg``, ``_manet``, ...) that mirrors its
notebooks' training cells: when a notebook changes what it trains, its planner changes
with it. :func:`train` checks that every call trains the run under the name the plan
gave it, so a planner that falls out of step fails loudly instead of training the wrong
run. Pages that train nothing through :func:`fer.runs.run` have no runs here (SynFER's
difficulty probe on ``book/datasets/synfer.ipynb`` trains uncached, in seconds).

Images to process are the training set's size times the epochs (MANet: its iterations
rounded up to whole epochs, as :func:`fer.experiments.manet.train_config` does). Where a
``Setup`` leaves a set's size open (``n_train=None``: the whole set), the dataset's
published size stands in and the count is flagged as an estimate; CK+ folds are
estimates in every profile (their sizes follow the subjects).

This module sits above the chapters (it imports them) and below the command line; no
chapter imports it, and runs never execute it, so editing it retrains nothing.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.datasets import DATASETS as _LOADERS
from ..data.labels import CLASSES_7
from ..profiles import PROFILES, ProfileError, find_root, page_entries, resolve_device
from ..runs import RunResult, find_runs, protocols_of, source_hash
from . import cbam_vgg, manet, mapnet, masked, msanet
from .pretraining import backbone_name

__all__ = [
    "CHAPTERS",
    "PlannedRun",
    "PlanError",
    "plan",
    "train",
    "page_knobs",
    "notebook_defaults",
    "cache_status",
    "select",
    "process_state",
    "missing_weights",
    "published_size",
]

#: The chapters with training runs, in the book's order.
CHAPTERS: tuple[str, ...] = ("cbam_vgg", "mapnet", "msanet", "manet", "masked")


class PlanError(ValueError):
    """A run name the plan does not hold, or a planner out of step with its chapter."""


@dataclass(frozen=True)
class PlannedRun:
    """One run a page of the book trains.

    Attributes:
        name: the run's name (its folder is ``<name>-<hash>``), unique in a plan.
        chapter: the chapter key (``book/<chapter>/``, ``fer.experiments.<chapter>``).
        row: what the run is within its chapter (a table row, a model, a sweep point).
        seed: its training seed.
        fold: its CK+ fold (MANet), else ``None``.
        dataset: what it trains on.
        train_images: training faces per epoch.
        epochs: epochs (all stages).
        images: ``train_images * epochs``, the images it processes in training.
        estimate: ``True`` when ``train_images`` comes from a published size, not the Setup.
        pages: the notebooks that train or load it.
        needs: runs it starts from (the VGG-Face stand-in, the MCN): trained first.
        call: the chapter call that trains it, for people.
        trainer: makes that call (given :func:`train`'s shared data and runs).
    """

    name: str
    chapter: str
    row: str
    seed: int
    fold: int | None
    dataset: str
    train_images: int
    epochs: int
    estimate: bool
    pages: tuple[str, ...]
    needs: tuple[str, ...]
    call: str
    trainer: Callable[[_Context], RunResult] = field(repr=False, compare=False)

    @property
    def images(self) -> int:
        return self.train_images * self.epochs

    @property
    def wave(self) -> int:
        """0 for runs that need no other run, 1 for runs that start from one (train wave 0 first)."""
        return 1 if self.needs else 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of ``python -m fer.runs plan --json``."""
        return {"name": self.name, "chapter": self.chapter, "row": self.row, "seed": self.seed, "fold": self.fold,
                "dataset": self.dataset, "train_images": self.train_images, "epochs": self.epochs,
                "images": self.images, "estimate": self.estimate, "wave": self.wave, "needs": list(self.needs),
                "pages": list(self.pages), "call": self.call}


# =========================================================================== page knobs


def notebook_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The literal assignments of a notebook's ``parameters`` cell (its ``smoke`` values).

    Only ``name = <literal>`` lines count (what papermill can override); a notebook
    without a ``parameters`` cell reads as ``{}``.
    """
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            out = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
            return out
    return {}


def page_knobs(profile: str, root: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Every book notebook's knobs for ``profile``: ``{"book/<folder>/<page>.ipynb": {name: value}}``.

    Its ``parameters`` cell (the ``smoke`` values) with the page's ``book/profiles.yml``
    entry on top, as :mod:`fer.book` injects them.
    """
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    base = find_root(root)
    entries = page_entries(base, profile)
    out = {}
    for nb in sorted((base / "book").glob("*/*.ipynb")):
        rel = nb.relative_to(base).as_posix()
        out[rel] = {**notebook_defaults(nb), **entries.get(rel, {})}
    return out


def published_size(dataset: str, split: str = "train", classes: Sequence[str] = CLASSES_7) -> int:
    """A real dataset's published size (``fer.data`` loaders' ``published``), counting ``classes`` only."""
    pub = _LOADERS[dataset].published
    if split in pub.counts:
        return sum(v for c, v in pub.counts[split].items() if c in classes)
    return int(pub.totals[split])


# =========================================================================== training context


class _Context:
    """What several runs of one :func:`train` call share: loaded data and the runs others start from.

    Data are loaded on the main process first (so a disk cache is written once), then on
    the others, which read it. ``progress``: tqdm bars (the chapters' ``progress=``, which no
    run's hash sees), on the local main process only.
    """

    def __init__(self, *, progress: bool = True) -> None:
        self._memo: dict[Any, Any] = {}
        self.progress = progress

    def once(self, key: Any, fn: Callable[[], Any], *, data: bool = False) -> Any:
        if key not in self._memo:
            if data:
                from accelerate import PartialState

                with PartialState().main_process_first():
                    self._memo[key] = fn()
            else:
                self._memo[key] = fn()
        return self._memo[key]


class _Planner:
    """Collects one chapter's runs; a name listed twice (two pages) is one run with both pages."""

    def __init__(self, chapter: str, knobs: Mapping[str, Mapping[str, Any]]) -> None:
        self.chapter = chapter
        self.knobs = knobs
        self.runs: dict[str, PlannedRun] = {}

    def page(self, name: str) -> tuple[str, Mapping[str, Any]]:
        """``(book/<chapter>/<name>.ipynb, its knobs)``; ``name`` with a ``/``: a page of another folder."""
        rel = f"book/{name}.ipynb" if "/" in name else f"book/{self.chapter}/{name}.ipynb"
        if rel not in self.knobs:
            raise PlanError(f"{rel} is not in the book (the {self.chapter} planner in {__name__} names it): "
                            f"update the planner to the chapter's pages")
        return rel, self.knobs[rel]

    def add(self, page: str, *, name: str, row: str, seed: int, dataset: str, train_images: int, epochs: int,
            estimate: bool, trainer: Callable[[_Context], RunResult], call: str, fold: int | None = None,
            needs: Iterable[str] = ()) -> None:
        if name in self.runs:
            old = self.runs[name]
            if page not in old.pages:
                self.runs[name] = dataclasses.replace(old, pages=old.pages + (page,))
            return
        self.runs[name] = PlannedRun(name=name, chapter=self.chapter, row=row, seed=int(seed), fold=fold,
                                     dataset=dataset, train_images=int(train_images), epochs=int(epochs),
                                     estimate=estimate, pages=(page,), needs=tuple(needs), call=call,
                                     trainer=trainer)

    def add_trunk(self, page: str, setup: Any, module: Any, *, seed: int) -> list[str]:
        """``module``'s SynFER trunk pretraining (``module.trunk_pretrain(setup)``, the ImageNet
        stand-in) on ``page`` when ``setup.pretrain_task`` is set: the ``needs`` of its rows."""
        if setup.pretrain_task is None:
            return []
        name = backbone_name(setup)

        def trainer(ctx: _Context) -> RunResult:
            return ctx.once(name, lambda: module.trunk_pretrain(setup, progress=ctx.progress))

        self.add(page, name=name, row="trunk-pretrain", seed=seed, dataset=f"SynFER wild {setup.pretrain_task}",
                 train_images=setup.pretrain_n, epochs=setup.pretrain_epochs, estimate=False, trainer=trainer,
                 call=f"{self.chapter}.trunk_pretrain(setup)")
        return [name]


def _size(n: int | None, dataset: str, split: str = "train") -> tuple[int, bool]:
    """``n`` faces when the Setup says, else the published size (an estimate)."""
    return (int(n), False) if n is not None else (published_size(dataset, split), True)


# =========================================================================== chapters


def _cbam_vgg(setup: cbam_vgg.Setup, knobs: Mapping[str, Mapping[str, Any]]) -> list[PlannedRun]:
    """experiment1 (``rows``), experiment2 (g, cbam, once per seed of ``setup.seeds``), results
    (``rows`` + g + cbam) and the photo page of "Beyond the papers" (its ``row``), plus the
    VGG-Face stand-in in the SynFER profiles (every page calls ``face_pretrain`` first)."""
    C = cbam_vgg
    p = _Planner("cbam_vgg", knobs)
    rows_of = {r.key: r for r in C.FIGURE7}
    n, est = _size(setup.n_train, "fer2013")
    data = "FER2013" if not setup.synthetic else "SynFER fer2013"
    face_name = C._run_name(setup, "face-pretrain")

    def face(ctx: _Context) -> RunResult:
        return ctx.once(face_name, lambda: C.face_pretrain(setup, progress=ctx.progress))

    def row_run(row: str, seed: int) -> Callable[[_Context], RunResult]:
        def trainer(ctx: _Context) -> RunResult:
            d = ctx.once(("cbam_vgg", "data"), lambda: C.load_data(setup, progress=ctx.progress), data=True)
            # the notebooks pass every row the face run; only VGG-Face rows read it
            f = face(ctx) if C.row_weights(row, setup) == "synfer-face" else None
            return C.run_row(setup, d, row, face=f, seed=seed, progress=ctx.progress)
        return trainer

    pages = [("experiment1", list(p.page("experiment1")[1]["rows"])), ("experiment2", ["g", "cbam"]),
             ("results", list(dict.fromkeys([*p.page("results")[1]["rows"], "g", "cbam"]))),
             ("beyond/photo", [p.page("beyond/photo")[1]["row"]])]
    for page, rows in pages:
        rel = p.page(page)[0]
        if setup.synthetic:
            p.add(rel, name=face_name, row="face-pretrain", seed=setup.seed,
                  dataset=f"SynFER fer2013 {setup.pretrain_task}", train_images=setup.pretrain_n,
                  epochs=setup.pretrain_epochs, estimate=False, trainer=face, call="cbam_vgg.face_pretrain(setup)")
        # experiment2 trains its two rows once per seed (run_seeds); the other pages at setup.seed
        seeds = setup.seeds if page == "experiment2" else (setup.seed,)
        for row in rows:
            if row not in rows_of:
                raise PlanError(f"{rel}: row {row!r} is not a Figure 7 row ({', '.join(rows_of)})")
            needs = [face_name] if C.row_weights(row, setup) == "synfer-face" else []
            for seed in seeds:
                call = f"cbam_vgg.run_row(setup, load_data(setup), {row!r}, face=face, seed={seed})"
                p.add(rel, name=C.row_run_name(setup, row, seed), row=row, seed=seed, dataset=data,
                      train_images=n, epochs=setup.epochs, estimate=est, trainer=row_run(row, seed), needs=needs,
                      call=call)
    return list(p.runs.values())


def _manet(setup: manet.Setup, knobs: Mapping[str, Mapping[str, Any]]) -> list[PlannedRun]:
    """rasnet / ersnet (MANet, pre-trained, first seed), raf (Table 3: every model x seed, from
    scratch with ``scratch_rows``, ground-truth masks with ``gt_ablation``), ck and
    visualisation (every model on each fold in ``setup.folds``), plus the VGG-Face stand-in."""
    M = manet
    p = _Planner("manet", knobs)
    face_name = M._run_name(setup, "face-pretrain")
    n_raf, est_raf = _size(setup.n_train, "rafdb")
    n_ck = setup.n_ck if setup.n_ck is not None else 3 * published_size("ckplus", "all")
    n_fold = math.ceil(n_ck * (setup.num_folds - 1) / setup.num_folds)
    raf_name = "RAF-DB" if not setup.synthetic else "SynFER wild"
    ck_name = "CK+" if not setup.synthetic else "SynFER ck"

    def face(ctx: _Context) -> RunResult | None:
        return ctx.once(face_name, lambda: M.face_pretrain(setup, progress=ctx.progress)) if setup.synthetic else None

    def raf_run(key: str, pre: bool, seed: int, mask_source: str) -> Callable[[_Context], RunResult]:
        def trainer(ctx: _Context) -> RunResult:
            d = ctx.once(("manet", "raf"), lambda: M.load_raf(setup, progress=ctx.progress), data=True)
            return M.run_model(setup, d, key, pretrained=pre, seed=seed, face=face(ctx) if pre else None,
                               mask_source=mask_source, progress=ctx.progress)
        return trainer

    def ck_run(key: str, fold: int) -> Callable[[_Context], RunResult]:
        def trainer(ctx: _Context) -> RunResult:
            ck = ctx.once(("manet", "ck"), lambda: M.load_ck(setup, progress=ctx.progress), data=True)
            return M.run_model(setup, M.ck_fold_data(ck, fold, setup.num_folds), key, dataset="ck", tag=f"f{fold}",
                               face=face(ctx), seed=setup.seed0, progress=ctx.progress)
        return trainer

    def add_face(rel: str) -> None:
        if setup.synthetic:
            p.add(rel, name=face_name, row="face-pretrain", seed=setup.seed0,
                  dataset=f"SynFER wild {setup.pretrain_task}",
                  train_images=setup.pretrain_n, epochs=setup.pretrain_epochs, estimate=False, trainer=face,
                  call="manet.face_pretrain(setup)")

    def add_raf(rel: str, key: str, pre: bool, seed: int, mask_source: str = "rasnet") -> None:
        name = M.MODELS[key]
        cfg = M.train_config(setup, model=name, n_train=n_raf, dataset="raf", seed=seed, pretrained=pre,
                             mask_source=mask_source)
        gt = "-gt" if mask_source == "gt" else ""
        p.add(rel, name=M._run_name(setup, f"raf-{key}{gt}-{'pre' if pre else 'scratch'}-s{seed}"),
              row=f"{key}{gt}-{'pre' if pre else 'scratch'}", seed=seed, dataset=raf_name, train_images=n_raf,
              epochs=cfg.epochs, estimate=est_raf, trainer=raf_run(key, pre, seed, mask_source),
              needs=[face_name] if pre and setup.synthetic else [],
              call=f"manet.run_model(setup, load_raf(setup), {key!r}, pretrained={pre}, seed={seed}, face=face"
                   + (", mask_source='gt')" if gt else ")"))

    def add_ck(rel: str) -> None:
        for fold in setup.folds:
            for key in ("ours", "se", "vgg"):
                cfg = M.train_config(setup, model=M.MODELS[key], n_train=n_fold, dataset="ck", seed=setup.seed0)
                p.add(rel, name=M._run_name(setup, f"ckf{fold}-{key}-pre-s{setup.seed0}"), row=f"{key}-pre",
                      seed=setup.seed0, fold=fold, dataset=f"{ck_name} fold {fold}", train_images=n_fold,
                      epochs=cfg.epochs, estimate=True, trainer=ck_run(key, fold),
                      needs=[face_name] if setup.synthetic else [],
                      call=f"manet.run_model(setup, ck_fold_data(load_ck(setup), {fold}), {key!r}, dataset='ck', "
                           f"tag='f{fold}', face=face, seed={setup.seed0})")

    for page in ("rasnet", "ersnet"):
        rel, _ = p.page(page)
        add_face(rel)
        add_raf(rel, "ours", True, setup.seed0)
    rel, k = p.page("raf")
    add_face(rel)
    for pre in (True, False) if k["scratch_rows"] else (True,):
        for key in ("ours", "se", "vgg"):
            for s in setup.seeds:
                add_raf(rel, key, pre, s)
    if k["gt_ablation"]:
        add_raf(rel, "ours", True, setup.seed0, mask_source="gt")
    rel, _ = p.page("ck")
    add_face(rel)
    add_ck(rel)
    rel, _ = p.page("visualisation")
    add_face(rel)
    for key in ("ours", "se", "vgg"):
        for s in setup.seeds:
            add_raf(rel, key, True, s)
    add_ck(rel)
    return list(p.runs.values())


def _mapnet_size(setup: mapnet.Setup, dataset: str) -> tuple[int, bool]:
    if setup.synthetic and setup.n_train is not None:
        return int(setup.n_train), False
    raf = published_size("rafdb")
    aff = published_size("affectnet")
    if setup.affectnet_train is not None:
        aff = min(aff, setup.affectnet_train)
    cap = (lambda m: m if setup.n_train is None else min(m, setup.n_train))
    sizes = {"rafdb": cap(raf), "affectnet": cap(aff), "joint": cap(aff) + cap(raf)}
    return sizes[dataset], setup.n_train is None or setup.n_train > min(raf, aff)


def _mapnet(setup: mapnet.Setup, knobs: Mapping[str, Mapping[str, Any]]) -> list[PlannedRun]:
    """ablation (``rows`` x seeds, the K and alpha sweeps), attention (MAPNet), comparison (RAF-DB,
    AffectNet with ``affectnet``, AffectNet + RAF-DB with ``joint``) and gradcam (every row), plus
    the trunk pretraining (the ImageNet stand-in) every row starts from when ``pretrain_task`` is set."""
    E = mapnet
    p = _Planner("mapnet", knobs)

    def trainer_of(row: str, seed: int, blocks: int | None, alpha: float | None, dataset: str
                   ) -> Callable[[_Context], RunResult]:
        def trainer(ctx: _Context) -> RunResult:
            d = ctx.once(("mapnet", dataset), lambda: E.load_data(setup, dataset, progress=ctx.progress), data=True)
            return E.run_row(setup, d, row, seed=seed, blocks=blocks, alpha=alpha, dataset=dataset,
                             progress=ctx.progress)
        return trainer

    def add(rel: str, row: str, *, seed: int | None = None, blocks: int | None = None, alpha: float | None = None,
            dataset: str = "rafdb") -> None:
        seed = setup.seed if seed is None else int(seed)
        n, est = _mapnet_size(setup, dataset)
        kw = E.row_model_kwargs(setup, row, blocks=blocks, alpha=alpha)
        what = row + (f" K={kw['blocks']}" if blocks is not None else "") + (f" alpha={kw['alpha']:g}"
                                                                               if alpha is not None else "")
        args = "".join(f", {k}={v!r}" for k, v in (("seed", seed), ("blocks", blocks), ("alpha", alpha))
                       if v is not None)
        source = (f"SynFER {'affectnet' if dataset == 'affectnet' else 'wild'}" if setup.synthetic
                  else E.TRAINING_SETS[dataset])
        needs = p.add_trunk(rel, setup, E, seed=setup.seed)
        p.add(rel, name=E.run_name(setup, row, dataset=dataset, seed=seed, blocks=blocks, alpha=alpha), row=what,
              seed=seed, dataset=source, train_images=n, epochs=setup.epochs, estimate=est,
              trainer=trainer_of(row, seed, blocks, alpha, dataset), needs=needs,
              call=f"mapnet.run_row(setup, load_data(setup, {dataset!r}), {row!r}{args}, dataset={dataset!r})")

    rel, k = p.page("ablation")
    for row in k["rows"]:
        for s in setup.seeds:
            add(rel, row, seed=s)
    for b in setup.blocks_values:
        for s in setup.sweep_seeds:
            add(rel, "wcl", seed=s, blocks=b)
    for a in setup.alpha_values:
        for s in setup.sweep_seeds:
            add(rel, "wcl", seed=s, alpha=a)
    rel, _ = p.page("attention")
    add(rel, "wcl")
    rel, k = p.page("comparison")
    add(rel, "wcl")
    if k["affectnet"]:
        add(rel, "wcl", dataset="affectnet")
    if k["joint"]:
        add(rel, "wcl", dataset="joint")
    rel, _ = p.page("gradcam")
    for row in E.ROWS:
        add(rel, row, seed=setup.seed)
    return list(p.runs.values())


def _msanet(setup: msanet.Setup, knobs: Mapping[str, Mapping[str, Any]]) -> list[PlannedRun]:
    """ablation (every row x dataset of ``setup.datasets`` x seed), comparison (MSA-Net per dataset) and explain
    (baseline and MSA-Net on RAF-DB), plus the trunk pretraining every row starts from when
    ``pretrain_task`` is set."""
    S = msanet
    p = _Planner("msanet", knobs)

    def trainer_of(dataset: str, row: str, seed: int) -> Callable[[_Context], RunResult]:
        def trainer(ctx: _Context) -> RunResult:
            d = ctx.once(("msanet", dataset), lambda: S.load_data(setup, dataset, progress=ctx.progress), data=True)
            return S.run_row(setup, d, row, seed=seed, progress=ctx.progress)
        return trainer

    def add(rel: str, dataset: str, row: str, seed: int | None = None) -> None:
        seed = setup.seeds[0] if seed is None else int(seed)
        n, est = S.OFFICIAL_SPLITS[dataset][0], True
        if setup.n_train is not None:
            n, est = (setup.n_train, False) if setup.synthetic else (min(n, setup.n_train), setup.n_train > n)
        info = S.DATASETS[dataset]
        needs = p.add_trunk(rel, setup, S, seed=setup.data_seed)
        p.add(rel, name=f"msanet-{setup.profile}-{dataset}-{row}-s{seed}", row=row, seed=seed,
              dataset=info.stand_in if setup.synthetic else info.paper_name, train_images=n, epochs=setup.epochs,
              estimate=est, trainer=trainer_of(dataset, row, seed), needs=needs,
              call=f"msanet.run_row(setup, load_data(setup, {dataset!r}), {row!r}, seed={seed})")

    rel, _ = p.page("ablation")
    for d in setup.datasets:
        for s in setup.seeds_for(d):
            for row in S.ROWS:
                add(rel, d, row, s)
    rel, _ = p.page("comparison")
    for d in setup.datasets:
        add(rel, d, "full")
    rel, _ = p.page("explain")
    for row in ("baseline", "full"):
        add(rel, "raf", row)
    return list(p.runs.values())


def _masked(setup: masked.Setup, knobs: Mapping[str, Mapping[str, Any]]) -> list[PlannedRun]:
    """stage1 (MCN, ABN first seed), stage2 (MCN + VGG11, ABN, FECN x seeds) and shared (+ the
    shared-extractor variants), plus the VGG11 pretraining every model starts from when
    ``pretrain_task`` is set."""
    X = masked
    p = _Planner("masked", knobs)
    seed0 = setup.seeds[0]
    mcn_name = X._run_name(setup, f"mcn-s{seed0}")
    source = "SynFER" if setup.synthetic else "RAF-DB"

    def data(ctx: _Context) -> Any:
        return ctx.once(("masked", "data"), lambda: X.load_data(setup, progress=ctx.progress), data=True)

    def mcn(ctx: _Context) -> RunResult:
        return ctx.once(mcn_name, lambda: X.run_mcn(setup, data(ctx), progress=ctx.progress))

    def trainer_of(model: str, seed: int) -> Callable[[_Context], RunResult]:
        def trainer(ctx: _Context) -> RunResult:
            stage2 = model in X.STAGE2_MODELS
            return X.run_model(setup, data(ctx), model, seed, mcn=mcn(ctx) if stage2 else None,
                               progress=ctx.progress)
        return trainer

    def add_mcn(rel: str) -> None:
        trunk = p.add_trunk(rel, setup, X, seed=setup.data_seed)
        p.add(rel, name=mcn_name, row="mcn", seed=seed0, dataset=f"MU-dataset ({source})",
              train_images=setup.n_mu_train, epochs=setup.mcn_epochs, estimate=False, trainer=mcn,
              call="masked.run_mcn(setup, load_data(setup))", needs=trunk)

    def add(rel: str, model: str, seed: int) -> None:
        stage2 = model in X.STAGE2_MODELS
        trunk = p.add_trunk(rel, setup, X, seed=setup.data_seed)
        p.add(rel, name=X._run_name(setup, f"{model}-s{seed}"), row=model, seed=seed,
              dataset=f"M-FER-dataset ({source})", train_images=setup.n_train, epochs=setup.epochs, estimate=False,
              trainer=trainer_of(model, seed), needs=trunk + ([mcn_name] if stage2 else []),
              call=f"masked.run_model(setup, load_data(setup), {model!r}, {seed}, mcn=mcn)")

    rel, _ = p.page("stage1")
    add_mcn(rel)
    add(rel, "abn", seed0)
    for page in ("stage2", "shared"):
        models = X.page_models(setup, page)
        rel, _ = p.page(page)
        add_mcn(rel)
        for m in models:
            for s in setup.seeds:
                add(rel, m, s)
    return list(p.runs.values())


_PLANNERS: dict[str, tuple[Any, Callable[..., list[PlannedRun]]]] = {
    "cbam_vgg": (cbam_vgg, _cbam_vgg),
    "mapnet": (mapnet, _mapnet),
    "msanet": (msanet, _msanet),
    "manet": (manet, _manet),
    "masked": (masked, _masked),
}


# =========================================================================== plan and train


def plan(profile: str, *, data_root: str | None = None, device: str = "auto", chapters: Sequence[str] | None = None,
         root: str | os.PathLike | None = None) -> list[PlannedRun]:
    """Every run the book's pages train in ``profile``, chapter by chapter, dependencies first.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data_root: the real datasets (``paper``); only :func:`train` reads them.
        device: the chapters' ``device`` (``auto``, ``cpu``, ``cuda``).
        chapters: only these chapters (default: all of :data:`CHAPTERS`).
        root: the book root (default: :func:`fer.profiles.find_root`).

    Nothing is loaded or trained: names, seeds and sizes come from each chapter's
    ``Setup.for_profile`` and the pages' knobs.
    """
    knobs = page_knobs(profile, root)
    unknown = sorted(set(chapters or ()) - set(CHAPTERS))
    if unknown:
        raise PlanError(f"unknown chapter(s) {unknown}; the chapters with runs are {', '.join(CHAPTERS)}")
    out: list[PlannedRun] = []
    for chapter in CHAPTERS:
        if chapters is not None and chapter not in chapters:
            continue
        module, planner = _PLANNERS[chapter]
        setup = module.Setup.for_profile(profile, data_root=data_root, device=device, root=root)
        runs = planner(setup, knobs)
        out += sorted(runs, key=lambda r: r.wave)  # stable: page order within a wave
    names = [r.name for r in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"run names listed by two chapters: {dupes}")
    return out


def cache_status(root: str | os.PathLike | None = None) -> dict[str, str]:
    """What the runs root holds, by run name: ``"yes"`` (a complete run trained by the current
    code), ``"stale"`` (complete, but the code it ran has changed since: it will retrain).

    Config and data are not checked (that needs the data): a ``"yes"`` run retrains if they
    changed too. Names without a complete run are left out.
    """
    sources: dict[frozenset[str], str] = {}
    out: dict[str, str] = {}
    for r in find_runs(root=root, complete=True):
        protocols = frozenset(protocols_of(r.record.get("spec")))
        if protocols not in sources:
            sources[protocols] = source_hash(protocols=protocols)
        if out.get(r.name) != "yes":
            out[r.name] = "yes" if r.record.get("source") == sources[protocols] else "stale"
    return out


def select(runs: Sequence[PlannedRun], names: Sequence[str]) -> list[PlannedRun]:
    """The runs named ``names`` (in that order); an error lists any name the plan lacks."""
    by_name = {r.name: r for r in runs}
    missing = [n for n in names if n not in by_name]
    if missing:
        profiles = {n.split("-")[1] for n in missing if n.count("-") >= 2}
        hint = (f" (a name carries its profile: these look like --profile {', '.join(sorted(profiles))})"
                if profiles and not profiles & {r.name.split("-")[1] for r in runs} else "")
        raise PlanError(f"no run named {', '.join(missing)} in this plan{hint}; list the names with "
                        f"`python -m fer.runs plan --profile PROFILE`")
    return [by_name[n] for n in names]


def missing_weights(runs: Sequence[PlannedRun], profile: str, *, root: str | os.PathLike | None = None
                    ) -> list[Any]:
    """The pretrained files (:class:`fer.models.WeightFile`) that ``runs`` start from in ``profile``
    and that are not where they must be (each chapter's ``required_weights``, as the book runner
    checks them before a paper run)."""
    missing: dict[Path, Any] = {}
    for chapter in dict.fromkeys(r.chapter for r in runs):
        module = _PLANNERS[chapter][0]
        setup = module.Setup.for_profile(profile, root=root)
        if chapter == "cbam_vgg":  # per row: row (a) needs none, (b) ImageNet ResNet-50, ...
            rows = [r.row for r in runs if r.chapter == chapter and r.row in {x.key for x in cbam_vgg.FIGURE7}]
            files = module.required_weights(setup, rows)
        else:
            files = module.required_weights(setup)
        for f in files:
            if not f.present:
                missing.setdefault(f.path, f)
    return list(missing.values())


def process_state(device: str = "auto") -> Any:
    """``accelerate``'s ``PartialState`` for chapters run on ``device`` (``auto``, ``cpu``, ``cuda``):
    on the CPU when ``device`` resolves to it, as the chapters' ``TrainConfig(cpu=...)`` and
    :func:`fer.train.use_cpu` decide, so that :func:`fer.runs.run` finds the state it expects."""
    import torch
    from accelerate import PartialState

    resolved = resolve_device(None if device == "auto" else device)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=resolved == "cpu" or (launched and not torch.cuda.is_available()))


def train(names: Sequence[str], profile: str, *, data_root: str | None = None, device: str = "auto",
          root: str | os.PathLike | None = None, runs: Sequence[PlannedRun] | None = None, progress: bool = True
          ) -> dict[str, RunResult]:
    """Train (or load) the runs ``names`` of ``profile``'s plan, by the chapter calls the notebooks make.

    Runs a named run starts from (``needs``) are trained (or loaded) on the way, as the
    chapter function does. Works in every process of ``accelerate launch`` / ``torchrun``:
    :func:`fer.runs.run` trains data parallel and writes one folder from the main process.

    ``progress``: the chapters' tqdm bars (on the local main process only).

    Returns ``{name: RunResult}``. A :class:`PlanError` when a call trains a run under
    another name than the plan's (the planner is out of step with its chapter).
    """
    runs = list(runs) if runs is not None else plan(profile, data_root=data_root, device=device, root=root)
    chosen = select(runs, names)
    missing = missing_weights(chosen, profile, root=root)
    if missing:
        listed = "\n".join(f"  {f.path}\n    {f.fix.splitlines()[-1]}" for f in missing)
        raise FileNotFoundError(f"the {profile} profile starts these runs from pretrained weights that are missing "
                                f"({len(missing)} file(s)):\n{listed}\nNothing was trained. Put the files there "
                                f"(`make book PROFILE={profile} DATA_ROOT=... DRY_RUN=1` checks the rest first).")
    state = process_state(device)
    ctx = _Context(progress=progress and state.is_local_main_process)
    out = {}
    for r in chosen:
        result = r.trainer(ctx)
        if result.run.name != r.name:
            raise PlanError(f"{r.call} trained {result.run.name!r}, but the plan calls it {r.name!r}: the "
                            f"{r.chapter} planner in {__name__} is out of step with fer.experiments.{r.chapter}")
        out[r.name] = result
    return out
