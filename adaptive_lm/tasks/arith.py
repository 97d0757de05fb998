"""Synthetic multi-step arithmetic word problems whose answer LENGTH depends on the values.

A problem describes a quantity that changes by a single digit each day until a condition on its
value is met; the worked solution has one line per day, so 1 to 16 lines (answers of 40 to 254
characters), and the number of lines is known only after dividing the values — not from the
prompt's shape. Each step is local (a 1- or 2-digit number plus or minus one digit), which a
small model masters on a CPU; a line shows the change and the new value (not the old one: a
diffusion model decoding in parallel would copy the old value instead of computing the new), the
values written with two digits so that the line above is a fixed-offset lookup (style "full"
writes the old value too, "Day 02: 33-2=31", as earlier versions did). The answer ends
in ``\\boxed{days}`` and is scored with the same last-``\\boxed{}`` extractor as GSM8K / MATH.

    Mia has 47 coins and spends 6 each day until fewer than 6 are left. How many days?
    Day 01: -6=41
    ...
    Day 07: -6=05
    05<6, so 7 days.
    \\boxed{7}

The ``arith`` corpus (``data.corpus=arith``) is these problems as text: question, worked
solution, a blank line. Deterministic from a seed (torch.Generator). Train and test are disjoint
by construction: a problem's numbers (template, start, step, target) hash into the test split or
the train split.
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Optional

import torch

from ..data import register_corpus
from .answers import is_equiv, last_boxed

MAX_STEPS = 16
MAX_VALUE = 99
MAX_DELTA = 9                                 # the largest daily change (a single digit)
ALPHABET = string.printable[:95] + "\n"      # printable ASCII + newline: the char tokenizer's alphabet
NAMES = ("Mia", "Leo", "Ana", "Sam", "Kai", "Zoe", "Ben", "Ivy", "Tom", "Eva")
ITEMS = ("coins", "apples", "stamps", "cards", "shells", "beads")
TEST_FRACTION = 10                            # 1 in 10 number-tuples is held out for test
STYLES = ("delta", "full")                    # a worked line shows the change and the new value, or also the old


@dataclass(frozen=True)
class Problem:
    prompt: str      # the question, ending in a newline
    solution: str    # the worked solution, one line per step, ending in \boxed{answer}
    answer: str      # the final answer (number of days)
    steps: int       # number of step lines (1..16)
    key: tuple = ()  # the numbers that decide the split: ("spend", start, d) or ("save", start, d, target)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _hash(key: tuple) -> int:
    return int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16)


def _split_of(key: tuple) -> str:
    return "test" if _hash(key) % TEST_FRACTION == 0 else "train"


def heldout_half(p: Problem) -> str:
    """"valid" or "test": which half of the held-out number tuples a test-split problem's belongs
    to (another bit of the same hash), so the arith corpus's valid and test share no tuple."""
    return "valid" if (_hash(p.key) // TEST_FRACTION) % 2 == 0 else "test"


def check_options(style: str = "delta", max_delta: int = MAX_DELTA) -> None:
    """ValueError for a line style outside STYLES or a max_delta outside 2..MAX_DELTA."""
    if style not in STYLES:
        raise ValueError(f"line style must be one of {', '.join(STYLES)}, not {style!r}")
    if not 2 <= max_delta <= MAX_DELTA:
        raise ValueError(f"max_delta must be in 2..{MAX_DELTA}, not {max_delta}")


def _line(k: int, old: int, op: str, new: int, style: str) -> str:
    """One worked line: "Day 02: -2=31" (delta) or "Day 02: 33-2=31" (full)."""
    return f"Day {k:02d}: {old:02d}{op}={new:02d}" if style == "full" else f"Day {k:02d}: {op}={new:02d}"


def spend_problem(name: str, item: str, start: int, d: int, style: str = "delta") -> Problem:
    """Subtract d per day while at least d are left."""
    check_options(style)
    lines, x, k = [], start, 0
    while x >= d:
        k += 1
        lines.append(_line(k, x, f"-{d}", x - d, style))
        x -= d
    lines.append(f"{x:02d}<{d}, so {k} days.")
    prompt = f"{name} has {start} {item} and spends {d} each day until fewer than {d} are left. How many days?\n"
    return Problem(prompt, "\n".join(lines) + f"\n\\boxed{{{k}}}", str(k), k, ("spend", start, d))


def save_problem(name: str, item: str, start: int, d: int, target: int, style: str = "delta") -> Problem:
    """Add d per day until the total reaches the target."""
    check_options(style)
    lines, x, k = [], start, 0
    while x < target:
        k += 1
        lines.append(_line(k, x, f"+{d}", x + d, style))
        x += d
    lines.append(f"{x:02d}>={target}, so {k} days.")
    prompt = f"{name} has {start} {item} and gets {d} more each day until at least {target}. How many days?\n"
    return Problem(prompt, "\n".join(lines) + f"\n\\boxed{{{k}}}", str(k), k, ("save", start, d, target))


def sample_problem(g: torch.Generator, split: str = "train", max_steps: int = MAX_STEPS, min_steps: int = 1,
                   style: str = "delta", max_delta: int = MAX_DELTA) -> Problem:
    """One problem of the split, with the number of steps uniform in min_steps..max_steps; style is
    the worked lines' (STYLES; the prompt and the answer do not depend on it); the daily change is
    at most max_delta (2..9: a smaller one makes each line's arithmetic a smaller table)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    check_options(style, max_delta)
    while True:
        n = _randint(g, min_steps, max_steps)
        name, item = NAMES[_randint(g, 0, len(NAMES) - 1)], ITEMS[_randint(g, 0, len(ITEMS) - 1)]
        if _randint(g, 0, 1) == 0:                                  # spend: start = n*d + r, r < d
            d_max = min(max_delta, MAX_VALUE // n)
            if d_max < 2:
                continue
            d = _randint(g, 2, d_max)
            start = n * d + _randint(g, 0, min(d - 1, MAX_VALUE - n * d))
            key = ("spend", start, d)
            if _split_of(key) == split:
                return spend_problem(name, item, start, d, style)
        else:                                                       # save: n = ceil((target-start)/d)
            d_max = min(max_delta, (MAX_VALUE - 1) // n)
            if d_max < 1:
                continue
            d = _randint(g, 1, d_max)
            start = _randint(g, 1, MAX_VALUE - n * d)
            target = start + (n - 1) * d + _randint(g, 1, d)
            key = ("save", start, d, target)
            if _split_of(key) == split:
                return save_problem(name, item, start, d, target, style)


def make_split(split: str, n: int, seed: int = 0, max_steps: int = MAX_STEPS, style: str = "delta",
               max_delta: int = MAX_DELTA) -> list[Problem]:
    """n problems of a split, deterministic from the seed (duplicates are possible in train)."""
    g = torch.Generator().manual_seed(seed)
    return [sample_problem(g, split, max_steps, style=style, max_delta=max_delta) for _ in range(n)]


def score(output: str, problem: Problem) -> bool:
    """True when the last \\boxed{} of the output equals the answer (the GSM8K/MATH checker)."""
    pred: Optional[str] = last_boxed(output)
    return pred is not None and is_equiv(pred, problem.answer)


CORPUS_PROBLEMS = {"train": 40_000, "valid": 500, "test": 500}   # problems per split of the arith corpus
CORPUS_SEEDS = {"train": 0, "valid": 1, "test": 2}


def corpus_text(split: str) -> str:
    """The ``arith`` corpus: each problem's prompt and worked solution, problems separated by a blank
    line. train: 40,000 problems of the train tuples (9.1 M characters); valid and test: 500 each
    from the two disjoint halves of the held-out tuples (``heldout_half``)."""
    if split == "train":
        probs = make_split("train", CORPUS_PROBLEMS["train"], seed=CORPUS_SEEDS["train"])
    else:
        g, probs = torch.Generator().manual_seed(CORPUS_SEEDS[split]), []
        while len(probs) < CORPUS_PROBLEMS[split]:
            p = sample_problem(g, "test")
            if heldout_half(p) == split:
                probs.append(p)
    return "\n\n".join(p.prompt + p.solution for p in probs) + "\n"


register_corpus("arith", corpus_text)
