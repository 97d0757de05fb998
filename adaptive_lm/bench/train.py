"""`adaptive-lm bench train`: training throughput and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / matmul peak FLOP/s of the same dtype, both measured on this machine
in this run. Model FLOPs per token follow PaLM (appendix B): 6·N + 12·L·C·T (forward + backward,
attention included, embedding lookup excluded, the output head included). The peak is the best
of several large square matmuls, timed before and after the
training steps (the higher one is used, so a noisy moment cannot inflate MFU). The timed step is the trainer's own ``optimizer_step`` (forward,
backward, clipping, AdamW) on random tokens.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..lm import lm_objective
from ..model import TransformerLM
from ..train import TrainConfig, cpu_has_fast_bf16, make_optimizer, optimizer_step
from ..errors import UsageError
from . import at_least, model_config, register


@dataclass
class TrainBenchOptions:
    n_layer: int = 4            # blocks
    d_model: int = 256          # width
    n_head: int = 4             # heads
    seq_len: int = 256          # tokens per sequence
    batch_size: int = 16        # sequences per step
    vocab_size: int = 4096      # vocabulary (a BPE-sized head)
    steps: int = 10             # timed steps per precision
    warmup: int = 3             # untimed steps first
    precisions: str = "auto"    # comma list of fp32 | bf16; auto = fp32, plus bf16 where the CPU has bf16 units
    threads: int = 0            # torch threads (0 = torch's default)
    peak_size: int = 2048       # square matmul size for the peak


def matmul_peak(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` (2·n³ FLOPs each)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


@register("train", TrainBenchOptions)
def bench_train(seed: int, o: TrainBenchOptions) -> dict:
    """Training tokens/s and MFU of a small transformer against the measured matmul peak."""
    at_least(1, steps=o.steps, batch_size=o.batch_size, seq_len=o.seq_len, vocab_size=o.vocab_size,
             n_layer=o.n_layer, n_head=o.n_head, d_model=o.d_model, peak_size=o.peak_size)
    at_least(0, warmup=o.warmup, threads=o.threads)
    cfg = model_config(vocab_size=o.vocab_size, n_layer=o.n_layer, n_head=o.n_head, d_model=o.d_model,
                       max_seq_len=o.seq_len)
    if o.threads:
        torch.set_num_threads(o.threads)
    g = torch.Generator().manual_seed(seed)
    rows = []
    precs = [p.strip() for p in o.precisions.split(",") if p.strip()]
    if precs == ["auto"]:
        precs = ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    bad = set(precs) - {"fp32", "bf16"}
    if bad:
        raise UsageError(f"precisions: unknown {sorted(bad)}; use fp32, bf16 or auto")
    for prec in precs:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
        torch.manual_seed(seed)
        model = TransformerLM(cfg)
        tcfg = TrainConfig(steps=o.steps + o.warmup, batch_size=o.batch_size, precision=prec)
        opt = make_optimizer(model, tcfg)
        amp = dtype if prec == "bf16" else None
        x = torch.randint(0, o.vocab_size, (o.batch_size, o.seq_len + 1), generator=g)
        batch = (x[:, :-1], x[:, 1:])
        peak = matmul_peak(dtype, o.peak_size)
        times = []
        for i in range(o.warmup + o.steps):
            t = time.perf_counter()
            optimizer_step(model, model, opt, lm_objective, [batch], cfg=tcfg, device="cpu", amp=amp)
            if i >= o.warmup:
                times.append(time.perf_counter() - t)
        peak = max(peak, matmul_peak(dtype, o.peak_size))   # before and after: the higher (conservative)
        med = statistics.median(times)
        tok_s = o.batch_size * o.seq_len / med
        achieved = model.flops_per_token(o.seq_len) * tok_s
        rows.append({"precision": prec, "params": model.num_params(), "tokens_per_s": round(tok_s, 1),
                     "step_s_median": round(med, 4), "step_s_spread": round(max(times) - min(times), 4),
                     "model_gflops": round(achieved / 1e9, 2), "peak_matmul_gflops": round(peak / 1e9, 2),
                     "mfu": round(achieved / peak, 3)})
    first = rows[0]["mfu"] if rows else None
    default = next((r["mfu"] for r in rows if r["precision"] == "fp32"), first)
    return {"mfu": default, "mfu_target": 0.5, "rows": rows}
