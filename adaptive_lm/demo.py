"""`adaptive-lm demo` (`make demo`): the main job on the shipped checkpoints, on a CPU.

It samples from the shipped causal LM, runs DAEDAL beside the fixed-length baseline on a fresh
arithmetic problem, a fresh Sudoku solved in 5 parallel steps by VMD and its MDM baseline, CALM
with each token's exit layer beside full depth, the LM compressor's round trip beside gzip and xz,
and per-token entropy by the EEM (each section when its checkpoint is shipped). It prints a short
summary per section and writes ``OUT/summary.json`` (everything, the step-by-step traces included)
and ``OUT/report.html`` (report/: timelines, colours, heatmap, and the plots of any bench JSON
found in ``runs/`` or ``docs/bench/``).
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
from .report import demo_report, find_benches

DEFAULT_LM = "builtin:shakespeare-char"
DEFAULT_MDM = "builtin:mdlm-arith"
DEFAULT_CALM = "builtin:calm-pydocs"
DEFAULT_CALM_ARITH = "builtin:calm-arith"
DEFAULT_CODEC = "builtin:compress-mix"
DEFAULT_EEM = "builtin:eem-pydocs"
DEFAULT_VMD = "builtin:vmd-sudoku"
DEFAULT_VMD_BASE = "builtin:mdm-sudoku"
SAMPLE_TEXT = ("The :func:`open` function returns a :term:`file object`, and is most commonly used with two\n"
               "positional arguments and one keyword argument: ``open(filename, mode, encoding=None)``.\n")


def fresh_problem(seed: int):
    """The demo's arithmetic problem for a seed (held-out split; DAEDAL and calm-arith both answer it)."""
    from .tasks.arith import make_split
    return make_split("test", 1, seed=10_000 + seed)[0]


def daedal_section(seed: int) -> dict:
    """DAEDAL answering a fresh arithmetic problem, the fixed-length LLaDA baseline beside it."""
    from .diffusion.daedal import Daedal
    from .diffusion.sampler import FixedLength, SpecialIds, denoise, model_logits_fn
    from .tasks.arith import score
    model, tok = from_pretrained(DEFAULT_MDM)
    prob = fresh_problem(seed)
    print(f"--- problem: {prob.prompt.strip()} (expected {prob.answer})")
    ids = SpecialIds(tok.mask_id, tok.eos_id, tok.pad_id, tok.vocab_size)
    res = {"prompt": prob.prompt, "answer": prob.answer}
    for name, policy in (("daedal", Daedal(init_length=32, max_length=512)), ("fixed-256", FixedLength(length=256))):
        t0 = time.perf_counter()
        out = denoise(model_logits_fn(model), [tok.encode(prob.prompt)], policy=policy, ids=ids, trace=True)
        text = tok.decode(out.tokens[0])
        res[name] = {"output": text, "correct": score(text, prob), "seconds": time.perf_counter() - t0, **out.stats[0],
                     "timeline": canvas_timeline(tok, prob.prompt, out.traces[0], ids)}
        lines = text.splitlines()
        tail = "\n".join(lines[-2:])
        print(f"--- {name}: correct={res[name]['correct']} NFE={out.stats[0]['nfe']} canvas={out.stats[0]['n_token']} "
              f"({res[name]['seconds']:.1f}s), {len(lines)} lines ending:\n{tail}")
    return res


def canvas_timeline(tok, prompt: str, trace: list[dict], ids) -> dict:
    """The sampler's trace as report frames (report/views.py): canvas ids, the positions committed
    at the step and the inserted ones (both in that step's canvas), the stage."""
    frames, used = [], set(tok.encode(prompt))
    for st in trace:
        frames.append({"c": st["canvas"], "new": st["committed"], "ins": st["inserted"], "stage": st.get("stage", 2)})
        used.update(st["canvas"])
    vocab = {i: tok.decode([i]) for i in sorted(used) if i not in (ids.mask, ids.eos, ids.pad)}
    return {"prompt": prompt, "vocab": vocab, "mask": ids.mask, "eos": ids.eos, "frames": frames}


LOOSE_LAMBDA = 0.5      # the demo's contrast threshold: more exits, no guarantee


