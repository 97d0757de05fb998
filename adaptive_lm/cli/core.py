"""`adaptive-lm` commands of the core and the faces: train, eval, generate, bench, recipes, demo, report."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from .parser import command


@command
def train(recipe: str, overrides: list[str] = (), out: str = "", resume: bool = False,
          data_dir: str = "", quiet: bool = False) -> int:
    """Train a recipe (see `adaptive-lm recipes`), e.g. `adaptive-lm train char-shakespeare train.steps=100`.

    Args:
        recipe: recipe name
        overrides: key=value settings, e.g. model.n_layer=6 train.lr=3e-4 data.seq_len=128
        out: run folder (default runs/RECIPE); holds checkpoint/ and metrics.jsonl
        resume: continue the run in --out from its last checkpoint, exactly
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
        quiet: no progress line
    """
    from .. import distributed as D
    from ..recipes import apply_overrides, get_recipe
    from ..train import train as run_train
    r = apply_overrides(get_recipe(recipe), list(overrides))
    from ..io import check_output_folder
    out_dir = check_output_folder(out or f"runs/{r.name}")
    if not resume and (out_dir / "checkpoint" / "trainer_state.json").exists():
        raise UsageError(f"{out_dir} already holds a training run: pass --resume to continue it, or choose another --out")
    info = D.setup()
    try:
        built = r.build(r, data_dir or None)
        if info.is_main and not quiet:
            print(f"recipe {r.name}: {built.model.num_params():,} parameters, {r.train.steps} steps -> {out_dir}", file=sys.stderr)
        data = json.loads(json.dumps(dataclasses.asdict(r.data), default=str))   # compared on --resume
        last = run_train(built.model, built.objective, built.batches, cfg=r.train, out_dir=out_dir,
                         tokenizer=built.tokenizer, meta={**built.meta, "data": data}, eval_fn=built.eval_fn, resume=resume,
                         progress=not quiet, dist=info)
    finally:
        D.teardown()
    if info.is_main:
        print(json.dumps({"checkpoint": str(out_dir / "checkpoint"), **{k: round(v, 4) if isinstance(v, float) else v
                                                                       for k, v in last.items()}}))
    return 0


@command
def eval_(model: str, corpus: str = "", split: str = "test", max_windows: int = 0, batch_size: int = 16,
          data_dir: str = "") -> int:
    """Held-out loss of a checkpoint: causal LMs on a corpus split (loss, perplexity, bits per byte);
    masked diffusion LMs on held-out arithmetic problems (Monte-Carlo bound on the answer's NLL).

    Args:
        model: checkpoint folder or builtin:NAME
        corpus: corpus name or text file (default: the one the checkpoint was trained on)
        split: train, valid or test
        max_windows: score at most this many windows (0 = the whole split); diffusion: problems (0 = 64)
        batch_size: windows per forward pass
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
    """
    from ..checkpoint import load_lm, read_config, resolve
    from ..data import TokenStream, pack, read_text
    from ..lm import evaluate_lm
    if batch_size < 1 or max_windows < 0:
        raise UsageError("--batch-size must be >= 1 and --max-windows >= 0")
    meta = read_config(resolve(model)).get("meta", {})
    m, tok = load_lm(model)
    if not m.config.causal:
        if meta.get("task") != "arith":
            raise UsageError(f"{model} is a masked diffusion model without a known task; eval supports task=arith")
        if corpus or data_dir or split != "test":
            raise UsageError(f"{model} is scored on held-out arithmetic problems: --corpus, --data-dir and "
                             "--split do not apply")
        from ..recipes.mdlm import eval_arith_nll
        res = eval_arith_nll(m, tok, n=max_windows or 64, batch_size=batch_size)
        print(json.dumps({"model": model, "task": "arith", "split": "test", **res}))
        return 0
    corpus = corpus or meta.get("corpus")
    if not corpus:
        raise UsageError("the checkpoint names no corpus: pass --corpus")
    seq = meta.get("seq_len", m.config.max_seq_len)
    stream = TokenStream(pack(tok, read_text(corpus, split, data_dir_flag=data_dir or None)), seq)
    x, y = stream.eval_windows(max_windows or None)
    from ..entropy.runtime import Meter
    n_bytes = len(tok.decode_bytes(y.flatten().tolist()))
    res = evaluate_lm(m, x, y, batch_size=batch_size, n_bytes=n_bytes, progress=Meter("eval", n_bytes, True))
    print(json.dumps({"model": model, "corpus": corpus, "split": split, **res}))
    return 0


@command
def generate(model: str = "builtin:shakespeare-char", prompt: str = "", method: str = "auto",
             max_new_tokens: int = 200, temperature: Optional[float] = None, top_k: int = 0, num_samples: int = 1,
             seed: int = 0, length: int = 0, max_length: int = 512, block_length: int = 32,
             threshold: Optional[float] = None, measure: str = "", show_exits: bool = False, calm: str = "",
             order: str = "confidence", kv: str = "", eos_tail: Optional[int] = None) -> int:
    """Generate from a checkpoint. The prompt comes from --prompt, or from stdin when piped.

    Args:
        model: checkpoint folder or builtin:NAME (causal LM or masked diffusion LM), or a Hugging Face causal LM: hf:FOLDER, gguf:FILE, smollm2
        prompt: text to continue or answer (default: stdin if piped)
        method: auto (ar for causal LMs, daedal for diffusion LMs), ar, calm, daedal, fixed, threshold
        max_new_tokens: ar: tokens to generate per sample
        temperature: sampling temperature; 0 = greedy (default 0.8 for ar, 0 for calm and diffusion)
        top_k: ar: sample among the k most likely tokens (0 = all)
        num_samples: samples generated as one batch
        seed: random seed
        length: diffusion canvas: L for fixed/threshold, L_init for daedal (0 = the default: 256, or 64 for daedal)
        max_length: daedal: L_max, the longest canvas
        eos_tail: daedal: EOS tokens appended after stage 1 (default W_eos/2 = 16, as the reference code)
        block_length: diffusion: semi-autoregressive block length
        order: diffusion: which masks a step commits: confidence (the papers) or left_to_right (a diagnostic reference)
        threshold: threshold decoding: commit masks above this confidence (default 0.9); calm: the exit threshold λ (default: the certified one in the model's calm.json, else 0.9)
        measure: calm: confidence measure margin, top1, state, classifier, patience, static (default: calm.json's, else margin)
        show_exits: calm: print each token with its exit layer, token[layer]
        calm: calm: a calm.json written by `adaptive-lm calibrate --out` (default: the model folder's)
        kv: calm: skipped layers' K/V, propagate (the paper) or recompute (exact; default: calm.json's, else propagate)

    Diffusion methods print each answer on stdout and its stats (NFE, N_token, E_token, hit_max)
    as one JSON line on stderr.
    """
    import torch
    for flag, value, lo in (("--max-new-tokens", max_new_tokens, 1), ("--num-samples", num_samples, 1),
                            ("--top-k", top_k, 0), ("--length", length, 0)):
        if value < lo:
            raise UsageError(f"{flag} must be >= {lo}, not {value}")
    if temperature is not None and not temperature >= 0:            # None: the method's default
        raise UsageError(f"--temperature must be >= 0, not {temperature}")
    if threshold is not None and not 0 <= threshold <= 1:            # None: the method's default
        raise UsageError(f"--threshold must be in [0, 1], not {threshold}")
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    from ..hf_causal import load_causal_lm
    m, tok = load_causal_lm(model)
    if method == "auto":
        method = "ar" if m.config.causal else "daedal"
    if method not in ("ar", "calm", "daedal", "fixed", "threshold"):
        raise UsageError(f"unknown --method {method!r}; use ar, calm, daedal, fixed or threshold")
    if eos_tail is not None and method != "daedal":
        raise UsageError(f"--eos-tail applies to --method daedal, not {method}")
    calm_only = [f for f, given in (("--show-exits", show_exits), ("--measure", measure), ("--calm", calm),
                                    ("--kv", kv)) if given]
    if calm_only and method != "calm":
        raise UsageError(f"{calm_only[0]} applies to --method calm, not {method}")
    if top_k and method not in ("ar", "calm"):
        raise UsageError(f"--top-k applies to --method ar or calm, not {method}")
    if threshold is not None and method not in ("calm", "threshold"):
        raise UsageError(f"--threshold applies to --method calm or threshold, not {method}")
    if (method in ("ar", "calm")) != m.config.causal:
        kind = "a causal LM" if m.config.causal else "a masked diffusion LM"
        raise UsageError(f"--method {method} does not fit {model}, which is {kind}")
    g = torch.Generator().manual_seed(seed)
    if method in ("ar", "calm"):
        from .calm import _calm_options, _generate_ar
        calm_cfg = _calm_options(model, m, threshold, measure, calm, kv) if method == "calm" else None
        default_t = 0.0 if method == "calm" else 0.8      # CALM's guarantee is about greedy decoding
        return _generate_ar(m, tok, prompt, max_new_tokens, default_t if temperature is None else temperature, top_k,
                            num_samples, g, calm_cfg, show_exits)
    if not prompt:
        raise UsageError("a masked diffusion model needs a prompt (--prompt or stdin)")
    from ..diffusion.daedal import Daedal
    from ..diffusion.sampler import FixedLength, SpecialIds, Threshold, denoise, model_logits_fn
    if method == "daedal":
        policy = Daedal(init_length=length or 64, max_length=max_length, block_length=block_length, order=order,
                        eos_tail=eos_tail)
    elif method == "fixed":
        policy = FixedLength(length=length or 256, block_length=block_length, order=order)
    else:
        policy = Threshold(length=length or 256, threshold=0.9 if threshold is None else threshold, block_length=block_length,
                           order=order)
    p_ids = tok.encode(prompt if prompt.endswith("\n") else prompt + "\n")
    out = denoise(model_logits_fn(m), [p_ids] * num_samples, policy=policy,
                  ids=SpecialIds(tok.mask_id, tok.eos_id, tok.pad_id, tok.vocab_size),
                  temperature=temperature or 0.0, generator=g, max_seq_len=m.config.max_seq_len)
    for i, (toks, st) in enumerate(zip(out.tokens, out.stats)):
        if num_samples > 1:
            print(f"--- sample {i + 1}")
        print(tok.decode(toks))
        print(json.dumps(st), file=sys.stderr)
    return 0


@command
def bench(name: str, json_: str = "", seed: int = 0, input_: str = "", options: list[str] = ()) -> int:
    """Run a benchmark: prints its table, writes JSON rows, prints the command that reruns it.

    Args:
        name: benchmark name (see `adaptive-lm bench list`)
        json_: write the result JSON here
        seed: random seed
        input: the input file of a bench that takes one (same as input=FILE), e.g. bench compress
        options: key=value settings of the benchmark (each also works as a flag: --key value)
    """
    from ..bench import run_bench
    return run_bench(name, json_path=json_ or None, seed=seed,
                     options=list(options) + ([f"input={input_}"] if input_ else []))


@command
def recipes(name: str = "") -> int:
    """List the training recipes, or every key of one recipe.

    Args:
        name: a recipe to describe in full
    """
    from ..recipes import RECIPES, describe, get_recipe
    if name:
        print(describe(get_recipe(name)))
    else:
        for r in RECIPES.values():
            print(f"{r.name:24s} {r.description}  [{r.budget}]")
    return 0


@command
def demo(seed: int = 0, out: str = "runs/demo") -> int:
    """The main job on the shipped checkpoints: what each method does, on a fresh example.

    Args:
        seed: random seed for the examples
        out: folder for the demo's outputs
    """
    from ..demo import run_demo
    from ..io import check_output_folder
    return run_demo(seed=seed, out=str(check_output_folder(out)))


@command
def report(files: list[str], output: str = "", title: str = "adaptive_lm benchmarks", force: bool = False) -> int:
    """Render bench JSON files (`adaptive-lm bench NAME --json OUT`) as one self-contained HTML page:
    each bench's command, machine and date, its plots and its rows.

    Args:
        files: bench JSON files
        output: the HTML file (default: the first file with .html)
        title: the page title
        force: overwrite an existing output
    """
    from ..io import atomic_write_text, check_output
    from ..report import NotABench, bench_report, load_bench
    out = check_output(output or Path(files[0]).with_suffix(".html"), force=force, inputs=files)
    benches = []
    for f in files:
        try:
            benches.append((f, load_bench(f)))
        except NotABench as e:
            if len(files) == 1:
                raise
            print(f"skipped: {e}", file=sys.stderr)      # a glob over a folder with other JSON in it
    if not benches:
        raise UsageError(f"none of the {len(files)} files is a bench result (`adaptive-lm bench NAME --json OUT`)")
    atomic_write_text(out, bench_report(benches, title=title))
    print(f"{len(benches)} bench result(s) -> {out}")
    return 0
