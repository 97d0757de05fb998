"""Learn-then-Test pieces: the Hoeffding–Bentkus p-value, fixed-sequence testing, and the
dissimilarities, each against a direct computation."""
import math

import pytest

from adaptive_lm.calm import calibrate as C


def test_binomial_cdf_matches_direct_sum():
    n, p = 30, 0.2
    direct = lambda k: sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
    for k in (0, 3, 6, 15, 29):
        assert C.binom_cdf(k, n, p) == pytest.approx(direct(k), rel=1e-10)
    assert C.binom_cdf(-1, n, p) == 0.0 and C.binom_cdf(30, n, p) == 1.0


def test_hb_pvalue_is_the_smaller_of_the_two_bounds():
    n, delta, risk = 100, 0.1, 0.03
    a, b = risk, delta
    h = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    hoeffding = math.exp(-n * h)
    bentkus = math.e * sum(math.comb(n, i) * b ** i * (1 - b) ** (n - i) for i in range(math.ceil(n * risk) + 1))
    assert C.hb_pvalue(risk, n, delta) == pytest.approx(min(hoeffding, bentkus), rel=1e-9)


def test_hb_pvalue_behaviour():
    assert C.hb_pvalue(0.0, 100, 0.1) < C.hb_pvalue(0.05, 100, 0.1) < C.hb_pvalue(0.09, 100, 0.1)
    assert C.hb_pvalue(0.2, 100, 0.1) == 1.0                # empirical risk above δ: never rejected
    assert C.hb_pvalue(0.0, 1000, 0.1) < C.hb_pvalue(0.0, 10, 0.1)
    with pytest.raises(ValueError):
        C.hb_pvalue(0.0, 0, 0.1)
    with pytest.raises(ValueError):
        C.hb_pvalue(0.0, 10, 1.5)


def test_fixed_sequence_stops_at_first_failure():
    risks = {1.0: 0.0, 0.9: 0.01, 0.8: 0.5, 0.7: 0.0}       # 0.7 would pass, but the walk stops at 0.8
    seen = []
    lam = C.fixed_sequence_test([1.0, 0.9, 0.8, 0.7], risks.__getitem__, n=200, delta=0.1, epsilon=0.05,
                                on_test=lambda l, r, p: seen.append(l))
    assert lam == 0.9 and seen == [1.0, 0.9, 0.8]
    assert C.fixed_sequence_test([1.0], lambda l: 0.0, n=5, delta=0.1, epsilon=0.05) is None   # too few
    with pytest.raises(ValueError):
        C.fixed_sequence_test([0.5, 0.9], lambda l: 0.0, n=100, delta=0.1, epsilon=0.05)


def test_dissimilarities():
    assert C.token_mismatch([1, 2, 3], [1, 2, 3]) == 0.0
    assert C.token_mismatch([1, 2, 3], [1, 5, 3, 4]) == pytest.approx(0.5)
    assert C.token_mismatch([], []) == 0.0
    assert C.lcs_length("ABCBDAB", "BDCABA") == 4
    assert C.rouge_l([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    p, r = 3 / 4, 3 / 5                                       # LCS 3 of lengths 4 and 5
    assert C.rouge_l([1, 2, 9, 3], [1, 2, 3, 7, 8]) == pytest.approx(2 * p * r / (p + r))
    assert C.rouge_l_distance([1], [2]) == 1.0
    assert C.risk_consistency([1, 2], [1, 2, 3], [1, 2, 3]) > 0
    assert C.risk_consistency([1, 2, 3], [1, 2], [1, 2, 3]) == 0.0  # early better than full: no risk


def test_mean_risk_textual_and_risk_consistency():
    """Textual: the mean D(early, full); risk: the mean max(0, D(early, Z) − D(full, Z)), worked by hand."""
    early, full, refs = [[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 9], [5, 0, 0, 0]], [[1, 2, 3, 9], [5, 6, 7, 8]]
    assert C.mean_risk(early, full) == pytest.approx((0.25 + 0.75) / 2)
    assert C.mean_risk(early, full, refs) == pytest.approx((0.25 + 0.0) / 2)     # the second: early nearer Z than full
    assert C.mean_risk(early, full, refs, C.rouge_l_distance) == pytest.approx(
        (C.rouge_l_distance(early[0], refs[0]) - 0.0) / 2)
    with pytest.raises(ValueError):
        C.mean_risk(early, full[:1])
    with pytest.raises(ValueError):
        C.mean_risk(early, full, refs[:1])


@pytest.mark.parametrize("n", [64, 512])
def test_max_certifiable_risk_is_the_edge_of_the_bound(n):
    """Just below it the HB p-value is <= ε, just above it > ε; more examples leave more room."""
    r = C.max_certifiable_risk(n, 0.1, 0.05)
    assert 0 < r < 0.1
    assert C.hb_pvalue(r, n, 0.1) <= 0.05 < C.hb_pvalue(r + 1e-4, n, 0.1)
    assert C.max_certifiable_risk(4 * n, 0.1, 0.05) > r
    assert C.max_certifiable_risk(5, 0.1, 0.05) == 0.0                 # 5 examples: nothing certifies at δ 0.1
