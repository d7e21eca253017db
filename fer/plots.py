"""Figures shared by the chapters: image grids, landmark and heat-map overlays,
confusion matrices, training curves, CAM grids, and the paper-versus-ours table.

Everything returns a matplotlib ``Figure`` (or draws into a given ``Axes``) so a
notebook cell is one call; :func:`paper_vs_ours` returns a pandas ``Styler``
(or ``DataFrame``). Images are uint8 tensors or arrays, 3 x H x W or H x W x 3.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["to_hwc", "image_grid", "draw_landmarks", "overlay_heatmap", "LANDMARK_GROUPS",
           "confusion_matrix", "training_curves", "cam_grid", "paper_vs_ours"]

#: iBUG-68 groups and the colour each is drawn in.
LANDMARK_GROUPS: dict[str, tuple[range, str]] = {
    "jaw": (range(0, 17), "#1f77b4"),
    "brows": (range(17, 27), "#ff7f0e"),
    "nose": (range(27, 36), "#2ca02c"),
    "eyes": (range(36, 48), "#d62728"),
    "mouth": (range(48, 68), "#9467bd"),
}


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A displayable H x W x 3 (or H x W) numpy array from a CHW/HWC tensor or array."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def draw_landmarks(ax: plt.Axes, landmarks: torch.Tensor | np.ndarray, *, size: float = 4.0,
                   numbers: bool = False) -> None:
    """Scatter 68 iBUG landmarks on ``ax``, one colour per facial part."""
    lm = landmarks.detach().cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
    for _, (idx, colour) in LANDMARK_GROUPS.items():
        pts = lm[list(idx)]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, c=colour, linewidths=0)
    if numbers:
        for k, (x, y) in enumerate(lm):
            ax.text(x, y, str(k), fontsize=5, color="black", ha="center", va="bottom")


def overlay_heatmap(ax: plt.Axes, image, heat, *, alpha: float = 0.5, cmap: str = "jet",
                    threshold: float | None = 0.05) -> None:
    """Show ``image`` with a heat map (H x W, any range, resized by extent) on top.

    Values below ``threshold`` (relative to the map's maximum) are left transparent,
    so the image stays visible where the map is empty.
    """
    img = to_hwc(image)
    h = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, dtype=np.float64)
    if threshold is not None and h.size and h.max() > 0:
        h = np.ma.masked_less(h, threshold * float(h.max()))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.imshow(h, cmap=cmap, alpha=alpha, extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5),
              interpolation="bilinear")


def image_grid(images: Sequence, *, titles: Sequence[str] | None = None, ncols: int = 8,
               landmarks: Sequence | None = None, heatmaps: Sequence | None = None, row_labels: Sequence[str] | None = None,
               cell: float = 1.5, suptitle: str | None = None, fontsize: int = 8, heat_cmap: str = "jet",
               heat_alpha: float = 0.5, landmark_size: float | None = None) -> plt.Figure:
    """A grid of images with optional titles, landmarks, heat maps and row labels.

    ``heatmaps`` holds one map per image; a ``None`` entry shows that image plain.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
        if k >= n:
            ax.axis("off")
            continue
        if heatmaps is not None and heatmaps[k] is not None:
            overlay_heatmap(ax, images[k], heatmaps[k], cmap=heat_cmap, alpha=heat_alpha)
        else:
            img = to_hwc(images[k])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        if landmarks is not None:
            draw_landmarks(ax, landmarks[k], size=landmark_size or 2.0 * cell)
        if titles is not None:
            ax.set_title(titles[k], fontsize=fontsize)
        if row_labels is not None and k % ncols == 0:
            ax.set_ylabel(row_labels[k // ncols], fontsize=fontsize + 1)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- confusion matrix


def _array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def confusion_matrix(cm: Any, classes: Sequence[str] | None = None, *, normalise: bool = True,
                     ax: plt.Axes | None = None, title: str | None = None, cmap: str = "Blues",
                     annotate: bool = True, colorbar: bool = True, fontsize: int = 9) -> plt.Figure:
    """A confusion matrix as a seaborn heat map: rows true class, columns predicted.

    Args:
        cm: ``C x C`` counts (array, tensor or nested list), or a
            :func:`fer.metrics.classification_report` dict (its counts and classes).
        classes: class names in index order (taken from a report when omitted).
        normalise: show each row as percentages of its class (cells read "87%");
            ``False`` shows counts. Rows of classes without samples stay blank.
        ax: draw into this axes (its figure is returned); a new figure otherwise.
        title: axes title.

    With integer counts the row labels carry each class's sample count, ``"happy (n=40)"``.
    """
    import seaborn as sns

    if isinstance(cm, Mapping):
        classes = list(classes if classes is not None else cm["classes"])
        cm = cm["confusion_matrix"]
    mat = _array(cm).astype(np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"cm must be a square C x C matrix, got shape {mat.shape}")
    k = mat.shape[0]
    classes = [str(c) for c in (classes if classes is not None else range(k))]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for a {k} x {k} matrix")
    counts = np.isfinite(mat).all() and np.allclose(mat, np.round(mat)) and (mat >= 0).all()
    rows = mat.sum(axis=1)
    ylabels = [f"{c} (n={int(n)})" for c, n in zip(classes, rows)] if counts else classes
    if normalise:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(rows[:, None] > 0, 100.0 * mat / np.where(rows > 0, rows, 1.0)[:, None], np.nan)
        labels = np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.0f}%")(values)
        vmin, vmax, cbar_label = 0.0, 100.0, "% of true class"
    else:
        values = mat
        labels = np.vectorize(lambda v: "" if np.isnan(v) else (f"{v:.0f}" if counts else f"{v:.2f}"))(values)
        vmin, vmax, cbar_label = 0.0, None, "samples"
    if ax is None:
        side = max(3.5, 0.55 * k + 2.0)
        fig, ax = plt.subplots(figsize=(side + (1.0 if colorbar else 0.0), side))
    else:
        fig = ax.figure
    sns.heatmap(values, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, square=True, linewidths=0.5, linecolor="white",
                annot=labels if annotate else False, fmt="", annot_kws={"fontsize": fontsize},
                cbar=colorbar, cbar_kws={"label": cbar_label, "shrink": 0.8} if colorbar else None,
                xticklabels=classes, yticklabels=ylabels)
    ax.set_xlabel("predicted", fontsize=fontsize + 1)
    ax.set_ylabel("true", fontsize=fontsize + 1)
    ax.tick_params(labelsize=fontsize)
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    plt.setp(ax.get_yticklabels(), rotation=0)
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training curves


def _records(history: Any) -> list[dict[str, Any]]:
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas DataFrame
        frame = history.reset_index() if history.index.name is not None else history
        return frame.to_dict("records")
    records = getattr(history, "records", history)
    return [dict(r) for r in records]


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float, np.number)) and math.isfinite(float(v))


