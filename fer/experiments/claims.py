"""The rules that decide what a chapter's prose claims, and the paper arithmetic it quotes.

A page's verdict ("MANet leads the better baseline", "FECN's lead is not reproduced")
and every number it derives from a paper's table live here, as functions the tests
exercise on every branch, multi-seed ones included (the smoke profile runs one seed, so
a branch taken only by the demo's three seeds would otherwise never run in a test).
Notebooks call these and ``glue`` what they return; they hold no comparison of their own.

One rule underlies the seed-based verdicts, :func:`separation`: a difference counts
only when it is further from zero than ``k`` times the noise it is judged against.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from . import cbam_vgg, manet, mapnet, masked

__all__ = [
    "Side",
    "separation",
    "seed_sd",
    "share",
    "ratio",
    "cbam_paper_gap",
    "manet_raf_verdict",
    "manet_paper_gap",
    "manet_claims",
    "mapnet_paper_step",
    "mapnet_clear_count",
    "masked_shared_verdict",
    "masked_close_verdict",
    "masked_variation_verdict",
    "masked_level_verdict",
    "masked_eyes_verdict",
    "masked_paper_gain",
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


# =========================================================================== VGG16 + CBAM


def cbam_paper_gap(better: str, worse: str, split: str = "val") -> float:
    """Figure 7: row ``better`` minus row ``worse`` (keys such as ``"g"``, ``"f"``, ``"cbam"``), in points."""
    rows = {r.key: r for r in cbam_vgg.FIGURE7}
    unknown = {better, worse} - set(rows)
    if unknown:
        raise KeyError(f"Figure 7 has no row {sorted(unknown)}; rows: {sorted(rows)}")
    return float(getattr(rows[better], split)) - float(getattr(rows[worse], split))


# =========================================================================== MANet

_MANET_VERDICTS = {
    "above": "MANet leads the better baseline, as in the paper",
    "below": ("MANet trails the better baseline, the opposite of the paper's result: SynFER at this scale "
              "does not show the paper's gain"),
    "within": "the difference is within the seed-to-seed spread: SynFER at this scale does not show the paper's gain",
}


def manet_raf_verdict(acc: Mapping[Any, Sequence[float]]) -> dict[str, Any]:
    """Table 3's claim on the RAF-DB stand-in: MANet against the better of its two baselines.

    ``acc`` maps ``(key, pretrained)`` (keys ``"ours"``, ``"vgg"``, ``"se"``) to accuracies in
    % over seeds. The gain is MANet's mean minus the better baseline's mean; the noise is
    the largest seed standard deviation among all the rows given. Returns ``gain``, ``sd``
    and ``verdict``.
    """
    means = {k: float(np.mean(v)) for k, v in acc.items()}
    gain = means[("ours", True)] - max(means[("vgg", True)], means[("se", True)])
    sd = max(seed_sd(v) for v in acc.values())
    return {"gain": gain, "sd": sd, "verdict": _MANET_VERDICTS[separation(gain, sd)]}


def manet_paper_gap(better: str, worse: str, table: str = "raf") -> float:
    """The paper's accuracy of ``better`` minus ``worse`` (``"ours"``, ``"se"``, ``"vgg"``) in points:
    Table 3 (RAF-DB, pretrained column) or Table 5 (CK+)."""
    rows = {r.key: r.pretrained for r in (manet.TABLE3 if table == "raf" else manet.TABLE5)}
    return float(rows[better]) - float(rows[worse])


def manet_claims(raf_acc: Mapping[str, float], ck_acc: Mapping[str, float], ck_sd: float, iou_mean: float,
                 q_change: float, raf_loc: Mapping[str, float], ck_loc: Mapping[str, float]) -> list[dict[str, Any]]:
    """The visualisation page's closing table: each claim, the paper's number, ours, and whether it holds.

    ``raf_acc`` / ``ck_acc``: mean accuracy % per key (``ours``, ``se``, ``vgg``); ``ck_sd``: the
    largest fold-to-fold standard deviation; ``raf_loc`` / ``ck_loc``: Grad-CAM energy on the
    evidence per key. ``holds`` is ``"yes"`` / ``"no"``, or ``"—"`` where the paper has only pictures.
    """
    def holds(ok: bool) -> str:
        return "yes" if ok else "no"

    ck_gain = ck_acc["ours"] - max(ck_acc["se"], ck_acc["vgg"])
    return [
        {"claim": "RAF-DB: MANet beats VGG fine-tuning (points)", "paper": manet_paper_gap("ours", "vgg"),
         "ours": raf_acc["ours"] - raf_acc["vgg"], "holds": holds(raf_acc["ours"] > raf_acc["vgg"])},
        {"claim": "RAF-DB: MANet beats VGG+SE (points)", "paper": manet_paper_gap("ours", "se"),
         "ours": raf_acc["ours"] - raf_acc["se"], "holds": holds(raf_acc["ours"] > raf_acc["se"])},
        {"claim": "CK+: MANet beats the better baseline by more than the fold spread (points)",
         "paper": manet_paper_gap("ours", "se", "ck"), "ours": ck_gain,
         "holds": holds(separation(ck_gain, ck_sd) == "above")},
        {"claim": "CK+: VGG+SE beats VGG fine-tuning (points)", "paper": manet_paper_gap("se", "vgg", "ck"),
         "ours": ck_acc["se"] - ck_acc["vgg"], "holds": holds(ck_acc["se"] > ck_acc["vgg"])},
        {"claim": "RASnet locates the regions (mean IoU)", "paper": None, "ours": iou_mean, "holds": "—"},
        {"claim": "region weights adapt to the expression (largest change of a mean q_r)", "paper": None,
         "ours": q_change, "holds": "—"},
        {"claim": "MANet's Grad-CAM sits on expression regions more than the baselines' (RAF-DB stand-in)",
         "paper": None, "ours": raf_loc["ours"] - max(raf_loc["vgg"], raf_loc["se"]),
         "holds": holds(max(raf_loc, key=raf_loc.get) == "ours")},
        {"claim": "the same on the CK+ stand-in", "paper": None,
         "ours": ck_loc["ours"] - max(ck_loc["vgg"], ck_loc["se"]),
         "holds": holds(max(ck_loc, key=ck_loc.get) == "ours")},
    ]


# =========================================================================== MAPNet

_TABLE2_COLUMNS = ("RAF-DB", "AffectNet", "FED-RO")


def mapnet_paper_step(frm: str, to: str, column: str = "RAF-DB") -> float:
    """Table 2: row ``to`` minus row ``frm`` (``"baseline"``, ``"ps"``, ``"mam"``, ``"wcl"``) in one column."""
    if column not in _TABLE2_COLUMNS:
        raise KeyError(f"Table 2 has no column {column!r}; columns: {_TABLE2_COLUMNS}")
    i = _TABLE2_COLUMNS.index(column)
    return mapnet.TABLE2[to][i] - mapnet.TABLE2[frm][i]


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

