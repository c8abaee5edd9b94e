"""The shared verdict rules (revgn_cli/stats.py) against hand-computed statistics."""
import math

import numpy as np
import pytest
from scipy import stats

from revgn_cli.stats import holm, judge, judge_family, mean_interval


def test_t_interval_and_p_match_scipy():
    d = [0.3, 0.1, 0.25, 0.4, 0.2]
    v = judge(d, sesoi=0.01)
    m, s, n = np.mean(d), np.std(d, ddof=1), len(d)
    assert v.mean == pytest.approx(m)
    assert v.half == pytest.approx(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))
    assert v.p == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert v.verdict == "HOLDS"
    assert judge([-x for x in d], sesoi=0.01).verdict == "REVERSED"


def test_tost_matches_hand_computation_and_the_90_interval():
    d = [0.002, -0.001, 0.0015, 0.0005, -0.0005, 0.001]
    sesoi = 0.01
    v = judge(d, sesoi=sesoi)
    m, se, df = np.mean(d), np.std(d, ddof=1) / math.sqrt(len(d)), len(d) - 1
    p_lo = 1 - stats.t.cdf((m + sesoi) / se, df)
    p_hi = stats.t.cdf((m - sesoi) / se, df)
    assert v.p_tost == pytest.approx(max(p_lo, p_hi))
    # TOST at 5 % <=> the 90 % interval lies inside ±SESOI
    h90 = stats.t.ppf(0.95, df) * se
    assert (m - h90 > -sesoi and m + h90 < sesoi) == (v.p_tost < 0.05)
    assert v.verdict == "NEGLIGIBLE"
    # scipy's own one-sided tests agree
    lo = stats.ttest_1samp(d, -sesoi, alternative="greater").pvalue
    hi = stats.ttest_1samp(d, sesoi, alternative="less").pvalue
    assert v.p_tost == pytest.approx(max(lo, hi))


def test_divergence_is_never_evidence():
    assert judge([math.inf, 1e-9, 1e-9], sesoi=0.01).verdict == "INSUFFICIENT"
    v = judge([math.inf, math.inf, math.inf, 0.1], sesoi=0.01)
    assert v.verdict == "INSUFFICIENT" and v.n == 1 and v.n_nonfinite == 3
    v = judge({42: -math.inf, 43: 0.01, 44: -0.02, 45: 0.015}, sesoi=0.001)
    assert v.n == 3 and v.n_nonfinite == 1 and v.verdict == "INCONCLUSIVE"


def test_wide_interval_is_inconclusive():
    assert judge([1.0, -1.0, 0.5, -0.4], sesoi=0.01).verdict == "INCONCLUSIVE"


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)


def test_family_adjustment_can_demote_a_verdict():
    weak = judge([0.1, 0.3, 0.02, 0.2, 0.15], sesoi=0.01)
    null = judge([0.3, -0.2, 0.1, -0.25, 0.05], sesoi=0.01)
    assert weak.verdict == "HOLDS" and 0.025 < weak.p < 0.05
    fam = judge_family([weak, null, null])
    # weak has the smallest p of three: Holm multiplies it by 3
    assert fam[0].p_adj == pytest.approx(min(1, 3 * weak.p)) and fam[0].verdict == "INCONCLUSIVE"
    assert fam[0].p == weak.p  # the raw p is kept beside the adjusted one
    assert judge_family([weak])[0].verdict == "HOLDS"


def test_mean_interval_and_bad_sesoi():
    assert mean_interval([1.0, math.nan, 3.0])[:2] == pytest.approx((2.0, stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)))
    with pytest.raises(ValueError):
        judge([1, 2, 3], sesoi=0)
