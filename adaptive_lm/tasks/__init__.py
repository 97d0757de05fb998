"""Tasks and metrics: synthetic generators, corpora, real benchmarks, answer checkers."""
