"""Variational masked diffusion (VMD, brief vmd.md): a masked-diffusion denoiser conditioned on a
Gaussian latent z, so that tokens committed in the same step agree with each other.

    encoder  q(z | x0, x_t) = N(mu, diag sigma^2)   a bidirectional stack over the clean tokens, told
                                                      which positions x_t masks; read out over the block
                                                      by its mean (``readout="mean"``) or its mean and
                                                      its first position (``"mean+first"``: tells the
                                                      order of independent factors, e.g. toy D2)
    prior    p(z) = N(0, I)
    decoder  p(x0^i | x_t, z)                        the MDM denoiser (our bidirectional backbone); z
                                                      enters through the backbone's conditioning input:
                                                      a projection of z ADDED to every token embedding
                                                      (the brief's "embedding addition", the default),
                                                      or AdaLN (denoiser ``cond_mode="adaln"``: z scales
                                                      and shifts every block's norms; latent only)

``latent_dim = 0`` gives the plain masked diffusion model with the same backbone, features and
blocks: the MDM baseline of every VMD experiment is this class too, trained by the same objective
(vmd/objective.py) with the KL term absent.

Blocks (``block_size > 0``): the sequence is cut into blocks generated left to right; the block
being denoised sees the earlier blocks clean and the later ones fully masked (what the sampler
shows it: ``FixedLength(block_length=block_size)``), and has its own latent z_b, drawn when the
sampler enters the block. ``block_size = 0`` is one block: the whole sequence.

Features: fixed per-position inputs added through the same conditioning projection, e.g. the
Sudoku cell's row, column and box one-hots (``features="sudoku"``) — without them a small
denoiser sits on the loss plateau (brief, "Measured here").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..checkpoint import ARCHITECTURES
from ..model import ModelConfig, TransformerLM
from ..tasks.sudoku import BOX, COL, ROW

FEATURES = ("", "sudoku")
READOUTS = ("mean", "mean+first")


def feature_table(name: str) -> Optional[torch.Tensor]:
    """(T, F) fixed per-position features, or None."""
    if name == "":
        return None
    if name == "sudoku":                                   # row, column and box one-hots of 81 cells
        eye = torch.eye(9)
        return torch.cat([eye[ROW], eye[COL], eye[BOX]], 1)  # (81, 27)
    raise ValueError(f"features must be one of {FEATURES}, got {name!r}")


@dataclass
class VMDConfig:
    denoiser: ModelConfig         # bidirectional backbone (its cond_dim is derived: features + latent)
    latent_dim: int = 8           # width of z per block; 0 = the plain MDM baseline (no encoder, no KL)
    enc_layers: int = 2           # recognition encoder layers (same width and heads as the denoiser)
    block_size: int = 0           # tokens per block (one latent per block); 0 = one block
    features: str = ""            # fixed per-position inputs: "" | "sudoku" (row / column / box)
    free_bits: float = 0.0        # KL free bits per latent dimension and block, training only (nats)
    readout: str = "mean"         # encoder readout over the block: mean | mean+first (also the block's first position)

    def __post_init__(self):
        if isinstance(self.denoiser, dict):
            self.denoiser = ModelConfig.from_dict(self.denoiser)
        if self.denoiser.causal:
            raise ValueError("the VMD denoiser is bidirectional: set causal=False")
        if self.latent_dim < 0 or self.enc_layers < 0 or self.block_size < 0 or self.free_bits < 0:
            raise ValueError("latent_dim, enc_layers, block_size and free_bits must be >= 0")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.latent_dim and not self.enc_layers:
            raise ValueError("a latent needs a recognition encoder: enc_layers >= 1")
        if self.denoiser.cond_mode == "adaln" and self.features:
            raise ValueError("AdaLN conditioning carries the latent only: per-position features need cond_mode=add")
        tab = feature_table(self.features)
        n_feat = 0 if tab is None else tab.shape[1]
        if tab is not None and tab.shape[0] > self.denoiser.max_seq_len:
            raise ValueError(f"features {self.features!r} cover {tab.shape[0]} positions > max_seq_len")
        want = n_feat + self.latent_dim
        if self.denoiser.cond_dim != want:
            self.denoiser = ModelConfig.from_dict({**self.denoiser.to_dict(), "cond_dim": want})

    @property
    def n_features(self) -> int:
        tab = feature_table(self.features)
        return 0 if tab is None else tab.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.denoiser.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.denoiser.max_seq_len

    def n_blocks(self, length: int) -> int:
        return 1 if not self.block_size else -(-length // self.block_size)

    def to_dict(self) -> dict:
        return {**asdict(self), "denoiser": self.denoiser.to_dict()}     # the backbone's own omissions

    @classmethod
    def from_dict(cls, d: dict) -> "VMDConfig":
        return cls(**d)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(0, I)) per dimension (..., D), in nats."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar)


class VMD(nn.Module):
    """Denoiser p(x0 | x_t, z) + recognition encoder q(z | x0, x_t); see the module docstring."""

    def __init__(self, cfg: VMDConfig):
        super().__init__()
        self.config = cfg
        self.denoiser = TransformerLM(cfg.denoiser)
        tab = feature_table(cfg.features)
        self.register_buffer("features", tab if tab is not None else torch.zeros(0, 0), persistent=False)
        if cfg.n_features:      # the feature columns start as embedding tables (std 0.02), not as zeros
            nn.init.normal_(self.denoiser.cond_proj.weight[:, :cfg.n_features], std=0.02)
        self.encoder = self.posterior = None
        if cfg.latent_dim:
            enc = ModelConfig.from_dict({**cfg.denoiser.to_dict(), "n_layer": cfg.enc_layers,
                                         "cond_dim": 1 + cfg.n_features, "cond_mode": "add"})
            self.encoder = TransformerLM(enc)
            self.encoder.tok_emb.weight = self.denoiser.tok_emb.weight      # one token table
            self.encoder.head.weight = self.denoiser.tok_emb.weight
            n_read = 2 if cfg.readout == "mean+first" else 1
            self.posterior = nn.Linear(n_read * cfg.denoiser.d_model, 2 * cfg.latent_dim)
            nn.init.normal_(self.posterior.weight, std=0.02)
            nn.init.zeros_(self.posterior.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _features(self, B: int, T: int) -> Optional[torch.Tensor]:
        if not self.config.n_features:
            return None
        if T > self.features.shape[0]:
            raise ValueError(f"features {self.config.features!r} cover {self.features.shape[0]} positions, got {T}")
        return self.features[:T][None].expand(B, -1, -1)                  # (B, T, F)

    def cond(self, B: int, T: int, z: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The denoiser's conditioning (B, T, F + D): features, then z (B, D) or (B, T, D)."""
        parts = [p for p in (self._features(B, T),) if p is not None]
        if self.config.latent_dim:
            if z is None:
                raise ValueError("this VMD needs a latent z (draw it from the prior for sampling)")
            parts.append(z[:, None].expand(-1, T, -1) if z.dim() == 2 else z)
        return torch.cat(parts, -1) if parts else None

    def denoise(self, xt: torch.Tensor, z: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t (B, T) [+ z (B, D) or (B, T, D)] -> logits (B, T, V) of p(x0 | x_t, z)."""
        B, T = xt.shape
        return self.denoiser(xt, attention_mask=attention_mask, cond=self.cond(B, T, z)).logits

    def encode(self, x0_seen: torch.Tensor, masked: torch.Tensor, block: torch.Tensor,
               attention_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x0, x_t): x0_seen (B, T) clean tokens (later blocks already replaced by [MASK]),
        masked (B, T) bool = x_t's mask pattern, block (B, T) bool = the positions z describes.
        Returns mu, logvar (B, D)."""
        B, T = x0_seen.shape
        c = masked.float()[..., None]
        f = self._features(B, T)
        c = torch.cat([c, f], -1) if f is not None else c
        out = self.encoder(x0_seen, attention_mask=attention_mask, cond=c, output_hidden_states=True)
        h = self.encoder.norm_f(out.hidden_states[-1])                      # (B, T, C)
        w = block.float()[..., None]
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1)                      # (B, C)
        if self.config.readout == "mean+first":            # an order-sensitive read: the block's first position
            first = block.float().argmax(1)                                   # (B,)
            pooled = torch.cat([pooled, h[torch.arange(B, device=h.device), first]], -1)   # (B, 2C)
        mu, logvar = self.posterior(pooled).chunk(2, -1)
        return mu, logvar.clamp(-12, 6)

    def forward(self, xt: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None):
        """Sampling-loop signature: logits of the denoiser with z given as ``cond``."""
        return self.denoise(xt, cond, attention_mask)