def training_curves(history: Any, metrics: Sequence[str] = ("loss", "accuracy"), *,
                    splits: Sequence[str] = ("train", "val", "test"), epoch_key: str = "epoch",
                    stage_key: str = "stage", stage_name_key: str = "stage_name", title: str | None = None,
                    size: tuple[float, float] = (4.2, 3.0), fontsize: int = 9) -> plt.Figure:
    """Per-epoch curves, one panel per metric, one line per split.

    Args:
        history: per-epoch dicts (a list, a ``fer.train.History``, or a DataFrame)
            with keys like ``epoch``, ``train_loss``, ``val_loss``, ``train_accuracy``,
            ``val_accuracy``, and optionally ``stage`` / ``stage_name``.
        metrics: metric names; a panel is drawn for each with at least one value
            under ``<split>_<metric>`` (or the bare ``<metric>``); the others are skipped.
        splits: key prefixes, each drawn as a line.
        epoch_key: x values (the record's position, from 1, when missing).
        stage_key: where its value changes between epochs a dashed line marks the
            boundary, labelled with ``stage_name_key`` (or the stage value).

    ``None`` or ``nan`` values (epochs without validation) are left out of a line.
    Raises ``ValueError`` when no requested metric is present.
    """
    records = _records(history)
    if not records:
        raise ValueError("history is empty: nothing to plot")
    xs = [r.get(epoch_key) if _finite(r.get(epoch_key)) else i + 1 for i, r in enumerate(records)]
    panels: list[tuple[str, list[tuple[str, list[float], list[float]]]]] = []
    for metric in metrics:
        lines = []
        for key, label in [(f"{s}_{metric}", s) for s in splits] + [(metric, metric)]:
            pts = [(x, float(r[key])) for x, r in zip(xs, records) if _finite(r.get(key))]
            if pts:
                lines.append((label, [p[0] for p in pts], [p[1] for p in pts]))
        if lines:
            panels.append((metric, lines))
    if not panels:
        keys = sorted({k for r in records for k in r})
        raise ValueError(f"none of the metrics {list(metrics)} is in the history (keys: {keys})")
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False)
    boundaries = []
    for i in range(1, len(records)):
        a, b = records[i - 1].get(stage_key), records[i].get(stage_key)
        if a is not None and b is not None and a != b:
            name = records[i].get(stage_name_key) or f"{stage_key} {b}"
            boundaries.append(((xs[i - 1] + xs[i]) / 2, str(name)))
    first_name = records[0].get(stage_name_key) or (
        f"{stage_key} {records[0][stage_key]}" if records[0].get(stage_key) is not None else None)
    for ax, (metric, lines) in zip(axes.flat, panels):
        for label, x, y in lines:
            ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=label)
        for x, name in boundaries:
            ax.axvline(x, color="0.4", linestyle="--", linewidth=1)
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", va="top", fontsize=fontsize - 1, color="0.3")
        if boundaries and first_name:
            ax.annotate(str(first_name), (0.0, 1.0), xycoords="axes fraction", xytext=(3, -3),
                        textcoords="offset points", va="top", fontsize=fontsize - 1, color="0.3")
        ax.set_xlabel("epoch", fontsize=fontsize)
        ax.set_ylabel(metric.replace("_", " "), fontsize=fontsize)
        ax.tick_params(labelsize=fontsize - 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=fontsize - 1, frameon=False)
        if all(float(x).is_integer() for x in xs):
            ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- CAM grid


