"""The VMD training objective and its evaluation bound (brief vmd.md, "The model").

Training, per sequence, with one block b drawn uniformly (the whole sequence when there are no
blocks), blocks before b clean, block b masked at level t, later blocks fully masked:

    L = n_blocks * ( sum_{i in b, masked} -log p(x0^i | x_t, z) / t  +  beta * KL(q(z | x0, x_t) || N(0, I)) ) / n_tokens

with z ~ q by the reparameterisation trick, beta annealed 0 -> 1 by the batch builder, and
optional free bits (each latent dimension's KL counted as at least ``free_bits`` nats). The first
term is the masked-diffusion ELBO term of diffusion/objective.py (``masked_ce``), so with
``latent_dim = 0`` this is exactly the MDM (block-MDM) loss.

Weighting (the batch's ``weight_t``, (B,)): ``t`` gives the 1/t weights above (MDLM / LLaDA: with
beta = 1, the continuous-time ELBO's integrand); ones give the per-step bound
    -log p(x0^masked | x_t) <= E_q[ sum_{i masked} -log p(x0^i | x_t, z) ] + KL(q(z | x0, x_t) || p(z)),
which holds for every x_t with q seeing x_t — the bound of one parallel decoding step from x_t,
the VMD situation exactly — and whose gradients are not dominated by the few cells of low-t rows
(the Sudoku recipes use it; see docs/benchmarks.md).

Evaluation (``elbo``) reports an upper bound on -log p(x0) that holds for the model the sampler
runs — z drawn ONCE per block from the prior: -log p(x_b | x_<b) <= E_r[ MDM bound(x_b | z) ] +
KL(r || p) for any r that depends on x0 alone. We take r = q(z | x0, block b fully masked). (The
training loss, whose q also sees which positions x_t masks, is not a bound on that model: q and
the data term then correlate through x_t.) The data term is LLaDA's low-variance form (eq. 6):
l ~ U{1..n_b} masked positions of the block, weighted n_b / l.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..diffusion.objective import masked_ce
from ..model import model_device
from .model import VMD, gaussian_kl


def block_view(x0: torch.Tensor, masked_in_block: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
               mask_id: int):
    """Block diffusion's view of a batch. x0 (B, L); masked_in_block (B, L) bool, already limited to
    the block; start, end (B,) the block's span. Returns x_t (B, L) (later blocks masked), seen (B, L)
    (x0 with later blocks masked: what the encoder may read), block (B, L) bool."""
    pos = torch.arange(x0.shape[1], device=x0.device)[None]
    block = (pos >= start[:, None]) & (pos < end[:, None])
    later = pos >= end[:, None]
    mask = torch.full_like(x0, mask_id)
    seen = torch.where(later, mask, x0)
    xt = torch.where(masked_in_block & block, mask, seen)
    return xt, seen, block


def block_span(model: VMD, L: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) (B,) of block index b (B,) in a sequence of length L."""
    bs = model.config.block_size or L
    start = b * bs
    return start, (start + bs).clamp(max=L)


def vmd_loss(model: VMD, batch: dict, *, mask_id: int) -> tuple[torch.Tensor, dict]:
    """batch: input_ids (B, L); t (B,); u (B, L) (masked where u < t); block (B,) long; beta (B,);
    eps (B, D) standard normal draws for z (absent when latent_dim = 0); optional weight_t (B,),
    the divisor of each row's data term (default t). Module docstring."""
    x0, t, u = batch["input_ids"], batch["t"], batch["u"]
    B, L = x0.shape
    cfg = model.config
    start, end = block_span(model, L, batch["block"])
    xt, seen, block = block_view(x0, u < t[:, None], start, end, mask_id)
    masked = (xt == mask_id) & block
    z, kl, kl_train = None, torch.zeros(B, device=x0.device), torch.zeros(B, device=x0.device)
    if cfg.latent_dim:
        mu, logvar = model.encode(seen, xt == mask_id, block)
        z = mu + (0.5 * logvar).exp() * batch["eps"]                          # (B, D) reparameterised
        kl_d = gaussian_kl(mu, logvar)                                        # (B, D)
        kl = kl_d.sum(-1)
        kl_train = kl_d.clamp(min=cfg.free_bits).sum(-1) if cfg.free_bits else kl
    logits = model.denoise(xt, z)                                             # (B, L, V)
    weighted, mets = masked_ce(logits, x0, masked, batch.get("weight_t", t))
    scale = cfg.n_blocks(L) / L
    loss = (scale * (weighted + batch["beta"] * kl_train)).mean()
    bound = (scale * (weighted + kl)).mean()
    return loss, {"loss": loss.detach(), "bound": bound.detach(), "kl": kl.mean().detach(), **mets}


@torch.no_grad()
def elbo(model: VMD, x0: torch.Tensor, *, mask_id: int, n_samples: int = 16,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Upper bound on -log p(x0) per sequence (B,) in nats (module docstring): every block, n_samples
    draws of (l, masked positions, z ~ r) each."""
    model.eval()
    B, L = x0.shape
    dev = model_device(model)
    x0 = x0.to(dev)
    total = torch.zeros(B, dtype=torch.float64)
    for b in range(model.config.n_blocks(L)):
        start, end = block_span(model, L, torch.full((B,), b, device=dev))
        _, seen, block = block_view(x0, torch.zeros_like(x0, dtype=torch.bool), start, end, mask_id)
        n_b = block.sum(1)                                                    # (B,)
        mu = logvar = None
        if model.config.latent_dim:
            mu, logvar = model.encode(seen, block | (seen == mask_id), block)    # r: the block fully masked
            total += gaussian_kl(mu, logvar).sum(-1).double().cpu()
        for _ in range(n_samples):
            l = (torch.rand(B, generator=generator) * n_b.cpu()).floor().long().to(dev) + 1
            score = torch.rand(B, L, generator=generator).to(dev).masked_fill(~block, 2.0)
            masked = (score.argsort(1).argsort(1) < l[:, None]) & block
            xt = torch.where(masked, torch.full_like(x0, mask_id), seen)
            z = None
            if mu is not None:
                eps = torch.randn(mu.shape, generator=generator).to(dev)
                z = mu + (0.5 * logvar).exp() * eps
            w, _ = masked_ce(model.denoise(xt, z), x0, masked, torch.ones(B, device=dev))
            total += (w * n_b / l).double().cpu() / n_samples
    return total.float()
