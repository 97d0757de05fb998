"""Small statistics for accuracy tables: how far a measured share can be trusted.

- ``wilson_interval(k, n)`` — the Wilson score interval of a binomial proportion (Wilson 1927),
  which stays inside [0, 1] and behaves at k = 0 or k = n, unlike the normal approximation.
- ``paired_counts(a, b)`` — two methods scored on the SAME problems: how many both solve, how
  many only one does. Only the discordant counts say which is better (McNemar's test reads them).
"""
from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """(lo, hi) of the Wilson interval for k successes in n trials (z = 1.96: 95 %)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_counts(a: list[bool], b: list[bool], names: tuple[str, str] = ("a", "b")) -> dict:
    """Counts over problems scored by two methods: both right, only the first (``only_<names[0]>``),
    only the second, neither."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same problems ({len(a)} vs {len(b)})")
    return {"both": sum(x and y for x, y in zip(a, b)), f"only_{names[0]}": sum(x and not y for x, y in zip(a, b)),
            f"only_{names[1]}": sum(y and not x for x, y in zip(a, b)), "neither": sum(not (x or y) for x, y in zip(a, b))}
