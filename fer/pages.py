"""What a chapter page calls to present its results: the banner that says how its numbers
were made (and which of its runs did not learn), and table formatting (counts as integers,
accuracies with one decimal).

Presentation only: no training run executes this module (``fer.runs.PRESENTATION_MODULES``),
and it imports nothing of the book runner, so notebooks use it without reaching up the layers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ._dry_run import dry_run, missing_weights

__all__ = ["banner", "glue_figure", "table", "cached_frame", "TABLES_DIR", "Learning", "learned", "run_learning",
           "LEARNED_MARGIN", "LEARNED_CHANCE_MULTIPLE", "LEARNING_RULE", "LEARNING_PROFILES"]

log = logging.getLogger(__name__)

#: Sub-folder of the runs root (:func:`fer.runs.runs_root`) where :func:`cached_frame` keeps its tables.
TABLES_DIR = "_tables"


# =========================================================================== did a run learn?

#: A run learned when its test accuracy is at least this far above its test set's
#: majority-class share (the accuracy of always answering the largest class) ...
LEARNED_MARGIN: float = 0.15
#: ... and its mean per-class accuracy is at least this multiple of chance (1 / classes).
LEARNED_CHANCE_MULTIPLE: float = 2.0
#: The rule as a page states it.
LEARNING_RULE: str = (f"test accuracy at least {100 * LEARNED_MARGIN:.0f} points above the share of the test "
                      f"set's largest class, and mean per-class accuracy at least {LEARNED_CHANCE_MULTIPLE:g}× "
                      f"chance")
#: Profiles whose pages check their runs against the rule. Smoke runs take a few steps on a
#: few dozen faces to test the code; they are not expected to learn, and a dry run's numbers
#: mean nothing (:func:`banner` checks neither).
LEARNING_PROFILES: tuple[str, ...] = ("demo", "paper")
_TOLERANCE = 1e-9  # a run exactly on the floor clears it (float sums of per-class accuracies)


def learned(accuracy: float | None, mean_class_accuracy: float | None, majority_share: float | None,
            classes: int | None) -> bool | None:
    """The rule every demo run must clear (:data:`LEARNING_RULE`): ``accuracy >= majority_share
    + LEARNED_MARGIN`` and ``mean_class_accuracy >= LEARNED_CHANCE_MULTIPLE / classes``.

    All fractions in [0, 1]. ``None`` when a number is missing (a run not finished, or saved
    without predictions): the rule cannot tell. With 2 classes the second half asks for a
    mean per-class accuracy of 1.0; no run of the book has fewer than 4 classes.
    """
    if accuracy is None or mean_class_accuracy is None or majority_share is None or not classes:
        return None
    return bool(accuracy + _TOLERANCE >= majority_share + LEARNED_MARGIN
                and mean_class_accuracy + _TOLERANCE >= LEARNED_CHANCE_MULTIPLE / classes)


@dataclass(frozen=True)
class Learning:
    """One run's evaluation numbers against :func:`learned`'s floor.

    ``eval_set`` is the set the numbers come from: ``test``, else ``val`` (a run evaluated
    on no test set); ``None`` with every number when the run is missing or not finished.
    """

    run_id: str
    eval_set: str | None = None
    accuracy: float | None = None
    mean_class_accuracy: float | None = None
    majority_share: float | None = None
    classes: int | None = None

    @property
    def learned(self) -> bool | None:
        """:func:`learned` of these numbers."""
        return learned(self.accuracy, self.mean_class_accuracy, self.majority_share, self.classes)

    def shortfall(self) -> str:
        """The numbers against the floor, in words (for a warning box)."""
        if self.learned is None:
            return "no evaluation numbers (the run is missing or not finished)"
        need_acc = self.majority_share + LEARNED_MARGIN
        need_mca = LEARNED_CHANCE_MULTIPLE / self.classes
        return (f"{self.eval_set} accuracy {100 * self.accuracy:.1f}% (largest class {100 * self.majority_share:.1f}%"
                f", needs ≥ {100 * need_acc:.1f}%); mean per-class {100 * self.mean_class_accuracy:.1f}% "
                f"(needs ≥ {100 * need_mca:.1f}%, {LEARNED_CHANCE_MULTIPLE:g}× chance with {self.classes} classes)")


def run_learning(run: Any, *, root: str | os.PathLike | None = None) -> Learning:
    """:class:`Learning` of a run: a :class:`fer.runs.Run`, a run folder, or a run id (a
    folder name under :func:`fer.runs.runs_root` of ``root``).

    The numbers come from the run's ``metrics.json`` (``test``, else ``val``); the majority
    share and the class count from that set's targets and logits in ``predictions.pt``.
    """
    import torch

    from .runs import PREDICTIONS_FILE, Run, runs_root

    if not isinstance(run, Run):
        path = Path(run)
        if not path.is_dir():
            path = runs_root(root) / str(run)
        if not path.is_dir():
            return Learning(Path(str(run)).name)
        try:
            run = Run.load(path)
        except (FileNotFoundError, ValueError):  # not a run folder (no or damaged config.json)
            return Learning(path.name)
    if not run.complete:
        return Learning(run.path.name)
    metrics = run.metrics()
    split = next((s for s in ("test", "val") if isinstance(metrics.get(s), dict)), None)
    if split is None:
        return Learning(run.path.name)
    share = classes = None
    if (run.path / PREDICTIONS_FILE).is_file():
        pred = run.predictions().get(split, {})
        targets, logits = pred.get("targets"), pred.get("logits")
        if targets is not None and len(targets):
            share = float(torch.bincount(targets.long().flatten()).max()) / len(targets)
        if logits is not None and logits.ndim == 2:
            classes = int(logits.shape[-1])
    m = metrics[split]
    return Learning(run.path.name, split, m.get("accuracy"), m.get("mean_class_accuracy"), share, classes)


def _not_learned_box(failing: Sequence[Learning], total: int) -> str:
    from html import escape

    items = "\n".join(f"<li><code>{escape(x.run_id)}</code>: {escape(x.shortfall())}</li>" for x in failing)
    return (f'<div class="admonition warning fer-not-learned">\n'
            f'<p class="admonition-title">{len(failing)} of {total} runs on this page did not learn</p>\n'
            f"<p>A run has learned when it reaches {escape(LEARNING_RULE)}. These runs did not, so what "
            f"this page reads from them says nothing about the paper's mechanism:</p>\n<ul>\n{items}\n</ul>\n</div>")


# =========================================================================== banner


def banner(
    profile: str,
    data: str,
    scale: str,
    run_ids: Sequence[str] | str = (),
    **extra: Any,
) -> Any:
    """A note for the top of a page: which profile, data and scale made its numbers.

    ``run_ids`` are the runs (``fer.runs`` ids) behind the page's numbers; ``extra``
    adds fields (``device="cuda"`` shows as *Device*). Returns an
    :class:`IPython.display.HTML` admonition (it renders the same in Jupyter and in the
    built book); display it, or leave it as a cell's last expression. Nothing is glued.

    In the :data:`LEARNING_PROFILES`, each run is checked with :func:`run_learning`; those
    that did not learn are listed in a warning box below the note. The note's
    ``data-fer-runs`` and ``data-fer-not-learned`` attributes (JSON lists of ids) let the
    book runner count them (:func:`fer.book.page_runs`).
    """
    from html import escape

    from IPython.display import HTML

    if isinstance(run_ids, str):
        run_ids = (run_ids,)
    runs = ", ".join(f"<code>{escape(str(r))}</code>" for r in run_ids) or "none"
    fields = [("Profile", f"<code>{escape(str(profile))}</code>"),
              ("Data", escape(str(data))), ("Scale", escape(str(scale)))]
    fields += [(escape(k.replace("_", " ").capitalize()), escape(str(v))) for k, v in extra.items()]
    fields.append(("Runs", runs))
    items = "\n".join(f"<li><strong>{k}:</strong> {v}</li>" for k, v in fields)
    note = ""
    if "synfer" in str(data).lower():
        note = ("\n<p>SynFER numbers are measured on synthetic stand-ins: they are not a "
                "reproduction of any paper's table.</p>")
    kind, title = "note", "How this page's numbers were made"
    if dry_run():
        kind, title = "warning", "Dry run: these numbers mean nothing"
        note += ("\n<p>This page ran as a <strong>dry run</strong> (<code>--dry-run</code>): every training "
                 "stage stopped after a few optimiser steps of a small batch and every evaluation after a few "
                 "batches. It checks that the data, weights and code carry the real run; its numbers are "
                 "not results.</p>")
        missing = missing_weights()
        if missing:
            listed = "".join(f"<li><code>{escape(f)}</code>: {escape(m.splitlines()[-1])}</li>"
                             for f, m in missing.items())
            note += f"\n<p>Missing pretrained weights, replaced by random ones:</p>\n<ul>{listed}</ul>"
    checked = ([run_learning(r) for r in run_ids]
               if profile in LEARNING_PROFILES and not dry_run() else [])
    failing = [x for x in checked if x.learned is False]
    attrs = (f" data-fer-runs='{escape(json.dumps([str(r) for r in run_ids]))}'"
             f" data-fer-not-learned='{escape(json.dumps([x.run_id for x in failing]))}'")
    box = "\n" + _not_learned_box(failing, len(run_ids)) if failing else ""
    return HTML(
        f'<div class="admonition {kind} fer-banner"{attrs}>\n'
        f'<p class="admonition-title">{escape(title)}</p>\n'
        f"<ul>\n{items}\n</ul>{note}\n</div>{box}"
    )


def glue_figure(name: str, fig: Any) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` in the prose, and close it.

    The figure then appears once on the page, where the prose places it: glued with
    ``display=False`` and closed, so the inline backend does not show it again as the
    cell's output.
    """
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)


