"""The attention plumbing of incremental decoding, shared by every causal backbone (ours in
model.py and the Hugging Face adapter in hf_causal.py): the KV cache, the per-step context
(positions, masks, which rows run), writing a layer's new K/V, and attention over the cache.

A left-padded batch works like its rows alone: positions count each row's real tokens from 0,
padding keys are never attended to, and a padding query sees only itself (no NaN rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def kv_heads(cfg) -> int:
    """Key/value heads of any backbone config with n_head and optionally n_kv_head (0 = n_head):
    ours, and the Hugging Face adapter's."""
    return getattr(cfg, "n_kv_head", 0) or cfg.n_head


class KVCache:
    """Keys and values of every layer for causal incremental decoding.

    Preallocated to ``max_len``. ``length`` tokens are filled (the same for every row; left
    padding keeps rows aligned). ``key_mask`` (B, max_len) marks real (non-padding) keys and
    ``n_real`` (B,) counts each row's real tokens, which gives the RoPE position of the next one.
    Each layer's K/V lives in ``k[i]``, ``v[i]`` (B, H_kv, max_len, Dh) and is written by
    ``TransformerLM.layer`` or ``TransformerLM.fill_kv`` at positions [start, start+T).
    ``exact=True`` computes attention over this cache as matmul + softmax + matmul (``attend``):
    slower than SDPA's CPU kernel, but bit-identical whatever the thread count — what the
    compressor needs to decode exactly what it encoded.
    """

    def __init__(self, cfg, batch_size: int, max_len: int, *, device=None, dtype=torch.float32,
                 exact: bool = False):
        shape = (batch_size, kv_heads(cfg), max_len, cfg.head_dim)
        self.exact = exact            # attention through kernels whose result does not depend on the thread count
        self.padded = False           # some row holds a padding key (else a 1-token step needs no mask)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len
        self._tril: Optional[torch.Tensor] = None   # (max_len, max_len) causal table, built on first use

    @property
    def batch_size(self) -> int:
        return self.key_mask.shape[0]

    def causal_rows(self, start: int, T: int) -> torch.Tensor:
        """(T, start+T) bool: query t (at position start+t) may see key s <= start+t — a view of one
        lower-triangular table built on first use, so a multi-token step needs no new index tensors."""
        if self._tril is None:
            self._tril = torch.ones(self.max_len, self.max_len, dtype=torch.bool, device=self.key_mask.device).tril()
        return self._tril[start:start + T, :start + T]

    def rewind(self, start: int):
        """Forget positions [start, length): the next step writes from ``start`` again (CALM's kv=recompute).
        Stored K/V stay until a layer writes over them: a step recomputing upper layers keeps the lower."""
        if not 0 <= start <= self.length:
            raise ValueError(f"cannot rewind a cache of length {self.length} to {start}")
        if start == self.length:
            return
        self.n_real -= self.key_mask[:, start:self.length].sum(1)
        self.length = start


@dataclass
class StepContext:
    """What every layer needs for one forward step; built once by ``TransformerLM.prepare``."""
    cos: Optional[torch.Tensor]          # (B, 1, T, Dh/2) RoPE cosines for the new tokens (backbone-specific)
    sin: Optional[torch.Tensor]          # (B, 1, T, Dh/2)
    attn_mask: Optional[torch.Tensor]    # (B, 1, T, S) bool, True = may attend; None = full / plain causal
    is_causal: bool                      # use SDPA's built-in causal mask (no cache, no padding)
    cache: Optional[KVCache] = None
    start: int = 0                       # cache position of the first new token
    new_len: int = 0                     # T
    rows: Optional[torch.Tensor] = None  # (b,) cache rows these b sequences are (``select``); None = all
    positions: Optional[torch.Tensor] = None   # (B, T) position of each new token in its row
    cond: Optional[torch.Tensor] = None        # (B, 1 or T, C_cond) conditioning for AdaLN blocks

    def select(self, idx: torch.Tensor) -> "StepContext":
        """The context of a subset of the batch, rows ``idx`` (b,) — for running a layer on only the
        sequences that still need it (CALM's per-sequence exits). Cache reads and writes go to the
        selected rows; ``idx`` indexes this context's own rows."""
        rows = idx if self.rows is None else self.rows[idx]
        pick = lambda t: None if t is None else t[idx]
        return StepContext(pick(self.cos), pick(self.sin), pick(self.attn_mask), self.is_causal, self.cache,
                           self.start, self.new_len, rows, pick(self.positions), pick(self.cond))


