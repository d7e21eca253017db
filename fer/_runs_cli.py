"""``python -m fer.runs plan|train|list``: the book's runs from the command line.

* ``plan --profile P [--data-root DIR] [--json]``: every run the book's pages train in
  profile ``P`` (:func:`fer.experiments.plan.plan`): name, chapter, row, seed, fold,
  images to process, the runs it starts from, and whether a complete run of that name
  is in the cache already.
* ``train NAME... --profile P [--data-root DIR]``: trains those runs by the chapter calls
  the notebooks make (:func:`fer.experiments.plan.train`), so ``make book`` finds them in
  the cache. Runs on one device as is, and data parallel on several under
  ``accelerate launch -m fer.runs train ...`` or ``torchrun -m fer.runs train ...``
  (:func:`global_batch`: the config's batch is the global batch there).
* ``list [--json]``: every run in the cache (:func:`run_rows`) with its test accuracy,
  mean per-class accuracy, the majority class's share of its test set, whether it learned
  (:func:`fer.pages.learned`) and its wall time.

This module sits on top of the stack, like :mod:`fer.book`: it imports the chapters
(only inside ``plan`` and ``train``), nothing imports it, and no run executes it, so it is
left out of the runs' hash (:data:`fer.runs.PRESENTATION_MODULES`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from .pages import LEARNING_RULE, run_learning
from .profiles import PROFILES
from .runs import find_runs, runs_root

__all__ = ["main", "run_rows", "global_batch", "world_size"]

#: Chapter keys, the first part of every book run's name (``<chapter>-<profile>-...``).
RUN_CHAPTERS: tuple[str, ...] = ("cbam_vgg", "manet", "mapnet", "msanet", "masked")

_SEED = re.compile(r"-s(\d+)$")
_FOLD = re.compile(r"^ckf(\d+)-")


# =========================================================================== list


def _name_parts(name: str) -> dict[str, Any]:
    """chapter, profile, row and fold read from a book run's name (``None`` where it is not one)."""
    parts = name.split("-")
    if len(parts) < 3 or parts[0] not in RUN_CHAPTERS or parts[1] not in PROFILES:
        return {"chapter": None, "profile": None, "row": None, "fold": None}
    rest = _SEED.sub("", "-".join(parts[2:]))
    fold = _FOLD.match(rest)
    return {"chapter": parts[0], "profile": parts[1], "row": rest, "fold": int(fold.group(1)) if fold else None}


