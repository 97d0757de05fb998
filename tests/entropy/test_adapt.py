"""The compressor's context mixer (adaptive_lm/entropy/adapt.py) against the formulas of its
docstring computed the slow obvious way: counts recounted from scratch at every step, each
vocabulary entry's probability by its own loop, the bucket weights learned by the same rule."""
import hashlib
import math
from collections import Counter

import numpy as np
import pytest

from adaptive_lm.entropy.adapt import BUCKETS, ContextMixer, MixerConfig

GOLDEN = "ceef47806d789f38"    # test_golden_mixture: the digest of format 4's mixer on a fixed stream


def _reference_run(lm_steps, ids_steps, V, cfg):
    """The mixture at every step, recomputed from the coded tokens alone."""
    lam_k = np.full(BUCKETS * (cfg.order + 1), 0.5)
    lam_k[0] = cfg.init_uni
    mu_k = np.full_like(lam_k, 0.5)
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
            lam, mu = lam_k[k], mu_k[k]
            for w in range(V):
                hi, lo = chain(row, h, w), chain(row, min(h, cfg.low), w)
                out[r, w] = (1 - lam) * lm[r, w] + lam * ((1 - mu) * lo + mu * hi)
            w = ids[r]
            hi, lo = chain(row, h, w), chain(row, min(h, cfg.low), w)
            ng = (1 - mu) * lo + mu * hi
            p = (1 - lam) * lm[r, w] + lam * ng
            grads.append((k, lam * (1 - lam) * (ng - lm[r, w]) / p, lam * mu * (1 - mu) * (hi - lo) / p))
        g_lam, g_mu = np.zeros_like(lam_k), np.zeros_like(mu_k)
        for k, ga, gm in grads:
            g_lam[k] += ga
            g_mu[k] += gm
        lam_k = np.clip(lam_k + cfg.lr * lam_k * (1 - lam_k) * g_lam, cfg.lo, 1 - cfg.lo)
        mu_k = np.clip(mu_k + cfg.lr * mu_k * (1 - mu_k) * g_mu, cfg.lo, 1 - cfg.lo)
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


@pytest.mark.parametrize("order,low,seed,V,T,lr", [(3, 2, 0, 7, 9, 0.3), (1, 1, 1, 7, 9, 0.3), (4, 2, 2, 7, 9, 0.3),
                                                   (2, 2, 3, 7, 9, 0.3), (3, 2, 5, 23, 40, 50.0)])
def test_mixture_equals_the_slow_reference(order, low, seed, V, T, lr):
    """The last case: a larger vocabulary and a longer stream, so contexts gather more than the
    four followers an entry starts with, and a step size that drives weights to their clip."""
    lm_steps, ids_steps, V, rows = _steps(V=V, T=T, seed=seed)
    cfg = MixerConfig(order=order, low=low, lr=lr)
    ref = _reference_run(lm_steps, ids_steps, V, cfg)
    mixer = ContextMixer(V, rows, cfg)
    for t, (lm, ids) in enumerate(zip(lm_steps, ids_steps)):
        out = mixer.mix(lm.copy()).copy()
        np.testing.assert_allclose(out, ref[t], rtol=1e-11, atol=1e-15, err_msg=f"step {t}")
        assert np.all(out > 0) and np.allclose(out.sum(1), 1.0, atol=1e-12)
        mixer.update(ids)
    assert np.any(mixer.lam[1:] != 0.5) and (order == low or np.any(mixer.mu != 0.5))   # the weights moved
    if T > 20:
        assert max(len(e[0]) for table in mixer.tables for e in table.values()) > 4   # entries grew
        assert np.any((mixer.lam == cfg.lo) | (mixer.lam == 1 - cfg.lo))       # and a weight hit its clip


def test_encoder_and_decoder_inputs_give_the_same_floats():
    """What decoding relies on: the encoder hands the mixer views of a reused float64 buffer and
    int32 token arrays, the decoder (here) fresh copies and int64 lists; the mixtures agree bit for bit."""
    lm_steps, ids_steps, V, rows = _steps(V=50, rows=6, T=30, seed=4)
    enc, dec = ContextMixer(V, rows), ContextMixer(V, rows)
    buf = np.empty((rows, V))
    for lm, ids in zip(lm_steps, ids_steps):
        buf[:len(lm)] = lm
        a = enc.mix(buf[:len(lm)])
        b = dec.mix(np.array(lm, dtype=np.float64, order="C"))
        assert a.tobytes() == b.tobytes()
        enc.update(np.asarray(ids, dtype=np.int32))
        dec.update([int(x) for x in ids])


def test_golden_mixture():
    """Format 4 files depend on every constant of the mixer: this digest of its output on a fixed
    stream must not change (if it must, old files no longer decode: that is a new format version)."""
    lm_steps, ids_steps, V, rows = _steps(V=31, rows=5, T=25, seed=7)
    mixer, h = ContextMixer(V, rows), hashlib.sha256()
    for lm, ids in zip(lm_steps, ids_steps):
        h.update(mixer.mix(lm).tobytes())
        mixer.update(ids)
    assert h.hexdigest()[:16] == GOLDEN


def test_update_before_mix_is_refused():
    with pytest.raises(RuntimeError, match="before mix"):
        ContextMixer(5, 2).update([1, 2])


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