#: Column names (lower case) read as counts: shown as integers.
_COUNT_WORDS = ("seeds", "runs", "faces", "images", "n", "count", "folds", "epochs", "parameters", "params")


def table(df: Any, *, percent: Sequence[str] | None = None, decimals: int = 1) -> Any:
    """A DataFrame styled for a page: counts as integers, other numbers with ``decimals``.

    A numeric column is a count when every value is a whole number and its name says so
    (``seeds``, ``runs``, ``faces``, ... or ends with one of them), or when its dtype is
    an integer; counts print with thousands separators. ``percent`` names columns holding
    accuracies as fractions in [0, 1]: they print as percentages. Missing values print as
    an en dash. Returns a pandas ``Styler`` (it renders as HTML in Jupyter and the book).
    """
    import numpy as np
    import pandas as pd

    percent = set(percent or ())
    formats: dict[Any, Any] = {}
    for col in df.columns:
        series = df[col]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        label = str(col[-1] if isinstance(col, tuple) else col).lower()
        values = series.dropna().to_numpy(dtype=float)
        whole = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
        if col in percent:
            formats[col] = f"{{:.{decimals}%}}"
        elif pd.api.types.is_integer_dtype(series) or (whole and any(
                label == w or label.endswith(" " + w) or label.endswith("_" + w) for w in _COUNT_WORDS)):
            formats[col] = "{:,.0f}"
        else:
            formats[col] = f"{{:.{decimals}f}}"
    return df.style.format(formats, na_rep="–")


