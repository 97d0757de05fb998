"""Sudoku: parsing, a validator, an exact solver, two puzzle generators, difficulty, augmentation.

A grid is a string of 81 characters, row by row: '1'..'9' for a digit, '.' or '0' for a blank
(``parse`` normalises blanks to '.'). Nothing here depends on a model: the VMD / MDM Sudoku
recipes, ``bench vmd-sudoku`` and ``adaptive-lm sudoku solve`` build on it (brief vmd.md).

- ``solve(grid, limit=2)`` — bitmask depth-first search with the most-constrained cell first;
  returns up to ``limit`` solutions and the number of guesses it made (our difficulty measure).
- ``singles_solve`` — constraint propagation with naked and hidden singles only (what a human
  calls an easy puzzle); a puzzle it completes has a unique solution.
- ``generate(seed)`` — generator A: a random full grid (randomised DFS), then cells removed in a
  random order as long as singles still solve the puzzle, down to ``blanks`` blanks (or as far as
  it goes). Deterministic from the seed. ``level="hard"`` keeps only uniqueness instead, so the
  puzzles may need search (``difficulty`` says how much; many still do not). ``level="search"``
  draws "hard" puzzles until one that singles do NOT solve.
- ``generate_symmetric(seed)`` — generator B, independent of A in every step: a full grid made
  by shuffling a canonical pattern and then mixing it with random row-swaps of digit pairs
  ("digit swap chains"), blanks removed in 180°-rotation-symmetric pairs, DFS-checked uniqueness.
  Used for the "independent generator of the same class" rows of ``bench vmd-sudoku``.
- Splits of generator A are disjoint by construction: a puzzle's split is decided by a hash of its
  solution (up to digit relabelling). Training rows are augmented copies of train-split puzzles;
  such a copy could equal a test puzzle only by an astronomically unlikely coincidence (the
  augmentation group is ~1.2e12 maps, there are ~5.5e9 essentially different grids). Generator B
  has no splits: it never feeds training, only evaluation.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError

DIGITS = "123456789"
ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
UNITS = ([[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)]
         + [[b // 3 * 27 + b % 3 * 3 + r * 9 + c for r in range(3) for c in range(3)] for b in range(9)])
PEERS = [sorted({j for u in UNITS if i in u for j in u} - {i}) for i in range(81)]
ALL = 0x1FF                                   # bit d-1 set: digit d still possible


class SudokuError(UsageError):
    """A puzzle that cannot be read or has no valid completion."""


def parse(text: str) -> str:
    """Normalise an 81-character puzzle ('.' or '0' for blanks; spaces, '|', '-', '+' and newlines
    ignored) to digits and '.'; SudokuError on the wrong length, an illegal character, or givens
    that break a rule."""
    s = "".join(ch for ch in text.strip() if ch not in " \n\r\t|-+")
    bad = sorted({ch for ch in s if ch not in DIGITS + ".0"})
    if bad:
        raise SudokuError(f"illegal character(s) {''.join(bad)!r} in the puzzle: use 1-9 for digits and . or 0 for blanks")
    if len(s) != 81:
        raise SudokuError(f"a puzzle has 81 cells, this one has {len(s)}")
    s = s.replace("0", ".")
    clash = conflicts(s)
    if clash:
        i, j = clash[0]
        raise SudokuError(f"contradictory givens: {s[i]} at r{ROW[i] + 1}c{COL[i] + 1} and r{ROW[j] + 1}c{COL[j] + 1}")
    return s


def conflicts(grid: str) -> list[tuple[int, int]]:
    """Pairs of filled cells (i < j) sharing a row, column or box with the same digit."""
    return [(i, j) for i in range(81) if grid[i] != "." for j in PEERS[i] if j > i and grid[j] == grid[i]]


def is_solution(grid: str, puzzle: Optional[str] = None) -> bool:
    """A complete grid breaking no rule (and keeping the puzzle's givens, when given)."""
    if len(grid) != 81 or any(ch not in DIGITS for ch in grid) or conflicts(grid):
        return False
    return puzzle is None or all(p == "." or p == g for p, g in zip(puzzle, grid))


def violations(grid: str, puzzle: Optional[str] = None) -> int:
    """Rule breaks in a (possibly incomplete) grid: clashing pairs + changed givens + blanks."""
    n = len(conflicts(grid)) + grid.count(".")
    if puzzle is not None:
        n += sum(p != "." and p != g for p, g in zip(puzzle, grid))
    return n


def _candidates(cells: list[int]) -> Optional[list[int]]:
    """Candidate bitmask per cell (0 for filled cells); None if a given clashes."""
    cand = [ALL] * 81
    for i, v in enumerate(cells):
        if v:
            for j in PEERS[i]:
                if cells[j] == v:
                    return None
                cand[j] &= ~(1 << (v - 1))
    return [0 if v else c for v, c in zip(cells, cand)]


def _cells(grid: str) -> list[int]:
    return [0 if ch == "." else int(ch) for ch in grid]


def _grid(cells: list[int]) -> str:
    return "".join("." if v == 0 else str(v) for v in cells)


def _place(cells, cand, i, v) -> bool:
    """Set cell i to v and remove v from its peers; False on a contradiction (a peer left empty)."""
    cells[i], cand[i] = v, 0
    bit = 1 << (v - 1)
    for j in PEERS[i]:
        if cand[j] & bit:
            cand[j] &= ~bit
            if not cand[j] and not cells[j]:
                return False
    return True


def _propagate(cells, cand) -> bool:
    """Naked and hidden singles to a fixed point; False on a contradiction."""
    changed = True
    while changed:
        changed = False
        for i in range(81):
            c = cand[i]
            if not cells[i] and c and c & (c - 1) == 0:
                if not _place(cells, cand, i, c.bit_length()):
                    return False
                changed = True
        for u in UNITS:
            for d in range(9):
                bit = 1 << d
                where = [i for i in u if cand[i] & bit]
                if len(where) == 1 and not any(cells[i] == d + 1 for i in u):
                    if not _place(cells, cand, where[0], d + 1):
                        return False
                    changed = True
                elif not where and not any(cells[i] == d + 1 for i in u):
                    return False
    return True


def singles_solve(grid: str) -> Optional[str]:
    """The grid completed by naked + hidden singles alone, or None if they get stuck."""
    cells = _cells(grid)
    cand = _candidates(cells)
    if cand is None or not _propagate(cells, cand):
        return None
    return _grid(cells) if all(cells) else None


@dataclass
class Solved:
    solutions: list[str]      # up to `limit` complete grids
    guesses: int              # branch points the search tried beyond the first candidate (difficulty)


def solve(grid: str, limit: int = 2, rng: Optional[random.Random] = None) -> Solved:
    """Every solution up to ``limit`` by propagation + DFS on the cell with fewest candidates.
    ``rng`` shuffles the candidate order (used to draw random full grids)."""
    cells = _cells(grid)
    cand = _candidates(cells)
    out: list[str] = []
    guesses = [0]

    def rec(cells, cand):
        if not _propagate(cells, cand):
            return
        open_ = [i for i in range(81) if not cells[i]]
        if not open_:
            out.append(_grid(cells))
            return
        i = min(open_, key=lambda k: bin(cand[k]).count("1"))
        digits = [d + 1 for d in range(9) if cand[i] >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for n, v in enumerate(digits):
            if len(out) >= limit:
                return
            guesses[0] += n > 0
            c2, k2 = cells[:], cand[:]
            if _place(c2, k2, i, v):
                rec(c2, k2)

    if cand is not None:
        rec(cells, cand)
    return Solved(out, guesses[0])


def unique_solution(grid: str) -> str:
    """The puzzle's solution; SudokuError when it has none or several."""
    s = solve(parse(grid), limit=2)
    if not s.solutions:
        raise SudokuError("this puzzle has no solution")
    if len(s.solutions) > 1:
        raise SudokuError("this puzzle has more than one solution")
    return s.solutions[0]


def difficulty(puzzle: str) -> dict:
    """blanks, whether singles alone solve it, and the DFS guesses needed (0 for singles puzzles)."""
    return {"blanks": puzzle.count("."), "singles": singles_solve(puzzle) is not None,
            "guesses": solve(puzzle, limit=1).guesses}


def random_full_grid(rng: random.Random) -> str:
    return solve("." * 81, limit=1, rng=rng).solutions[0]


LEVELS = ("easy", "hard", "search")
SEARCH_DRAWS = 200                 # level "search": "hard" puzzles drawn before giving up


def keeps_class(grid: str, level: str) -> bool:
    """easy: naked + hidden singles solve it (so the solution is unique); hard: the solution is
    unique, whatever technique it takes; search: unique, and singles alone do not solve it."""
    if level == "easy":
        return singles_solve(grid) is not None
    if level == "hard":
        return len(solve(grid, limit=2).solutions) == 1
    if level == "search":
        return keeps_class(grid, "hard") and singles_solve(grid) is None
    raise SudokuError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")


def _needing_search(gen, seed: int, blanks: int, tag: str) -> tuple[str, str]:
    """Level "search" of a generator: its "hard" removal, drawn again (from seeds of its own) until
    singles do not solve the puzzle; a SudokuError after SEARCH_DRAWS draws (too few blanks)."""
    for attempt in range(SEARCH_DRAWS):
        puzzle, sol = gen(random.Random(f"{tag}search{seed}:{attempt}"), blanks, "hard")
        if singles_solve(puzzle) is None:
            return puzzle, sol
    raise SudokuError(f"no puzzle with {blanks} blanks that needs more than singles in {SEARCH_DRAWS} draws: "
                      "use more blanks")


def generate(seed: int, blanks: int = 54, level: str = "easy") -> tuple[str, str]:
    """Generator A: (puzzle, solution); removal in random order while the puzzle keeps its class."""
    if level == "search":
        return _needing_search(_remove_a, seed, blanks, "A")
    return _remove_a(random.Random(f"A{seed}" if level == "easy" else f"A{level}{seed}"), blanks, level)


def _remove_a(rng: random.Random, blanks: int, level: str) -> tuple[str, str]:
    sol = random_full_grid(rng)
    cells = list(sol)
    for i in rng.sample(range(81), 81):
        if 81 - sum(c != "." for c in cells) >= blanks:
            break
        keep = cells[i]
        cells[i] = "."
        if not keeps_class("".join(cells), level):
            cells[i] = keep
    return "".join(cells), sol


def _pattern_grid(rng: random.Random) -> list[int]:
    """A full grid from the canonical band pattern, shuffled (digits, rows in bands, bands, columns,
    stacks), then mixed by chain swaps: for two rows of one band, swap their cells in column c, then
    in every column where the swap left a row with a repeated digit, until the rows are valid again
    (columns and boxes keep their digits because both rows lie in one band). Same for two columns
    of one stack, via the transpose."""
    base = [(3 * (r % 3) + r // 3 + c) % 9 + 1 for r in range(9) for c in range(9)]
    digits = rng.sample(range(1, 10), 9)
    rows = [b * 3 + r for b in rng.sample(range(3), 3) for r in rng.sample(range(3), 3)]
    cols = [s * 3 + c for s in rng.sample(range(3), 3) for c in rng.sample(range(3), 3)]
    g = [digits[base[r * 9 + c] - 1] for r in rows for c in cols]
    for _ in range(60):
        band = rng.randrange(3)
        r1, r2 = (band * 3 + k for k in rng.sample(range(3), 2))
        c = rng.randrange(9)
        first = g[r1 * 9 + c]
        while True:                               # follow the chain until row r1 holds `first` again
            a, b = g[r1 * 9 + c], g[r2 * 9 + c]
            g[r1 * 9 + c], g[r2 * 9 + c] = b, a
            if b == first:
                break
            c = next(k for k in range(9) if k != c and g[r1 * 9 + k] == b)
        g = [g[c * 9 + r] for r in range(9) for c in range(9)]   # transpose: next round mixes columns
    return g


def generate_symmetric(seed: int, blanks: int = 54, level: str = "easy") -> tuple[str, str]:
    """Generator B: (puzzle, solution); 180°-symmetric removal with a DFS uniqueness check, kept
    only while the puzzle keeps its class (easy: singles solve it — generator A's class)."""
    if level == "search":
        return _needing_search(_remove_b, seed, blanks, "B")
    return _remove_b(random.Random(f"B{seed}" if level == "easy" else f"B{level}{seed}"), blanks, level)


def _remove_b(rng: random.Random, blanks: int, level: str) -> tuple[str, str]:
    sol = _grid(_pattern_grid(rng))
    cells = list(sol)
    for i in rng.sample(range(41), 41):
        if cells.count(".") >= blanks:
            break
        pair = {i, 80 - i}
        if cells.count(".") + len(pair) > blanks:
            continue
        keep = {j: cells[j] for j in pair}
        for j in pair:
            cells[j] = "."
        trial = "".join(cells)
        if len(solve(trial, limit=2).solutions) != 1 or not keeps_class(trial, level):
            for j, v in keep.items():
                cells[j] = v
    return "".join(cells), sol


def canonical(solution: str) -> str:
    """A label a solution shares with its digit relabellings (digits renamed in first-seen order).
    Row / column permutations are not folded in: two random grids equivalent under them are
    astronomically rare (about 5.5e9 essentially different grids), so hashing this keeps augmented
    copies of a training solution out of the test split in practice."""
    names: dict[str, str] = {}
    for ch in solution:
        if ch not in names:
            names[ch] = DIGITS[len(names)] if len(names) < 9 else ch
    return "".join(names[ch] for ch in solution)


def split_of(solution: str, test_share: float = 0.5) -> str:
    """'train' or 'test' from a hash of the solution's digit-relabelling-invariant form."""
    h = int(hashlib.sha256(canonical(solution).encode()).hexdigest()[:8], 16)
    return "test" if h / 16**8 < test_share else "train"


def puzzles(n: int, *, split: str, seed: int = 0, blanks: int = 54, generator: str = "A",
            test_share: float = 0.5, level: str = "easy") -> list[tuple[str, str]]:
    """n (puzzle, solution) pairs from generator A (of the given split) or B (no splits: ``split``
    is ignored), deterministic from the seed."""
    if generator not in ("A", "B"):
        raise SudokuError(f"generator must be A or B, not {generator!r}")
    gen = {"A": generate, "B": generate_symmetric}[generator]
    out, k = [], 0
    while len(out) < n:
        p, s = gen(seed * 1_000_003 + k, blanks, level)
        k += 1
        if generator == "B" or split_of(s, test_share) == split:
            out.append((p, s))
    return out


def augment(puzzle: str, solution: str, rng: random.Random) -> tuple[str, str]:
    """A validity-preserving random transform of a (puzzle, solution) pair: digit relabelling,
    band / stack order, rows within bands, columns within stacks, transpose."""
    digits = dict(zip(DIGITS, rng.sample(DIGITS, 9)))
    digits["."] = "."
    rows = [b * 3 + r for b in rng.sample(range(3), 3) for r in rng.sample(range(3), 3)]
    cols = [s * 3 + c for s in rng.sample(range(3), 3) for c in rng.sample(range(3), 3)]
    tr = rng.random() < 0.5
    idx = [(c * 9 + r) if tr else (r * 9 + c) for r in rows for c in cols]
    return "".join(digits[puzzle[i]] for i in idx), "".join(digits[solution[i]] for i in idx)


def read_csv(path) -> list[tuple[str, str]]:
    """(puzzle, solution) rows of a CSV with columns puzzle,solution (header required); each row
    checked: 81 cells, the solution valid and keeping the givens."""
    import csv
    from pathlib import Path
    p = Path(path)
    if not p.is_file():
        raise SudokuError(f"puzzle file {path} does not exist")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"puzzle", "solution"} <= set(reader.fieldnames):
            raise SudokuError(f"{path}: expected a header with columns puzzle,solution")
        rows = []
        for r in reader:
            n = reader.line_num
            try:
                puz, sol = parse(r["puzzle"] or ""), parse(r["solution"] or "")
            except SudokuError as e:
                raise SudokuError(f"{path} line {n}: {e}") from None
            if not is_solution(sol, puz):
                raise SudokuError(f"{path} line {n}: the solution is incomplete, breaks a rule or changes a given")
            rows.append((puz, sol))
    if not rows:
        raise SudokuError(f"{path} holds no puzzles")
    return rows


def to_csv(pairs: list[tuple[str, str]]) -> str:
    """(puzzle, solution) pairs as CSV text with difficulty columns (``read_csv`` reads it back)."""
    lines = ["puzzle,solution,blanks,singles,guesses"]
    for p, q in pairs:
        d = difficulty(p)
        lines.append(f"{p},{q},{d['blanks']},{int(d['singles'])},{d['guesses']}")
    return "\n".join(lines) + "\n"


def pretty(grid: str) -> str:
    """The grid as 9 lines with box separators."""
    lines = []
    for r in range(9):
        if r and r % 3 == 0:
            lines.append("------+-------+------")
        row = grid[r * 9:(r + 1) * 9]
        lines.append(" | ".join(" ".join(row[s * 3:s * 3 + 3]) for s in range(3)))
    return "\n".join(lines)
