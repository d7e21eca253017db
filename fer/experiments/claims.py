"""The rules that decide what a chapter's prose claims, and the paper arithmetic it quotes.

A page's verdict ("MANet leads the better baseline", "FECN's lead is not reproduced")
and every number it derives from a paper's table live here, as functions the tests
exercise on every branch, multi-seed ones included (the smoke profile runs one seed, so
a branch taken only by the demo's three seeds would otherwise never run in a test).
Notebooks call these and ``glue`` what they return; they hold no comparison of their own.

One rule underlies the seed-based verdicts, :func:`separation`: a difference counts
only when it is further from zero than ``k`` times the noise it is judged against.

:func:`claim_verdict` is the one rule for a paper's central comparisons (issue 17 §3):
a gain measured over seeds, reported as mean ± standard error, and judged ``holds``,
``does not hold`` or ``inconclusive`` by :data:`VERDICT_RULE`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from . import cbam_vgg, manet, mapnet, masked

__all__ = [
    "Verdict",
    "claim_verdict",
    "claim_records",
    "mean_se_text",
    "claims_table",
    "VERDICT_RULE",
    "MIN_GAIN",
    "MIN_SEEDS",
    "VERDICT_Z",
    "Side",
    "separation",
    "seed_sd",
    "share",
    "ratio",
    "cbam_paper_gap",
    "cbam_claims",
    "CBAM_CLAIMS",
    "manet_raf_claims",
    "MANET_CLAIMS",
    "manet_paper_gap",
    "manet_claims",
    "mapnet_paper_step",
    "mapnet_clear_count",
    "mapnet_claims",
    "MAPNET_CLAIMS",
    "masked_shared_verdict",
    "masked_close_verdict",
    "masked_variation_verdict",
    "masked_level_verdict",
    "masked_eyes_verdict",
    "masked_paper_gain",
    "masked_claims",
    "msanet_claims",
    "MSANET_CLAIMS",
    "MASKED_CLAIMS",
    "LEVEL_TOLERANCE",
    "SHARE_TOLERANCE",
    "binomial_se",
]

Side = Literal["above", "below", "within"]


def separation(diff: float, noise: float, *, k: float = 1.0) -> Side:
    """``"above"`` if ``diff > k * noise`` and ``diff > 0``; ``"below"`` if ``diff < -k * noise``
    and ``diff < 0``; otherwise ``"within"`` the noise."""
    if noise < 0 or k < 0:
        raise ValueError(f"noise and k must be >= 0, got noise={noise}, k={k}")
    if diff > k * noise and diff > 0:
        return "above"
    if diff < -k * noise and diff < 0:
        return "below"
    return "within"


def seed_sd(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (``ddof=1``); 0.0 for a single seed."""
    values = np.asarray(values, dtype=float)
    return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def share(counts: Mapping[str, float], key: str) -> float:
    """``counts[key]`` as a fraction of the total."""
    total = float(sum(counts.values()))
    if total <= 0:
        raise ValueError("counts sum to zero")
    return float(counts[key]) / total


