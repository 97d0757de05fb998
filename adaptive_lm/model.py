"""The one backbone every method stands on: a pre-norm transformer in one readable file.

RMSNorm, rotary position embeddings (RoPE), SwiGLU feed-forward; causal (autoregressive LMs,
CALM, entropy models) or bidirectional (masked diffusion, VMD) by config. Options for the entropy
models (brief entropy.md): the masked mixer (``mixer="masked_conv"``: a lower-triangular-masked
convolution over the token axis + a GELU feed-forward, no positional encoding) in place of
attention, and learned positional encodings (``positions="learned"``) in place of RoPE.

What the methods need from it, and where it lives here:
- every layer's hidden state: ``forward(..., output_hidden_states=True)``;
- ONE shared ``unembed(h)`` (final norm + output head) that turns any layer's hidden state into
  logits — CALM's exits and the top layer go through the same function;
- a KV cache for causal incremental decoding (kvcache.py), with per-layer access (``prepare`` / ``layer`` /
  ``fill_kv``) so a caller can run layer by layer and fill a skipped layer's K/V from a copied
  hidden state (CALM's state propagation);
- an optional conditioning vector, per sequence (B, C) or per position/block (B, T, C), added to
  the token embeddings through one projection (VMD's latent, the EEM embedding), or with
  ``cond_mode="adaln"`` turned into a per-channel scale and shift of every block's two norms
  (adaptive layer norm, Peebles & Xie 2023; zero-initialised, so it starts as a no-op);
- attention masks for left-padded batches: padding keys are never attended to and positions
  start at 0 on each row's first real token, so a left-padded row computes the same numbers as
  the same row alone.

Run ``python -m adaptive_lm.model`` for a smoke test.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kvcache import KVCache, StepContext, attend, kv_heads, step_context, write_kv  # noqa: F401  (re-exported)


@dataclass
class ModelConfig:
    vocab_size: int = 256         # number of token ids (tokenizer's vocab incl. special tokens)
    n_layer: int = 4              # transformer blocks
    n_head: int = 4               # attention heads; d_model must divide by it
    n_kv_head: int = 0            # key/value heads (grouped-query attention, Ainslie et al. 2023); 0 = n_head
    d_model: int = 256            # residual stream width
    d_ff: int = 0                 # SwiGLU hidden width; 0 = round(8/3 * d_model) to a multiple of 32
    max_seq_len: int = 256        # longest sequence (prompt + generation) the model will see
    causal: bool = True           # True: autoregressive mask; False: bidirectional (diffusion)
    rope_theta: float = 10000.0   # RoPE base
    norm_eps: float = 1e-5        # RMSNorm epsilon
    dropout: float = 0.0          # dropout on attention probabilities and on each residual branch (training only)
    tie_embeddings: bool = True   # share the token embedding with the output head
    cond_dim: int = 0             # width of the optional conditioning vector; 0 = none
    cond_mode: str = "add"        # how it enters: add (projected onto the embeddings) | adaln (scale/shift of each norm)
    mixer: str = "attention"      # token mixing: attention | masked_conv (the masked mixer, brief entropy.md)
    positions: str = "rope"       # rope (rotary, in attention) | learned (a position table added to the embeddings)
    shift_logits: bool = False    # diffusion models adapted from a causal LM: token i is scored at position i-1 (forward)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("d_ff", "cond_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_kv_head < 0 or self.n_head % (self.n_kv_head or self.n_head):
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0 = n_head)")
        if self.mixer == "masked_conv" and self.kv_heads != self.n_head:
            raise ValueError("the masked mixer has no key/value heads: leave n_kv_head at 0")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {', '.join(MIXERS)}, got {self.mixer!r}")
        if self.cond_mode not in ("add", "adaln"):
            raise ValueError(f"cond_mode must be add or adaln, got {self.cond_mode!r}")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"positions must be rope or learned, got {self.positions!r}")
        if self.mixer == "masked_conv" and not self.causal:
            raise ValueError("the masked mixer is causal: it needs causal=True")
        if self.shift_logits and self.causal:
            raise ValueError("shift_logits is for bidirectional (diffusion) models: it needs causal=False")
        if self.positions == "rope" and self.mixer == "attention" and (self.d_model // self.n_head) % 2:
            raise ValueError("head dimension must be even for RoPE")

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mixer == "masked_conv":                      # the mixer's GELU feed-forward: 4x
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return kv_heads(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        for later, default in (("n_kv_head", 0), ("cond_mode", "add"), ("shift_logits", False)):   # later fields: written only when
            if d[later] == default:                                       # used, so older readers load the rest
                del d[later]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class ModelOutput:
    logits: torch.Tensor                              # (B, T, V)
    hidden_states: Optional[list[torch.Tensor]] = None  # n_layer+1 tensors (B, T, C): embeddings, then after each block


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def model_device(model) -> torch.device:
    """Where a model computes: its first parameter's device (the CPU for a parameter-less or
    duck-typed model). Evaluation helpers move their CPU-built inputs there."""
    params = getattr(model, "parameters", None)
    p = next(params(), None) if callable(params) else None
    return p.device if p is not None else torch.device("cpu")


@functools.lru_cache(maxsize=32)
def rope_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """(Dh/2,) inverse frequencies theta^(-2i/Dh) of RoPE, computed once per (Dh, theta, device)."""
    with torch.inference_mode(False), torch.no_grad():           # a plain tensor, usable in training too
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float):
    """cos/sin of RoPE (Su et al. 2021, eq. 34) for integer positions (B, T) -> (B, 1, T, Dh/2)."""
    inv = rope_frequencies(head_dim, float(theta), positions.device)
    ang = positions.float()[..., None] * inv                     # (B, T, Dh/2)
    return ang.cos()[:, None], ang.sin()[:, None]


def apply_rope(x, cos, sin):
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) of (B, H, T, Dh) by the angles (none: learned positions)."""
    if cos is None:
        return x
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def run_layers(m, input_ids, *, attention_mask=None, cond=None, cache=None, output_hidden_states: bool = False,
               ctx: Optional[StepContext] = None) -> "ModelOutput":
    """The whole model through its per-layer interface (prepare, embed, layer, commit, unembed) —
    the forward of our backbone and of the Hugging Face adapter (hf_causal.py). ``ctx``: a step
    context built by the caller instead of ``m.prepare`` (``forward_with_pattern``)."""
    ctx = ctx if ctx is not None else m.prepare(input_ids, attention_mask=attention_mask, cache=cache)
    h = m.embed(input_ids, cond, ctx=ctx)
    hidden = [h] if output_hidden_states else None
    for i in range(m.config.n_layer):
        h = m.layer(i, h, ctx)
        if hidden is not None:
            hidden.append(h)
    m.commit(ctx)
    return ModelOutput(m.unembed(h), hidden)


