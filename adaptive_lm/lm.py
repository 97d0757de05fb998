"""The causal LM family: its training objective, its held-out evaluation, and its ONE sampling loop.

The loop (``generate``) takes a ``step`` policy — a function that runs the model on the new
tokens with the KV cache and returns their logits — so methods that change how a token is
computed (CALM's early exit) pass a policy instead of copying the loop.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .distributed import unwrap


def lm_objective(model, batch) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy (nats/token) on a batch (x, y) of (B, T) ids."""
    x, y = batch
    loss = next_token_ce(model(x).logits, y)
    return loss, {"loss": loss.detach()}


def next_token_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets y (B, T) (-100 ignored), in float32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


@torch.no_grad()
def evaluate_lm(model, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 16,
                n_bytes: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Mean held-out cross-entropy over windows (N, T). Returns loss (nats/token), ppl, bits/token,
    and bits/byte when the number of bytes the windows cover is given. ``progress(done, total)``
    hears the tokens scored after each batch."""
    model.eval()
    dev = next(unwrap(model).parameters()).device
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        logits = model(xb).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").item()
        count += yb.numel()
        if progress is not None:
            progress(count, y.numel())
    loss = total / max(count, 1)
    out = {"loss": loss, "ppl": math.exp(min(loss, 50)), "bits_per_token": loss / math.log(2), "tokens": count}
    if n_bytes:
        out["bits_per_byte"] = total / math.log(2) / n_bytes
    return out


def full_depth_step(model, ids, attention_mask, cache):
    """Default step policy: the whole model on the new tokens (B, T) -> logits of the last (B, V)."""
    return model(ids, attention_mask=attention_mask, cache=cache).logits[:, -1]


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int, generator: Optional[torch.Generator]):
    """(B, V) logits -> (B,) ids: greedy at temperature 0, else softmax(logits / T) over the top k."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if generator is not None and generator.device != probs.device:   # a CPU generator: draw on the CPU
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_prompts(prompts, vocab_size: Optional[int], *, allow_empty: bool = False) -> None:
    """A batch of prompts must be a list of lists of token ids (ints in [0, vocab_size)), each
    non-empty unless ``allow_empty``: one ValueError saying what is wrong, instead of a deep torch
    error. (A tensor (B, T) is refused too: pass ``t.tolist()``.)"""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of token-id lists (e.g. [tok.encode(text)]), "
                         f"not {type(prompts).__name__}{' (use .tolist())' if torch.is_tensor(prompts) else ''}")
    for i, p in enumerate(prompts):
        if not isinstance(p, (list, tuple)):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a list of token ids "
                             "(a batch of one is [tok.encode(text)])")
        if not p and not allow_empty:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        bad = [t for t in p if not isinstance(t, numbers.Integral) or isinstance(t, bool)
               or (vocab_size is not None and not 0 <= t < vocab_size)]
        if bad:
            raise ValueError(f"prompt {i} holds {bad[0]!r}, not a token id in [0, {vocab_size})")


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_id: Optional[int] = None,
             temperature: float = 1.0, top_k: int = 0, generator: Optional[torch.Generator] = None,
             step: Callable = full_depth_step, on_token: Optional[Callable] = None) -> list[list[int]]:
    """Sample continuations for a batch of prompts of different lengths (left padding + mask).

    Each row stops at its own EOS (``eos_id``) or after ``max_new_tokens``; finished rows are fed
    padding (masked out) until all are done. Returns the generated ids per row, EOS excluded.
    ``on_token(t, ids (B,), alive (B,))`` is called after every step (progress, tracing).
    """
    m = unwrap(model)
    check_prompts(prompts, m.config.vocab_size)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), not {temperature}")
    m.eval()
    dev = next(m.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    total = P + max_new_tokens
    if total > m.config.max_seq_len:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds the model's max_seq_len {m.config.max_seq_len}")
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros(B, P, dtype=torch.long, device=dev)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, device=dev)
        mask[i, P - len(p):] = 1
    cache = m.new_cache(B, total)
    alive = [True] * B                                                   # per row: still generating?
    alive_t, feed_mask = torch.ones(B, dtype=torch.bool, device=dev), torch.ones(B, 1, dtype=torch.long, device=dev)
    out = [[] for _ in range(B)]
    logits = step(m, ids, mask, cache)                                   # (B, V)
    for t in range(max_new_tokens):
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, generator=generator)
        stopped = False
        for i, tok in enumerate(nxt.tolist()):                          # one read of the step's ids, not one per row
            if not alive[i]:
                continue
            if eos_id is not None and tok == eos_id:
                alive[i], stopped = False, True
            else:
                out[i].append(tok)
        if stopped:
            alive_t = torch.tensor(alive, dtype=torch.bool, device=dev)
            feed_mask = alive_t.long()[:, None]
        if on_token is not None:
            on_token(t, nxt, alive_t)
        if not any(alive) or t == max_new_tokens - 1:
            break
        feed = nxt if all(alive) else torch.where(alive_t, nxt, pad_id)   # finished rows are fed padding
        logits = step(m, feed[:, None], feed_mask, cache)
    return out
