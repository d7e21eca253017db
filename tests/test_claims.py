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


RAF = {("ours", True): [50.0, 52.0, 54.0], ("vgg", True): [40.0, 41.0, 42.0], ("se", True): [45.0, 45.0, 45.0]}


def test_manet_raf_verdict_every_branch_with_three_seeds():
    out = C.manet_raf_verdict(RAF)
    assert out["gain"] == pytest.approx(52.0 - 45.0) and out["sd"] == pytest.approx(2.0)
    assert out["verdict"].startswith("MANet leads")
    trails = {**RAF, ("ours", True): [30.0, 32.0, 34.0]}
    assert C.manet_raf_verdict(trails)["verdict"].startswith("MANet trails")
    close = {**RAF, ("ours", True): [43.0, 46.0, 49.0]}  # gain +1 against a spread of 3
    out = C.manet_raf_verdict(close)
    assert out["sd"] == pytest.approx(3.0) and out["verdict"].startswith("the difference is within")
    noisy_baseline = {("ours", True): [50.0, 50.5, 51.0], ("vgg", True): [40.0, 46.0, 52.0],
                      ("se", True): [44.0, 45.0, 46.0]}  # the noise is the noisiest row's, here a baseline's
    out = C.manet_raf_verdict(noisy_baseline)
    assert out["sd"] == pytest.approx(6.0) and out["verdict"].startswith("the difference is within")
    one_seed = {k: v[:1] for k, v in RAF.items()}
    assert C.manet_raf_verdict(one_seed)["sd"] == 0.0


def test_manet_claims_table():
    raf = {"ours": 60.0, "se": 58.0, "vgg": 61.0}
    ck = {"ours": 90.0, "se": 86.0, "vgg": 85.0}
    rows = C.manet_claims(raf, ck, ck_sd=3.0, iou_mean=0.45, q_change=0.1,
                          raf_loc={"ours": 0.2, "vgg": 0.1, "se": 0.15}, ck_loc={"ours": 0.1, "vgg": 0.3, "se": 0.2})
    holds = [r["holds"] for r in rows]
    assert holds == ["no", "yes", "yes", "yes", "—", "—", "yes", "no"]
    assert rows[0]["paper"] == pytest.approx(85.69 - 83.89) and rows[0]["ours"] == pytest.approx(-1.0)
    assert rows[2]["ours"] == pytest.approx(4.0)
    assert rows[6]["ours"] == pytest.approx(0.05) and rows[7]["ours"] == pytest.approx(-0.2)
    # a CK+ gain inside the fold spread does not hold
    assert C.manet_claims(raf, ck, ck_sd=5.0, iou_mean=0, q_change=0, raf_loc=raf, ck_loc=ck)[2]["holds"] == "no"


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