def run_rows(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One record per run folder under ``runs_root(root)`` (:func:`fer.runs.find_runs`).

    Keys: ``id`` (the folder), ``name``, ``chapter``, ``profile``, ``row``, ``fold`` (from a
    book run's name; ``None`` otherwise), ``seed`` (its config), ``complete``, then from
    :func:`fer.pages.run_learning`: ``eval_set`` (``test``, else ``val``), ``accuracy``,
    ``mean_class_accuracy``, ``majority_share`` (the largest class's share of that set's
    targets in ``predictions.pt``: the accuracy of always answering it), ``classes`` and
    ``learned`` (:func:`fer.pages.learned`: the floor every demo run must clear; ``None``
    while incomplete); and ``epochs``, ``device``, ``precision``, ``wall_seconds`` and ``threads``
    (``metrics.json``'s ``timing.total_seconds`` and the CPU threads torch trained with, which
    the wall time depends on). Metrics are ``None`` while incomplete.
    """
    rows = []
    for r in find_runs(root=root):
        rec: dict[str, Any] = {"id": r.path.name, "name": r.name, **_name_parts(r.name),
                               "seed": r.record.get("config", {}).get("seed"), "complete": r.complete}
        metrics: dict[str, Any] = r.metrics() if r.complete else {}
        check = run_learning(r)
        rec.update(eval_set=check.eval_set, accuracy=check.accuracy, mean_class_accuracy=check.mean_class_accuracy,
                   majority_share=check.majority_share, classes=check.classes, learned=check.learned,
                   epochs=metrics.get("epochs"), device=metrics.get("device"), precision=metrics.get("precision"),
                   wall_seconds=(metrics.get("timing") or {}).get("total_seconds"),
                   threads=(metrics.get("timing") or {}).get("threads"))
        rows.append(rec)
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [r for r in run_rows(args.runs) if (args.profile is None or r["profile"] == args.profile)
            and (args.chapter is None or r["chapter"] == args.chapter)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no runs under {runs_root(args.runs)}")
        return 0
    print(_table([[r["id"], r["chapter"], r["row"], r["seed"], r["profile"], _pct(r["accuracy"]),
                   _pct(r["mean_class_accuracy"]), _pct(r["majority_share"]),
                   {True: "yes", False: "NO", None: "-"}[r["learned"]],
                   None if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"] for r in rows],
                 ["id", "chapter", "row", "seed", "profile", "acc %", "class-mean %", "majority %", "learned",
                  "wall s"]))
    failing = sum(r["learned"] is False for r in rows)
    print(f"{len(rows)} runs under {runs_root(args.runs)} (acc on each run's test set, else its val set; "
          f"majority %: share of that set's largest class); {failing} did not learn ({LEARNING_RULE})")
    return 0


# =========================================================================== plan


def _cmd_plan(args: argparse.Namespace) -> int:
    from .experiments.plan import PlanError, cache_status, plan

    try:
        runs = plan(args.profile, data_root=args.data_root, device=args.device, chapters=args.chapter)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.wave is not None:
        runs = [r for r in runs if r.wave == args.wave]
    status = cache_status(args.runs)
    records = [{**r.to_dict(), "cached": status.get(r.name, "no")} for r in runs]
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(_table([[r["name"], r["chapter"], r["row"], r["seed"], r["fold"],
                   ("~" if r["estimate"] else "") + f"{r['images']:,}", ", ".join(r["needs"]) or None,
                   r["cached"]] for r in records],
                 ["name", "chapter", "row", "seed", "fold", "images", "needs", "cached"]))
    total = sum(r["images"] for r in records)
    print(f"{len(records)} runs, {total:,} training images in all (~: an estimate from the dataset's published "
          f"size). cached: yes, a complete run of that name under {runs_root(args.runs)} trained by this code "
          f"(its config and data are checked when it is trained or loaded); stale, trained by older code.\n"
          f"Train with: python -m fer.runs train NAME... --profile {args.profile}"
          + (f" --data-root {args.data_root}" if args.data_root else ""))
    return 0


# =========================================================================== train


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` set by ``accelerate launch`` / ``torchrun``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def global_batch() -> Iterator[None]:
    """Under several processes, treat each run's ``TrainConfig.batch_size`` as the global batch.

    :func:`fer.train.fit` takes ``batch_size`` per process, but the run's hash does not
    know how many processes trained it. So that a run trained here on N devices is the
    run its notebook would train on one (same global batch, same optimizer steps per
    epoch, hence the same iteration schedule) and may share its cache entry, the
    accelerators made inside this block split every batch across the processes
    (``accelerate``'s ``split_batches``). The batch must then be a multiple of N.
    What still differs from one process: batch-norm statistics are per process, and
    augmentation and dropout draw per-process random streams.
    """
    if world_size() <= 1:
        yield
        return
    from . import train as _train

    made = _train.make_accelerator

    def make_accelerator(config: Any = None) -> Any:
        acc = made(config)
        acc.dataloader_config.split_batches = True
        return acc

    _train.make_accelerator = make_accelerator
    try:
        yield
    finally:
        _train.make_accelerator = made


def _cmd_train(args: argparse.Namespace) -> int:
    from ._dry_run import DRY_RUN_ENV, dry_run
    from .experiments.plan import PlanError, plan, process_state, select, train

    if dry_run():
        print(f"error: {DRY_RUN_ENV}=1 caps every run at 2 steps, and `train` writes to the runs cache, where such "
              f"a run would pass for a result. Unset {DRY_RUN_ENV}; to dry-run the paper path use "
              f"`make book PROFILE=paper DATA_ROOT=... DRY_RUN=1`", file=sys.stderr)
        return 2

    try:
        runs = plan(args.profile, data_root=args.data_root, device=args.device)
        chosen = select(runs, args.names)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = process_state(args.device)
    main = state.is_main_process
    n = state.num_processes
    if main:
        for r in chosen:
            print(f"{r.name}: {r.call}" + (f" (starts from {', '.join(r.needs)})" if r.needs else ""))
        if n > 1:
            print(f"{n} processes ({state.distributed_type.value}, {state.device.type}): each run's batch is split "
                  f"across them (the global batch stays the notebook's)")
    try:
        with global_batch():
            results = train(args.names, args.profile, data_root=args.data_root, device=args.device, runs=runs)
    except FileNotFoundError as err:  # a paper run without its data root, weights or landmark cache
        print(f"error: {err}", file=sys.stderr)
        return 2
    if main:
        for name, res in results.items():
            m = res.metrics.get("test") or res.metrics.get("val") or {}
            acc = f"  test acc {100 * m['accuracy']:.1f}%" if m.get("accuracy") is not None else ""
            print(f"{'cached' if res.cached else 'trained'}: {res.run}{acc}")
    return 0


# =========================================================================== entry


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fer.runs", description="The book's training runs: plan, train, list.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, profile_required: bool) -> None:
        p.add_argument("--profile", choices=PROFILES, required=profile_required,
                       help="smoke, demo or paper (as `python -m fer.book --profile`)")
        p.add_argument("--runs", default=None, metavar="DIR",
                       help="the runs folder (default: $FER_RUNS, else runs/ in the repository)")

    p = sub.add_parser("plan", help="list every run the book's pages train for a profile")
    common(p, profile_required=True)
    p.add_argument("--data-root", default=None, metavar="DIR", help="the real datasets (paper profile)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (the chapters' device)")
    p.add_argument("--chapter", action="append", default=None, metavar="KEY",
                   help="only this chapter (repeatable): cbam_vgg, mapnet, msanet, manet, masked")
    p.add_argument("--wave", type=int, choices=(0, 1), default=None,
                   help="0: runs that start from no other run; 1: runs that do (train wave 0 first)")
    p.add_argument("--json", action="store_true", help="one JSON record per run")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("train", help="train runs of the plan by name (under accelerate launch / torchrun too)")
    p.add_argument("names", nargs="+", metavar="NAME", help="run names from `plan`")
    common(p, profile_required=True)
    p.add_argument("--data-root", default=None, metavar="DIR", help="the real datasets (paper profile)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (the chapters' device)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("list", help="every run in the cache, with its test metrics and wall time")
    common(p, profile_required=False)
    p.add_argument("--chapter", default=None, metavar="KEY", help="only this chapter's runs")
    p.add_argument("--json", action="store_true", help="one JSON record per run")
    p.set_defaults(func=_cmd_list)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.runs is not None:  # the chapters' runs and the MCN loader read $FER_RUNS
        os.environ["FER_RUNS"] = str(args.runs)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