def cam_grid(images: Sequence, cams: Any, *, titles: Sequence[str] | None = None,
             row_labels: Sequence[str] | None = None, show_images: bool = False, ncols: int = 8,
             contours: Sequence | None = None, contour_level: float = 0.5, contour_colour: str = "white",
             alpha: float = 0.5, cmap: str = "jet", cell: float = 1.5, suptitle: str | None = None,
             fontsize: int = 8) -> plt.Figure:
    """Heat maps (Grad-CAM, attention) over their images, built on :func:`image_grid`.

    Args:
        images: the ``B`` images (uint8, CHW or HWC).
        cams: ``B`` maps (``B x h x w`` array/tensor or a list; any size, stretched
            over the image), or a mapping ``name -> B maps`` for one row per
            method (columns are the images, rows labelled with the names).
        titles: one per image (above the first row when there are several rows).
        row_labels: for a single ``B``-map input laid out over several rows.
        show_images: with a mapping, add a first row with the plain images.
        ncols: columns for a single ``B``-map input.
        contours: optional ``B`` relevance maps; the ``contour_level`` line is
            drawn on every cell of that image (e.g. SynFER's evidence regions).
    """
    n = len(images)
    if isinstance(cams, Mapping):
        names = list(cams)
        rows = [(name, list(cams[name])) for name in names]
        for name, maps in rows:
            if len(maps) != n:
                raise ValueError(f"cams[{name!r}] has {len(maps)} maps for {n} images")
        if show_images:
            rows = [("input", [None] * n)] + rows
        grid_images = [img for _ in rows for img in images]
        heat = [m for _, maps in rows for m in maps]
        cols = n
        labels = [name for name, _ in rows]
        grid_titles = None if titles is None else list(titles) + [""] * (len(grid_images) - n)
        image_of = [k % n for k in range(len(grid_images))]
    else:
        heat = list(cams)
        if len(heat) != n:
            raise ValueError(f"{len(heat)} maps for {n} images")
        grid_images, cols, labels, grid_titles = list(images), ncols, row_labels, titles
        image_of = list(range(n))
    fig = image_grid(grid_images, heatmaps=heat, titles=grid_titles, ncols=cols, row_labels=labels, cell=cell,
                     suptitle=suptitle, fontsize=fontsize, heat_cmap=cmap, heat_alpha=alpha)
    if contours is not None:
        if len(contours) != n:
            raise ValueError(f"{len(contours)} contour maps for {n} images")
        for ax, i in zip(fig.axes, image_of):
            rel = _array(contours[i])
            h, w = to_hwc(grid_images[i]).shape[:2]
            # Pixel centres of the relevance map in the image's pixel coordinates.
            xs = (np.arange(rel.shape[1]) + 0.5) * w / rel.shape[1] - 0.5
            ys = (np.arange(rel.shape[0]) + 0.5) * h / rel.shape[0] - 0.5
            if rel.min() < contour_level < rel.max():
                xlim, ylim = ax.get_xlim(), ax.get_ylim()
                ax.contour(xs, ys, rel, levels=[contour_level], colors=contour_colour, linewidths=0.8)
                ax.set_xlim(xlim)
                ax.set_ylim(ylim)
    return fig