def write_kv(i: int, k, v, ctx: StepContext):
    """Store layer i's new K/V (b, H, T, Dh) in the cache at the step's positions, for all rows or
    ``ctx.rows``; return those rows' keys and values so far, (b, H, start+T, Dh) each."""
    K, V, end = ctx.cache.k[i], ctx.cache.v[i], ctx.start + ctx.new_len
    if ctx.rows is None:
        K[:, :, ctx.start:end], V[:, :, ctx.start:end] = k, v
        return K[:, :, :end], V[:, :, :end]
    K[ctx.rows, :, ctx.start:end], V[ctx.rows, :, ctx.start:end] = k, v        # a subset of the batch
    return K[ctx.rows, :, :end], V[ctx.rows, :, :end]


def attend(q, k, v, ctx: StepContext, *, scale: Optional[float] = None, dropout: float = 0.0):
    """Scaled dot-product attention of q (B, H, T, Dh) over k, v (B, Hk, S, Dh) with the step's mask
    -> (B, H, T, Dh). Hk may divide H (grouped-query attention): query heads h*g .. h*g+g-1 share K/V
    head h, g = H / Hk, and each K/V head is read once for its whole group — no copies. Over an
    ``exact`` cache: explicit matmul + softmax + matmul, whose result does not depend on the thread
    count (SDPA's CPU kernel splits the keys across threads)."""
    B, H, T, Dh = q.shape
    Hk = k.shape[1]
    if ctx.cache is not None and ctx.cache.exact:
        g = H // Hk
        qg = q if g == 1 else q.reshape(B, Hk, g * T, Dh)                       # a group's queries as rows
        s = (qg @ k.transpose(-1, -2)) * (Dh ** -0.5 if scale is None else scale)   # (B, Hk, g*T, S)
        if ctx.attn_mask is not None:
            mask = ctx.attn_mask if g == 1 else ctx.attn_mask.repeat(1, 1, g, 1)   # (B, 1, g*T, S)
            s = s.masked_fill(~mask, float("-inf"))
        return (s.softmax(-1) @ v).view(B, H, T, Dh)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask, is_causal=ctx.is_causal,
                                          dropout_p=dropout, scale=scale, enable_gqa=Hk != H)


def step_context(input_ids, attention_mask, cache: Optional[KVCache], *, causal: bool, max_seq_len: int) -> StepContext:
    """Positions (B, T) and the attention mask of a step of T new tokens, for any backbone that
    uses a KVCache (ours, and the Hugging Face adapter in hf_causal.py). Positions count each
    row's real tokens from 0, so a left-padded row computes what it computes alone. cos/sin are
    left for the caller (its own rotary embedding)."""
    B, T = input_ids.shape
    dev = input_ids.device
    real = attention_mask.bool() if attention_mask is not None else torch.ones(B, T, dtype=torch.bool, device=dev)
    start = cache.length if cache is not None else 0
    if cache is not None and start + T > cache.max_len:
        raise ValueError(f"KV cache full: {start} + {T} tokens > max_len {cache.max_len}")
    if start + T > max_seq_len:
        raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {max_seq_len}")
    base = cache.n_real[:, None] if cache is not None else 0
    positions = (base + real.long().cumsum(1) - 1).clamp(min=0)        # (B, T)
    padded = attention_mask is not None and not bool(real.all())
    if cache is None and not padded:
        return StepContext(None, None, None, causal, None, 0, T, positions=positions)
    if cache is not None:
        if not causal:
            raise ValueError("KV cache decoding needs a causal model")
        cache.key_mask[:, start:start + T] = real
        cache.padded = cache.padded or padded
        if T == 1 and not cache.padded:                                # one query, every cached key real
            return StepContext(None, None, None, False, cache, start, T, positions=positions)
        keys = cache.key_mask[:, :start + T]                           # (B, S)
        if not padded:                                                 # every query real: it sees itself anyway
            return StepContext(None, None, (keys[:, None, :] & cache.causal_rows(start, T))[:, None], False,
                               cache, start, T, positions=positions)
    else:
        keys = real
    S = keys.shape[1]
    allow = keys[:, None, :].expand(B, T, S)                           # (B, T, S)
    q_pos = torch.arange(start, start + T, device=dev)
    k_pos = torch.arange(S, device=dev)
    if causal:
        allow = allow & (k_pos[None, :] <= q_pos[:, None])
    allow = allow | (k_pos[None, :] == q_pos[:, None])                # a padding query sees itself: no NaN rows
    return StepContext(None, None, allow[:, None], False, cache, start, T, positions=positions)