def ratio(a: float, b: float) -> float:
    """``a / b``, refusing a zero denominator."""
    if b == 0:
        raise ZeroDivisionError("ratio with a zero denominator")
    return float(a) / float(b)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` (fraction) measured on ``n`` test images."""
    if not 0 <= p <= 1 or n <= 0:
        raise ValueError(f"need 0 <= p <= 1 and n > 0, got p={p}, n={n}")
    return math.sqrt(p * (1 - p) / n)


# =========================================================================== central claims

#: Standard errors on each side of a gain's mean that the verdict asks for (about a 95%
#: interval for a normal mean; with 3 seeds a t-interval would be wider: 2 SE is the
#: stated rule, not a significance test).
VERDICT_Z: float = 2.0
#: The smallest gain, in accuracy points, worth a claim: a gain shown to be below it
#: means the claim does not hold.
MIN_GAIN: float = 1.0
#: Fewer seeds than this give no verdict (the standard error of 2 seeds is itself too noisy).
MIN_SEEDS: int = 3
#: The rule as a page states it.
VERDICT_RULE: str = (
    f"A claimed gain is measured over at least {MIN_SEEDS} seeds and reported as mean ± standard error (SE). "
    f"It **holds** when the mean minus {VERDICT_Z:g} SE is above 0. Otherwise it **does not hold** when the mean "
    f"plus {VERDICT_Z:g} SE is below {MIN_GAIN:g} point (any gain is smaller than that, or it goes the other "
    f"way), and it is **inconclusive** when neither is shown.")

Outcome = Literal["holds", "does not hold", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """One claimed gain over seeds: its mean, standard error, seeds and :func:`claim_verdict`'s outcome."""

    claim: str
    gain: float
    se: float
    seeds: int
    paired: bool
    verdict: Outcome

    @property
    def interval(self) -> tuple[float, float]:
        """``gain ∓ VERDICT_Z * se``: what the verdict judges."""
        return self.gain - VERDICT_Z * self.se, self.gain + VERDICT_Z * self.se

    def text(self, unit: str = " points") -> str:
        """E.g. ``"+2.1 ± 0.6 points (SE, 3 seeds)"``."""
        return f"{self.gain:+.1f} ± {self.se:.1f}{unit} (SE, {self.seeds} seeds)"


def claim_verdict(a: Sequence[float], b: Sequence[float] | None = None, *, claim: str = "", paired: bool = True,
                  min_gain: float = MIN_GAIN) -> Verdict:
    """Judge the claim "``a`` is higher than ``b``" by :data:`VERDICT_RULE`.

    Args:
        a, b: one number per seed (accuracy in points, or any score where higher is what
            the paper claims; pass the drops the other way round for "drops less").
            Without ``b``, ``a`` holds the per-seed gains themselves.
        claim: the claim in words (kept on the result).
        paired: ``a[i]`` and ``b[i]`` come from the same seed (same data draw and
            initialisation): the gain's SE is that of the per-seed differences. ``False``:
            Welch's SE of a difference of two means (``a`` and ``b`` may differ in length).
        min_gain: the smallest gain worth the claim, in the same unit.

    Fewer than :data:`MIN_SEEDS` gains (or seeds on either side) give ``inconclusive``.
    """
    a_ = np.asarray(a, dtype=float)
    if b is None:
        gains, paired = a_, True
        n = gains.size
        gain = float(gains.mean()) if n else float("nan")
        se = float(gains.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    else:
        b_ = np.asarray(b, dtype=float)
        if paired:
            if a_.shape != b_.shape:
                raise ValueError(f"paired gains need one b per a (same seeds), got {a_.size} and {b_.size}")
            return claim_verdict(a_ - b_, claim=claim, min_gain=min_gain)
        n = min(a_.size, b_.size)
        gain = float(a_.mean() - b_.mean()) if n else float("nan")
        se = (float(math.sqrt(a_.var(ddof=1) / a_.size + b_.var(ddof=1) / b_.size)) if n > 1 else float("nan"))
    if not np.all(np.isfinite(a_)) or (b is not None and not np.all(np.isfinite(np.asarray(b, dtype=float)))):
        raise ValueError(f"claim {claim!r}: every seed needs a finite number, got a={list(a)}, "
                         f"b={[] if b is None else list(b)}")
    if n < MIN_SEEDS:
        outcome: Outcome = "inconclusive"
    elif gain - VERDICT_Z * se > 0:
        outcome = "holds"
    elif gain + VERDICT_Z * se < min_gain:
        outcome = "does not hold"
    else:
        outcome = "inconclusive"
    return Verdict(claim, gain, se, int(n), paired, outcome)


def claim_records(claims: Sequence[Mapping[str, Any]], *, paper: str) -> list[dict[str, Any]]:
    """JSON records of a page's tested claims: ``paper``, ``claim``, ``paper_value`` (the
    paper's number for it, ``None`` where it gives none), ``unit``, and the
    :class:`fer.experiments.claims.Verdict`'s ``gain``, ``se``, ``seeds`` and ``verdict``.

    Each of ``claims`` is a mapping with ``verdict`` (a ``Verdict``), and optionally
    ``paper`` (the paper's number) and ``unit`` (default ``" points"``).
    """
    out = []
    for c in claims:
        v = c["verdict"]
        out.append({"paper": paper, "claim": v.claim, "paper_value": c.get("paper"), "unit": c.get("unit", " points"),
                    "gain": v.gain, "se": v.se, "seeds": v.seeds, "verdict": v.verdict, "rule": VERDICT_RULE})
    return out


def mean_se_text(gain: float, se: float, unit: str = " points") -> str:
    """``gain`` ± ``se`` as the tables print it; with one seed there is no SE, and it says so."""
    if not math.isfinite(se):
        return f"{gain:+.1f}{unit} (one seed: no SE)"
    return f"{gain:+.1f} ± {se:.1f}{unit}"


def claims_table(claims: Sequence[Mapping[str, Any]], *, paper: str) -> Any:
    """A page's tested claims as a table, with the rule that judged them.

    ``claims`` as for :func:`claim_records`. Returns an :class:`IPython.display.HTML`
    table (claim, the paper's number, ours as mean ± SE, seeds, verdict) followed by
    :data:`fer.experiments.claims.VERDICT_RULE`. The table's ``data-fer-claims``
    attribute carries :func:`claim_records`, from which the book runner builds the
    summary page of every claim the book tests (:func:`fer.book.page_claims`).
    """
    from html import escape

    from IPython.display import HTML

    records = claim_records(claims, paper=paper)

    def num(v: Any, unit: str) -> str:
        return "—" if v is None else f"{v:+.1f}{unit}"

    def ours(r: Mapping[str, Any]) -> str:
        return mean_se_text(r["gain"], r["se"], r["unit"])

    body = "\n".join(
        f"<tr><td>{escape(r['claim'])}</td><td>{escape(num(r['paper_value'], r['unit']))}</td>"
        f"<td>{escape(ours(r))}</td><td>{r['seeds']}</td><td><strong>{escape(r['verdict'])}</strong></td></tr>"
        for r in records)
    rule = escape(VERDICT_RULE).replace("**", "")
    return HTML(f"<table class=\"fer-claims\" data-fer-claims='{escape(json.dumps(records))}'>\n"
                f"<thead><tr><th>claim ({escape(paper)})</th><th>paper</th><th>ours (mean ± SE)</th><th>seeds</th>"
                f"<th>verdict</th></tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n<p><em>{rule}</em></p>")


# =========================================================================== VGG16 + CBAM


#: The VGG16 + CBAM paper's central claim (Figure 7): (better row, baseline row, split, metric).
CBAM_CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("cbam", "g", "test", "accuracy"), ("cbam", "g", "val", "accuracy"), ("cbam", "g", "test", "mean_class_accuracy"))


def cbam_claims(acc: Mapping[tuple[str, str], Mapping[str, Mapping[int, float]]]) -> list[dict[str, Any]]:
    """CBAM against row (g) (:data:`CBAM_CLAIMS`), each judged by :func:`claim_verdict` on the
    seeds both rows ran (paired). ``acc``: ``(split, metric)`` -> row -> seed -> value in %
    (:func:`fer.experiments.cbam_vgg.accuracy_by_seed`). The paper reports accuracy only, so
    the mean per-class accuracy claim carries no paper number. Rows for :func:`claims_table`.
    """
    names = {"accuracy": "accuracy", "mean_class_accuracy": "mean per-class accuracy"}
    where = {"test": "test (FER2013 PrivateTest)", "val": "validation (FER2013 PublicTest)"}
    out = []
    for better, worse, split, metric in CBAM_CLAIMS:
        out += _paired_claims(
            acc.get((split, metric)) or {}, [(better, worse)],
            claim=lambda b, w: f"CBAM raises {names[metric]} over VGG16 + GAP (row g), {where[split]}",
            paper=lambda b, w: cbam_paper_gap(b, w, split) if metric == "accuracy" else None)
    return out


def cbam_paper_gap(better: str, worse: str, split: str = "val") -> float:
    """Figure 7: row ``better`` minus row ``worse`` (keys such as ``"g"``, ``"f"``, ``"cbam"``), in points."""
    rows = {r.key: r for r in cbam_vgg.FIGURE7}
    unknown = {better, worse} - set(rows)
    if unknown:
        raise KeyError(f"Figure 7 has no row {sorted(unknown)}; rows: {sorted(rows)}")
    return float(getattr(rows[better], split)) - float(getattr(rows[worse], split))


# =========================================================================== MANet

#: MANet's central claims from Table 3 (pre-trained column): (better, baseline) keys of
#: :data:`fer.experiments.manet.MODELS`.
MANET_CLAIMS: tuple[tuple[str, str], ...] = (("ours", "vgg"), ("ours", "se"))


def manet_raf_claims(acc: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """Table 3's claims on the RAF-DB stand-in (:data:`MANET_CLAIMS`): MANet, pre-trained,
    beats each baseline, judged by :func:`claim_verdict` on the seeds both rows ran (paired).
    ``acc``: key (``"ours"``, ``"se"``, ``"vgg"``) -> seed -> test accuracy in %. Rows for
    :func:`claims_table`."""
    return _paired_claims(acc, MANET_CLAIMS, paper=manet_paper_gap, claim=lambda better, worse: (
        f"{manet.MODEL_LABELS[better]} beats {manet.MODEL_LABELS[worse]} on RAF-DB (pre-trained)"))


def manet_paper_gap(better: str, worse: str, table: str = "raf") -> float:
    """The paper's accuracy of ``better`` minus ``worse`` (``"ours"``, ``"se"``, ``"vgg"``) in points:
    Table 3 (RAF-DB, pretrained column) or Table 5 (CK+)."""
    rows = {r.key: r.pretrained for r in (manet.TABLE3 if table == "raf" else manet.TABLE5)}
    return float(rows[better]) - float(rows[worse])


def manet_claims(raf_acc: Mapping[str, Mapping[int, float]], ck_acc: Mapping[str, float], ck_sd: float,
                 iou_mean: float, q_change: float, raf_loc: Mapping[str, float], ck_loc: Mapping[str, float],
                 *, ck_folds: int = 2) -> list[dict[str, Any]]:
    """The visualisation page's closing table: each claim, the paper's number, ours, and whether it holds.

    ``raf_acc``: test accuracy % per key (``ours``, ``se``, ``vgg``) and seed, pre-trained: the
    RAF-DB rows are :func:`manet_raf_claims` (``ours`` is the mean gain over the seeds; ``holds``
    is ``"yes"`` / ``"no"`` for its verdict ``holds`` / ``does not hold``, else
    ``"inconclusive"``). ``ck_acc``: mean accuracy % per key; ``ck_sd``: the largest
    fold-to-fold standard deviation; ``raf_loc`` / ``ck_loc``: Grad-CAM energy on the evidence
    per key; ``ck_folds``: how many folds ``ck_acc`` averages (one fold has no spread, so its
    first CK+ row is ``"not judged"``; none, with empty ``ck_acc`` and ``ck_loc``, makes every CK+
    row ``"not measured"``). The other rows' ``holds`` is ``"yes"`` / ``"no"``, or ``"—"`` where the
    paper has only pictures.
    """
    def holds(ok: bool) -> str:
        return "yes" if ok else "no"

    raf = {c["pair"]: c["verdict"] for c in manet_raf_claims(raf_acc)}

    def raf_row(worse: str) -> dict[str, Any]:
        v = raf[("ours", worse)]
        return {"claim": f"RAF-DB: MANet beats {manet.MODEL_LABELS[worse]} (points, mean of {v.seeds} seeds)",
                "paper": manet_paper_gap("ours", worse), "ours": v.gain,
                "holds": {"holds": "yes", "does not hold": "no"}.get(v.verdict, v.verdict)}

    ck = ck_folds > 0 and bool(ck_acc)
    ck_gain = ck_acc["ours"] - max(ck_acc["se"], ck_acc["vgg"]) if ck else None
    ck_first = ("not measured" if not ck else "not judged" if ck_folds < 2
                else holds(separation(ck_gain, ck_sd) == "above"))
    return [
        raf_row("vgg"),
        raf_row("se"),
        {"claim": "CK+: MANet beats the better baseline by more than the fold spread (points)",
         "paper": manet_paper_gap("ours", "se", "ck"), "ours": ck_gain, "holds": ck_first},
        {"claim": "CK+: VGG+SE beats VGG fine-tuning (points)", "paper": manet_paper_gap("se", "vgg", "ck"),
         "ours": ck_acc["se"] - ck_acc["vgg"] if ck else None,
         "holds": holds(ck_acc["se"] > ck_acc["vgg"]) if ck else "not measured"},
        {"claim": "RASnet locates the regions (mean IoU)", "paper": None, "ours": iou_mean, "holds": "—"},
        {"claim": "region weights adapt to the expression (largest change of a mean q_r)", "paper": None,
         "ours": q_change, "holds": "—"},
        {"claim": "MANet's Grad-CAM sits on expression regions more than the baselines' (RAF-DB stand-in)",
         "paper": None, "ours": raf_loc["ours"] - max(raf_loc["vgg"], raf_loc["se"]),
         "holds": holds(max(raf_loc, key=raf_loc.get) == "ours")},
        {"claim": "the same on the CK+ stand-in", "paper": None,
         "ours": ck_loc["ours"] - max(ck_loc["vgg"], ck_loc["se"]) if ck and ck_loc else None,
         "holds": holds(max(ck_loc, key=ck_loc.get) == "ours") if ck and ck_loc else "not measured"},
    ]


# =========================================================================== MAPNet

_TABLE2_COLUMNS = ("RAF-DB", "AffectNet", "FED-RO")


def mapnet_paper_step(frm: str, to: str, column: str = "RAF-DB") -> float:
    """Table 2: row ``to`` minus row ``frm`` (``"baseline"``, ``"ps"``, ``"mam"``, ``"wcl"``) in one column."""
    if column not in _TABLE2_COLUMNS:
        raise KeyError(f"Table 2 has no column {column!r}; columns: {_TABLE2_COLUMNS}")
    i = _TABLE2_COLUMNS.index(column)
    return mapnet.TABLE2[to][i] - mapnet.TABLE2[frm][i]


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[float], list[float]]:
    """``a`` and ``b`` (seed -> number) on the seeds both have, in seed order."""
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _paired_claims(acc: Mapping[str, Mapping[int, float]], pairs: Sequence[tuple[str, str]], *,
                   claim: Callable[[str, str], str], paper: Callable[[str, str], float | None]
                   ) -> list[dict[str, Any]]:
    """"``better`` beats ``worse``" for each pair of ``pairs`` that ``acc`` (row -> seed ->
    number) has both rows of, judged by :func:`claim_verdict` on the seeds both ran (paired).
    Rows for :func:`claims_table`, with the ``pair`` they judge."""
    out = []
    for better, worse in pairs:
        if better not in acc or worse not in acc:
            continue
        a, b = _paired(acc[better], acc[worse])
        text = claim(better, worse)
        out.append({"claim": text, "pair": (better, worse), "paper": paper(better, worse),
                    "verdict": claim_verdict(a, b, claim=text)})
    return out


#: MAPNet's central claims from Table 2: (from row, to row, test set column).
MAPNET_CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("baseline", "ps", "RAF-DB"), ("ps", "mam", "RAF-DB"), ("mam", "wcl", "RAF-DB"),
    ("baseline", "wcl", "RAF-DB"), ("baseline", "wcl", "FED-RO"))


def mapnet_claims(acc: Mapping[str, Mapping[int, float]], occluded: Mapping[str, Mapping[int, float]]
                  ) -> list[dict[str, Any]]:
    """MAPNet's Table 2 claims (:data:`MAPNET_CLAIMS`), each judged by :func:`claim_verdict` on
    the seeds both rows ran (paired): every step on RAF-DB, and baseline to MAPNet on RAF-DB
    and on occluded faces (FED-RO's column; ``occluded`` holds the accuracies on its
    stand-in). ``acc`` / ``occluded``: row (``"baseline"``, ``"ps"``, ``"mam"``, ``"wcl"``)
    -> seed -> accuracy in %. Rows for :func:`claims_table`.
    """
    out = []
    for frm, to, column in MAPNET_CLAIMS:
        where = "on RAF-DB" if column == "RAF-DB" else "on occluded faces (FED-RO)"
        out += _paired_claims(
            acc if column == "RAF-DB" else occluded, [(to, frm)],
            claim=lambda better, worse: f"{mapnet.TABLE2_LABELS[better]} beats {mapnet.TABLE2_LABELS[worse]} {where}",
            paper=lambda better, worse: mapnet_paper_step(worse, better, column))
    return out


def mapnet_clear_count(steps: Any) -> tuple[int, int]:
    """How many of the ablation steps (rows of :func:`fer.experiments.mapnet.step_effects`) are clear of noise."""
    flags = [bool(v) for v in steps["clear of noise"]]
    return sum(flags), len(flags)


# =========================================================================== masked FER


def masked_shared_verdict(diff: float, diff_ft: float, spread: float, n_seeds: int) -> str:
    """The shared-extractor page: sharing a frozen (``diff``) or fine-tuned (``diff_ft``) extractor
    against two networks, judged against twice the largest seed spread."""
    if n_seeds < 2:
        return "With a single seed there is no spread to judge these differences by."
    if separation(diff, spread, k=2) == "below":
        return ("Sharing a frozen extractor costs accuracy here: an extractor that only learned to spot masks on "
                "a few hundred faces carries less about expressions than FECN's own.")
    if separation(diff, spread, k=2) == "within" and separation(diff_ft, spread, k=2) == "within":
        return "Neither difference is larger than twice the spread between seeds: sharing costs no clear accuracy here."
    return "The differences are larger than twice the spread between seeds."


def masked_close_verdict(gain: float, noise: float, n_seeds: int) -> str:
    """FECN against VGG11 (Table 3's claim), judged against twice the largest seed spread."""
    if n_seeds < 2:
        return "With a single seed there is no spread to judge FECN against VGG11"
    return {"above": "FECN's lead over VGG11 is reproduced on SynFER",
            "below": "FECN's lead over VGG11 is not reproduced on SynFER at this scale",
            "within": "FECN and VGG11 are not clearly apart on SynFER at this scale"}[separation(gain, noise, k=2)]


def masked_variation_verdict(eta_mcn: float, eta_abn: float) -> str:
    """Figure 5's claim that the MCN's maps depend less on the expression than the ABN's
    (between-class shares of map variation)."""
    if eta_mcn < 0.5 * eta_abn:
        return "holds here: the MCN's maps depend clearly less on the expression than the ABN's"
    if eta_mcn < eta_abn:
        return "holds only weakly here: the two are close"
    return "does not hold here: the MCN's maps depend on the expression as much as the ABN's, or more"


#: Differences in the map's mean level, and in attention shares, smaller than these are "about the same".
LEVEL_TOLERANCE = 0.05
SHARE_TOLERANCE = 0.02


def masked_level_verdict(level_gap: float) -> str:
    """Figure 5 (b): the MCN's map level on masked minus unmasked faces."""
    return {"above": "lower, as the paper says",
            "below": "not lower: the paper's (b) is not reproduced",
            "within": "about the same: the paper's (b) is not reproduced"}[separation(level_gap, LEVEL_TOLERANCE)]


def masked_eyes_verdict(eyes_gap: float) -> str:
    """Attention on the eyes and brows against a uniform map's share: more than / less than / about."""
    return {"above": "more than", "below": "less than", "within": "about"}[separation(eyes_gap, SHARE_TOLERANCE)]


def masked_paper_gain(better: str = "fecn", worse: str = "vgg11") -> float:
    """Table 3's total accuracy of ``better`` minus ``worse``, in points."""
    return masked.TABLE3[better]["total"] - masked.TABLE3[worse]["total"]


#: The masked-FER paper's central claims from Table 3: (better, worse) networks.
MASKED_CLAIMS: tuple[tuple[str, str], ...] = (("fecn", "vgg11"), ("fecn", "abn"))
_MASKED_NAMES = {"fecn": "FECN", "vgg11": "VGG11", "abn": "ABN"}


def masked_claims(acc: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """FECN against VGG11 and against the ABN on masked faces (:data:`MASKED_CLAIMS`), each
    judged by :func:`claim_verdict` on the seeds both ran (paired: same seed, same data).
    ``acc``: network key (``"vgg11"``, ``"abn"``, ``"fecn"``) -> seed -> test accuracy in %.
    Rows for :func:`claims_table`.
    """
    return _paired_claims(acc, MASKED_CLAIMS, paper=masked_paper_gain, claim=lambda better, worse: (
        f"{_MASKED_NAMES[better]} beats {_MASKED_NAMES[worse]} on masked faces"))



# =========================================================================== page-wide helpers (issue 14)


def optimiser_phrase(used: str, paper: str) -> str:
    """How a page names the optimiser its runs used, against the paper's (``"sgd"`` / ``"adam"``)."""
    names = {"sgd": "SGD with momentum", "adam": "Adam"}
    u, p = names.get(used.lower(), used), names.get(paper.lower(), paper)
    return f"{u}, as in the paper" if used.lower() == paper.lower() else f"{u} where the paper uses {p}"


def cbam_params_verdict(added: int, claim: int) -> str:
    """The paper's "66K extra parameters": ``"holds"`` when ``added`` rounds to ``claim`` in thousands."""
    return "holds" if round(added / 1000) == round(claim / 1000) else "does not hold"


# =========================================================================== MSA-Net


def msanet_plateau_count(mean_class_accuracy: Sequence[float], n_classes: int, *, margin: float = 1.0) -> int:
    """Runs that did not leave the majority-class plateau: mean class accuracy (in %) within
    ``margin`` points of chance (``100 / n_classes``)."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    chance = 100.0 / n_classes
    return int(sum(1 for v in mean_class_accuracy if float(v) < chance + margin))


def msanet_erf_ordered(radius_by_kernel: Mapping[int, float]) -> str:
    """The paper's "larger kernels see further": ``"yes"`` when the branches' receptive-field radii
    do not shrink as the kernel grows (``{7: r7, 5: r5, 3: r3}``), else ``"no"``."""
    radii = [float(radius_by_kernel[k]) for k in sorted(radius_by_kernel, reverse=True)]
    return "yes" if all(a >= b for a, b in zip(radii, radii[1:])) else "no"


def msanet_paper_steps() -> dict[tuple[str, str], float | None]:
    """The paper's step gains in points per ``(step, column)``: MS - baseline and AS - MS from Table 3,
    MSA-Net - AS with the full network's Tables 1 and 2 (``None`` where the paper has no number)."""
    from . import msanet

    out: dict[tuple[str, str], float | None] = {}
    for col in msanet.TABLE3_COLUMNS:
        out[("MS - baseline", col)] = msanet.TABLE3["ms"][col] - msanet.TABLE3["baseline"][col]
        out[("AS - MS", col)] = msanet.TABLE3["as"][col] - msanet.TABLE3["ms"][col]
        full = msanet.PROPOSED.get(col, {}).get("accuracy")
        out[("MSA-Net - AS", col)] = None if full is None else full - msanet.TABLE3["as"][col]
    return out


#: MSA-Net's central claims: (better row, worse row, column) of its ablation, where columns are
#: ``raf`` and the AffectNet test faces with |yaw| >= 30 / 45 degrees (``pose30``, ``pose45``).
#: The pose claims are Table 3's (attention against the baseline on turned faces): the paper
#: gives the full network no pose numbers.
MSANET_CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("ms", "baseline", "raf"), ("as", "ms", "raf"), ("full", "as", "raf"),
    ("as", "baseline", "pose30"), ("as", "baseline", "pose45"))
_MSANET_NAMES = {"baseline": "the baseline", "ms": "MS", "as": "AS", "full": "MSA-Net"}
_MSANET_WHERE = {"raf": "on RAF-DB", "affectnet": "on AffectNet", "pose30": "on faces with |yaw| >= 30 ({})",
                 "pose45": "on faces with |yaw| >= 45 ({})"}
#: What the MSA-Net pose columns are made of, per kind of profile (:func:`msanet_claims`).
MSANET_POSE_DATA = {"paper": "AffectNet", "synfer": "SynFER wild, turned"}


def _msanet_paper_value(row: str, column: str) -> float | None:
    from . import msanet

    if row == "full":
        return msanet.PROPOSED.get(column, {}).get("accuracy")
    return msanet.TABLE3[row].get(column)


def msanet_claims(frame: Any, *, pose_data: str = MSANET_POSE_DATA["paper"]) -> list[dict[str, Any]]:
    """MSA-Net's ablation and pose claims (:data:`MSANET_CLAIMS`), each judged by
    :func:`claim_verdict` on the seeds both rows ran (paired).

    ``frame``: :func:`fer.experiments.msanet.ablation_frame` (columns ``row``, ``column``,
    ``seed``, ``accuracy`` in %), with the SynFER profiles' pose columns from
    :func:`fer.experiments.probes.msanet_pose`; ``pose_data`` names what the pose columns
    were scored on (:data:`MSANET_POSE_DATA`). The paper's number is its Table 3 step (Tables
    1 and 2 for the full network). Rows for :func:`claims_table`.
    """
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for rec in frame[["row", "column", "seed", "accuracy"]].itertuples(index=False):
        acc.setdefault((rec.row, rec.column), {})[int(rec.seed)] = float(rec.accuracy)
    out = []
    for better, worse, column in MSANET_CLAIMS:
        if (better, column) not in acc or (worse, column) not in acc:
            continue
        a, b = _paired(acc[(better, column)], acc[(worse, column)])
        hi, lo = _msanet_paper_value(better, column), _msanet_paper_value(worse, column)
        claim = f"{_MSANET_NAMES[better]} beats {_MSANET_NAMES[worse]} {_MSANET_WHERE[column].format(pose_data)}"
        out.append({"claim": claim, "paper": None if hi is None or lo is None else hi - lo,
                    "verdict": claim_verdict(a, b, claim=claim)})
    return out


# =========================================================================== masked FER, stage 2


def masked_gain_phrase(gain: float, noise: float, n_seeds: int) -> str:
    """Stage 2's reading of FECN minus VGG11 against twice the largest seed spread."""
    if n_seeds < 2:
        return "a single seed gives no spread to judge it by"
    if separation(gain, noise, k=2) == "within":
        return "within about twice the spread between seeds, so not a clear difference"
    return "more than twice the spread between seeds"


def masked_figure7_swapped() -> bool:
    """Whether Figure 7's "(a) VGG" diagonal is Table 3's FECN row (the captions look swapped)."""
    diag = np.diag(masked.paper_confusion("(a) VGG")) * 100
    return bool(np.allclose(diag, [masked.TABLE3["fecn"][c] for c in masked.PAPER_CLASSES]))


# =========================================================================== MANet and MAPNet pages (issue 14)

__all__ += [
    "manet_paper_accuracy",
    "manet_paper_diagonal",
    "manet_ck_verdict",
    "manet_q_verdict",
    "Q_ADAPT_TOLERANCE",
    "manet_loc_verdict",
    "one_class_note",
    "mapnet_paper_accuracy",
    "mapnet_steps_verdict",
    "mapnet_sweep_verdict",
]


def manet_paper_accuracy(key: str, table: str = "raf", pretrained: bool = True) -> float:
    """The paper's accuracy (%) of row ``key`` (``"ours"``, ``"se"``, ``"vgg"``, ...): Table 3
    (``table="raf"``; ``pretrained=False`` reads its from-scratch column) or Table 5 (``"ck"``)."""
    rows = {r.key: r for r in (manet.TABLE3 if table == "raf" else manet.TABLE5)}
    if key not in rows:
        raise KeyError(f"MANet's table {table!r} has no row {key!r}; rows: {sorted(rows)}")
    value = rows[key].pretrained if pretrained else rows[key].scratch
    if value is None:
        raise KeyError(f"MANet's table {table!r}, row {key!r} has no {'pre-trained' if pretrained else 'scratch'} "
                       "number")
    return float(value)


def manet_paper_diagonal(table: str = "4") -> dict[str, float]:
    """The diagonal (% of each true class recognised) of Table 4 (RAF-DB) or Table 6 (CK+), by class name."""
    order, rows = (manet.TABLE4_ORDER, manet.TABLE4) if table == "4" else (manet.TABLE6_ORDER, manet.TABLE6)
    return {c: float(rows[i][i]) for i, c in enumerate(order)}


_MANET_CK_VERDICTS = {
    "above": "consistent with the paper's ordering",
    "below": "below the better baseline by more than the fold-to-fold spread, the opposite of the paper's result",
    "within": "within the fold-to-fold spread: the stand-in does not show the paper's gain",
}


#: With one fold there is no fold-to-fold spread (its SD reads 0): no verdict either way.
_MANET_CK_ONE_FOLD = "not judged: one fold has no fold-to-fold spread to measure the gain against"


def manet_ck_verdict(acc: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Table 5's claims on the CK+ stand-in: MANet against the better baseline, and VGG+SE against VGG.

    ``acc`` maps ``"ours"``, ``"se"``, ``"vgg"`` to accuracies in % over folds. The gain is MANet's
    mean minus the better baseline's; the noise the largest fold-to-fold standard deviation.
    Returns ``gain``, ``sd``, ``verdict`` and ``se_vs_vgg`` (``"above"`` / ``"not above"``).
    """
    means = {k: float(np.mean(v)) for k, v in acc.items()}
    gain = means["ours"] - max(means["vgg"], means["se"])
    sd = max(seed_sd(v) for v in acc.values())
    folds = min(len(v) for v in acc.values())
    verdict = _MANET_CK_VERDICTS[separation(gain, sd)] if folds > 1 else _MANET_CK_ONE_FOLD
    return {"gain": gain, "sd": sd, "verdict": verdict,
            "se_vs_vgg": "above" if means["se"] > means["vgg"] else "not above"}


#: A region weight ``q_r`` that changes by less than this between expressions is "nearly fixed".
Q_ADAPT_TOLERANCE = 0.02


def manet_q_verdict(q_change: float) -> str:
    """The ERSnet page: does the weight branch adapt the fusion to the expression?

    ``q_change``: the largest change of a region's mean weight ``q_r`` from one expression to another.
    """
    if q_change < Q_ADAPT_TOLERANCE:
        return ("So on SynFER at this scale the weight branch learns a nearly fixed mixture of the regions "
                "rather than a per-expression choice: the paper's claim that it adapts the fusion to “different "
                "expressions and individuals” is not visible here.")
    return ("The weights do shift between expressions, in line with the paper's claim that the fusion adapts to "
            "“different expressions and individuals”; whether the shifts follow the expressions' action units is "
            "for the reader to judge from the heat map.")


def manet_loc_verdict(loc: Mapping[str, float], ours: str) -> str:
    """The visualisation page: whose Grad-CAM sits most on the evidence (``loc``: model -> energy share)."""
    best = max(loc, key=loc.get)
    if best == ours:
        return "MANet's maps sit on the evidence more than the baselines'"
    return f"{best}'s maps, not MANet's, sit most on the evidence"


def one_class_note(confusion: Any, classes: Sequence[str], model: str = "MANet") -> str:
    """Whether a model left the majority-class plateau, from its confusion matrix (rows true,
    columns predicted): a note for the page either way."""
    predicted = np.asarray(confusion).sum(0)
    if int((predicted > 0).sum()) == 1:
        return (f"Our {model} predicts {classes[int(predicted.argmax())]} for every test face here (it has not "
                f"left the majority class at this scale), so its matrix is a single column and the comparison "
                f"below says nothing about which expressions it confuses.")
    return f"Our {model} predicts several classes here, so its errors can be compared with the paper's."


def mapnet_paper_accuracy(row: str, column: str = "RAF-DB", table: str = "2") -> float:
    """The paper's accuracy (%): Table 2 row ``row`` (``"baseline"``, ``"ps"``, ``"mam"``, ``"wcl"``)
    or, with ``table="1"``, Table 1's method ``row`` (``"MAPNet"``, ``"RAN"``, ...), in ``column``."""
    if column not in _TABLE2_COLUMNS:
        raise KeyError(f"MAPNet's tables have no column {column!r}; columns: {_TABLE2_COLUMNS}")
    rows = dict(mapnet.TABLE2) if table == "2" else {r[0]: r[1:] for r in mapnet.TABLE1}
    if row not in rows:
        raise KeyError(f"MAPNet's Table {table} has no row {row!r}; rows: {sorted(rows)}")
    value = rows[row][_TABLE2_COLUMNS.index(column)]
    if value is None:
        raise KeyError(f"MAPNet's Table {table} gives no {column} accuracy for {row!r}")
    return float(value)


def mapnet_steps_verdict(steps: Any) -> str:
    """The ablation's closing note: which of Table 2's steps (all gains in the paper) this profile shows.

    ``steps``: rows of :func:`fer.experiments.mapnet.step_effects` (``"clear of noise"``,
    ``"ours mean (points)"``). A step is shown when it is clear of the noise and positive.
    """
    clear = [bool(c) for c in steps["clear of noise"]]
    means = [float(m) for m in steps["ours mean (points)"]]
    up = sum(c and m > 0 for c, m in zip(clear, means))
    down = sum(c and m < 0 for c, m in zip(clear, means))
    if up == 0 and down == 0:
        return "SynFER at this scale does not show the paper's step-by-step gains"
    text = f"SynFER at this scale shows {up} of the {len(clear)} step-by-step gains clear of the noise"
    if down:
        text += f", and {down} step(s) clear of the noise go the other way"
    return text


def mapnet_sweep_verdict(span: float, sd: float, n_seeds: int) -> str:
    """Figure 6's sweeps: is the span of a sweep's mean accuracies (points) well above the
    seed-to-seed standard deviation ``sd`` of the ablation rows (more than twice it)?"""
    if n_seeds < 2:
        return "with a single seed there is no seed-to-seed spread to judge it by"
    if separation(span, sd, k=2) == "above":
        return "more than twice the seed-to-seed standard deviation"
    return "within the noise"