# --------------------------------------------------------------------------- paper vs ours


def paper_vs_ours(rows: Iterable[Mapping[str, Any]] | Any, *, direct: bool, baseline: str | None = None,
                  within: Sequence[str] = (), caption: str | None = None, precision: int = 1,
                  styled: bool = True):
    """The paper's reported number beside ours, one row per model (and metric/dataset).

    Args:
        rows: dicts (or a DataFrame) with keys ``model``, ``paper`` and ``ours``
            (numbers in the same unit, e.g. accuracy in %; ``None`` where missing).
            Any other keys (``metric``, ``dataset``, ``profile``, ...) become columns
            between ``model`` and ``paper``, in first-seen order.
        direct: whether the paper's numbers and ours come from the same data under the
            same protocol (the ``paper`` profile on the real datasets; pass
            ``not setup.synthetic``). Then a ``difference`` column (ours − paper) follows.
            In the SynFER profiles a gap between a real dataset and its stand-in
            measures nothing, so there is none: compare gains instead (``baseline``).
        baseline: a ``model`` of ``rows``: adds ``paper gain`` (each row's paper number
            minus the baseline's) and ``our gain`` (the same for ours), the paper's gain
            over its baseline beside ours over ours, which is comparable in every profile.
        within: columns whose values set the groups the gains are taken in (e.g.
            ``("split",)`` when each model has a val and a test row); the baseline must
            have a row in each group.
        caption: what produced the numbers, e.g. ``"demo profile, SynFER raf-like,
            64 px, 3 epochs; paper: RAF-DB"``: shown above the table and kept in
            ``DataFrame.attrs["caption"]``.
        precision: decimals shown.
        styled: return a pandas ``Styler`` (caption, formatting, missing shown as
            "—") or, with ``False``, the plain ``DataFrame``.
    """
    import pandas as pd

    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    if not records:
        raise ValueError("paper_vs_ours needs at least one row")
    missing = [i for i, r in enumerate(records) if not {"model", "paper", "ours"} <= set(r)]
    if missing:
        raise ValueError(f"rows {missing} lack one of the keys 'model', 'paper', 'ours'")
    extra = list(dict.fromkeys(k for r in records for k in r if k not in ("model", "paper", "ours")))
    df = pd.DataFrame.from_records(records, columns=["model", *extra, "paper", "ours"])
    for col in ("paper", "ours"):
        df[col] = pd.to_numeric(df[col], errors="raise").astype(float)
    signed = []
    if direct:
        df["difference"] = df["ours"] - df["paper"]
        signed.append("difference")
    if baseline is not None:
        for col, gain in (("paper", "paper gain"), ("ours", "our gain")):
            df[gain] = df[col] - _baseline_values(df, col, baseline, list(within))
        signed += ["paper gain", "our gain"]
    df.attrs["caption"] = caption
    if not styled:
        return df
    fmt = {c: f"{{:.{precision}f}}" for c in ("paper", "ours")}
    fmt.update({c: f"{{:+.{precision}f}}" for c in signed})
    styler = df.style.format(fmt, na_rep="—").hide(axis="index")
    if caption:
        styler = styler.set_caption(caption).set_table_styles(
            [{"selector": "caption", "props": "caption-side: top; text-align: left; font-style: italic;"}])
    return styler


def _baseline_values(df: Any, col: str, baseline: str, within: list[str]) -> Any:
    """``df[col]`` of the ``baseline`` model's row in each row's ``within`` group, aligned to ``df``."""
    base = df[df["model"] == baseline]
    if base.empty:
        raise ValueError(f"baseline {baseline!r} is not a model of the table: {sorted(set(df['model']))}")
    unknown = [c for c in within if c not in df.columns]
    if unknown:
        raise ValueError(f"within names columns the table lacks: {unknown}")
    if not within:
        if len(base) > 1:
            raise ValueError(f"baseline {baseline!r} has {len(base)} rows: name the columns that tell them "
                             f"apart in within=")
        return float(base[col].iloc[0])
    if base.duplicated(within).any():
        raise ValueError(f"baseline {baseline!r} has several rows in one group of {within}")
    merged = df[within].merge(base[within + [col]], on=within, how="left")
    return merged[col].to_numpy()
