"""CALM early-exit training: the weighted per-layer loss and the early-exit classifier.

Schuster et al. 2022 (CALM), §"Training": after each exit layer i the hidden state h_i goes through
the SAME final norm + output head as the top layer (``model.unembed``), and the loss is the
weighted average of the per-layer cross-entropies,
    L = Σ_i ω_i · CE(unembed(h_i), y),   ω_i = i / Σ_j j   (default; uniform and geometric offered).
The early-exit classifier (a linear layer hidden -> 2 per exit layer, on the raw layer output) is
trained in a SECOND step with the backbone frozen; its target is 1 where the layer's argmax equals
the top layer's, with class-balanced cross-entropy.

Layers are numbered 1..n_layer: layer i's output is ``hidden_states[i]`` (0 is the embeddings).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import unwrap

WEIGHT_SCHEMES = ("linear", "uniform", "geometric")


def exit_layers(n_layer: int, every: int = 1) -> list[int]:
    """Layers where a token may exit: every k-th layer, and always the top one. -> e.g. [2, 4, 6]."""
    if every < 1:
        raise ValueError(f"exit every k-th layer needs k >= 1, not {every}")
    layers = list(range(every, n_layer + 1, every))
    return layers if layers and layers[-1] == n_layer else layers + [n_layer]


def exit_weights(layers: list[int], scheme: str = "linear", ratio: float = 0.5) -> torch.Tensor:
    """ω over the exit layers, summing to 1. linear: ω_i ∝ i (the paper); uniform: equal;
    geometric: ω_i ∝ ratio^(n - i) (each layer down weighs ``ratio`` times the one above)."""
    i = torch.tensor(layers, dtype=torch.float64)
    if scheme == "linear":
        w = i
    elif scheme == "uniform":
        w = torch.ones_like(i)
    elif scheme == "geometric":
        w = ratio ** (i.max() - i)
    else:
        raise ValueError(f"exit weights must be one of {WEIGHT_SCHEMES}, not {scheme!r}")
    return (w / w.sum()).float()


def early_exit_loss(model, batch, *, layers: list[int], weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """CALM's weighted per-layer loss on a causal LM batch (x, y) of (B, T) ids (y = -100 ignored).

    Returns the loss and metrics: ``loss``, ``ce_top`` (the top layer's CE, comparable to a plain
    LM's loss) and ``ce_l{i}`` per exit layer."""
    x, y = batch
    out = model(x, output_hidden_states=True)
    m = unwrap(model)
    loss, mets = 0.0, {}
    for w, i in zip(weights.tolist(), layers):
        logits = out.logits if i == m.config.n_layer else m.unembed(out.hidden_states[i])   # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss = loss + w * ce
        mets[f"ce_l{i}"] = ce.detach()
    mets["ce_top"] = mets[f"ce_l{m.config.n_layer}"]
    mets["loss"] = loss.detach()
    return loss, mets


class ExitClassifier(nn.Module):
    """One linear layer hidden -> 2 per exit layer (below the top); p(exit) = softmax(...)[1]."""

    def __init__(self, d_model: int, layers: list[int]):
        super().__init__()
        self.layers = [i for i in layers]
        self.heads = nn.ModuleDict({str(i): nn.Linear(d_model, 2) for i in self.layers})

    def forward(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """(..., C) hidden state of ``layer`` -> (...,) probability that exiting there is safe."""
        return self.heads[str(layer)](h.float()).softmax(-1)[..., 1]

    def logits(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        return self.heads[str(layer)](h.float())


def classifier_loss(clf: ExitClassifier, model, batch, *, ignore_index: int = -100) -> tuple[torch.Tensor, dict]:
    """Class-balanced CE of the exit classifier on a causal LM batch; the backbone is frozen (no
    gradient reaches it). Target at layer i: 1 where argmax(unembed(h_i)) == the top layer's."""
    x, y = batch
    m = unwrap(model)
    with torch.no_grad():
        out = m(x, output_hidden_states=True)
        top = out.logits.argmax(-1)                                      # (B, T)
        valid = y != ignore_index
    loss, mets, n = 0.0, {}, 0
    for i in clf.layers:
        h = out.hidden_states[i].detach()
        with torch.no_grad():
            target = (m.unembed(h).argmax(-1) == top).long()[valid]       # (N,)
        logits = clf.logits(i, h)[valid]                                  # (N, 2)
        counts = torch.bincount(target, minlength=2).float()
        weight = counts.sum() / (2 * counts.clamp(min=1))                 # balanced classes
        loss = loss + F.cross_entropy(logits, target, weight=weight)
        mets[f"agree_l{i}"] = target.float().mean()
        mets[f"acc_l{i}"] = (logits.argmax(-1) == target).float().mean()
        n += 1
    loss = loss / max(n, 1)
    mets["loss"] = loss.detach()
    return loss, mets


def layer_agreement(model, x: torch.Tensor, layers: Optional[list[int]] = None) -> dict:
    """Share of tokens whose argmax at each layer equals the top layer's, on ids x (B, T)."""
    m = unwrap(model)
    with torch.no_grad():
        out = m(x, output_hidden_states=True)
        top = out.logits.argmax(-1)
        layers = layers or list(range(1, m.config.n_layer + 1))
        return {i: float((m.unembed(out.hidden_states[i]).argmax(-1) == top).float().mean()) for i in layers}
