"""Tasks and metrics: synthetic generators, corpora, real benchmarks, answer checkers."""
from . import arith  # noqa: F401,E402  (registers the arith corpus)
