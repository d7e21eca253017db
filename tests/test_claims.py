"""fer.experiments.claims: every branch of every page verdict, and the paper arithmetic pages quote."""
from __future__ import annotations

import pandas as pd
import pytest

from fer.experiments import claims as C


def test_separation_rule():
    assert C.separation(3.0, 1.0) == "above"
    assert C.separation(-3.0, 1.0) == "below"
    assert C.separation(1.0, 1.0) == "within"  # equal to the noise is not beyond it
    assert C.separation(1.5, 1.0, k=2) == "within" and C.separation(2.5, 1.0, k=2) == "above"
    assert C.separation(-2.5, 1.0, k=2) == "below"
    assert C.separation(0.0, 0.0) == "within"
    assert C.separation(0.1, 0.0) == "above" and C.separation(-0.1, 0.0) == "below"  # one seed: no noise
    with pytest.raises(ValueError, match="noise"):
        C.separation(1.0, -1.0)


def test_seed_sd_share_ratio_and_binomial_se():
    assert C.seed_sd([70.0]) == 0.0
    assert C.seed_sd([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # ddof=1
    assert C.share({"a": 1, "b": 3}, "a") == 0.25
    assert C.ratio(3, 4) == 0.75
    with pytest.raises(ZeroDivisionError):
        C.ratio(1, 0)
    assert C.binomial_se(0.5, 400) == pytest.approx(0.025)


def test_paper_arithmetic_reads_the_tables_by_name():
    # Figure 7 (VGG16 + CBAM): GAP row g 68.78 / 69.67, flatten row f 60.25 / 61.01, CBAM 70.78 / 71.43
    assert C.cbam_paper_gap("g", "f") == pytest.approx(8.53)
    assert C.cbam_paper_gap("cbam", "g", "test") == pytest.approx(1.76)
    with pytest.raises(KeyError, match="no row"):
        C.cbam_paper_gap("z", "g")
    # MANet Tables 3 and 5
    assert C.manet_paper_gap("ours", "vgg") == pytest.approx(85.69 - 83.89)
    assert C.manet_paper_gap("ours", "se", "ck") == pytest.approx(96.28 - 93.11)
    assert C.manet_paper_gap("se", "vgg", "ck") == pytest.approx(93.11 - 92.27)
    # MAPNet Table 2: baseline -> full MAPNet
    assert C.mapnet_paper_step("baseline", "wcl") == pytest.approx(87.26 - 84.48)
    assert C.mapnet_paper_step("baseline", "wcl", "FED-RO") == pytest.approx(71.05 - 64.25)
    with pytest.raises(KeyError, match="column"):
        C.mapnet_paper_step("baseline", "wcl", "CK+")
    # masked FER Table 3
    assert C.masked_paper_gain() == pytest.approx(86.7 - 84.4)
    assert C.masked_paper_gain("fecn", "abn") == pytest.approx(86.7 - 84.2)


def test_manet_raf_claims_pair_seeds_and_quote_table3():
    acc = {"ours": {0: 50.0, 1: 52.0, 2: 54.0}, "vgg": {0: 40.0, 1: 41.0, 2: 42.0, 5: 90.0},
           "se": {0: 51.0, 1: 52.6, 2: 54.2}}
    rows = C.manet_raf_claims(acc)
    assert len(rows) == len(C.MANET_CLAIMS) == 2
    vgg, se = rows
    assert vgg["claim"] == "Ours (MANet) beats VGG fine-tuning on RAF-DB (pre-trained)"
    assert vgg["verdict"].verdict == "holds" and vgg["verdict"].seeds == 3  # seed 5 has no MANet run
    assert vgg["paper"] == pytest.approx(C.manet_paper_gap("ours", "vgg"))
    assert se["verdict"].gain == pytest.approx(-0.6) and se["verdict"].verdict == "does not hold"
    assert C.manet_raf_claims({k: {0: v[0]} for k, v in acc.items()})[0]["verdict"].verdict == "inconclusive"
    assert C.manet_raf_claims({"ours": acc["ours"]}) == []


def test_manet_claims_table():
    # RAF-DB per seed: MANet trails VGG by 1 point on every seed, leads SE by 2 (with spread)
    raf = {"ours": {0: 60.0, 1: 61.0, 2: 62.0}, "se": {0: 58.0, 1: 59.5, 2: 59.5}, "vgg": {0: 61.0, 1: 62.0, 2: 63.0}}
    ck = {"ours": 90.0, "se": 86.0, "vgg": 85.0}
    loc = {"ours": 0.2, "vgg": 0.1, "se": 0.15}
    rows = C.manet_claims(raf, ck, ck_sd=3.0, iou_mean=0.45, q_change=0.1, raf_loc=loc,
                          ck_loc={"ours": 0.1, "vgg": 0.3, "se": 0.2})
    holds = [r["holds"] for r in rows]
    assert holds == ["no", "yes", "yes", "yes", "—", "—", "yes", "no"]
    assert rows[0]["paper"] == pytest.approx(85.69 - 83.89) and rows[0]["ours"] == pytest.approx(-1.0)
    assert rows[0]["claim"] == "RAF-DB: MANet beats VGG fine-tuning (points, mean of 3 seeds)"
    assert rows[1]["ours"] == pytest.approx(2.0) and rows[2]["ours"] == pytest.approx(4.0)
    assert rows[6]["ours"] == pytest.approx(0.05) and rows[7]["ours"] == pytest.approx(-0.2)
    # a CK+ gain inside the fold spread does not hold
    assert C.manet_claims(raf, ck, ck_sd=5.0, iou_mean=0, q_change=0, raf_loc=loc, ck_loc=loc)[2]["holds"] == "no"
    # one fold has no spread (its SD reads 0): no verdict rather than a gain "above" zero noise
    assert C.manet_claims(raf, ck, ck_sd=0.0, iou_mean=0, q_change=0, raf_loc=loc, ck_loc=loc,
                          ck_folds=1)[2]["holds"] == "not judged"
    # a profile without CK+ runs (the demo) measures none of the CK+ rows
    none = C.manet_claims(raf, {}, ck_sd=0.0, iou_mean=0, q_change=0, raf_loc=loc, ck_loc={}, ck_folds=0)
    assert [(r["ours"], r["holds"]) for r in (none[2], none[3], none[7])] == [(None, "not measured")] * 3
    assert none[0]["holds"] == "inconclusive" or none[0]["holds"] in ("yes", "no")
    # RAF-DB rows follow the seed rule: one seed is inconclusive, whatever the means say
    one = {k: {0: v[0]} for k, v in raf.items()}
    assert [r["holds"] for r in C.manet_claims(one, ck, ck_sd=3.0, iou_mean=0, q_change=0, raf_loc=loc,
                                                ck_loc=loc)[:2]] == ["inconclusive", "inconclusive"]


def test_mapnet_clear_count():
    steps = pd.DataFrame({"clear of noise": [True, False, True, False, False, False]})
    assert C.mapnet_clear_count(steps) == (2, 6)


def test_masked_verdicts_every_branch():
    assert C.masked_shared_verdict(-9.0, -9.0, 1.0, 1).startswith("With a single seed")
    assert C.masked_shared_verdict(-3.0, 0.0, 1.0, 3).startswith("Sharing a frozen extractor costs")
    assert C.masked_shared_verdict(-1.5, 1.9, 1.0, 3).startswith("Neither difference")
    assert C.masked_shared_verdict(-1.5, 2.5, 1.0, 3).startswith("The differences are larger")
    assert C.masked_shared_verdict(3.0, 0.0, 1.0, 3).startswith("The differences are larger")

    assert C.masked_close_verdict(9.0, 1.0, 1).startswith("With a single seed")
    assert C.masked_close_verdict(2.5, 1.0, 3) == "FECN's lead over VGG11 is reproduced on SynFER"
    assert C.masked_close_verdict(-2.5, 1.0, 3).startswith("FECN's lead over VGG11 is not reproduced")
    assert C.masked_close_verdict(1.5, 1.0, 3).startswith("FECN and VGG11 are not clearly apart")

    assert C.masked_variation_verdict(0.1, 0.3).startswith("holds here")
    assert C.masked_variation_verdict(0.2, 0.3).startswith("holds only weakly")
    assert C.masked_variation_verdict(0.3, 0.3).startswith("does not hold")

    assert C.masked_level_verdict(0.06) == "lower, as the paper says"
    assert C.masked_level_verdict(-0.06).startswith("not lower")
    assert C.masked_level_verdict(0.04).startswith("about the same")

    assert [C.masked_eyes_verdict(g) for g in (0.03, -0.03, 0.01)] == ["more than", "less than", "about"]


def test_optimiser_phrase_and_cbam_params_verdict():
    assert C.optimiser_phrase("adam", "sgd") == "Adam where the paper uses SGD with momentum"
    assert C.optimiser_phrase("SGD", "sgd") == "SGD with momentum, as in the paper"
    assert C.cbam_params_verdict(66_130, 66_000) == "holds"
    assert C.cbam_params_verdict(33_330, 66_000) == "does not hold"
    assert C.cbam_params_verdict(66_600, 66_000) == "does not hold"  # rounds to 67K


def test_msanet_rules():
    # chance for 7 classes is 14.29%: within one point below 15.29
    assert C.msanet_plateau_count([14.3, 15.0, 15.3, 40.0], 7) == 2
    assert C.msanet_plateau_count([], 7) == 0
    with pytest.raises(ValueError):
        C.msanet_plateau_count([10.0], 0)
    assert C.msanet_erf_ordered({7: 30.0, 5: 20.0, 3: 20.0}) == "yes"
    assert C.msanet_erf_ordered({3: 10.0, 7: 9.0, 5: 12.0}) == "no"
    steps = C.msanet_paper_steps()
    assert steps[("MS - baseline", "raf")] == pytest.approx(84.33 - 82.59)
    assert steps[("AS - MS", "pose45")] == pytest.approx(54.81 - 53.66)
    assert steps[("MSA-Net - AS", "affectnet")] == pytest.approx(63.61 - 62.11)
    assert steps[("MSA-Net - AS", "pose30")] is None  # the full network has no pose numbers


def test_masked_stage2_rules():
    assert C.masked_gain_phrase(9.0, 1.0, 1).startswith("a single seed")
    assert C.masked_gain_phrase(2.5, 1.0, 3).startswith("more than twice")
    assert C.masked_gain_phrase(-2.5, 1.0, 3).startswith("more than twice")
    assert C.masked_gain_phrase(1.5, 1.0, 3).startswith("within about twice")
    assert C.masked_figure7_swapped() is True  # Figure 7 (a)'s diagonal is Table 3's FECN row


def test_manet_paper_numbers_by_name():
    assert C.manet_paper_accuracy("ours") == 85.69 and C.manet_paper_accuracy("se") == 83.28
    assert C.manet_paper_accuracy("vgg", pretrained=False) == 73.63
    assert C.manet_paper_accuracy("ours", "ck") == 96.28 and C.manet_paper_accuracy("vgg", "ck") == 92.27
    with pytest.raises(KeyError, match="no row"):
        C.manet_paper_accuracy("pgcnn", "ck")
    with pytest.raises(KeyError, match="scratch"):
        C.manet_paper_accuracy("pgcnn", pretrained=False)
    raf = C.manet_paper_diagonal("4")
    assert raf["fear"] == 58.11 and min(raf, key=raf.get) == "fear" and max(raf, key=raf.get) == "happy"
    assert C.manet_paper_diagonal("6")["fear"] == 84.17


def test_manet_ck_verdict_every_branch():
    acc = {"ours": [90.0, 92.0, 94.0], "se": [85.0, 86.0, 87.0], "vgg": [84.0, 85.0, 86.0]}
    out = C.manet_ck_verdict(acc)
    assert out["gain"] == pytest.approx(6.0) and out["sd"] == pytest.approx(2.0)
    assert out["verdict"].startswith("consistent") and out["se_vs_vgg"] == "above"
    out = C.manet_ck_verdict({**acc, "ours": [78.0, 80.0, 82.0]})
    assert out["verdict"].startswith("below the better baseline")
    out = C.manet_ck_verdict({**acc, "ours": [85.0, 88.0, 91.0], "vgg": [87.0, 87.0, 87.0]})  # +1 against 3
    assert out["verdict"].startswith("within") and out["se_vs_vgg"] == "not above"
    one = C.manet_ck_verdict({k: v[:1] for k, v in acc.items()})
    assert one["sd"] == 0.0 and one["verdict"].startswith("not judged: one fold")  # not "consistent" on sd 0


def test_manet_q_loc_and_one_class_notes():
    assert C.manet_q_verdict(0.01).startswith("So on SynFER at this scale the weight branch learns a nearly fixed")
    assert C.manet_q_verdict(C.Q_ADAPT_TOLERANCE).startswith("The weights do shift")
    assert C.manet_loc_verdict({"MANet": 0.3, "VGG": 0.2}, "MANet").startswith("MANet's maps sit")
    assert C.manet_loc_verdict({"MANet": 0.1, "VGG": 0.2}, "MANet") == ("VGG's maps, not MANet's, sit most on "
                                                                        "the evidence")
    classes = ("anger", "happy", "sad")
    assert "predicts happy for every test face" in C.one_class_note([[0, 3, 0], [0, 5, 0], [0, 2, 0]], classes)
    assert C.one_class_note([[1, 2, 0], [0, 5, 0], [0, 2, 0]], classes).startswith("Our MANet predicts several")


def test_mapnet_paper_accuracy_and_verdicts():
    assert C.mapnet_paper_accuracy("wcl") == 87.26 and C.mapnet_paper_accuracy("wcl", "FED-RO") == 71.05
    assert C.mapnet_paper_accuracy("MAPNet", "FED-RO", table="1") == 71.50
    with pytest.raises(KeyError, match="no FED-RO"):
        C.mapnet_paper_accuracy("SCN", "FED-RO", table="1")
    with pytest.raises(KeyError, match="no row"):
        C.mapnet_paper_accuracy("MAPNet")  # a Table 1 method, not a Table 2 row
    steps = pd.DataFrame({"clear of noise": [False, False, False], "ours mean (points)": [3.0, -1.0, 0.5]})
    assert C.mapnet_steps_verdict(steps) == "SynFER at this scale does not show the paper's step-by-step gains"
    steps["clear of noise"] = [True, True, False]
    assert C.mapnet_steps_verdict(steps) == ("SynFER at this scale shows 1 of the 3 step-by-step gains clear of the "
                                             "noise, and 1 step(s) clear of the noise go the other way")
    assert C.mapnet_sweep_verdict(5.0, 0.0, 1).startswith("with a single seed")
    assert C.mapnet_sweep_verdict(2.5, 1.0, 3).startswith("more than twice")
    assert C.mapnet_sweep_verdict(1.5, 1.0, 3) == "within the noise"


def test_claim_verdict_rule():
    v = C.claim_verdict([72.0, 73.0, 74.0], [70.0, 70.5, 71.5], claim="CBAM beats GAP")
    assert v.verdict == "holds" and v.paired and v.seeds == 3 and v.claim == "CBAM beats GAP"
    assert v.gain == pytest.approx(2.333, abs=1e-3) and v.se == pytest.approx(0.1667, abs=1e-3)
    assert v.text() == "+2.3 ± 0.2 points (SE, 3 seeds)" and v.interval[0] > 0
    # no gain shown, and any gain shown to be under MIN_GAIN (1 point): does not hold
    assert C.claim_verdict([0.2, -0.3, 0.1, 0.0, -0.1]).verdict == "does not hold"
    # a small gain, clear of the noise, holds (the claim is the direction; its size is reported)
    assert C.claim_verdict([0.2, 0.4, 0.3, 0.1]).verdict == "holds"
    # the other way round, clearly: does not hold
    assert C.claim_verdict([-3.0, -2.5, -3.5]).verdict == "does not hold"
    # spread too wide to tell: inconclusive
    assert C.claim_verdict([5.0, -4.0, 2.0]).verdict == "inconclusive"
    # too few seeds, however clear
    few = C.claim_verdict([9.0, 9.1])
    assert few.verdict == "inconclusive" and few.seeds == 2
    assert C.claim_verdict([9.0]).verdict == "inconclusive"
    # unpaired: Welch's SE; the sides may differ in length
    w = C.claim_verdict([80.0, 81.0, 82.0], [70.0, 72.0, 71.0, 73.0], paired=False)
    assert not w.paired and w.verdict == "holds" and w.gain == pytest.approx(81.0 - 71.5)
    assert w.se == pytest.approx((1.0 / 3 + (5 / 3) / 4) ** 0.5)
    # pairing removes the shared seed-to-seed spread that Welch keeps
    a, b = [60.0, 70.0, 80.0], [59.0, 69.0, 79.0]
    assert C.claim_verdict(a, b).verdict == "holds"
    assert C.claim_verdict(a, b, paired=False).verdict == "inconclusive"
    assert C.claim_verdict([0.5, 0.6, 0.4], min_gain=0.2).verdict == "holds"
    with pytest.raises(ValueError, match="one b per a"):
        C.claim_verdict([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        C.claim_verdict([1.0, float("nan"), 3.0])
    assert "mean minus 2 SE is above 0" in C.VERDICT_RULE and "below 1 point" in C.VERDICT_RULE
    assert "inconclusive" in C.VERDICT_RULE


def test_mapnet_claims_pair_seeds_and_quote_table2():
    acc = {"baseline": {0: 70.0, 1: 71.0, 2: 72.0}, "ps": {0: 72.0, 1: 73.5, 2: 74.0, 3: 99.0},
           "mam": {0: 72.1, 1: 73.3, 2: 74.2}, "wcl": {0: 75.0, 1: 76.0, 2: 77.0}}
    occ = {"baseline": {0: 50.0, 1: 52.0, 2: 49.0}, "wcl": {0: 49.0, 1: 53.0, 2: 51.0}}
    rows = C.mapnet_claims(acc, occ)
    assert len(rows) == len(C.MAPNET_CLAIMS) == 5
    by = {r["claim"]: r for r in rows}
    ps = by["+ PS beats Baseline on RAF-DB"]
    assert ps["verdict"].seeds == 3 and ps["verdict"].verdict == "holds"  # seed 3 has no baseline: left out
    assert ps["paper"] == pytest.approx(C.mapnet_paper_step("baseline", "ps"))
    assert by["+ PS + MAM beats + PS on RAF-DB"]["verdict"].verdict == "does not hold"
    fed = by["+ PS + MAM + WCL (MAPNet) beats Baseline on occluded faces (FED-RO)"]
    assert fed["verdict"].verdict == "inconclusive" and fed["paper"] == pytest.approx(
        C.mapnet_paper_step("baseline", "wcl", "FED-RO"))
    assert len(C.mapnet_claims({"baseline": acc["baseline"]}, {})) == 0  # rows not run: no claim


def test_cbam_claims_pair_seeds_and_quote_figure7():
    acc = {("test", "accuracy"): {"g": {0: 50.0, 1: 52.0, 2: 51.0}, "cbam": {0: 53.0, 1: 55.0, 2: 54.5, 7: 99.0}},
           ("val", "accuracy"): {"g": {0: 50.0, 1: 52.0, 2: 51.0}, "cbam": {0: 50.1, 1: 51.8, 2: 51.0}},
           ("test", "mean_class_accuracy"): {"g": {0: 40.0, 1: 30.0, 2: 45.0}, "cbam": {0: 44.0, 1: 29.0, 2: 50.0}}}
    rows = C.cbam_claims(acc)
    assert len(rows) == len(C.CBAM_CLAIMS) == 3
    test, val, mca = rows
    assert test["verdict"].verdict == "holds" and test["verdict"].seeds == 3  # seed 7 has no row (g): left out
    assert test["verdict"].gain == pytest.approx(3.1666667)
    assert test["paper"] == pytest.approx(C.cbam_paper_gap("cbam", "g", "test")) == pytest.approx(1.76)
    assert val["verdict"].verdict == "does not hold" and val["paper"] == pytest.approx(2.0)
    assert mca["verdict"].verdict == "inconclusive" and mca["paper"] is None
    assert "mean per-class accuracy" in mca["claim"] and "PrivateTest" in test["claim"]
    assert C.cbam_claims({("test", "accuracy"): {"g": {0: 1.0}}}) == []  # CBAM not run: no claim


def test_masked_claims():
    acc = {"vgg11": {0: 60.0, 1: 62.0, 2: 61.0}, "abn": {0: 58.0, 1: 57.0, 2: 59.0},
           "fecn": {0: 60.5, 1: 61.0, 2: 61.2}}
    rows = C.masked_claims(acc)
    assert [r["verdict"].verdict for r in rows] == ["does not hold", "holds"]
    assert rows[0]["paper"] == pytest.approx(C.masked_paper_gain("fecn", "vgg11"))
    assert rows[1]["claim"].endswith("on masked faces") and rows[1]["verdict"].seeds == 3
    assert C.masked_claims({"fecn": acc["fecn"]}) == []


def test_msanet_claims_from_the_ablation_frame():
    recs = []
    for seed in (0, 1, 2):
        for row, base in (("baseline", 80.0), ("ms", 82.0), ("as", 82.1), ("full", 85.0)):
            recs.append({"row": row, "column": "raf", "seed": seed, "accuracy": base + seed * 0.3 + (row == "ms") * seed * 0.1})
    for row, v in (("baseline", 50.0), ("as", 58.0)):
        recs.append({"row": row, "column": "pose45", "seed": 0, "accuracy": v})
    rows = C.msanet_claims(pd.DataFrame(recs))
    by = {r["claim"]: r for r in rows}
    assert by["MS beats the baseline on RAF-DB"]["verdict"].verdict == "holds"
    assert by["MS beats the baseline on RAF-DB"]["paper"] == pytest.approx(84.33 - 82.59)
    assert by["AS beats MS on RAF-DB"]["verdict"].verdict == "does not hold"
    assert by["MSA-Net beats AS on RAF-DB"]["paper"] == pytest.approx(86.32 - 85.36)
    pose = by["AS beats the baseline on faces with |yaw| >= 45 (AffectNet)"]
    assert pose["verdict"].verdict == "inconclusive" and pose["verdict"].seeds == 1  # one AffectNet seed
    assert pose["paper"] == pytest.approx(54.81 - 52.39)
    assert len(rows) == 4  # no pose30 runs: that claim is left out


def test_claim_verdict_names_a_non_finite_seed_given_as_an_array():
    import numpy as np

    with pytest.raises(ValueError, match="every seed needs a finite number"):
        C.claim_verdict([1.0, 2.0, 3.0], np.array([1.0, np.nan, 2.0]), paired=False)
