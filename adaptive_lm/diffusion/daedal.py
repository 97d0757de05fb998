"""DAEDAL: variable-length denoising for masked diffusion LMs (arXiv 2508.00819), as a policy of
the one sampling loop (sampler.py). Training-free: it reads the model's own EOS confidence.

Stage 1 — initial length adjustment: start from L_init masks; forward; while the sequence's EOS
confidence < τ_eos and its canvas < L_max, append E_factor masks and look again. Then (as the
reference code does) append ``eos_tail`` = W_eos/2 literal EOS tokens, capped at L_max.

Stage 2 — iterative mask insertion, one forward pass per step, a block pointer over 32-token
blocks: fill every mask of the current block with confidence > τ_high (or the single most
confident one); among the block's other masks with confidence < τ_low, if the EOS confidence
< τ_expand and the canvas < L_max, replace the least confident by E_factor masks (at most one
expansion per sequence per step). The pointer advances when its block has no masks; the sequence
is finished when it passes the end.

EOS confidence (brief, "DAEDAL"): scan the canvas backwards; among positions whose argmax is EOS,
sum their EOS probabilities until W_eos are collected; divide by W_eos (missing ones count 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import UsageError
from .sampler import Policy, Prediction, Row, SpecialIds, advance, block_masks, commit, fill_above


def eos_confidence(pred: Prediction, eos_id: int, window: int) -> float:
    """Mean EOS probability over the last ``window`` positions whose argmax is EOS (zeros pad)."""
    is_eos = (pred.argmax == eos_id).nonzero().flatten()
    last = is_eos[-window:]
    return float(pred.p_eos[last].sum()) / window


@dataclass
class Daedal(Policy):
    """DAEDAL's two stages as a policy of ``denoise``: stage 1 grows a short all-mask canvas by
    W_eos masks while the model's EOS confidence at its end is below ``tau_eos`` (Algorithm 1,
    initial length adjustment); stage 2 denoises block by block, fills masks above ``tau_high`` and
    expands the least confident one (below ``tau_low``) into ``w_expand`` masks (mask insertion).
    Pass an instance: ``denoise(fn, prompts, policy=Daedal(init_length=32), ids=...)``."""
    init_length: int = 64         # L_init: response masks to start from
    max_length: int = 2048        # L_max: the canvas never grows past it
    block_length: int = 32        # stage-2 block pointer granularity
    tau_high: float = 0.9         # fill threshold
    tau_low: float = 0.1          # expansion candidates: masks below this confidence
    tau_eos: float = 0.5          # stage 1: grow while EOS confidence is below it
    tau_expand: float = 0.9       # stage 2: expand only while EOS confidence is below it
    e_factor: int = 8             # masks added per expansion
    w_eos: int = 32               # EOS-confidence window
    eos_tail: Optional[int] = None   # EOS tokens appended after stage 1; None = w_eos // 2 (reference code)
    order: str = "confidence"     # fill: every mask above τ_high, or the leftmost run (sampler.py)
    thresholded = True

    def __post_init__(self):
        self.check_order()
        for name in ("tau_high", "tau_low", "tau_eos", "tau_expand"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise UsageError(f"{name} must be in [0, 1], got {v}")
        if self.init_length < 1 or self.e_factor < 1 or self.w_eos < 1 or self.block_length < 1:
            raise UsageError("init_length, e_factor, w_eos and block_length must be >= 1")
        if self.init_length > self.max_length:
            raise UsageError(f"L_init={self.init_length} exceeds L_max={self.max_length}")
        if self.eos_tail is None:
            self.eos_tail = self.w_eos // 2
        if self.eos_tail < 0:
            raise UsageError(f"eos_tail must be >= 0, got {self.eos_tail}")

    def initial_length(self) -> int:
        return self.init_length

    def prepare(self, rows: list[Row], predict, ids: SpecialIds) -> None:
        """Stage 1, batched: only sequences still growing take part in each forward pass."""
        growing = list(rows)
        while growing:
            keep = []
            for r, p in zip(growing, predict(growing)):
                n = r.canvas.numel()
                unsure = eos_confidence(p, ids.eos, self.w_eos) < self.tau_eos
                r.hit_max = unsure and n >= self.max_length          # wanted to grow, could not
                if unsure and n < self.max_length:
                    add = min(self.e_factor, self.max_length - n)
                    r.canvas = torch.cat([r.canvas, torch.full((add,), ids.mask, dtype=torch.long)])
                    keep.append(r)
                    if r.trace is not None:
                        r.trace.append({"canvas": r.canvas.tolist(), "committed": [], "inserted": list(range(n, n + add)),
                                        "ptr": 0, "stage": 1})
            growing = keep
        for r in rows:
            n = r.canvas.numel()
            tail = min(self.eos_tail, self.max_length - n)
            if tail > 0:
                r.canvas = torch.cat([r.canvas, torch.full((tail,), ids.eos, dtype=torch.long)])

    def step(self, row: Row, pred: Prediction, ids: SpecialIds):
        """One stage-2 step; returns (committed, inserted) positions, both in the canvas as it is
        after the step (a commit past an insertion is moved by the E_factor - 1 new masks)."""
        masks = block_masks(row, ids, self.block_length)
        fill = fill_above(pred, masks, self.tau_high, self.order)
        done = commit(row, pred, fill)
        inserted: list[int] = []
        rest = masks[~torch.isin(masks, fill)]
        cands = rest[pred.conf[rest] < self.tau_low]
        n = row.canvas.numel()
        if cands.numel() and eos_confidence(pred, ids.eos, self.w_eos) < self.tau_expand:
            pos = int(cands[pred.conf[cands].argmin()])
            k = min(self.e_factor, self.max_length - n + 1)          # replaces one mask: net +k-1
            if k > 1:
                row.canvas = torch.cat([row.canvas[:pos], torch.full((k,), ids.mask, dtype=torch.long), row.canvas[pos + 1:]])
                inserted = list(range(pos, pos + k))
                row.expansions += 1
                done = [p + k - 1 if p > pos else p for p in done]     # in the grown canvas's positions
            if k < self.e_factor:                                   # the cap cut an expansion short
                row.hit_max = True
        advance(row, ids, self.block_length)
        return done, inserted
