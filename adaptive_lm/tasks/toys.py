"""The synthetic joints of the VMD paper (brief vmd.md, "Synthetic 2-token / 4-token").

Sequences of digits 0..9 (token strings "0".."9"):
- ``pair``        two tokens, support {(k, k+1 mod 10)}, uniform;
- ``pair-skewed`` the same support with P(k, k+1) = (k+1)/55;
- ``D1``          four tokens (k, k+1, k+2, k+3) mod 10, uniform over the 10;
- ``D2``          four tokens (k, k+1, l, l+1) mod 10, uniform over the 100.
An MDM that commits every token in one step samples the product of the marginals (uniform
digits), so it lands in the support with probability |support| / 10^L; a model of the joint always does.

Metrics from samples: accuracy (share inside the support) and KL(data || model), the model's joint
estimated from the N samples with ONE pseudo-sample spread evenly over all K = 10^L sequences (so a
support sequence never sampled costs a finite amount): q(x) = (count(x) + 1/K) / (N + 1).
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from ..errors import UsageError

DATASETS = ("pair", "pair-skewed", "D1", "D2")
ALPHABET = "0123456789"


def support(name: str) -> dict[tuple[int, ...], float]:
    """The data distribution: sequence -> probability."""
    if name == "pair":
        return {(k, (k + 1) % 10): 0.1 for k in range(10)}
    if name == "pair-skewed":
        return {(k, (k + 1) % 10): (k + 1) / 55 for k in range(10)}
    if name == "D1":
        return {tuple((k + j) % 10 for j in range(4)): 0.1 for k in range(10)}
    if name == "D2":
        return {(k, (k + 1) % 10, l, (l + 1) % 10): 0.01 for k in range(10) for l in range(10)}
    raise UsageError(f"unknown toy dataset {name!r}; choose from {', '.join(DATASETS)}")


def length(name: str) -> int:
    return len(next(iter(support(name))))


def sample(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, L) digits drawn from the data distribution."""
    sup = support(name)
    seqs = torch.tensor(list(sup))                                   # (S, L)
    probs = torch.tensor(list(sup.values()), dtype=torch.float64)
    return seqs[torch.multinomial(probs, n, replacement=True, generator=generator)]


def accuracy(samples: torch.Tensor, name: str) -> float:
    sup = support(name)
    return sum(tuple(r) in sup for r in samples.tolist()) / max(len(samples), 1)


def kl_data_model(samples: torch.Tensor, name: str) -> float:
    """KL(data || model) in nats, the model's joint from the samples (module docstring)."""
    sup = support(name)
    counts = Counter(tuple(r) for r in samples.tolist())
    k = 10 ** length(name)
    return sum(p * math.log(p / ((counts.get(x, 0) + 1 / k) / (len(samples) + 1))) for x, p in sup.items())
