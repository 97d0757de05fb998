"""CALM decoding: per-token early exit with a KV cache and state propagation, as a step policy of
the ONE causal sampling loop (``adaptive_lm.lm.generate``).

For each new token the layers run one at a time. After each exit layer i (every k-th) a confidence
score c_i is compared with the decaying threshold λ_t (CALM §"Decaying threshold"):
    λ_t = clip_[0,1]( 0.9·λ + 0.1·exp(−τ·t/N) )          (the paper's formula, default)
    λ_t = 0.9·λ + λ·exp(−τ·t/N) / 10                     (the reference code's, ``decay="reference"``)
t the generated token's index, N the generation budget. A sequence whose c_i ≥ λ_t emits its token
from layer i's logits (the shared final norm + head) and skips the rest: its hidden state h_i is
copied up and each skipped layer fills ITS OWN K/V from it (CALM §"Skipped layers"; copying projected
K/V instead degrades quality). λ ≥ 1 never exits: the plain model.

``kv="recompute"`` (the alternative the brief names, as in FREE / EE-LLM) leaves the skipped layers
empty instead and fills them with their true values later, only when a later token needs them: at
layer i a step runs the new token together with every earlier token still lacking layer i (a
window of the last W_i positions, the cache rewound to its start), resuming each from the hidden
state it exited with. Layer 1 always runs the new token alone; a deeper layer takes the tokens that
exited below it. The cache then holds the full model's K/V at every layer a later token reads, so
an early exit can only change its own token, never a later one through a perturbed cache. It costs
more arithmetic (W_i ≥ 1 positions at layer i) but not more layer invocations, which is what a small
model's decode step is bound by.

Sequences of a batch exit at their own depths within the same step: each emits its token from its
own exit layer. With state propagation each layer runs only on the sequences still active
(``StepContext.select``). With recompute a decided row rides along until every row's token is
decided (its upper K/V then come out exact too, and a small model's layer costs about the same for
all rows as for a subset).

Measures: ``margin`` (softmax top-1 − top-2, the paper's default), ``top1``, ``state`` (cosine
between h_i and h_{i−1}, per example), ``classifier`` (the trained exit classifier), ``patience``
(not in the paper: the margin, with its distance to 1 halved for every consecutive earlier exit
layer of this token whose argmax was the same, c_i = 1 − (1 − margin_i)·2^(−k_i) in float32 —
patience-based exit (PABEE, Zhou et al. 2020) made a graded score that one λ calibrates), ``static``
(the baseline the paper compares with: every token exits at the same layer, the first exit layer
at or above max(⌈λ·L⌉, min_layer), no confidence computed; the decay λ_t is not used; calibrated
like the others, over λ = k/L for the exit layers k), and
``oracle`` — the floor: the full model runs and the token is marked as exiting at the first layer
whose argmax equals the top layer's (tokens and cache are the full model's; a measurement, not
a speed-up), and ``replay`` — exits at depths given in advance (``CalmStep(..., schedule=)``: per
sequence, the layer of each token, as an ExitRecord holds them; the threshold is not used), no
confidence computed. Replaying the oracle's record with ``kv="recompute"`` decodes the full model's
tokens at the cost of a perfect confidence measure that costs nothing: the speed ceiling of every
decode that keeps the full model's tokens on those prompts.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..confidence import margin, top1
from .exits import ExitClassifier, exit_layers

EXIT_MEASURES = ("margin", "top1", "state", "classifier", "patience", "static")   # those that decide exits (and can be calibrated)
MEASURES = EXIT_MEASURES + ("oracle", "replay")
KV_MODES = ("propagate", "recompute")


def _as_float32(x: float) -> float:
    """x rounded to float32 (what ``score_f32 >= x`` compares against in torch)."""
    return struct.unpack("f", struct.pack("f", x))[0] if math.isfinite(x) else x


@dataclass
class CalmConfig:
    """How CALM decodes (module docstring): the confidence measure compared after each exit layer
    with the decaying threshold λ_t (``threshold_at``), where exits are tried, and how skipped layers
    get their K/V. ``threshold`` is usually the certified λ of ``calibrate`` (calm.json)."""
    measure: str = "margin"        # confidence measure: margin, top1, state, classifier, patience, static (exit at ⌈λ·L⌉), oracle, replay
    threshold: float = 1.0         # λ; >= 1 never exits (the plain model)
    tau: float = 4.0               # decay temperature τ of λ_t; 0 = constant threshold
    decay: str = "paper"           # paper or reference formula for λ_t
    every: int = 1                 # try an exit after every k-th layer
    min_layer: int = 1             # no exit below this layer
    horizon: int = 0               # N of λ_t; 0 = the generation budget (calibrate stores the one it used)
    kv: str = "propagate"          # skipped layers' K/V: propagate (the paper: from the exit state) or recompute (exact, later)

    def __post_init__(self):
        num = (int, float)
        if not (isinstance(self.threshold, num) and self.threshold == self.threshold):    # not NaN
            raise ValueError(f"threshold must be a number (>= 1: never exit; λ_t is clipped to [0, 1]), "
                             f"not {self.threshold!r}")
        if not (isinstance(self.tau, num) and self.tau >= 0):
            raise ValueError(f"tau must be a number >= 0, not {self.tau!r}")
        if not (isinstance(self.every, int) and self.every >= 1 and isinstance(self.min_layer, int)
                and self.min_layer >= 1 and isinstance(self.horizon, int) and self.horizon >= 0):
            raise ValueError(f"every and min_layer must be integers >= 1 and horizon >= 0, not "
                             f"{self.every!r}, {self.min_layer!r}, {self.horizon!r}")


def threshold_at(cfg: CalmConfig, t: int, n: int) -> float:
    """λ_t for the t-th generated token of a budget of n (module docstring)."""
    lam = cfg.threshold
    if lam >= 1.0:
        return math.inf
    n = cfg.horizon or n
    e = math.exp(-cfg.tau * t / max(n, 1))
    if cfg.decay == "paper":
        return min(max(0.9 * lam + 0.1 * e, 0.0), 1.0)
    if cfg.decay == "reference":
        return 0.9 * lam + lam * e / 10
    raise ValueError(f"decay must be paper or reference, not {cfg.decay!r}")


def static_layer(threshold: float, n_layer: int) -> int:
    """The exit layer of measure ``static`` for λ: ⌈λ·L⌉, at least 1 (λ = k/L gives layer k)."""
    return max(1, min(n_layer, math.ceil(threshold * n_layer - 1e-9)))


@dataclass
class ExitRecord:
    """What a CALM decode did: per sequence, the layer each generated token exited at."""
    layers: list[list[int]] = field(default_factory=list)

    def mean_layers(self) -> float:
        flat = [x for row in self.layers for x in row]
        return sum(flat) / max(len(flat), 1)


class CalmStep:
    """The step policy: ``generate(model, prompts, ..., step=CalmStep(cfg, max_new_tokens))``.

    ``max_new_tokens`` is the N of λ_t (unless ``cfg.horizon`` is set): pass the budget given to
    ``generate``. The prompt (the step that starts an empty cache) runs at full depth, so the first
    generated token counts n_layer. ``record.layers[r]`` holds the depth of every token sequence r produced, its EOS
    included; a finished sequence (fed padding) records nothing. ``schedule`` (measure ``replay``):
    per sequence of the batch, the layer each token exits at, indexed as ``record.layers`` (entry 0,
    the prompt's token, is not used; a token past its list runs at full depth)."""

    def __init__(self, cfg: CalmConfig, max_new_tokens: int, classifier: Optional[ExitClassifier] = None,
                 schedule: Optional[list[list[int]]] = None):
        if cfg.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, not {cfg.measure!r}")
        if cfg.measure == "classifier" and classifier is None:
            raise ValueError("measure=classifier needs a trained exit classifier")
        if (cfg.measure == "replay") != (schedule is not None):
            raise ValueError("measure=replay needs a schedule of exit layers, and only it takes one")
        if cfg.kv not in KV_MODES:
            raise ValueError(f"kv must be one of {KV_MODES}, not {cfg.kv!r}")
        self.cfg, self.n, self.clf, self.schedule = cfg, max_new_tokens, classifier, schedule
        self.t = 1                           # index of the next token decoded here (0 = from the prompt)
        self.record = ExitRecord()

    def __call__(self, m, ids, mask, cache) -> torch.Tensor:
        B, T = ids.shape
        if cache is None or cache.length == 0:                            # the prompt: full depth, which
            if self.schedule is not None and len(self.schedule) != B:
                raise ValueError(f"the replay schedule has {len(self.schedule)} sequences for a batch of {B}")
            self.t, self.record = 1, ExitRecord([[m.config.n_layer] for _ in range(B)])   # gives token 0
            self.ids, self.mask = ids, mask                               # (B, P) what the cache holds
            self.depth = [m.config.n_layer] * T       # kv=recompute: per cache position, the layers it holds
            self.hid: Optional[torch.Tensor] = None   # (B, max_len, C) each position's last computed state
            return m(ids, attention_mask=mask, cache=cache).logits[:, -1]
        lam = threshold_at(self.cfg, self.t, self.n) if self.cfg.measure != "replay" else 0.0   # replay: exits allowed
        self.t += 1
        if self.cfg.measure == "oracle":
            return self._oracle(m, ids, mask, cache)
        return self._early_exit(m, ids, mask, cache, lam)

    def _widen(self, m, cache, i: int, win: int, h, rows: list[int]):
        """kv=recompute, before layer i: extend the window [win, end) back to the first position
        lacking layer i (``self.depth`` falls with the position, so one scan from the end finds it).
        Those positions hold layers < i exactly (depth i − 1) and resume from their stored states.
        -> (window start, h (b, W_i, C), the window's context, its rows' context)."""
        s = win
        while s > 0 and self.depth[s - 1] < i:
            s -= 1
        if s == win:
            return win, h, None, None
        cache.rewind(s)                                                   # the window's tokens are written again
        ctx = m.prepare(self.ids[:, s:], attention_mask=self.mask[:, s:], cache=cache)
        if len(rows) == self.ids.shape[0]:
            return s, torch.cat([self.hid[:, s:win], h], 1), ctx, ctx
        idx = torch.tensor(rows, dtype=torch.long, device=h.device)
        return s, torch.cat([self.hid[idx, s:win], h], 1), ctx, ctx.select(idx)

    def _confidence(self, m, i: int, h, prev, streak: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(b,) confidence at layer i for hidden states h (b, C); also the logits when computed.
        ``streak`` (measure patience): the rows' argmax at the previous exit layer tried ("arg")
        and how many exits in a row before it agreed ("k"), updated here."""
        mea = self.cfg.measure
        if mea in ("margin", "top1"):
            logits = m.unembed(h)
            return (margin(logits) if mea == "margin" else top1(logits)), logits
        if mea == "patience":
            logits = m.unembed(h)
            arg = logits.argmax(-1)
            k = torch.zeros_like(arg) if "arg" not in streak else (streak["k"] + 1) * (arg == streak["arg"])
            streak["arg"], streak["k"] = arg, k
            return 1 - (1 - margin(logits)) * 0.5 ** k, logits
        if mea == "state":
            return F.cosine_similarity(h.float(), prev.float(), dim=-1), None
        return self.clf(i, h), None

    def _fixed_depths(self, rows: list[int], L: int) -> Optional[list[int]]:
        """Measures static and replay: per running row, the layer its token exits at (decided before
        the step, no confidence computed); None for the confidence measures."""
        if self.cfg.measure == "static":
            return [static_layer(self.cfg.threshold, L)] * len(rows)
        if self.cfg.measure == "replay":
            t = self.t - 1                                                # this token's index in record.layers
            return [self.schedule[r][t] if t < len(self.schedule[r]) else L for r in rows]
        return None

    def _early_exit(self, m, ids, mask, cache, lam: float) -> torch.Tensor:
        """One step of one new token per row. The per-row decisions are kept in Python lists: a
        decode step of a small batch is bound by the number of torch calls, not by their arithmetic."""
        L, recompute = m.config.n_layer, self.cfg.kv == "recompute"
        ctx = m.prepare(ids, attention_mask=mask, cache=cache)
        end = ctx.start + ctx.new_len                                     # cache length after this step
        h_all = m.embed(ids, ctx=ctx)                                     # (B, 1, C)
        B = h_all.shape[0]
        if recompute:
            self.ids, self.mask = torch.cat([self.ids, ids], 1), torch.cat([self.mask, mask], 1)
            self.depth.append(0)
            if self.hid is None:
                self.hid = h_all.new_zeros(B, cache.max_len, h_all.shape[-1])
        win = ctx.start                                                   # kv=recompute: the window's first position
        out = torch.zeros(B, m.config.vocab_size, device=h_all.device, dtype=h_all.dtype)
        rows = [r for r, real in enumerate(mask[:, -1].tolist()) if real]   # rows still running; padding never runs
        h, sub = (h_all, ctx) if len(rows) == B else (h_all[rows], ctx.select(torch.tensor(rows, dtype=torch.long, device=h_all.device)))
        exits = set(exit_layers(L, self.cfg.every))
        lam32 = _as_float32(lam)                      # compared as torch compares a float32 score with λ
        fixed = self._fixed_depths(rows, L)           # static / replay: per running row, its exit layer
        streak: dict = {}                             # patience: per running row, the argmax run so far
        open_ = [True] * len(rows)                    # per running row: is its token still undecided?
        late_rows, late_h = [], []                    # decided rows whose logits are not computed yet: one unembed at the end
        for i in range(1, L + 1):
            if not rows:
                break
            if recompute:
                win, h, wide, wide_sub = self._widen(m, cache, i, win, h, rows)
                if wide is not None:
                    ctx, sub = wide, wide_sub
            prev, h = h, m.layer(i - 1, h, sub)
            if recompute:                                                 # these positions now hold layer i
                self.depth[win:end] = [i] * (end - win)
                if i < L and lam != math.inf:                             # (never exiting: never read)
                    self.hid[rows if len(rows) < B else slice(None), win:end] = h
            if i == L:
                still = [j for j, o in enumerate(open_) if o]
                late_rows += [rows[j] for j in still]
                late_h.append(h[still, -1])
                for j in still:
                    self.record.layers[rows[j]].append(L)
                break
            if i not in exits or i < self.cfg.min_layer or lam == math.inf:
                continue
            if fixed is not None:
                go, logits = [o and i >= d for o, d in zip(open_, fixed)], None
            else:
                conf, logits = self._confidence(m, i, h[:, -1], prev[:, -1] if self.cfg.measure == "state" else None,
                                                streak)
                go = [o and c >= lam32 for o, c in zip(open_, conf.tolist())]
            if not any(go):
                continue
            g = [j for j, x in enumerate(go) if x]
            if len(g) == B and logits is not None:                        # every row decides here (batch 1: always)
                out = logits.to(out.dtype)
            elif logits is not None:
                out[[rows[j] for j in g]] = logits[g].to(out.dtype)
            else:
                late_rows += [rows[j] for j in g]
                late_h.append(h[g, -1])
            for j in g:
                self.record.layers[rows[j]].append(i)
            if recompute:                   # decided rows ride along (their upper K/V come out exact too,
                open_ = [o and not x for o, x in zip(open_, go)]   # and a layer costs about the same for b rows as for fewer)
                if not any(open_):
                    break
                continue
            gi = torch.tensor(g, dtype=torch.long, device=h.device)
            h_exit, g_ctx = h[gi], sub.select(gi)
            for j in range(i, L):                                          # state propagation
                m.fill_kv(j, h_exit, g_ctx)
            keep = [j for j, x in enumerate(go) if not x]
            ki = torch.tensor(keep, dtype=torch.long, device=h.device)
            rows, h, sub, open_ = [rows[j] for j in keep], h[ki], sub.select(ki), [open_[j] for j in keep]
            fixed = None if fixed is None else [fixed[j] for j in keep]
            streak = {key: v[ki] for key, v in streak.items()}
        if late_rows:
            out[late_rows] = m.unembed(torch.cat(late_h) if len(late_h) > 1 else late_h[0]).to(out.dtype)
        m.commit(ctx)
        return out

    def _oracle(self, m, ids, mask, cache) -> torch.Tensor:
        res = m(ids, attention_mask=mask, cache=cache, output_hidden_states=True)
        logits = res.logits[:, -1]
        top = logits.argmax(-1)
        L = m.config.n_layer
        first = torch.full_like(top, L)
        for i in reversed(exit_layers(L, self.cfg.every)[:-1]):          # lowest agreeing exit layer
            if i >= self.cfg.min_layer:
                agree = m.unembed(res.hidden_states[i][:, -1]).argmax(-1) == top
                first = torch.where(agree, torch.full_like(first, i), first)
        for r in mask[:, 0].bool().nonzero().squeeze(1).tolist():
            self.record.layers[r].append(int(first[r]))
        return logits
