"""The entropy estimation model (EEM): an encoder-augmented causal decoder (brief entropy.md).

    window w = (w_0 .. w_T)                                     (B, T+1) token ids
    encoder: a causal stack over w; its last position's final state (it has seen all of w)
    embedding e = down(norm(h_T))                               (B, d_emb), d_emb = d_enc / compression
      (+ U(-q, q) noise in training: quantisation-aware training, brief "Noise-injection QAT")
    decoder: a causal stack predicting w_{t+1} from w_<=t and e, injected one of three ways:
      prepend  up(e) as an extra first token                       (positions shift by one)
      concat   up(e) in the last d_dec/4 channels of every token's embedding (the token fills the rest)
      add      up(e) added to every token embedding (the backbone's conditioning input)

The embedding has seen the tokens it helps predict, so its bits are charged at the width of the
format it is stored in (FORMATS): d_emb·bits per window, ``ce_charged = ce + d_emb·bits·ln2 / T``
nats per token.
Encoder and decoder are our backbone (attention or the masked mixer, by their ModelConfig).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import ARCHITECTURES
from ..model import ModelConfig, TransformerLM, model_device

INJECTIONS = ("prepend", "concat", "add")
FORMATS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "e4m3": 8, "e5m2": 8}   # embedding storage -> bits/value


@dataclass
class EEMConfig:
    encoder: ModelConfig          # causal stack reading the whole window (attention or masked_conv)
    decoder: ModelConfig          # causal stack predicting the next token given the embedding
    compression: int = 4          # bottleneck: d_enc -> d_enc // compression values per window
    injection: str = "add"        # prepend | concat | add
    noise_q: float = 0.0          # QAT: U(-q, q) added to the embedding in training (brief: q = 2^-4)
    share_embeddings: bool = True # encoder and decoder share one token table (same width needed)

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = ModelConfig.from_dict(self.encoder)
        if isinstance(self.decoder, dict):
            self.decoder = ModelConfig.from_dict(self.decoder)
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {', '.join(INJECTIONS)}, got {self.injection!r}")
        if self.compression < 1 or self.encoder.d_model % self.compression:
            raise ValueError(f"compression {self.compression} must divide the encoder width {self.encoder.d_model}")
        if not (self.encoder.causal and self.decoder.causal):
            raise ValueError("the EEM's encoder and decoder are causal stacks")
        if self.encoder.vocab_size != self.decoder.vocab_size:
            raise ValueError("encoder and decoder must share the vocabulary")
        if self.share_embeddings and self.encoder.d_model != self.decoder.d_model:
            raise ValueError("share_embeddings needs the encoder and decoder widths to be equal")
        if self.noise_q < 0:
            raise ValueError(f"noise_q must be >= 0, got {self.noise_q}")

    @property
    def d_emb(self) -> int:
        return self.encoder.d_model // self.compression

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def max_seq_len(self) -> int:
        """The longest window: the encoder reads N tokens, the decoder N-1 (+1 with prepend)."""
        return min(self.encoder.max_seq_len, self.decoder.max_seq_len + 1 - (self.injection == "prepend"))

    def to_dict(self) -> dict:
        return {**asdict(self), "encoder": self.encoder.to_dict(), "decoder": self.decoder.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "EEMConfig":
        return cls(**d)


def quantize_embedding(e: torch.Tensor, fmt: str) -> torch.Tensor:
    """The embedding (B, d) as stored in ``fmt`` (FORMATS), returned in float32. int8: symmetric,
    one absmax scale per window (its 16 bits are not charged: < 1% of the d_emb·8 bits here)."""
    if fmt == "fp32":
        return e.float()
    if fmt in ("fp16", "bf16"):
        return e.to(torch.float16 if fmt == "fp16" else torch.bfloat16).float()
    if fmt == "int8":
        s = e.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
        return (e / s).round().clamp(-127, 127) * s
    if fmt in ("e4m3", "e5m2"):                      # saturate: the casts overflow to NaN / inf
        dt = torch.float8_e4m3fn if fmt == "e4m3" else torch.float8_e5m2
        big = torch.finfo(dt).max
        return e.clamp(-big, big).to(dt).float()
    raise ValueError(f"unknown embedding format {fmt!r}; known: {', '.join(FORMATS)}")


class EEM(nn.Module):
    """Window ids (B, T+1) -> next-token logits (B, T, V) for w_1..w_T (module docstring)."""

    def __init__(self, cfg: EEMConfig):
        super().__init__()
        self.config = cfg
        self.encoder = TransformerLM(cfg.encoder)
        self.decoder = TransformerLM(cfg.decoder)
        if cfg.share_embeddings:                     # one token table (and tied head) for both stacks
            self.encoder.tok_emb.weight = self.decoder.tok_emb.weight
            self.encoder.head.weight = self.decoder.tok_emb.weight
        self.down = nn.Linear(cfg.encoder.d_model, cfg.d_emb)
        d_dec = cfg.decoder.d_model
        self.d_in = d_dec // 4 if cfg.injection == "concat" else d_dec        # channels the embedding fills
        self.up = nn.Linear(cfg.d_emb, self.d_in)
        # The backbone's init scale for the bottleneck, and a zero `up`: the EEM starts as the plain
        # causal decoder (the embedding injects nothing) and learns to use it. (PyTorch's default
        # init made up(e) ~17x the token embeddings, drowning the tokens in add/concat mode.)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed_window(self, window: torch.Tensor, mask: Optional[torch.Tensor] = None, *, fmt: str = "fp32",
                     generator: Optional[torch.Generator] = None):
        """The compressed embedding of each window (B, d_emb): the encoder's last state, down-projected;
        noise U(-q, q) in training (QAT), stored as ``fmt`` at evaluation. ``mask`` (B, N): 0 on
        left padding (shorter windows; attention stacks only)."""
        enc = self.encoder
        ctx = enc.prepare(window, attention_mask=mask)
        h = enc.embed(window, ctx=ctx)
        for i in range(enc.config.n_layer):
            h = enc.layer(i, h, ctx)
        e = self.down(enc.norm_f(h[:, -1]))                                  # (B, d_emb)
        if self.training and self.config.noise_q > 0:
            u = torch.rand(e.shape, generator=generator, device=e.device, dtype=e.dtype)
            e = e + (2 * u - 1) * self.config.noise_q
        return e if self.training else quantize_embedding(e, fmt)

    def decode(self, ids: torch.Tensor, e: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decoder inputs w_0..w_{T-1} (B, T) [mask (B, T), 0 on left padding] and embeddings (B, d_emb)
        -> logits (B, T, V)."""
        dec, inj = self.decoder, self.config.injection
        z = self.up(e)                                                      # (B, d_in)
        if inj == "prepend":
            full = torch.cat([ids[:, :1], ids], 1)                          # a placeholder id at position 0
            if mask is not None:                                            # the embedding token is real
                mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
            ctx = dec.prepare(full, attention_mask=mask)
            h = dec.embed(full, ctx=ctx)
            h = torch.cat([z[:, None].to(h.dtype), h[:, 1:]], 1)
        else:
            ctx = dec.prepare(ids, attention_mask=mask)
            h = dec.embed(ids, ctx=ctx)
            if inj == "add":
                h = h + z[:, None]
            else:
                h = torch.cat([h[..., :h.shape[-1] - self.d_in], z[:, None].expand(-1, h.shape[1], -1)], -1)
        for i in range(dec.config.n_layer):
            h = dec.layer(i, h, ctx)
        logits = dec.unembed(h)
        return logits[:, 1:] if inj == "prepend" else logits

    def forward(self, window: torch.Tensor, mask: Optional[torch.Tensor] = None, *, fmt: str = "fp32",
                generator: Optional[torch.Generator] = None):
        """window (B, N) [mask (B, N)] -> logits (B, N-1, V) predicting window[:, 1:]."""
        e = self.embed_window(window, mask, fmt=fmt, generator=generator)
        return self.decode(window[:, :-1], e, None if mask is None else mask[:, :-1])


