"""`adaptive-lm sudoku`: solve or generate puzzles (VMD / MDM)."""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

from ..errors import UsageError
from .parser import command


# the options of one action only: given to the other, they are refused (not silently ignored)
ACTION_ONLY = {"solve": ["puzzle", "model", "nfe", "policy", "tries", "json_"],
               "generate": ["n", "generator", "level", "blanks", "output", "force"]}


@command
def sudoku(action: str, puzzle: str = "", model: str = "builtin:mdm-sudoku", nfe: int = 0, policy: str = "margin",
           tries: int = 4, seed: int = 0, n: int = 100, generator: str = "A", level: str = "easy", blanks: int = 54,
           output: str = "", force: bool = False, json_: bool = False) -> int:
    """Solve a Sudoku with a masked diffusion model, or write generated puzzles: `sudoku solve PUZZLE`, `sudoku generate -o FILE.csv`.

    Args:
        action: solve | generate
        puzzle: solve: 81 characters, row by row, 1-9 for givens and . or 0 for blanks
        model: solve: a VMD / MDM Sudoku checkpoint (builtin:NAME or folder); the MDM is the default while the shipped VMD's latent is collapsed (docs/benchmarks.md)
        nfe: solve: unmasking steps (0 = one cell per step)
        policy: solve: mask predictor score: top_prob | margin | random
        tries: solve: attempts (each a fresh latent draw) until a grid passes the validator
        seed: random seed
        n: generate: number of puzzles
        generator: generate: A (the training generator, its test split) | B (the independent one)
        level: generate: easy (naked + hidden singles solve it) | hard (unique, may need search) | search (unique, singles do not solve it)
        blanks: generate: blanks to aim for (fewer when the class cannot keep more)
        output: generate: the CSV file (columns puzzle,solution)
        force: generate: overwrite an existing output
        json_: solve: print the result as JSON
    """
    import torch
    from ..tasks import sudoku as S
    given = {k: v for k, v in locals().items() if k in ACTION_ONLY["solve"] + ACTION_ONLY["generate"]}
    for other, names in ACTION_ONLY.items():
        changed = [k for k in names if given[k] != inspect.signature(sudoku).parameters[k].default]
        if action != other and action in ACTION_ONLY and changed:
            flag = "PUZZLE" if changed[0] == "puzzle" else "--" + changed[0].rstrip("_").replace("_", "-")
            raise UsageError(f"{flag} applies to `sudoku {other}`, not `sudoku {action}`")
    if action == "generate":
        from ..io import atomic_write_text, check_output
        if not output:
            raise UsageError("sudoku generate needs -o FILE.csv")
        check_output(output, force=force)
        if n < 1 or not 17 <= blanks <= 64:
            raise UsageError("generate needs --n >= 1 and 17 <= --blanks <= 64")
        pairs = S.puzzles(n, split="test", seed=seed, generator=generator, level=level, blanks=blanks)
        atomic_write_text(Path(output), S.to_csv(pairs))
        print(f"{n} generator-{generator} {level} puzzles -> {output}")
        return 0
    if action != "solve":
        raise UsageError(f"unknown action {action!r}: use solve or generate")
    from ..vmd.sudoku import load_sudoku_model, solve as solve_grid
    if not puzzle and not sys.stdin.isatty():
        puzzle = sys.stdin.read().strip()
    if not puzzle:
        raise UsageError("sudoku solve needs a puzzle: 81 characters as an argument or on stdin")
    if nfe < 0:
        raise UsageError(f"--nfe must be >= 0 (0 = one cell per step), not {nfe}")
    grid = S.parse(puzzle)
    exact = S.solve(grid, limit=2)
    if not exact.solutions:
        raise UsageError("this puzzle has no solution (its givens admit no valid completion)")
    net, tok = load_sudoku_model(model)
    res = solve_grid(net, tok, grid, nfe=nfe, policy=policy, tries=tries, generator=torch.Generator().manual_seed(seed))
    if json_:
        print(json.dumps({"puzzle": grid, "valid": res.valid, "grid": res.grid if res.valid else None,
                          "tries": res.tries, "nfe": res.nfe, "unique": len(exact.solutions) == 1}))
    elif res.valid:
        print(S.pretty(res.grid))
        print(f"valid solution ({res.tries} attempt(s), {res.nfe} forward passes)"
              + ("" if len(exact.solutions) == 1 else "; note: this puzzle has more than one solution"))
    else:
        print(f"no valid solution in {res.tries} attempt(s): the best grid breaks "
              f"{S.violations(res.grid, grid)} rule(s); try --tries or --nfe 0", file=sys.stderr)
    return 0 if res.valid else 1