@torch.no_grad()
def warm_start(model: VMD, source: VMD) -> None:
    """Start model's denoiser from source's (e.g. a VMD from its trained MDM baseline): every
    denoiser weight is copied; of the conditioning projection, the feature columns are copied and
    the z columns set to zero, so the warm-started VMD predicts exactly what source does whatever z
    is, until training teaches the z columns. The encoder keeps its own initialisation."""
    mine, theirs = model.denoiser.state_dict(), source.denoiser.state_dict()
    is_ada = lambda k: ".ada." in k                       # AdaLN weights read z only: zeroed, like z columns
    if model.config.features != source.config.features or \
            {k for k in mine if not is_ada(k)} != {k for k in theirs if not is_ada(k)}:
        raise ValueError("warm start needs a source with the same denoiser layout and features")
    F = model.config.n_features
    for k in mine:
        if is_ada(k):
            mine[k].zero_()
    for k, v in theirs.items():
        if is_ada(k):
            continue
        if k == "cond_proj.weight":
            mine[k].zero_()
            mine[k][:, :F] = v[:, :F]
        elif mine[k].shape != v.shape:
            raise ValueError(f"warm start: {k} is {tuple(v.shape)} in the source, {tuple(mine[k].shape)} here")
        else:
            mine[k].copy_(v)


ARCHITECTURES["VMD"] = (VMDConfig, VMD)