ARCHITECTURES["EEM"] = (EEMConfig, EEM)


def left_pad_mask(n_rows: int, n: int, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n_rows, n) long mask hiding a random number of leading positions, 0..n-2 per row (so every
    row keeps at least two real tokens): windows of every length for the single-model entropy
    estimate (brief entropy.md, "Per-token entropy")."""
    pad = torch.randint(0, n - 1, (n_rows, 1), generator=generator)
    return (torch.arange(n)[None] >= pad).long()


def eem_objective(model, batch, *, left_pad: bool = False,
                  generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy (nats/token) of the decoder given the window's embedding; batch (x, y)
    of (B, T) ids as for a causal LM (the window is x_0 followed by y). ``left_pad``: each window
    is cut to a random length by left padding (mask 0, no loss there)."""
    x, y = batch
    window = torch.cat([x[:, :1], y], 1)                                    # (B, T+1)
    mask = left_pad_mask(window.shape[0], window.shape[1], generator=generator).to(x.device) if left_pad else None
    logits = model(window, mask, generator=generator)
    target = y if mask is None else y.masked_fill(mask[:, :-1] == 0, -100)  # a target needs a real input
    loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)
    return loss, {"loss": loss.detach()}


@torch.no_grad()
def evaluate_eem(model, x: torch.Tensor, y: torch.Tensor, *, n_bytes: Optional[int] = None, fmt: str = "fp32",
                 batch_size: int = 16, foreign: bool = False) -> dict:
    """Held-out CE (nats/token), the CE with the embedding's bits charged at ``fmt``'s width, and bits
    per byte of both when the bytes the windows cover are given. ``foreign``: also ``ce_foreign``,
    each window decoded with the NEXT window's embedding (the last with the first's) -- the CE
    without the oracle's information about this window; its excess over ``ce`` is what the
    embedding saves (the embeddings are computed once for both)."""
    if foreign and x.shape[0] < 2:
        raise ValueError("foreign=True needs two windows or more (each is decoded with another's embedding)")
    model.eval()
    dev = model_device(model)
    windows = [torch.cat([x[i:i + batch_size, :1], y[i:i + batch_size]], 1).to(dev)   # (b, T+1) each
               for i in range(0, x.shape[0], batch_size)]
    e = torch.cat([model.embed_window(w, fmt=fmt) for w in windows])                 # (N, d_emb)

    def summed_ce(emb):                                                              # (total nats, tokens)
        total, count = 0.0, 0
        for w, eb in zip(windows, emb.split(batch_size)):
            logits = model.decode(w[:, :-1], eb).float()                             # (b, T, V)
            total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
            count += w[:, 1:].numel()
        return total, count
    total, count = summed_ce(e)
    ce = total / max(count, 1)
    emb_nats = model.config.d_emb * FORMATS[fmt] * math.log(2) * x.shape[0]   # charged per window
    out = {"ce": ce, "ce_charged": (total + emb_nats) / max(count, 1), "tokens": count}
    if n_bytes:
        out["bpb"] = total / math.log(2) / n_bytes
        out["bpb_charged"] = (total + emb_nats) / math.log(2) / n_bytes
    if foreign:
        other, n = summed_ce(e.roll(-1, 0))
        out["ce_foreign"] = other / max(n, 1)
    return out
