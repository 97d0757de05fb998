"""Masked diffusion LM objectives and the Monte-Carlo likelihood bound (LLaDA / MDLM).

Forward process: every token of x0 is replaced by [MASK] independently with probability t.
The model p_θ(x0 | x_t) predicts all masked tokens at once (bidirectional backbone).

- Pre-training loss (LLaDA eq. 3 / MDLM): t ~ U(ε, 1) per sequence,
      L = -E_t E_{x_t} [ (1/t) Σ_i 1[x_t^i = M] log p_θ(x0^i | x_t) ] / L
- SFT loss (LLaDA eq. 5): the prompt is never masked; only response positions (the answer
  followed by EOS padding up to the canvas) are masked with probability t, and the sum is
  divided by the response length. EOS padding is part of the target: that is what makes the
  model's EOS confidence at the tail of a canvas say whether the canvas is long enough (DAEDAL).
- Likelihood (LLaDA eq. 6, the low-variance form): l ~ U{1..L} masked positions drawn uniformly
  without replacement, NLL ≤ E_l [ (L/l) Σ_masked -log p_θ(x0^i | x_t) ].

The noise (t and the uniform draws that decide which positions are masked) travels IN the batch,
drawn by the batch builder from the step's generator, so the objective is a pure function and a
data-parallel run sees exactly the noise of a single-process run.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..model import forward_with_pattern, model_device


def draw_noise(batch_size: int, length: int, generator: torch.Generator, eps: float = 1e-3,
               stratified: bool = False):
    """t (B,) ~ U(eps, 1) and u (B, L) ~ U(0, 1); position i is masked where u < t.

    stratified: MDLM's low-discrepancy sampler — one uniform offset, t_i = (u0 + i/B) mod 1, so
    the batch covers the noise levels evenly and the loss has less variance.
    """
    if stratified:
        base = (torch.rand(1, generator=generator) + torch.arange(batch_size) / batch_size) % 1
        t = eps + (1 - eps) * base[torch.randperm(batch_size, generator=generator)]
    else:
        t = eps + (1 - eps) * torch.rand(batch_size, generator=generator)
    u = torch.rand(batch_size, length, generator=generator)
    return t, u


def semi_ar_noise(t: torch.Tensor, u: torch.Tensor, starts: list[int], ends: list[int], *, share: float,
                  block: int, generator: torch.Generator, future_weight: float = 1.0, block_weight: float = 1.0,
                  cut_points: Optional[list[list[int]]] = None, cut_share: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn a share of the rows into the view the semi-autoregressive sampler has (LLaDA's blocks):
    row i's response spans [starts[i], ends[i]); a cut k is drawn in it; positions before k are
    visible (decoded blocks), the block [k, k+block) is masked at the row's level t, and everything
    after it is masked. Such a row's masked tokens are weighted 1 instead of 1/t (t := 1 with the
    block's draws rescaled), so the always-masked future does not blow up the loss; this is a
    training heuristic beside the ELBO rows, not part of the bound. Without it the model learns to
    read a line's fate off the visible future, which the sampler never shows it.
    future_weight scales the loss of the always-masked future of those rows (its far digits are
    barely predictable and outnumber the block's tokens; the sampler only ever commits inside the
    block); block_weight scales the block's (a row's loss is divided by its whole canvas length, so
    at weight 1 a converted row counts ~L/block times less than an ELBO row — and its block is the
    only place where the model must compute a token from the past alone, without copying it from
    the visible future). Returns new (t (B,), u (B, L)) and loss weights w (B, L) (1 outside the
    converted rows' blocks and futures); the caller's tensors are not modified.
    cut_points / cut_share: with probability cut_share a converted row's cut is drawn from
    cut_points[i] (positions inside [starts[i], ends[i]); e.g. where a decision is made: a line's
    result digit, the first character of the next line) instead of anywhere; with cut_share = 0
    the random draws are exactly those of the plain rule.
    """
    t, u = t.clone(), u.clone()
    w = torch.ones_like(u)
    L = u.shape[1]
    pos = torch.arange(L)
    for i, (a, b) in enumerate(zip(starts, ends)):
        if b <= a or float(torch.rand(1, generator=generator)) >= share:
            continue
        pts = [] if cut_share <= 0 or cut_points is None else [c for c in cut_points[i] if a <= c < b]
        if pts and float(torch.rand(1, generator=generator)) < cut_share:
            k = pts[int(torch.randint(0, len(pts), (1,), generator=generator))]
        else:
            k = a + int(torch.randint(0, b - a, (1,), generator=generator))
        blk = (pos >= k) & (pos < k + block)
        u[i] = torch.where(pos < k, torch.full_like(u[i], 2.0),
                           torch.where(blk, u[i] / t[i], torch.full_like(u[i], -1.0)))
        t[i] = 1.0
        w[i, blk] = block_weight
        w[i, pos >= k + block] = future_weight
    return t, u, w


