"""The compressor's context mixer (adaptive_lm/entropy/adapt.py) against the formulas of its
docstring computed the slow obvious way: counts recounted from scratch at every step, each
vocabulary entry's probability by its own loop, the bucket weights learned by the same rule."""
import math
from collections import Counter

import numpy as np
import pytest

from adaptive_lm.entropy.adapt import BUCKETS, ContextMixer, MixerConfig


def _reference_run(lm_steps, ids_steps, V, cfg):
    """The mixture at every step, recomputed from the coded tokens alone."""
    a = np.zeros(BUCKETS * (cfg.order + 1))
    a[:BUCKETS] = cfg.init_uni
    m = np.zeros_like(a)
    coded: list[list[int]] = [[] for _ in range(len(ids_steps[0]))]
    outs = []
    for lm, ids in zip(lm_steps, ids_steps):
        live = len(ids)
        uni = Counter(w for row in coded for w in row)
        N = sum(uni.values())
        counts = [Counter() for _ in range(cfg.order + 1)]       # order o: (ctx, w) -> count
        for row in coded:
            for t, w in enumerate(row):
                for o in range(1, min(cfg.order, t) + 1):
                    counts[o][(tuple(row[t - o:t]), w)] += 1

        def chain(row, top, w):
            p = (uni[w] + 0.5) / (N + 0.5 * V)
            for o in range(1, top + 1):
                ctx = tuple(row[-o:])
                n = sum(c for (x, _), c in counts[o].items() if x == ctx)
                d = sum(1 for (x, _) in counts[o] if x == ctx)
                p = (counts[o][(ctx, w)] + d * p) / (n + d)
            return p

        out = np.zeros((live, V))
        grads = []
        for r in range(live):
            row = coded[r][-cfg.order:]
            h = 0
            while h < min(cfg.order, len(row)) and any(x == tuple(row[-(h + 1):]) for (x, _) in counts[h + 1]):
                h += 1
            n_h = sum(c for (x, _), c in counts[h].items() if x == tuple(row[-h:])) if h else 0
            k = h * BUCKETS + min(int(math.log2(n_h + 1)), BUCKETS - 1) if h else 0
            lam, mu = 1 / (1 + math.exp(-a[k])), 1 / (1 + math.exp(-m[k]))
            for w in range(V):
                hi, lo = chain(row, h, w), chain(row, min(h, cfg.low), w)
                out[r, w] = (1 - lam) * lm[r, w] + lam * ((1 - mu) * lo + mu * hi)
            w = ids[r]
            hi, lo = chain(row, h, w), chain(row, min(h, cfg.low), w)
            ng = (1 - mu) * lo + mu * hi
            p = (1 - lam) * lm[r, w] + lam * ng
            grads.append((k, lam * (1 - lam) * (ng - lm[r, w]) / p, lam * mu * (1 - mu) * (hi - lo) / p))
        for k, ga, gm in grads:
            a[k] += cfg.lr * ga
            m[k] += cfg.lr * gm
        a, m = np.clip(a, -cfg.clip, cfg.clip), np.clip(m, -cfg.clip, cfg.clip)
        for r in range(live):
            coded[r].append(ids[r])
        outs.append(out)
    return outs


def _steps(V=7, rows=3, T=9, seed=0):
    """Random LM distributions and a repetitive token stream (so contexts recur), rows ending at
    different steps as in a batch (longest first)."""
    g = np.random.default_rng(seed)
    lengths = sorted(g.integers(T // 2, T + 1, rows).tolist(), reverse=True)
    lengths[0] = T
    pattern = g.integers(0, V, 4)
    lm_steps, ids_steps = [], []
    for t in range(T):
        live = sum(1 for n in lengths if n > t)
        p = g.random((live, V)) + 0.05
        lm_steps.append(p / p.sum(1, keepdims=True))
        ids = [int(pattern[(t + r) % 4]) if g.random() < 0.8 else int(g.integers(0, V)) for r in range(live)]
        ids_steps.append(ids)
    return lm_steps, ids_steps, V, rows


@pytest.mark.parametrize("order,low,seed", [(3, 2, 0), (1, 1, 1), (4, 2, 2), (2, 2, 3)])
def test_mixture_equals_the_slow_reference(order, low, seed):
    lm_steps, ids_steps, V, rows = _steps(seed=seed)
    cfg = MixerConfig(order=order, low=low, lr=0.3)               # a large step: the learning shows
    ref = _reference_run(lm_steps, ids_steps, V, cfg)
    mixer = ContextMixer(V, rows, cfg)
    for t, (lm, ids) in enumerate(zip(lm_steps, ids_steps)):
        out = mixer.mix(lm.copy()).copy()
        np.testing.assert_allclose(out, ref[t], rtol=1e-12, atol=1e-15, err_msg=f"step {t}")
        assert np.all(out > 0) and np.allclose(out.sum(1), 1.0, atol=1e-12)
        mixer.update(ids)
    assert np.any(mixer.a != cfg.init_uni * (np.arange(mixer.a.size) < BUCKETS))   # the weights did move


def test_two_mixers_fed_the_same_stream_agree_bit_for_bit():
    """What decoding relies on: the same inputs give the same floats."""
    lm_steps, ids_steps, V, rows = _steps(V=50, rows=6, T=30, seed=4)
    one, two = ContextMixer(V, rows), ContextMixer(V, rows)
    for lm, ids in zip(lm_steps, ids_steps):
        a, b = one.mix(lm.copy()), two.mix(lm.copy())
        assert a.tobytes() == b.tobytes()
        one.update(ids)
        two.update(ids)


def test_mixing_learns_a_repeated_stream():
    """On a stream the LM does not know (uniform) but that repeats, the mixture soon puts most of
    its mass on the next token."""
    V, rows, pattern = 20, 4, [3, 7, 1, 12, 5]
    mixer = ContextMixer(V, rows)
    lm = np.full((rows, V), 1.0 / V)
    for t in range(40):
        ids = [pattern[(t + r) % 5] for r in range(rows)]
        out = mixer.mix(lm)
        p_next = out[np.arange(rows), ids]
        mixer.update(ids)
    assert p_next.min() > 0.6 > 1.0 / V


def test_bad_orders_are_refused():
    for order, low in ((2, 3), (0, 0), (16, 2)):
        with pytest.raises(ValueError, match="low <= order"):
            ContextMixer(5, 2, MixerConfig(order=order, low=low))