def cached_frame(name: str, params: Mapping[str, Any], compute: Callable[[], Any], *,
                 root: str | Path | None = None) -> Any:
    """``compute()`` (a pandas DataFrame) computed once and cached beside the runs.

    For a page's own small experiment that is not a training run through :func:`fer.runs.run`
    (e.g. the SynFER difficulty probe), so that re-rendering the page (a figure's colour, a
    typo in the prose) does not recompute it. The cache file is
    ``<runs root>/_tables/<name>-<hash>.json``; the hash covers ``params`` (canonical JSON)
    and :func:`fer.runs.source_hash` (every module training executes, SynFER included), as a
    run's does: change the settings or the code and it is computed again. It is written
    atomically. A dry run (``FER_DRY_RUN=1``) neither reads nor writes it: its numbers are
    not results.
    """
    import pandas as pd

    from .io import atomic_write_json
    from .runs import runs_root, source_hash

    if dry_run():
        return compute()
    blob = json.dumps({"name": name, "params": dict(params), "source": source_hash()},
                      sort_keys=True, default=str)
    path = runs_root(root) / TABLES_DIR / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.json"
    if path.is_file():
        try:
            frame = pd.read_json(path, orient="split")
            log.info("cache hit: %s", path)
            return frame
        except ValueError as err:  # a file damaged outside this code: say so and compute it again
            log.warning("%s is unreadable (%s); computing it again", path, err)
    frame = compute()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"cached_frame({name!r}): compute() must return a pandas DataFrame, not "
                        f"{type(frame).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json.loads(frame.to_json(orient="split", double_precision=15)), indent=None)
    return frame