def apply_mask(x0: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor, u: torch.Tensor, mask_id: int):
    """x_t: replace maskable positions with u < t by mask_id. Returns (x_t, masked (B, L) bool)."""
    masked = maskable & (u < t[:, None])
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def mdm_loss(model, batch: dict, *, mask_id: int) -> tuple[torch.Tensor, dict]:
    """SFT / pre-training loss of a masked diffusion LM.

    batch: input_ids (B, L) clean tokens; t (B,); u (B, L); optional prompt_mask (B, L) bool —
    True on prompt positions, which are never masked (SFT); optional attention_mask (B, L);
    optional loss_weight (B, L) scaling each position's term (semi_ar_noise's weights).
    Without prompt_mask this is the pre-training loss over all (attended) positions.
    """
    x0, t, u = batch["input_ids"], batch["t"], batch["u"]
    attn = batch.get("attention_mask")
    maskable = torch.ones_like(x0, dtype=torch.bool) if attn is None else attn.bool()
    if batch.get("prompt_mask") is not None:
        maskable = maskable & ~batch["prompt_mask"].bool()
    xt, masked = apply_mask(x0, maskable, t, u, mask_id)
    logits = model(xt, attention_mask=attn).logits                      # (B, L, V)
    weighted, mets = masked_ce(logits, x0, masked, t, batch.get("loss_weight"))
    loss = (weighted / maskable.sum(1).clamp(min=1)).mean()
    return loss, {"loss": loss.detach(), **mets}


FAR = 1 << 30                   # the block index of padding positions: a block of their own


