"""Per-token entropy estimates from EEMs, by the chain rule (brief entropy.md, "Per-token entropy"):

    H(t_k | t_{k-N+1..k-1}) ≈ S_N(t_{k-N+1..k}) − S_{N-1}(t_{k-N+1..k-1})

where S(w) is the code length of a window under an EEM: the sum of its decoder's cross-entropies
over the window's predicted tokens (the embedding's bits are the same fixed charge in both terms
and cancel). Two methods:
  two-model     S_N from an EEM of window N, S_{N-1} from one of window N-1;
  single-model  both from one EEM trained with random left padding (recipe option data.left_pad),
                the shorter window left-padded with attention mask 0.
Near the start of the text (k < N-1) the windows are shorter and left-padded in both methods. Each
token's window is its own row: 2 windows per token, batched.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..model import model_device


@torch.no_grad()
def window_nats(model, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S(w): the summed cross-entropy (nats) of each left-padded window's predicted tokens.
    windows, mask (B, N) -> (B,). A window with one real token predicts nothing: 0."""
    windows, mask = windows.to(model_device(model)), mask.to(model_device(model))
    logits = model(windows, mask).float()                                  # (B, N-1, V)
    ce = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")   # (B, N-1)
    return (ce * mask[:, :-1]).sum(1)                                       # a prediction needs a real input


def _left_padded(rows: list[list[int]], n: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            ids[r, n - len(row):] = torch.tensor(row)
            mask[r, n - len(row):] = 1
    return ids, mask


@torch.no_grad()
def token_entropies(model, ids: list[int], *, window: int, short_model=None, pad_id: int = 0,
                    batch_size: int = 64, progress: Optional[Callable[[int, int], None]] = None) -> list[Optional[float]]:
    """Entropy estimate (nats) of every token given up to ``window - 1`` tokens before it; None for the
    first token (nothing to condition on). ``short_model``: the EEM of window ``window - 1`` (the
    two-model method); None: ``model`` scores both windows (the single-model method). ``window`` is
    the model's training window + 1 (129 for builtin:eem-pydocs; ``runtime.load_estimator`` works
    it out). Each estimate is a difference of two cross-entropies, so it can come out negative."""
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    model.eval()
    short = short_model or model
    if short_model is not None:
        short_model.eval()
    out: list[Optional[float]] = [None] * len(ids)
    ks = list(range(1, len(ids)))
    for i in range(0, len(ks), batch_size):
        part = ks[i:i + batch_size]
        long_rows = [ids[max(0, k - window + 1):k + 1] for k in part]       # window ending at k
        short_rows = [r[:-1] for r in long_rows]                            # the same start, one token less
        s_long = window_nats(model, *_left_padded(long_rows, window, pad_id))
        s_short = window_nats(short, *_left_padded(short_rows, window - (short_model is not None), pad_id))
        for k, h in zip(part, (s_long - s_short).tolist()):
            out[k] = h
        if progress:
            progress(min(i + batch_size, len(ks)), len(ks))
    return out


def summarize(pieces: list[str], entropies: list[Optional[float]]) -> dict:
    """Totals of a per-token estimate: mean bits per token over the estimated tokens."""
    vals = [h for h in entropies if h is not None]
    mean = sum(vals) / len(vals) / math.log(2) if vals else None
    return {"tokens": len(pieces), "estimated": len(vals), "mean_bits_per_token": mean,
            "total_bits": sum(vals) / math.log(2)}