def calm_section(seed: int, *, name: str = DEFAULT_CALM, prompt: str = "The ``open()`` function returns",
                 n: int = 32, loose: float = LOOSE_LAMBDA) -> dict:
    """CALM generating text from ``prompt`` with a checkpoint's certified threshold (calm.json), each
    token's exit layer shown, then with a looser, uncertified threshold ``loose`` for contrast,
    beside full depth."""
    from .calm.decode import CalmStep
    from .calm.runtime import config_from_calm, load_calm
    from .checkpoint import resolve
    model, tok = from_pretrained(name)
    stored = load_calm(resolve(name))
    ids = [tok.encode(prompt)]
    full = generate(model, ids, max_new_tokens=n, pad_id=tok.pad_id, temperature=0)[0]
    runs = []
    for cfg, certified in ((config_from_calm(stored), bool(stored)), (config_from_calm(stored, threshold=loose), False)):
        step = CalmStep(cfg, n)
        out = generate(model, ids, max_new_tokens=n, pad_id=tok.pad_id, temperature=0, step=step)[0]
        layers = step.record.layers[0][:len(out)]
        avg = sum(layers) / max(len(layers), 1)
        shown = "".join(f"{tok.decode([t])}[{d}]" for t, d in zip(out, layers))
        print(f"--- CALM ({cfg.measure} ≥ λ={cfg.threshold}, certified: {certified}), token[exit layer]:\n{prompt}{shown}")
        print(f"average layers per token {avg:.2f} of {model.config.n_layer}; tokens equal to full depth: "
              f"{sum(a == b for a, b in zip(out, full))}/{len(full)}")
        runs.append({"threshold": cfg.threshold, "certified": certified, "tokens": out, "exit_layers": layers,
                     "avg_layers": avg, "pieces": [tok.decode([t]) for t in out], "text": tok.decode(out)})
    print(f"--- full depth ({model.config.n_layer} layers):\n{prompt}{tok.decode(full)}")
    return {"model": name, "prompt": prompt, "measure": cfg.measure, "full": tok.decode(full), "full_tokens": full,
            "n_layer": model.config.n_layer, "runs": runs}


def calm_arith_section(seed: int) -> dict:
    """CALM where exits pay: calm-arith (its certified measure) on the fresh arithmetic problem of
    the DAEDAL section. Its guarantee is on average (test mismatch 0.063 at δ 0.1): on some
    problems an early exit changes a digit and the rest of the answer with it."""
    return calm_section(seed, name=DEFAULT_CALM_ARITH, prompt=fresh_problem(seed).prompt, n=80, loose=0.1)


CODEC_TEXT = ("\n.. function:: sorted(iterable, /, *, key=None, reverse=False)\n\n"
              "   Return a new sorted list from the items in *iterable*.\n\n"
              "   Has two optional arguments which must be specified as keyword arguments.\n\n"
              "   *key* specifies a function of one argument that is used to extract a comparison\n"
              "   key from each element in *iterable* (for example, ``key=str.lower``).  The\n"
              "   default value is ``None`` (compare the elements directly).\n")


def compress_section(seed: int) -> dict:
    """The LM compressor round-tripping a text, its bits per byte beside gzip and xz."""
    from .bench.compress import standard_codecs
    from .entropy.codec import compress, decompress, read_header
    from .entropy.runtime import load_codec_model
    model, tok, seq_len = load_codec_model(DEFAULT_CODEC)
    data = (SAMPLE_TEXT + CODEC_TEXT).encode()                            # no repeats: gzip would feast on them
    t0 = time.perf_counter()
    blob = compress(data, model, tok, model_id=DEFAULT_CODEC, meta_seq_len=seq_len)
    back = decompress(blob, model, tok)
    secs = time.perf_counter() - t0
    codecs = standard_codecs()
    bpb = {"lm": 8 * len(blob) / len(data), **{k: 8 * len(codecs[k][0](data)) / len(data) for k in ("gzip -9", "xz -9e")}}
    head = read_header(blob)[1] + 4                                         # header + frame bytes
    print(f"--- {len(data)} bytes -> {len(blob)} bytes ({head} of them header and frame: "
          f"{8 * (len(blob) - head) / len(data):.3f} bits/byte without); round trip exact: {back == data} "
          f"({secs:.1f}s both ways)")
    print("bits per byte: " + ", ".join(f"{k} {v:.3f}" for k, v in bpb.items()) +
          " (every size includes its format's header; whole files: docs/benchmarks.md)")
    return {"bytes": len(data), "compressed": len(blob), "roundtrip": back == data, "bits_per_byte": bpb,
            "header_bytes": head}


def entropy_section(seed: int) -> dict:
    """Per-token entropy estimates of a sentence by the shipped EEM (single-model chain rule)."""
    import math
    from .entropy.estimate import token_entropies
    from .entropy.runtime import load_estimator
    model, _, tok, window = load_estimator(DEFAULT_EEM)
    ids = tok.encode(SAMPLE_TEXT)
    est = token_entropies(model, ids, window=window, pad_id=tok.pad_id or 0)
    pieces = [tok.decode([i]) for i in ids]
    bits = [None if h is None else h / math.log(2) for h in est]
    print("--- token(bits): " + "".join(f"{p}({b:.1f})" if b is not None else p for p, b in zip(pieces, bits)))
    known = [b for b in bits if b is not None]
    print(f"mean {sum(known) / len(known):.2f} bits/token over {len(known)} tokens")
    return {"text": SAMPLE_TEXT, "tokens": pieces, "bits": bits}