def response_blocks(prompt_mask: torch.Tensor, real: torch.Tensor, block: int) -> torch.Tensor:
    """Block index (B, T) of every position: -1 on the prompt, k on the response's k-th block of
    ``block`` positions (counted from the row's first response position, as LLaDA's sampler
    counts), FAR on padding."""
    pos = torch.arange(prompt_mask.shape[1], device=prompt_mask.device)[None]
    plen = prompt_mask.sum(1, keepdim=True)
    blk = torch.where(prompt_mask, torch.full_like(pos, -1).expand_as(prompt_mask),
                      (pos - plen).clamp(min=0) // block)
    return blk.masked_fill(~real, FAR)


def block_pattern(blk: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Attention pattern (B, 2T, 2T) of block diffusion's vectorised training (BD3-LM, Arriola et
    al. 2025, §3) over [noisy copy | clean copy] of a row: a noisy token of block b sees the noisy
    tokens of block b and the clean tokens of blocks < b; a clean token of block b sees the clean
    tokens of blocks <= b (so the clean copy computes, once for every block, the prefix each block
    is denoised against). blk (B, T) from response_blocks; real (B, T) bool = attended keys."""
    bi, bj, kr = blk[:, :, None], blk[:, None, :], real[:, None, :]
    noisy = torch.cat([(bj == bi) & kr, (bj < bi) & kr], 2)                    # (B, T, 2T)
    clean = torch.cat([torch.zeros_like(noisy[..., :blk.shape[1]]), (bj <= bi) & kr], 2)
    allow = torch.cat([noisy, clean], 1)                                        # (B, 2T, 2T)
    return allow | torch.eye(allow.shape[1], dtype=torch.bool, device=allow.device)   # padding sees itself


def block_diffusion_loss(model, batch: dict, *, mask_id: int, block: int) -> tuple[torch.Tensor, dict]:
    """The SFT loss in block diffusion's view, every block of a row at once (BD3-LM's NELBO:
    sum over blocks b of E_t [(1/t) sum_{i in b, masked} -log p(x0^i | x_t^b, x0^{<b})]): each
    response block is masked at its own level and denoised against the CLEAN earlier blocks with
    the later ones invisible — the view of a semi-autoregressive sampler's current block, where a
    token must be computed from the past instead of copied from a visible future (docs/benchmarks.md,
    issue 3). One forward pass over [x_t | x0] (B, 2T) with block_pattern.

    batch: input_ids (B, T); prompt_mask (B, T); optional attention_mask (B, T); t_pos (B, T) the
    noise level of each position's block; u (B, T) (masked where u < t_pos). Normalised per row
    by its response length, as mdm_loss."""
    x0, pm = batch["input_ids"], batch["prompt_mask"].bool()
    B, T = x0.shape
    attn = batch.get("attention_mask")
    real = torch.ones_like(pm) if attn is None else attn.bool()
    maskable = real & ~pm
    t = batch["t_pos"]
    masked = maskable & (batch["u"] < t)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    blk = response_blocks(pm, real, block)
    pos = torch.arange(T, device=x0.device)[None].expand(B, T)
    logits = forward_with_pattern(model, torch.cat([xt, x0], 1), block_pattern(blk, real),
                                  torch.cat([pos, pos], 1)).logits[:, :T]          # (B, T, V): the noisy copy
    weighted, mets = masked_ce(logits, x0, masked, torch.ones(B, device=x0.device), 1.0 / t.clamp(min=1e-3))
    loss = (weighted / maskable.sum(1).clamp(min=1)).mean()
    return loss, {"loss": loss.detach(), **mets}


def block_noise(prompt_mask: torch.Tensor, block: int, generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """t_pos (B, T) for block_diffusion_loss: one level ~ U(eps, 1) per response block of each row
    (BD3-LM draws t per block), the prompt at 1 (never masked anyway)."""
    B, T = prompt_mask.shape
    n_blocks = T // block + 2
    levels = eps + (1 - eps) * torch.rand(B, n_blocks, generator=generator)
    blk = response_blocks(prompt_mask.bool(), torch.ones_like(prompt_mask, dtype=torch.bool), block)
    return torch.where(blk >= 0, levels.gather(1, blk.clamp(min=0)), torch.ones(B, T))


def sft_loss(model, batch: dict, *, mask_id: int, block: int = 32) -> tuple[torch.Tensor, dict]:
    """mdm_loss on the ordinary rows and block_diffusion_loss on the rows the batch marks ``bd3``
    (B,) bool, averaged over all rows (each loss is a mean over its own rows)."""
    sel = batch.get("bd3")
    if sel is None or not bool(sel.any()):
        return mdm_loss(model, batch, mask_id=mask_id)
    if bool(sel.all()):
        return block_diffusion_loss(model, batch, mask_id=mask_id, block=block)
    rows = lambda idx: {k: v[idx] for k, v in batch.items()}
    n_bd = int(sel.sum())
    l_bd, m_bd = block_diffusion_loss(model, rows(sel), mask_id=mask_id, block=block)
    l_mdm, m_mdm = mdm_loss(model, rows(~sel), mask_id=mask_id)
    B = sel.numel()
    loss = (n_bd * l_bd + (B - n_bd) * l_mdm) / B
    return loss, {**m_mdm, "loss": loss.detach(), "bd3_loss": l_bd.detach(), "bd3_masked_acc": m_bd["masked_acc"]}


def masked_ce(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
              weight: Optional[torch.Tensor] = None):
    """The ELBO's data term per sequence: sum over masked positions of -log p(x0^i | x_t) / t
    (LLaDA eq. 3 before the 1/L). logits (B, L, V), x0 (B, L), masked (B, L) bool, t (B,);
    optional weight (B, L) scales each position's term (1 everywhere = the ELBO).
    Returns (B,) and the monitoring metrics masked_acc, masked_ce (unweighted, per masked token)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten(), reduction="none").view_as(x0)
    term = ce * masked if weight is None else ce * masked * weight
    weighted = (term / t[:, None]).sum(1)                                 # (B,)
    with torch.no_grad():
        n = masked.sum().clamp(min=1)
        acc = ((logits.argmax(-1) == x0) & masked).sum() / n
    return weighted, {"masked_acc": acc, "masked_ce": (ce * masked).sum().detach() / n}


