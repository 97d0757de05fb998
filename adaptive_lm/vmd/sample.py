"""Sampling from a VMD (or its MDM baseline) with the ONE diffusion loop (diffusion/sampler.py).

The mask predictor is the loop's remasking score — ``top_prob`` (max_j p(x_i = j | x_t)),
``margin`` (p(j1) - p(j2)) or ``random`` — and each step commits the K best masked positions, K
from the NFE budget (``FixedLength``'s linear schedule, per block). VMD adds only a conditioner:
z ~ N(0, I) drawn once per block of each sequence (brief: "draw z once per sequence"), or again
before every step with ``redraw=True`` (the reviewers' question).

    out, nfes = sample(model, canvases, nfe=5, policy="margin", mask_id=tok.mask_id, generator=g)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..diffusion.sampler import FixedLength, Row, SpecialIds, denoise, model_logits_fn
from ..errors import UsageError
from .model import VMD

POLICIES = {"top_prob": "low_confidence", "margin": "margin", "random": "random"}


@dataclass
class LatentConditioner:
    """z for each row: a fresh N(0, I) draw from the row's own generator when the row enters a new
    block (or at every step with ``redraw``)."""
    latent_dim: int               # D
    block_size: int = 0           # 0 = one block (the whole canvas)
    redraw: bool = False          # a new z before every forward pass

    def __call__(self, row: Row) -> torch.Tensor:
        bs = self.block_size or row.canvas.numel()
        key = row.nfe if self.redraw else row.ptr // bs
        if row.latent is None or key != row.latent_key:
            row.latent = torch.randn(self.latent_dim, generator=row.generator)
            row.latent_key = key
        return row.latent                                                     # (D,)


@torch.no_grad()
def sample(model: VMD, canvases: torch.Tensor, *, nfe: int, policy: str = "top_prob", mask_id: int,
           redraw: bool = False, generator: Optional[torch.Generator] = None, batch_size: int = 1024,
           temperature: float = 0.0, trace: Optional[list] = None, eos_id: Optional[int] = None,
           pad_id: Optional[int] = None) -> tuple[torch.Tensor, list[int]]:
    """Fill the masks of canvases (N, L) (``mask_id`` where undecided, e.g. all masks, or a Sudoku's
    blanks) in ``nfe`` steps per sequence (divided evenly among the blocks). Returns the filled
    canvases (N, L) and the forward passes each sequence took. ``trace``: a list that receives each
    sequence's step-by-step trace (the sampler's: canvas and committed positions per step).
    ``eos_id`` / ``pad_id``: the tokenizer's (the loop validates them; rows here are whole canvases,
    so neither is ever read); without them, two ids other than the mask's stand in."""
    if policy not in POLICIES:
        raise UsageError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    canvases = canvases.cpu()                  # the loop's rows live on the CPU; the model's work moves to it
    N, L = canvases.shape
    cfg = model.config
    if nfe < 1:
        raise UsageError(f"nfe must be >= 1, got {nfe}")
    pol = FixedLength(length=L, block_length=cfg.block_size or L, steps=nfe)
    cond = LatentConditioner(cfg.latent_dim, cfg.block_size, redraw) if cfg.latent_dim else None
    stand_in = [i for i in range(3) if i != mask_id]
    ids = SpecialIds(mask=mask_id, eos=stand_in[0] if eos_id is None else eos_id,
                     pad=stand_in[1] if pad_id is None else pad_id, vocab_size=cfg.vocab_size)
    model.eval()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    outs, nfes = [], []
    for a in range(0, N, batch_size):          # denoise draws one seed per row from g: chunking changes nothing
        chunk = canvases[a:a + batch_size]
        res = denoise(model_logits_fn(model), [[] for _ in range(len(chunk))], policy=pol, ids=ids,
                      remasking=POLICIES[policy], temperature=temperature, generator=g,
                      canvases=list(chunk), conditioner=cond, max_seq_len=cfg.max_seq_len, trace=trace is not None)
        outs.append(torch.tensor(res.canvases))
        nfes += [s["nfe"] for s in res.stats]
        if trace is not None:
            trace.extend(res.traces)
    return torch.cat(outs), nfes
