"""`adaptive-lm` — the command line. One typed function per subcommand; the parser is built from
each function's signature (parameters without a default are positional, and so is a leading str parameter with a
default; the rest are --flags,
``list[str]`` takes many values, a bool flag defaults to False) and its help from the docstring's
``Args:`` lines.

User errors (AdaptiveLMError, bad flags) print one line `adaptive-lm: error: ...` and exit 2 for
usage errors, 1 for the rest; nothing the user had is overwritten.
"""
from __future__ import annotations

from . import core, calm, codec, sudoku  # noqa: F401,I001  (each registers its commands; core first in --help)
from .. import tasks  # noqa: F401  (registers the task corpora, e.g. --corpus arith)
from .parser import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
