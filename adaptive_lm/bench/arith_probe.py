"""`adaptive-lm bench arith-probe`: teacher-forced probes of a masked diffusion LM on the
arithmetic task — which skill a wrong answer lacks, without a sampler in the way.

Each probe shows the model one held-out problem's gold solution with some positions masked and
reads its argmax (the [MASK] id is never a prediction) at one position:
- ``ones digit, everything visible`` — only the ones digit of a worked line's result is masked
  (the next line, which starts from that value, can be read);
- ``ones digit, past only`` — that digit and everything after it are masked: the digit must be
  COMPUTED from the line's operands and the value above, the sampler's situation;
- ``continue decision`` / ``stop decision`` — everything from the first character of the line
  after a worked line is masked; the model must say whether another "Day" line follows or the
  conclusion does (a digit). The stop decision is the value condition (``01<2``) read off the
  last worked line;
- ``length guess within half a line`` — the response is an all-mask canvas of ``guess_canvas``
  positions (no answer shown, the prompt only): the first position whose argmax is EOS is the
  model's guess of the answer's length, as DAEDAL's stage 1 reads it; right when within 7
  characters (half a worked line) of the gold length. The summary adds its mean absolute error
  and bias in characters.
The solution canvases end in ``tail`` EOS positions (the answer followed by EOS padding, as the
SFT rows are). Rows: ``probe``, ``n`` (positions probed), ``acc``, ``acc_ci95`` (Wilson); the stop
decision also split by the solution's length (1-4 lines, 5+: a model that stops by line count
rather than by the value condition fails the short ones).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..checkpoint import load_lm
from ..errors import UsageError
from ..tasks.arith import make_split
from ..tasks.metrics import wilson_interval
from . import register
from .daedal import task_options

PROBES = ("ones digit, everything visible", "ones digit, past only", "continue decision", "stop decision",
          "length guess within half a line")
HALF_LINE = 7                       # characters: half of a worked line ("Day 02: -2=31\n" is 14)
SHORT = 4                           # the stop decision is also reported for solutions of <= SHORT lines and longer
STOP_BY_LENGTH = (f"stop decision, 1-{SHORT} lines", f"stop decision, {SHORT + 1}+ lines")


@dataclass
class ArithProbeOptions:
    model: str = "builtin:mdlm-arith"   # masked diffusion checkpoint trained on the arithmetic task
    n: int = 64                         # held-out problems
    data_seed: int = 1234               # which held-out problems (bench daedal's default: the same ones)
    tail: int = 16                      # EOS positions after the gold answer in the probe canvases
    guess_canvas: int = 320             # all-mask response canvas of the length-guess probe


def solution_probes(solution: str) -> list[tuple[str, int, int]]:
    """(probe, position in the solution, first masked position) for every probe of one gold
    solution: each worked line's ones digit (shown alone masked, then with everything after it
    masked) and each worked line's following line start (the continue / stop decision)."""
    out, start = [], 0
    lines = solution.split("\n")
    for k, line in enumerate(lines):
        if line.startswith("Day "):
            q = start + len(line) - 1                                   # the result's ones digit
            out += [(PROBES[0], q, -1), (PROBES[1], q, q)]
            nxt = start + len(line) + 1                                 # first character of the next line
            if k + 1 < len(lines):
                out.append((PROBES[2] if lines[k + 1].startswith("Day ") else PROBES[3], nxt, nxt))
        start += len(line) + 1
    return out


@torch.no_grad()
def probe_problem(model, tok, prompt: str, solution: str, *, tail: int, guess_canvas: int) -> tuple[dict, int]:
    """Right/wrong per probe of one problem ({probe: [bool, ...]}) and the length guess's error
    in characters (guessed − gold answer length)."""
    p_ids, s_ids = tok.encode(prompt), tok.encode(solution)
    P = len(p_ids)
    gold = torch.tensor(p_ids + s_ids + [tok.eos_id] * tail)            # (T,)
    probes = solution_probes(solution)
    x = gold.repeat(len(probes), 1)                                     # (V, T): one variant per probe
    for v, (_, q, cut) in enumerate(probes):
        x[v, P + q] = tok.mask_id
        if cut >= 0:
            x[v, P + cut:] = tok.mask_id
    logits = model(x).logits                                             # (V, T, vocab)
    logits[..., tok.mask_id] = -float("inf")
    pred = logits.argmax(-1)
    right: dict = {name: [] for name in PROBES}
    for v, (name, q, _) in enumerate(probes):
        right[name].append(bool(pred[v, P + q] == gold[P + q]))
    canvas = torch.tensor([p_ids + [tok.mask_id] * guess_canvas])      # (1, P + guess_canvas)
    g = model(canvas).logits[0, P:]
    g[:, tok.mask_id] = -float("inf")
    eos = (g.argmax(-1) == tok.eos_id).nonzero().flatten()
    guess = int(eos[0]) if eos.numel() else guess_canvas
    err = guess - len(s_ids)
    right[PROBES[4]].append(abs(err) <= HALF_LINE)
    return right, err


@register("arith-probe", ArithProbeOptions)
def bench_arith_probe(seed: int, o: ArithProbeOptions) -> dict:
    """Teacher-forced probes of a masked diffusion LM on held-out arithmetic (digits, stop, length)."""
    if o.n < 1 or o.tail < 1 or o.guess_canvas < 1:
        raise UsageError("n, tail and guess_canvas must be >= 1")
    model, tok = load_lm(o.model)
    if model.config.causal:
        raise UsageError(f"{o.model} is a causal LM; the probes read a masked diffusion model")
    model.eval()
    problems = make_split("test", o.n, seed=o.data_seed + seed, **task_options(o.model))
    longest = max(len(tok.encode(p.prompt)) + max(len(p.solution) + o.tail, o.guess_canvas) for p in problems)
    if longest > model.config.max_seq_len:
        raise UsageError(f"prompt + canvas ({longest} tokens) exceeds the model's {model.config.max_seq_len}-token context")
    right = {name: [] for name in PROBES}
    by_length = {name: [] for name in STOP_BY_LENGTH}
    errors = []
    for i, p in enumerate(problems):
        if (i + 1) % 16 == 0 or i + 1 == len(problems):
            print(f"[{i + 1}/{len(problems)}] problems probed", file=sys.stderr, flush=True)
        r, err = probe_problem(model, tok, p.prompt, p.solution, tail=o.tail, guess_canvas=o.guess_canvas)
        for name in PROBES:
            right[name] += r[name]
        by_length[STOP_BY_LENGTH[0] if p.steps <= SHORT else STOP_BY_LENGTH[1]] += r[PROBES[3]]
        errors.append(err)
    rows = []
    for name, got in [*right.items(), *by_length.items()]:
        k, n = sum(got), len(got)
        rows.append({"probe": name, "n": n, "acc": round(k / n, 4) if n else None,
                     "acc_ci95": [round(x, 4) for x in wilson_interval(k, n)] if n else None})
    return {"rows": rows, "length_guess_mae_chars": round(sum(abs(e) for e in errors) / len(errors), 2),
            "length_guess_bias_chars": round(sum(errors) / len(errors), 2), "n_problems": o.n}