@torch.no_grad()
def mc_nll(model, input_ids: torch.Tensor, target_mask: torch.Tensor, *, mask_id: int, n_samples: int = 32,
           generator: Optional[torch.Generator] = None, attention_mask=None) -> torch.Tensor:
    """Monte-Carlo upper bound on -log p(target | rest) per sequence (nats), LLaDA eq. 6.

    input_ids (B, L); target_mask (B, L) bool marks the positions whose likelihood is bounded (the
    response); the rest (prompt) stays visible. Returns (B,) averaged over n_samples draws.
    """
    input_ids, target_mask = input_ids.cpu(), target_mask.cpu()
    B, L = input_ids.shape
    dev = model_device(model)                                             # draws on the CPU, the model's work on dev
    am = None if attention_mask is None else attention_mask.to(dev)
    targets = input_ids.to(dev).flatten()                                 # (B*L,) on the model's device
    n_t = target_mask.sum(1)                                              # (B,)
    total = torch.zeros(B, dtype=torch.float64)
    for _ in range(n_samples):
        l = (torch.rand(B, generator=generator) * n_t).floor().long() + 1   # (B,) in 1..n_t
        score = torch.rand(B, L, generator=generator).masked_fill(~target_mask, 2.0)
        rank = score.argsort(1).argsort(1)                                  # position's rank among targets
        masked = (rank < l[:, None]) & target_mask
        xt = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
        logits = model(xt.to(dev), attention_mask=am).logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none").view(B, L).cpu()
        total += ((ce * masked).sum(1) * n_t / l).double()
    return (total / n_samples).float()


def sft_batch(prompts: list[list[int]], responses: list[list[int]], *, eos_id: int, generator: torch.Generator,
              extra: int = 0, eps: float = 1e-3, stratified: bool = False,
              canvas_lens: Optional[list[int]] = None) -> dict:
    """LLaDA-style SFT rows: prompt + response + EOS padding.

    Without ``canvas_lens`` every row is padded with EOS to one length T = longest prompt+response
    + 1 + ``extra`` (each row ends in at least one EOS). With ``canvas_lens`` row i's response
    canvas has exactly canvas_lens[i] positions: the response followed by EOS padding when it is
    longer than the response, the response CUT at that length when it is shorter (a canvas too
    short for the answer has no EOS — what teaches the model that EOS confidence at the tail means
    "long enough", DAEDAL's signal); the batch is right-padded and the padding masked out of
    attention. Returns input_ids, prompt_mask, (attention_mask,) and the noise t (B,), u (B, T).
    """
    B = len(prompts)
    if canvas_lens is None:
        canvas_lens = [len(r) + 1 + extra for r in responses]
        canvas_lens = [max(len(p) + c for p, c in zip(prompts, canvas_lens)) - len(p) for p in prompts]
    T = max(len(p) + c for p, c in zip(prompts, canvas_lens))
    ids = torch.full((B, T), eos_id, dtype=torch.long)
    pm = torch.zeros(B, T, dtype=torch.bool)
    am = torch.zeros(B, T, dtype=torch.long)
    for i, (p, r, c) in enumerate(zip(prompts, responses, canvas_lens)):
        row = p + r[:c]
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        pm[i, :len(p)] = True
        am[i, :len(p) + c] = 1
    t, u = draw_noise(B, T, generator, eps, stratified)
    out = {"input_ids": ids, "prompt_mask": pm, "t": t, "u": u}
    if not bool(am.all()):
        out["attention_mask"] = am
    return out