def vmd_section(seed: int) -> dict:
    """A fresh Sudoku (independent generator B) solved by VMD and by the same-budget MDM in 5 steps."""
    from .tasks import sudoku as S
    from .vmd.sudoku import solve
    puzzle, solution = S.generate_symmetric(seed)
    print(f"--- puzzle ({puzzle.count('.')} blanks, generator B, seed {seed})\n{S.pretty(puzzle)}")
    res = {"puzzle": puzzle, "nfe": 5}
    for label, name in (("VMD", DEFAULT_VMD), ("MDM", DEFAULT_VMD_BASE)):
        if name.split(":")[1] not in builtin_names():
            continue
        model, tok = from_pretrained(name)
        trace: list = []
        a = solve(model, tok, puzzle, nfe=5, policy="top_prob", tries=1, generator=torch.Generator().manual_seed(seed),
                  trace=trace)
        verdict = "valid solution" if a.valid else f"NOT a solution ({S.violations(a.grid, puzzle)} rule breaks)"
        print(f"--- {label}, 5 steps (top prob, one draw): {verdict}")
        res[label] = {"valid": a.valid, "correct": a.grid == solution, "violations": S.violations(a.grid, puzzle),
                      "grid": a.grid, "timeline": board_timeline(tok, puzzle, trace[0])}
    return res


def board_timeline(tok, puzzle: str, trace: list[dict]) -> dict:
    """A Sudoku sampler trace as report frames: the grid after each step (the puzzle first), the
    cells filled at each step, and the cells of the final grid that break a rule or a given."""
    from .tasks import sudoku as S
    from .vmd.sudoku import decode_grids
    grids = [puzzle] + decode_grids(tok, torch.tensor([st["canvas"] for st in trace]))
    new = [[]] + [[i for i in range(81) if a[i] == "." and b[i] != "."] for a, b in zip(grids, grids[1:])]
    final = grids[-1]
    bad = sorted({i for pair in S.conflicts(final) for i in pair}
                 | {i for i in range(81) if puzzle[i] != "." and final[i] != puzzle[i]})
    return {"givens": puzzle, "frames": grids, "new": new, "bad": bad}


SECTIONS = {"daedal": (DEFAULT_MDM, "DAEDAL vs fixed length on a fresh arithmetic problem", daedal_section),
            "vmd": (DEFAULT_VMD, "VMD vs MDM: a Sudoku in 5 parallel steps", vmd_section),
            "calm": (DEFAULT_CALM, "CALM: early exit per token with the certified threshold", calm_section),
            "calm-arith": (DEFAULT_CALM_ARITH, "CALM on predictable text: most tokens leave after layer 1",
                           calm_arith_section),
            "compress": (DEFAULT_CODEC, "LM compression: a round trip, beside gzip and xz", compress_section),
            "entropy": (DEFAULT_EEM, "per-token entropy of a text by the EEM", entropy_section)}


# where the report looks for bench JSONs: the working folder's runs/ and docs/bench/, and the docs/bench/
# of the checkout this package runs from (an editable install), wherever the demo is started
BENCH_FOLDERS = ("runs", "docs/bench", str(Path(__file__).resolve().parents[1] / "docs" / "bench"))


def run_demo(*, seed: int = 0, out: str = "runs/demo") -> int:
    names = builtin_names()
    print(f"adaptive-lm demo — shipped checkpoints: {', '.join(names) or 'none'}", file=sys.stderr)
    extra = [sec for sec, (name, _, _) in SECTIONS.items() if name.split(":")[1] in names]
    sections = 2 + len(extra)
    print(f"[1/{sections}] causal LM: sampling 4 continuations of 'ROMEO:' as one batch ...", file=sys.stderr)
    model, tok = from_pretrained(DEFAULT_LM)
    prompt = "ROMEO:"
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    outs = generate(model, [tok.encode(prompt)] * 4, max_new_tokens=160, pad_id=tok.pad_id, eos_id=tok.eos_id,
                    temperature=0.8, top_k=0, generator=g)
    dt = time.perf_counter() - t0
    n = sum(len(o) for o in outs)
    for i, o in enumerate(outs):                    # the first lines here; whole samples in the report
        print(f"--- sample {i + 1}\n" + "\n".join((prompt + tok.decode(o)).splitlines()[:3]))
    print(f"\n{n} tokens in {dt:.2f}s ({n / dt:,.0f} tokens/s, batch 4, KV cache, {torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)})")
    summary = {"model": DEFAULT_LM, "seed": seed, "prompt": prompt, "samples": [tok.decode(o) for o in outs],
               "tokens_per_s": n / dt}
    for k, sec in enumerate(extra, 2):
        _, what, fn = SECTIONS[sec]
        print(f"\n[{k}/{sections}] {what} ...", file=sys.stderr)
        summary[sec] = fn(seed)
    folders = list(dict.fromkeys(str(Path(f).resolve()) for f in BENCH_FOLDERS if Path(f).is_dir()))
    print(f"\n[{sections}/{sections}] writing the report (bench plots from {', '.join(folders) or 'no folder'}) ...",
          file=sys.stderr)
    benches = find_benches(folders)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "summary.json", json.dumps(summary))
    atomic_write_text(folder / "report.html", demo_report(summary, benches))
    print(f"wrote {folder / 'summary.json'} ({len(benches)} bench result(s) plotted)", file=sys.stderr)
    print(f"report: {folder / 'report.html'}")
    return 0