def with_rope(cfg, ctx: StepContext) -> StepContext:
    """ctx with the RoPE angles of its positions filled in (when the backbone uses RoPE attention)."""
    if cfg.positions == "rope" and cfg.mixer == "attention":
        ctx.cos, ctx.sin = rope_angles(ctx.positions, cfg.head_dim, cfg.rope_theta)
    return ctx


def causal_forward(m, input_ids) -> "ModelOutput":
    """Our backbone run as a causal LM whatever its config says: ids (B, T) (right padding only),
    raw logits (B, T, V) in which position i scores token i+1, never shifted. The first phase of
    adapting a causal LM into a masked diffusion LM (recipes/mdlm.py ``ar_steps``)."""
    ctx = step_context(input_ids, None, None, causal=True, max_seq_len=m.config.max_seq_len)
    return run_layers(m, input_ids, ctx=with_rope(m.config, ctx))


def forward_with_pattern(m, input_ids, allow: torch.Tensor, positions: torch.Tensor, *, cond=None) -> "ModelOutput":
    """Our attention backbone over ids (B, T) with an explicit attention pattern ``allow`` (B, T, T)
    bool (True = query row may attend to key column) and explicit positions (B, T) — for objectives
    whose rows hold several views of one sequence side by side (block diffusion's noisy and clean
    copies, diffusion/objective.py). Every query must allow at least one key."""
    if getattr(m.config, "mixer", "attention") != "attention":
        raise ValueError("an explicit attention pattern needs the attention backbone (mixer='attention')")
    B, T = input_ids.shape
    ctx = StepContext(None, None, allow[:, None], False, None, 0, T, positions=positions)
    return run_layers(m, input_ids, cond=cond, ctx=with_rope(m.config, ctx))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # rows of the fused projection: q (H*Dh), then k and v (Hk*Dh each)
        self.qkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * cfg.kv_heads * cfg.head_dim, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def kv(self, x, ctx: StepContext):
        """K/V of normalised input x (B, T, C), rotated, each (B, Hk, T, Dh)."""
        B, T, C = x.shape
        k, v = F.linear(x, self.qkv.weight[C:]).view(B, T, 2, self.n_kv, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rope(k, ctx.cos, ctx.sin), v

    def forward(self, x, ctx: StepContext, layer_idx: int):
        B, T, C = x.shape
        H, Hk = self.n_head, self.n_kv
        qkv = self.qkv(x).view(B, T, H + 2 * Hk, self.head_dim).transpose(1, 2)  # (B, H+2Hk, T, Dh)
        qk = apply_rope(qkv[:, :H + Hk], ctx.cos, ctx.sin)                      # one rotation for q and k
        q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hk:]
        if ctx.cache is not None:
            k, v = write_kv(layer_idx, k, v, ctx)
        y = attend(q, k, v, ctx, dropout=self.dropout if self.training else 0.0)   # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ff_dim, bias=False)
        self.down = nn.Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x):
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class GeluMLP(nn.Module):
    """The masked mixer's feed-forward: Linear, GELU, Linear."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.down = nn.Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class MaskedConv(nn.Module):
    """The masked mixer's token mixing (brief entropy.md): a Conv1d(n_ctx, n_ctx, 1) over the TOKEN
    axis, y_i = b_i + sum_{j<=i} W[i, j] x_j, its weight masked lower-triangular on every forward
    so it is causal; one matrix per head (n_head = 1: the plain mixer). The weights are
    position-specific, so it needs no positional encoding. With a KV cache the normalised inputs
    x_j (B, H, S, Dh) are cached in the key slot, and a new token mixes them with its row of W.
    Rows must not be padded (positions are cache indices)."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.max_seq_len
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.weight = nn.Parameter(torch.randn(cfg.n_head, n, n) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("tril", torch.tril(torch.ones(n, n, dtype=torch.bool)), persistent=False)

    def kv(self, x, ctx: StepContext):
        """What the cache keeps for a token: its normalised input by head, (B, H, T, Dh) (twice)."""
        B, T, _ = x.shape
        xh = x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        return xh, xh

    def forward(self, x, ctx: StepContext, layer_idx: int):
        B, T, C = x.shape
        if ctx.attn_mask is not None and ctx.cache is None:
            raise ValueError("the masked mixer does not take padded batches")
        xs, _ = self.kv(x, ctx)
        if ctx.cache is not None:
            if ctx.cache.padded:
                raise ValueError("the masked mixer does not take padded batches")
            xs, _ = write_kv(layer_idx, xs, xs, ctx)                             # (B, H, S, Dh)
        s0, S = ctx.start, xs.shape[2]
        w = (self.weight * self.tril)[:, s0:s0 + T, :S]                         # (H, T, S)
        y = torch.einsum("hts,bhsd->bhtd", w, xs) + self.bias[s0:s0 + T, None]  # (B, H, T, Dh)
        return y.transpose(1, 2).reshape(B, T, C)


MIXERS = {"attention": (Attention, SwiGLU), "masked_conv": (MaskedConv, GeluMLP)}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        mixer, mlp = MIXERS[cfg.mixer]
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = mixer(cfg)                    # the token mixer: attention or the masked convolution
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = mlp(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        # AdaLN: cond -> (shift, scale) of attn_norm and of mlp_norm, (B, T, 4C); zero-init = plain norms
        self.ada = nn.Linear(cfg.cond_dim, 4 * cfg.d_model) if cfg.cond_mode == "adaln" and cfg.cond_dim else None
        if self.ada is not None:
            nn.init.zeros_(self.ada.bias)

    def modulation(self, ctx: StepContext, dtype) -> Optional[tuple]:
        """AdaLN: the context's conditioning -> (shift0, scale0, shift1, scale1), each (B, 1|T, C);
        None without AdaLN or conditioning."""
        if self.ada is None or ctx.cond is None:
            return None
        return self.ada(ctx.cond.to(dtype)).chunk(4, -1)

    def norm(self, which: int, x, mod: Optional[tuple]):
        """Norm 0 (before the mixer) or 1 (before the MLP) of x (B, T, C), modulated in AdaLN mode:
        norm(x)·(1 + scale) + shift."""
        y = (self.attn_norm, self.mlp_norm)[which](x)
        if mod is None:
            return y
        shift, scale = mod[2 * which], mod[2 * which + 1]
        return y * (1 + scale) + shift

    def forward(self, x, ctx: StepContext, layer_idx: int):
        mod = self.modulation(ctx, x.dtype)
        x = x + self.drop(self.attn(self.norm(0, x, mod), ctx, layer_idx))
        return x + self.drop(self.mlp(self.norm(1, x, mod)))


class TransformerLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, V), optionally every layer's hidden state."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.d_model, bias=False) \
            if cfg.cond_dim and cfg.cond_mode == "add" else None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():   # GPT-2 scaled init of residual projections
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if self.cond_proj is not None:
            nn.init.zeros_(self.cond_proj.weight)  # conditioning starts as a no-op
        for blk in self.blocks:
            if blk.ada is not None:
                nn.init.zeros_(blk.ada.weight)     # AdaLN too

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if exclude_embeddings else n

    # ---- the pieces, for callers that run layer by layer (CALM) ----
    def embed(self, input_ids, cond=None, ctx: Optional[StepContext] = None):
        """(B, T) ids [+ cond (B, C_cond) or (B, T, C_cond)] -> (B, T, C) hidden state 0. With learned
        positions, each token's position (``ctx.positions``, else 0..T-1) adds its row of the table;
        RoPE positions enter in attention instead."""
        h = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            pos = ctx.positions if ctx is not None and ctx.positions is not None else \
                torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            h = h + self.pos_emb(pos)
        if cond is not None:
            if not self.config.cond_dim:
                raise ValueError("this model has cond_dim=0 and takes no conditioning vector")
            if self.cond_proj is None:                     # AdaLN: the blocks read it from the context
                if ctx is None:
                    raise ValueError("AdaLN conditioning needs the step context (use forward or run_layers)")
                ctx.cond = cond[:, None] if cond.dim() == 2 else cond
                return h
            c = self.cond_proj(cond.to(h.dtype))
            h = h + (c[:, None, :] if c.dim() == 2 else c)
        return h

    def unembed(self, h):
        """Any layer's hidden state (..., C) -> logits (..., V): the final norm + output head."""
        return self.head(self.norm_f(h))

    def prepare(self, input_ids, *, attention_mask=None, cache: Optional[KVCache] = None) -> StepContext:
        """Positions, RoPE angles and the attention mask for a step of T new tokens.

        attention_mask (B, T): 1 for real tokens, 0 for padding (left padding for causal batches).
        With a cache, the new tokens are appended after ``cache.length`` and attend to all real
        cached keys; ``commit`` must be called after the step's layers have run.
        """
        ctx = step_context(input_ids, attention_mask, cache, causal=self.config.causal,
                           max_seq_len=self.config.max_seq_len)
        return with_rope(self.config, ctx)

    def layer(self, i: int, h, ctx: StepContext):
        """Run block i on hidden state h (B, T, C); writes its K/V into the cache if any. For a
        subset of the batch pass its rows' states (b, T, C) and ``ctx.select(idx)``."""
        return self.blocks[i](h, ctx, i)

    def fill_kv(self, i: int, h, ctx: StepContext, rows=None):
        """Write layer i's K/V computed from hidden state h (B, T, C) into the cache, nothing else.

        CALM state propagation (brief §"Skipped layers"): a token that exited below layer i has its
        hidden state copied up; layer i applies its own pre-attention norm and K/V projection to it.
        ``rows`` (bool (B,) or index tensor) limits the write to some sequences of the batch.
        """
        blk = self.blocks[i]
        if rows is not None:
            idx = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
            h, ctx = h[idx], ctx.select(idx)
        write_kv(i, *blk.attn.kv(blk.norm(0, h, blk.modulation(ctx, h.dtype)), ctx), ctx)

    @staticmethod
    def commit(ctx: StepContext):
        """Advance the cache past the step's tokens (after all layers were run or filled)."""
        if ctx.cache is not None:
            ctx.cache.length = ctx.start + ctx.new_len
            ctx.cache.n_real += ctx.cache.key_mask[:, ctx.start:ctx.cache.length].sum(1)

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, device=p.device, dtype=p.dtype)

    # ---- the whole model ----
    def forward(self, input_ids, *, attention_mask=None, cond=None, cache: Optional[KVCache] = None,
                output_hidden_states: bool = False) -> ModelOutput:
        """input_ids (B, T) -> ModelOutput(logits (B, T, V), hidden_states [n_layer+1 x (B, T, C)]).
        With ``shift_logits`` the logits scoring token i are those computed at position i-1 (token 0
        keeps its own): a diffusion model adapted from a causal LM keeps the causal LM's "position i
        predicts token i+1" (DiffuLLaMA / Dream's shift operation)."""
        out = run_layers(self, input_ids, attention_mask=attention_mask, cond=cond, cache=cache,
                         output_hidden_states=output_hidden_states)
        if self.config.shift_logits:
            out.logits = torch.cat([out.logits[:, :1], out.logits[:, :-1]], 1)
        return out

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·C·T."""
        n = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("tok_emb"))
        if self.config.tie_embeddings:
            n += self.head.weight.numel()   # the tied head is still a matmul per token
        return 6 * n + 12 * self.config.n_layer * self.config.d_model * seq_len


if __name__ == "__main__":
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=16)
    m = TransformerLM(cfg)
    x = torch.randint(0, 64, (2, 8))
    out = m(x, output_hidden_states=True)
    print(out.logits.shape, len(out.hidden_states), m.num_params())
