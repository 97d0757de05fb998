"""CALM calibration by Learn-then-Test (Angelopoulos et al. 2021; CALM §"Calibration").

Goal: a threshold λ such that, with probability ≥ 1 − ε over the calibration draw, the early-exit
model is consistent with the full model: E[D(Y_early, Y_full)] ≤ δ (textual consistency, D in
[0, 1]: token mismatch rate or 1 − ROUGE-L), or E[max(0, R(Y_early, Z) − R(Y_full, Z))] ≤ δ with
references Z (risk consistency).

For each candidate λ_1 = 1 > λ_2 > … the null H_j "risk(λ_j) > δ" gets the Hoeffding–Bentkus
p-value from the empirical risk R̂ on n examples,
    p = min( exp(−n·h(min(R̂, δ), δ)),  e·P(Binomial(n, δ) ≤ ⌈n·R̂⌉) ),
    h(a, b) = a·log(a/b) + (1−a)·log((1−a)/(1−b)),
and fixed-sequence testing walks down the list, rejecting while p ≤ ε; the last rejected λ (the
most aggressive one certified) is returned, or None when even the first fails.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence


def _kl_bernoulli(a: float, b: float) -> float:
    """h(a, b) of the Hoeffding bound (KL divergence between Bernoulli(a) and Bernoulli(b))."""
    def term(x, y):
        return 0.0 if x == 0 else x * math.log(x / y)
    return term(a, b) + term(1 - a, 1 - b)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k), summed in log space (exact for the n of a calibration set)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def hb_pvalue(risk: float, n: int, delta: float) -> float:
    """Hoeffding–Bentkus p-value of the null "true risk > δ" given empirical risk R̂ on n samples."""
    if n < 1:
        raise ValueError("calibration needs at least one example")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), not {delta}")
    hoeffding = math.exp(-n * _kl_bernoulli(min(risk, delta), delta))
    bentkus = math.e * binom_cdf(math.ceil(n * risk - 1e-9), n, delta)     # (float noise must not add a count)
    return min(hoeffding, bentkus, 1.0)


def max_certifiable_risk(n: int, delta: float, epsilon: float) -> float:
    """The largest empirical risk R̂ on n examples whose Hoeffding–Bentkus p-value is still ≤ ε:
    the most a threshold may risk on the calibration set and be certified at δ (0 when even R̂ = 0
    is not enough). p is non-decreasing in R̂, so bisection finds it (to 1e-6)."""
    if hb_pvalue(0.0, n, delta) > epsilon:
        return 0.0
    lo, hi = 0.0, delta
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if hb_pvalue(mid, n, delta) <= epsilon else (lo, mid)
    return lo


def fixed_sequence_test(thresholds: Sequence[float], risk_of: Callable[[float], float], *, n: int,
                        delta: float, epsilon: float, on_test: Optional[Callable] = None) -> Optional[float]:
    """Walk the candidates from the most conservative down; return the last λ whose null was
    rejected (p ≤ ε), or None. ``risk_of(λ)`` is the empirical risk on the n calibration examples;
    ``on_test(λ, risk, p)`` sees every test made (progress, reports)."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), not {epsilon}")
    if list(thresholds) != sorted(thresholds, reverse=True):
        raise ValueError("candidate thresholds must be in descending order")
    certified = None
    for lam in thresholds:
        r = risk_of(lam)
        p = hb_pvalue(r, n, delta)
        if on_test is not None:
            on_test(lam, r, p)
        if p > epsilon:
            break
        certified = lam
    return certified


# ---- dissimilarities D in [0, 1] between an early-exit output and the full model's ----

def token_mismatch(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of positions where the two sequences differ, over the longer length (a missing token
    counts as a mismatch); 0 for two empty sequences."""
    n = max(len(a), len(b))
    if n == 0:
        return 0.0
    same = sum(x == y for x, y in zip(a, b))
    return 1.0 - same / n


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: Sequence, b: Sequence) -> float:
    """ROUGE-L F1 between two token sequences (1.0 for two empty ones)."""
    if not a and not b:
        return 1.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def rouge_l_distance(a: Sequence, b: Sequence) -> float:
    """1 − ROUGE-L."""
    return 1.0 - rouge_l(a, b)


DISTANCES = {"mismatch": token_mismatch, "rouge": rouge_l_distance}


def risk_consistency(early: Sequence, full: Sequence, reference: Sequence,
                     distance: Callable = token_mismatch) -> float:
    """max(0, R(Y_early, Z) − R(Y_full, Z)) with R the distance to the reference."""
    return max(0.0, distance(early, reference) - distance(full, reference))


def mean_risk(early: Sequence[Sequence], full: Sequence[Sequence], references: Optional[Sequence[Sequence]] = None,
              distance: Callable = token_mismatch) -> float:
    """The empirical risk Learn-then-Test bounds, over examples: textual consistency, the mean
    D(Y_early, Y_full); with ``references`` Z, risk consistency, the mean
    max(0, D(Y_early, Z) − D(Y_full, Z)) (CALM §"Calibration", the two consistency notions)."""
    if not len(early) == len(full) > 0 or (references is not None and len(references) != len(full)):
        raise ValueError("early, full (and references) need the same number of examples, at least one")
    if references is None:
        return sum(distance(e, f) for e, f in zip(early, full)) / len(full)
    return sum(risk_consistency(e, f, z, distance) for e, f, z in zip(early, full, references)) / len(full)
