"""`adaptive-lm demo` (`make demo`): the main job on the shipped checkpoints, on a CPU.

Today it samples from the shipped causal LM and reports how fast; each method issue adds its
section (DAEDAL, VMD, CALM, entropy/compression) and the HTML report.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .checkpoint import builtin_names, from_pretrained
from .io import atomic_write_text
from .lm import generate

DEFAULT_LM = "builtin:shakespeare-char"


def run_demo(*, seed: int = 0, out: str = "runs/demo") -> int:
    names = builtin_names()
    print(f"adaptive-lm demo — shipped checkpoints: {', '.join(names) or 'none'}", file=sys.stderr)
    print("[1/1] causal LM: sampling 4 continuations of 'ROMEO:' as one batch ...", file=sys.stderr)
    model, tok = from_pretrained(DEFAULT_LM)
    prompt = "ROMEO:"
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    outs = generate(model, [tok.encode(prompt)] * 4, max_new_tokens=160, pad_id=tok.pad_id, eos_id=tok.eos_id,
                    temperature=0.8, top_k=0, generator=g)
    dt = time.perf_counter() - t0
    n = sum(len(o) for o in outs)
    for i, o in enumerate(outs):
        print(f"--- sample {i + 1}\n{prompt}{tok.decode(o)}")
    print(f"\n{n} tokens in {dt:.2f}s ({n / dt:,.0f} tokens/s, batch 4, KV cache, {torch.get_num_threads()} threads)")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"model": DEFAULT_LM, "seed": seed, "prompt": prompt, "samples": [tok.decode(o) for o in outs],
               "tokens_per_s": n / dt}
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
    print(f"wrote {folder / 'summary.json'}", file=sys.stderr)
    return 0
