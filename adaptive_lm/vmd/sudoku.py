"""Sudoku with a masked diffusion model (VMD or its MDM baseline): grids <-> token ids, accuracy
over puzzles, and the solver behind `adaptive-lm sudoku solve`.

The givens are the unmasked part of the canvas and the blanks are [MASK]; the sampler
(vmd/sample.py) fills the blanks in ``nfe`` steps. A VMD's latent makes each attempt a different
draw, so ``solve`` tries again (a fresh z) until a grid passes the validator, and never presents a
grid that breaks a rule or a given as a solution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..checkpoint import from_pretrained
from ..errors import UsageError
from ..tasks import sudoku as S
from .sample import sample


def encode_grids(tok, grids: list[str]) -> torch.Tensor:
    """81-character grids ('.' blank) -> (N, 81) ids, blanks as [MASK]."""
    return torch.tensor([[tok.mask_id if ch == "." else tok.stoi[ch] for ch in g] for g in grids])


def decode_grids(tok, ids: torch.Tensor) -> list[str]:
    """(N, 81) ids -> grids; [MASK] as '.', anything that is not a digit as '?'."""
    digits = set(S.DIGITS)
    out = []
    for row in ids.tolist():
        chars = ["." if i == tok.mask_id else tok.itos[i] if 0 <= i < len(tok.itos) else "?" for i in row]
        out.append("".join(c if c in digits or c == "." else "?" for c in chars))
    return out


def load_sudoku_model(spec: str, *, what: str = ""):
    """(model, tokenizer) of a checkpoint trained on Sudoku (vmd-sudoku / mdm-sudoku), or one UsageError."""
    net, tok = from_pretrained(spec)
    if getattr(net.config, "features", "") != "sudoku":
        raise UsageError(f"{what or spec} is not a Sudoku model (expected a VMD / MDM trained by vmd-sudoku or mdm-sudoku)")
    return net, tok


def sudoku_accuracy(model, tok, pairs, *, nfe: int, policy: str, generator=None, redraw: bool = False,
                    temperature: float = 0.0) -> dict:
    """Whole-grid accuracy and the share of outputs breaking a rule (or a given), over
    (puzzle, solution) pairs. ``temperature`` 0: each committed cell is the argmax; 1: a draw from
    p(x_i | x_t, z) (how the toys are measured)."""
    out, _ = sample(model, encode_grids(tok, [p for p, _ in pairs]), nfe=nfe, policy=policy,
                    mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=generator,
                    redraw=redraw, temperature=temperature)
    grids = decode_grids(tok, out)
    ok = [g == s for g, (_, s) in zip(grids, pairs)]
    bad = [not S.is_solution(g, p) for g, (p, _) in zip(grids, pairs)]
    return {"acc": sum(ok) / len(pairs), "violations": sum(bad) / len(pairs)}


@dataclass
class Attempt:
    grid: str          # the model's grid (may break rules when valid is False)
    valid: bool        # complete, no rule broken, givens kept
    tries: int         # attempts made
    nfe: int           # forward passes spent in all


def solve(model, tok, puzzle: str, *, nfe: int = 0, policy: str = "margin", tries: int = 4,
          generator: Optional[torch.Generator] = None, trace: Optional[list] = None) -> Attempt:
    """Solve one puzzle (81 characters, '.' or '0' for blanks; checked by ``tasks.sudoku.parse``,
    whose SudokuError says what is wrong). ``nfe`` = 0: one cell per step.
    Up to ``tries`` attempts (each a fresh draw), all in one batch; the first valid grid wins, else
    the attempt with the fewest rule breaks is returned with valid=False. ``trace``: a list that
    receives each attempt's step-by-step trace (vmd.sample)."""
    if tries < 1:
        raise UsageError(f"tries must be >= 1, got {tries}")
    puzzle = S.parse(puzzle)
    blanks = puzzle.count(".")
    if blanks == 0:
        return Attempt(puzzle, S.is_solution(puzzle), 0, 0)
    steps = min(nfe or blanks, blanks)
    out, nfes = sample(model, encode_grids(tok, [puzzle] * tries), nfe=steps, policy=policy,
                       mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=generator,
                       trace=trace)
    grids = decode_grids(tok, out)
    for k, g in enumerate(grids):
        if S.is_solution(g, puzzle):
            return Attempt(g, True, k + 1, sum(nfes[:k + 1]))
    best = min(grids, key=lambda g: S.violations(g, puzzle))
    return Attempt(best, False, tries, sum(nfes))
