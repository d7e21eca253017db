"""What a chapter page calls to present its results: the banner that says how its numbers
were made, and table formatting (counts as integers, accuracies with one decimal).

Presentation only: no training run executes this module (``fer.runs.PRESENTATION_MODULES``),
and it imports nothing of the book runner, so notebooks use it without reaching up the layers.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Sequence

from ._dry_run import dry_run, missing_weights

__all__ = ["banner", "glue_figure", "table", "cached_frame", "TABLES_DIR"]

log = logging.getLogger(__name__)

#: Sub-folder of the runs root (:func:`fer.runs.runs_root`) where :func:`cached_frame` keeps its tables.
TABLES_DIR = "_tables"


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
    return HTML(
        f'<div class="admonition {kind} fer-banner">\n'
        f'<p class="admonition-title">{escape(title)}</p>\n'
        f"<ul>\n{items}\n</ul>{note}\n</div>"
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
