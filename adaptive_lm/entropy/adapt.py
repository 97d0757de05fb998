"""Adaptive context mixing for the LM compressor: the LM's next-token distribution mixed with
token n-gram statistics learned from the file being coded, as it is coded.

A small LM knows its training genre; on text of another genre (or on a file that repeats its own
names and phrases, as documentation does) statistics gathered from the file itself predict what the
LM cannot. For a batch of rows coded in lockstep (codec.code_batch), step t sees the counts of
every token the batch has coded so far (positions < t of all its rows), which encoder and decoder
both know. Per row with previous tokens x_{t-K} .. x_{t-1} and h the highest order whose context
has been seen (contexts of orders 1 .. h all have counts):

    p_0(w)   = (c(w) + 1/2) / (N + V/2)                                      add-1/2 unigram
    p_o(w)   = (c(ctx_o, w) + d(ctx_o)·p_{o−1}(w)) / (n(ctx_o) + d(ctx_o))   Witten–Bell interpolation,
                                                                             d = distinct followers
    p_ng(w)  = (1 − μ_k)·p_min(h, low)(w) + μ_k·p_h(w)                        short and long chain
    p(w)     = (1 − λ_k)·p_LM(w) + λ_k·p_ng(w)

λ_k and μ_k are learned online, one pair per bucket k = (h, ⌊log2(n(ctx_h) + 1)⌋) for h ≥ 1 and one
bucket for every row with no seen context (h = 0). After each step each takes the step a logit
would take on the log-loss of the rows in its bucket (the two-model case of the logistic mixing of
PAQ-style compressors, in probability space), written in the weight itself:
    λ ← clip(λ + lr·λ(1 − λ)·Σ_rows λ(1 − λ)(p_ng − p_LM)/p)
    μ ← clip(μ + lr·μ(1 − μ)·Σ_rows λ·μ(1 − μ)(p_h − p_low)/p)
— only +, −, ×, ÷, which IEEE-754 rounds the same on every CPU (no exp, whose numpy kernel varies
with the CPU's instruction set and numpy's version).

Mixing a short chain (low = 2) with the long one (K = 3 by default) keeps what high orders give on
repetitive text (pydocs) without their cost on text whose long contexts are rarely seen twice
(prose). Every quantity is computed in float64 numpy, separate ufuncs (never a fused multiply-add,
whose rounding differs), from the same inputs in the same order on both
sides, so decoding reproduces the encoder's distribution bit for bit. Rows are a batch's first
``live`` rows (longest first).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Format 4 of the compressor depends on every constant below and on MixerConfig's defaults except
# order and low (which a file's header records): change one and old files no longer decode. A golden
# test (tests/entropy/test_adapt.py) guards them.
BUCKETS = 12                       # count buckets per order: ⌊log2(n + 1)⌋ capped at BUCKETS − 1
MAX_ORDER = 15                     # the longest context a file can name (4 bits of its header)


@dataclass(frozen=True)
class MixerConfig:
    order: int = 3                 # K: the longest context, in tokens (in the file's header)
    low: int = 2                   # the short chain's longest context, <= order (in the file's header)
    lr: float = 0.05               # step size of λ_k, μ_k (as of their logits; per step, summed over rows)
    init_uni: float = 0.05         # λ of the bucket with no seen context, at the start (others: 0.5)
    lo: float = 0.0025             # λ, μ within [lo, 1 − lo]


def mixer_config(order: int):
    """The mixing of ``compress --adapt order``: contexts of up to ``order`` tokens with the short
    chain at MixerConfig.low (or ``order`` if shorter); None for 0 (the LM alone)."""
    return MixerConfig(order=order, low=min(order, MixerConfig.low)) if order else None


class ContextMixer:
    """The state of one lockstep batch: ``probs = mixer.mix(lm_probs)`` before a step is coded,
    ``mixer.update(ids)`` after (module docstring)."""

    def __init__(self, vocab_size: int, rows: int, cfg: MixerConfig = MixerConfig()):
        if not 1 <= cfg.low <= cfg.order <= MAX_ORDER:
            raise ValueError(f"need 1 <= low <= order <= {MAX_ORDER}, not low={cfg.low}, order={cfg.order}")
        self.cfg = cfg
        self.uni = np.zeros(vocab_size)                  # c(w)
        self.n = 0                                       # N
        # order o = 1 .. K at index o − 1: ctx (the last o tokens) -> entry [slots {w: i}, ids int64 (cap,),
        # counts float64 (cap,), n(ctx)]: the followers' ids and counts in growing arrays, read as views
        self.tables: list[dict] = [{} for _ in range(cfg.order)]
        self.hist: list[tuple] = [() for _ in range(rows)]       # each row's last K tokens
        nb = BUCKETS * (cfg.order + 1)
        self.lam = np.full(nb, 0.5)                      # λ_k per bucket (bucket 0: no seen context)
        self.lam[0] = cfg.init_uni
        self.mu = np.full(nb, 0.5)                       # μ_k per bucket
        self.out: np.ndarray | None = None               # (rows, V) float64 the mixture, reused across steps
        self.tmp: np.ndarray | None = None               # (rows, V) float64 scratch
        self._step: tuple | None = None                  # what mix() computed, for update()

    def _row(self, hist: tuple):
        """One row's chain: ([(entry, weight in p_h, weight in p_low)] highest order first, p_0's
        weight in p_h, in p_low, bucket). A count c(ctx_o, w) enters p_h with weight
        Π_{j>o} e_j / (n_o + d_o), e_j = d_j / (n_j + d_j) the escape of order j."""
        seen = []
        for o in range(1, len(hist) + 1):
            e = self.tables[o - 1].get(hist[-o:])
            if e is None:
                break
            seen.append(e)
        K, low = len(seen), self.cfg.low
        chain, hi, lo = [], 1.0, 1.0
        for o in range(K, 0, -1):                                          # highest order first
            e = seen[o - 1]
            n, d = e[3], len(e[0])
            if o <= low:
                chain.append((e, hi / (n + d), lo / (n + d)))
                lo *= d / (n + d)
            else:
                chain.append((e, hi / (n + d), 0.0))
            hi *= d / (n + d)
        bucket = K * BUCKETS + min((seen[-1][3] + 1).bit_length() - 1, BUCKETS - 1) if K else 0
        return chain, hi, lo, bucket

    def mix(self, lm: np.ndarray) -> np.ndarray:
        """lm (live, V) float64: the LM's probabilities (left intact for ``update``) -> the mixture
        (live, V) float64, a buffer reused at the next step."""
        live, V = lm.shape
        if self.out is None:
            self.out, self.tmp = np.empty((len(self.hist), V)), np.empty((len(self.hist), V))
        res, tmp = self.out[:live], self.tmp[:live]
        p_uni = (self.uni + 0.5) / (self.n + 0.5 * V)                     # (V,)
        rows = [self._row(h) for h in self.hist[:live]]
        bucket = np.fromiter((r[3] for r in rows), np.int64, live)
        lam, mu = self.lam[bucket], self.mu[bucket]                      # (live,) each
        uni_w = lam * (mu * np.fromiter((r[1] for r in rows), np.float64, live)
                       + (1.0 - mu) * np.fromiter((r[2] for r in rows), np.float64, live))
        np.multiply(lm, (1.0 - lam)[:, None], out=res)                 # separate ufuncs, never a fused
        np.multiply.outer(uni_w, p_uni, out=tmp)                        # multiply-add: the same rounding
        res += tmp                                                      # on every CPU
        rs, ix, ws = [], [], []                                           # one (row, id) at most once per order
        for r, (chain, _, _, _) in enumerate(rows):
            lr_, m_ = lam[r], mu[r]
            for e, w_hi, w_lo in chain:
                d = len(e[0])
                rs.append((r, d))
                ix.append(e[1][:d])
                ws.append(e[2][:d] * (lr_ * (m_ * w_hi + (1.0 - m_) * w_lo)))
        if rs:                            # np.add.at: a (row, id) pair recurs across a row's orders
            r_idx = np.repeat(np.fromiter((r for r, _ in rs), np.int64, len(rs)), [d for _, d in rs])
            np.add.at(res, (r_idx, np.concatenate(ix)), np.concatenate(ws))
        self._step = (lm, lam, mu, bucket, p_uni, rows)
        return res

    def update(self, ids) -> None:
        """The tokens just coded (live,): learn the bucket logits, then count the tokens."""
        if self._step is None:
            raise RuntimeError("ContextMixer.update() before mix(): mix the step's distribution first")
        lm, lam, mu, bucket, p_uni, rows = self._step
        self._step = None
        ids = np.asarray(ids, dtype=np.int64)
        live = len(ids)
        p_lm = lm[np.arange(live), ids]
        p_hi, p_lo = np.empty(live), np.empty(live)
        for r, ((chain, u_hi, u_lo, _), w) in enumerate(zip(rows, ids.tolist())):
            hi, lo = u_hi * p_uni[w], u_lo * p_uni[w]
            for e, w_hi, w_lo in chain:
                i = e[0].get(w)
                if i is not None:
                    c = e[2][i]
                    hi, lo = hi + c * w_hi, lo + c * w_lo
            p_hi[r], p_lo[r] = hi, lo
        p_ng = mu * p_hi + (1.0 - mu) * p_lo
        p = (1.0 - lam) * p_lm + lam * p_ng
        n, c = self.lam.size, self.cfg
        # ∂ log p / ∂ logit, summed per bucket
        g_lam = np.bincount(bucket, weights=lam * (1.0 - lam) * (p_ng - p_lm) / p, minlength=n)
        g_mu = np.bincount(bucket, weights=lam * mu * (1.0 - mu) * (p_hi - p_lo) / p, minlength=n)
        self.lam = np.clip(self.lam + c.lr * self.lam * (1.0 - self.lam) * g_lam, c.lo, 1.0 - c.lo)
        self.mu = np.clip(self.mu + c.lr * self.mu * (1.0 - self.mu) * g_mu, c.lo, 1.0 - c.lo)
        np.add.at(self.uni, ids, 1.0)
        self.n += live
        K, tables = self.cfg.order, self.tables
        for r, w in enumerate(ids.tolist()):          # count w after each context: the hot loop of a step
            h = self.hist[r]
            for o in range(1, len(h) + 1):
                table, ctx = tables[o - 1], h[-o:]
                e = table.get(ctx)
                if e is None:
                    e = table[ctx] = [{}, np.empty(4, np.int64), np.zeros(4), 0]
                i = e[0].get(w)
                if i is None:
                    i = e[0][w] = len(e[0])
                    if i == len(e[1]):
                        e[1] = np.concatenate([e[1], np.empty(i, np.int64)])
                        e[2] = np.concatenate([e[2], np.zeros(i)])
                    e[1][i] = w
                e[2][i] += 1.0
                e[3] += 1
            self.hist[r] = (h + (w,))[-K:]
