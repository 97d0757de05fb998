"""Entropy-aware training of a causal LM (brief entropy.md, "Entropy-aware training"): given an
entropy estimate e_i per target token, train on

    loss = mean_i |CE_i − e_i|            (mode "abs")

so the model approaches the estimated entropy but is pushed back when it goes below it (plain
CE − e_i has CE's gradient and would change nothing). Mode "drop": the same, over the tokens with
e_i < ``drop_above`` nats only (a very uncertain token teaches nothing but noise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("abs", "drop")


def entropy_aware_loss(model, batch, *, mode: str = "abs", drop_above: float = 6.0) -> tuple[torch.Tensor, dict]:
    """batch (x, y, e): ids (B, T), targets (B, T), estimates e (B, T) in nats -> (loss, metrics);
    the metrics report the plain CE too, for comparison with a CE-trained model."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    x, y, e = batch
    logits = model(x).logits                                            # (B, T, V)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")   # (B*T,)
    gap = (ce - e.flatten().to(ce.dtype)).abs()
    if mode == "drop":
        keep = e.flatten() < drop_above
        loss = (gap * keep).sum() / keep.sum().clamp(min=1)
    else:
        loss = gap.mean()
    return loss, {"loss": loss.detach(), "ce": ce.mean().detach()}
