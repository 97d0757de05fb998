"""`adaptive-lm bench daedal`: the shape of DAEDAL's Table 1 on held-out arithmetic problems.

Rows, all on the same problems in the same run: fixed length L (LLaDA: block 32, one token per
step) for each L, a threshold-decoding row (Fast-dLLM: fixed L, commit every mask above τ),
DAEDAL from L_init 32 and 64 (the brief's defaults, L_max as given), DAEDAL with a lower fill
threshold (more parallel decoding), and DAEDAL with a smaller EOS window W_eos (the default 32
counts BPE tokens of an 8B model; our model counts characters, about a quarter of a token). The
targets are judged on the rows with the brief's defaults (method "daedal"). Per row: accuracy (last \\boxed{} checker), mean E_token and
N_token, pooled E_ratio = ΣE_token / ΣN_token, mean NFE, wall seconds, and the share of
sequences that hit L_max. DAEDAL rows also split their [correct, n] by the number of stage-2
expansions (``by_expansions``: "0", "1", "2", "3+") and by whether the canvas stage 1 chose had
room for the reference solution (``by_fit``: "fits" / "short"; the solution's tokens vs the masks
when stage 2 begins).

``order=left_to_right`` runs every row with the sampler's left-to-right transfer (sampler.py) — a
diagnostic reference for how much of the gap is the order in which confidence-based decoding
commits positions; the targets stay defined on the default order.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Optional

from ..checkpoint import load_lm, read_config, resolve
from ..diffusion.daedal import Daedal
from ..diffusion.sampler import FixedLength, SpecialIds, Threshold, denoise, model_logits_fn
from ..errors import UsageError
from ..tasks.arith import make_split, score
from ..tasks.metrics import paired_counts, wilson_interval
from . import bench_device, number_list, register


@dataclass
class DaedalBenchOptions:
    model: str = "builtin:mdlm-arith"   # masked diffusion checkpoint
    n: int = 16                         # held-out problems
    lengths: str = "32,64,128,256,512"  # fixed-length baselines
    init_lengths: str = "32,64"         # DAEDAL L_init values
    max_length: int = 512               # DAEDAL L_max
    threshold: float = 0.9              # threshold-decoding row's τ
    threshold_length: int = 256         # canvas of the threshold-decoding row
    fast_tau_high: float = 0.7          # DAEDAL+threshold row: a lower fill threshold
    small_w_eos: int = 8                # extra DAEDAL rows with this EOS window (W_eos/2 tail); 0 = none
    batch_size: int = 16                # sequences per sampling call
    data_seed: int = 1234               # which held-out problems: those of data_seed + --seed
    device: str = "cpu"                 # where the model runs: cpu, cuda, cuda:N, or auto (cuda when available)
    ar_model: str = ""                  # optional reference row: a causal LM on the same problems (greedy)
    order: str = "confidence"           # which masks a step commits: confidence (the papers) or left_to_right
    tau_low: float = 0.1                # DAEDAL rows' expansion threshold τ_low (the brief's 0.1)
    tau_eos: float = 0.5                # DAEDAL rows' stage-1 threshold τ_eos (the brief's 0.5)
    eos_tail: int = -1                  # every DAEDAL row's literal EOS tail after stage 1; -1 = its W_eos/2 (reference code)


def run_rows(model, tok, problems, policies: list[tuple[str, int, object]], batch_size: int,
             device: str = "cpu") -> list[dict]:
    ids = SpecialIds(tok.mask_id, tok.eos_id, tok.pad_id, tok.vocab_size)
    fn = model_logits_fn(model)
    prompts = [tok.encode(p.prompt) for p in problems]
    denoise(fn, prompts[:batch_size], policy=FixedLength(length=32), ids=ids, device=device)     # warm-up, untimed
    gold = [len(tok.encode(p.solution)) for p in problems]        # reference solutions' tokens
    rows = []
    for i, (name, length, policy) in enumerate(policies):
        print(f"[{i + 1}/{len(policies)}] {name} L={length} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        stats, solved = [], []
        for b in range(0, len(prompts), batch_size):
            out = denoise(fn, prompts[b:b + batch_size], policy=policy, ids=ids, device=device)
            for p, toks, st in zip(problems[b:b + batch_size], out.tokens, out.stats):
                solved.append(bool(score(tok.decode(toks), p)))
                stats.append(st)
        n, correct = len(stats), sum(solved)
        extra = {}
        if policy.max_length is not None:                       # DAEDAL: where its answers went wrong
            extra = {"by_expansions": split_counts([min(st["expansions"], 3) for st in stats], solved, top=3),
                     "by_fit": split_counts(["fits" if st["start_masks"] >= g else "short" for st, g in zip(stats, gold)],
                                            solved)}
        rows.append({"method": name, "length": length, "acc": correct / n, "correct": correct,
                     "acc_ci95": [round(x, 4) for x in wilson_interval(correct, n)], "_solved": solved,
                     "e_token": sum(s["e_token"] for s in stats) / n, "n_token": sum(s["n_token"] for s in stats) / n,
                     "e_ratio": sum(s["e_token"] for s in stats) / max(sum(s["n_token"] for s in stats), 1),
                     "nfe": sum(s["nfe"] for s in stats) / n, "hit_max": sum(s["hit_max"] for s in stats) / n,
                     "seconds": round(time.perf_counter() - t0, 2), **extra})
    return rows


def split_counts(keys: list, solved: list[bool], top: Optional[int] = None) -> dict:
    """[correct, n] per key, keys sorted; with ``top`` the integer key ``top`` reads "top+"."""
    out: dict = {}
    for key, ok in zip(keys, solved):
        c = out.setdefault(key, [0, 0])
        c[0] += int(ok)
        c[1] += 1
    return {(f"{k}+" if k == top else str(k)): v for k, v in sorted(out.items())}


def ar_row(spec: str, problems, batch_size: int, device: str) -> dict:
    """The reference row: a causal LM answering the same problems greedily (one token per NFE)."""
    from ..recipes.mdlm import ar_answers
    m, tok = load_lm(spec)
    if not m.config.causal:
        raise UsageError(f"ar_model={spec} is not a causal LM")
    m.to(device)
    t0 = time.perf_counter()
    outs = ar_answers(m, tok, problems, batch_size=batch_size)
    solved = [bool(score(tok.decode(o), p)) for o, p in zip(outs, problems)]
    correct = sum(solved)
    lens = [len(o) + 1 for o in outs]                                    # + its EOS
    n = len(problems)
    return {"method": "ar (reference)", "length": 0, "acc": correct / n, "correct": correct,
            "acc_ci95": [round(x, 4) for x in wilson_interval(correct, n)], "_solved": solved, "e_token": (sum(lens) - n) / n,
            "n_token": sum(lens) / n, "e_ratio": (sum(lens) - n) / sum(lens), "nfe": sum(lens) / n, "hit_max": 0.0,
            "seconds": round(time.perf_counter() - t0, 2)}


def task_options(spec: str) -> dict:
    """The arithmetic generator's options the checkpoint was trained with (its meta.task_options;
    none for checkpoints older than that option: the defaults)."""
    opts = read_config(resolve(spec)).get("meta", {}).get("task_options", {})
    return {k: opts[k] for k in ("max_steps", "style", "max_delta") if k in opts}


@register("daedal", DaedalBenchOptions)
def bench_daedal(seed: int, o: DaedalBenchOptions) -> dict:
    """DAEDAL vs fixed-length and threshold decoding on held-out arithmetic (Table 1's shape)."""
    if o.n < 1 or o.batch_size < 1:
        raise UsageError("n and batch_size must be >= 1")
    lengths, inits = number_list("lengths", o.lengths, lo=1), number_list("init_lengths", o.init_lengths, lo=1)
    device = bench_device(o.device)
    model, tok = load_lm(o.model)
    model.to(device)
    if model.config.causal:
        raise UsageError(f"{o.model} is a causal LM; DAEDAL needs a masked diffusion model")
    problems = make_split("test", o.n, seed=o.data_seed + seed, **task_options(o.model))
    longest = max(len(tok.encode(p.prompt)) for p in problems) + max(lengths + [o.max_length, o.threshold_length])
    if longest > model.config.max_seq_len:
        raise UsageError(f"prompt + canvas ({longest} tokens) exceeds the model's {model.config.max_seq_len}-token context")
    od = o.order

    def daedal(L: int, **kw) -> Daedal:          # a DAEDAL row with the bench's order and thresholds
        tail = {} if o.eos_tail == -1 else {"eos_tail": o.eos_tail}
        return Daedal(init_length=L, max_length=o.max_length, order=od, tau_low=o.tau_low, tau_eos=o.tau_eos,
                      **tail, **kw)
    policies: list[tuple[str, int, object]] = [("fixed", L, FixedLength(length=L, order=od)) for L in lengths]
    policies.append(("threshold", o.threshold_length, Threshold(length=o.threshold_length, threshold=o.threshold, order=od)))
    policies += [("daedal", L, daedal(L)) for L in inits]
    policies.append(("daedal+threshold", inits[0], daedal(inits[0], tau_high=o.fast_tau_high)))
    if o.small_w_eos:                    # W_eos = 32 was set for BPE tokens; a character is ~1/4 of one
        policies += [(f"daedal-w{o.small_w_eos}", L, daedal(L, w_eos=o.small_w_eos)) for L in inits]
    rows = run_rows(model, tok, problems, policies, o.batch_size, device)
    if o.ar_model:
        rows.append(ar_row(o.ar_model, problems, o.batch_size, device))
    solved = [r.pop("_solved") for r in rows]                      # per row: which problems it solved
    fixed = [r for r in rows if r["method"] == "fixed"]
    best = max(fixed, key=lambda r: (r["acc"], -r["nfe"]))
    daedal = [r for r in rows if r["method"] == "daedal"]
    best_solved = solved[rows.index(best)]
    # the same problems under both: only the discordant counts say which method is ahead
    paired = {f"{r['method']} L={r['length']}": paired_counts(solved[i], best_solved, ("daedal", "fixed"))
              for i, r in enumerate(rows) if r["method"].startswith("daedal")}
    summary = {
        "best_fixed_length": best["length"], "best_fixed_acc": best["acc"], "best_fixed_nfe": best["nfe"],
        "n_problems": o.n, "device": device, "order": o.order, "tau_low": o.tau_low, "tau_eos": o.tau_eos,
        "eos_tail": "w_eos/2" if o.eos_tail < 0 else o.eos_tail, "paired_vs_best_fixed": paired,
        # with no problem solved by any row the comparisons below say nothing: the first target is
        # then False, and the others are read only together with it
        "targets": {
            "daedal_acc_ge_best_fixed": best["acc"] > 0 and all(r["acc"] >= best["acc"] for r in daedal),
            "daedal_e_ratio_ge_0.85": all(r["e_ratio"] >= 0.85 for r in daedal),
            "daedal_nfe_le_half_best_fixed": all(r["nfe"] <= 0.5 * best["nfe"] for r in daedal),
        },
    }
    return {**summary, "rows": rows}
