"""Confidence of a softmax — the common currency of DAEDAL, VMD's mask predictor and CALM.

All functions take logits (..., V) and return (...) in float32.
"""
from __future__ import annotations

import torch


def top1(logits: torch.Tensor) -> torch.Tensor:
    """Probability of the most likely token."""
    return logits.float().softmax(-1).amax(-1)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability (CALM's softmax response; VMD's top-prob margin)."""
    p = logits.float().softmax(-1).topk(2, dim=-1).values
    return p[..., 0] - p[..., 1]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def prob_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Probability of the given token ids (...,) under the softmax of logits (..., V)."""
    return logits.float().softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
