"""`adaptive-lm` — the command line. One typed function per subcommand; the parser is built from
each function's signature (parameters without a default are positional, and so is a leading str parameter with a
default; the rest are --flags,
``list[str]`` takes many values, a bool flag defaults to False) and its help from the docstring's
``Args:`` lines.

User errors (AdaptiveLMError, bad flags) print one line `adaptive-lm: error: ...` and exit 2 for
usage errors, 1 for the rest; nothing the user had is overwritten.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Optional

from .errors import AdaptiveLMError, UsageError

COMMANDS: dict[str, typing.Callable] = {}
SHORT = {"output": "-o"}            # short spellings of some flags
OPTIONAL_POSITIONALS = {"puzzle"}   # optional words after the leading positional(s)


def command(fn):
    COMMANDS[fn.__name__.rstrip("_").replace("_", "-")] = fn
    return fn


# ------------------------------------------------------------------ commands
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
    from . import distributed as D
    from .recipes import apply_overrides, get_recipe
    from .train import train as run_train
    r = apply_overrides(get_recipe(recipe), list(overrides))
    out_dir = Path(out or f"runs/{r.name}")
    if not resume and (out_dir / "checkpoint" / "trainer_state.json").exists():
        raise UsageError(f"{out_dir} already holds a training run: pass --resume to continue it, or choose another --out")
    info = D.setup()
    try:
        built = r.build(r, data_dir or None)
        if info.is_main and not quiet:
            print(f"recipe {r.name}: {built.model.num_params():,} parameters, {r.train.steps} steps -> {out_dir}", file=sys.stderr)
        last = run_train(built.model, built.objective, built.batches, cfg=r.train, out_dir=out_dir,
                         tokenizer=built.tokenizer, meta=built.meta, eval_fn=built.eval_fn, resume=resume,
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
    from .checkpoint import from_pretrained, read_config, resolve
    from .data import TokenStream, pack, read_text
    from .lm import evaluate_lm
    if batch_size < 1 or max_windows < 0:
        raise UsageError("--batch-size must be >= 1 and --max-windows >= 0")
    meta = read_config(resolve(model)).get("meta", {})
    m, tok = from_pretrained(model)
    if not m.config.causal:
        if meta.get("task") != "arith":
            raise UsageError(f"{model} is a masked diffusion model without a known task; eval supports task=arith")
        from .recipes.mdlm import eval_arith_nll
        res = eval_arith_nll(m, tok, n=max_windows or 64, batch_size=batch_size)
        print(json.dumps({"model": model, "task": "arith", "split": "test", **res}))
        return 0
    corpus = corpus or meta.get("corpus")
    if not corpus:
        raise UsageError("the checkpoint names no corpus: pass --corpus")
    seq = meta.get("seq_len", m.config.max_seq_len)
    stream = TokenStream(pack(tok, read_text(corpus, split, data_dir_flag=data_dir or None)), seq)
    x, y = stream.eval_windows(max_windows or None)
    res = evaluate_lm(m, x, y, batch_size=batch_size, n_bytes=len(tok.decode_bytes(y.flatten().tolist())))
    print(json.dumps({"model": model, "corpus": corpus, "split": split, **res}))
    return 0


@command
def generate(model: str = "builtin:shakespeare-char", prompt: str = "", method: str = "auto",
             max_new_tokens: int = 200, temperature: float = -1.0, top_k: int = 0, num_samples: int = 1,
             seed: int = 0, length: int = 0, max_length: int = 512, block_length: int = 32,
             threshold: float = -1.0, measure: str = "", show_exits: bool = False, calm: str = "") -> int:
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
        length: diffusion canvas: L for fixed/threshold (default 256), L_init for daedal (default 64)
        max_length: daedal: L_max, the longest canvas
        block_length: diffusion: semi-autoregressive block length
        threshold: threshold decoding: commit masks above this confidence (default 0.9); calm: the exit threshold λ (default: the certified one in the model's calm.json, else 0.9)
        measure: calm: confidence measure margin, top1, state, classifier (default: calm.json's, else margin)
        show_exits: calm: print each token with its exit layer, token[layer]
        calm: calm: a calm.json written by `adaptive-lm calibrate --out` (default: the model folder's)

    Diffusion methods print each answer on stdout and its stats (NFE, N_token, E_token, hit_max)
    as one JSON line on stderr.
    """
    import torch
    if max_new_tokens < 1 or num_samples < 1 or top_k < 0 or length < 0:
        raise UsageError("max_new_tokens and num_samples must be >= 1; top_k and length >= 0")
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    from .hf_causal import load_causal_lm
    m, tok = load_causal_lm(model)
    if method == "auto":
        method = "ar" if m.config.causal else "daedal"
    if method not in ("ar", "calm", "daedal", "fixed", "threshold"):
        raise UsageError(f"unknown --method {method!r}; use ar, calm, daedal, fixed or threshold")
    if (method in ("ar", "calm")) != m.config.causal:
        kind = "a causal LM" if m.config.causal else "a masked diffusion LM"
        raise UsageError(f"--method {method} does not fit {model}, which is {kind}")
    g = torch.Generator().manual_seed(seed)
    if method in ("ar", "calm"):
        calm_cfg = _calm_options(model, m, threshold, measure, calm) if method == "calm" else None
        default_t = 0.0 if method == "calm" else 0.8      # CALM's guarantee is about greedy decoding
        return _generate_ar(m, tok, prompt, max_new_tokens, default_t if temperature < 0 else temperature, top_k,
                            num_samples, g, calm_cfg, show_exits)
    if not prompt:
        raise UsageError("a masked diffusion model needs a prompt (--prompt or stdin)")
    from .diffusion.daedal import Daedal
    from .diffusion.sampler import FixedLength, SpecialIds, Threshold, denoise, model_logits_fn
    if method == "daedal":
        policy = Daedal(init_length=length or 64, max_length=max_length, block_length=block_length)
    elif method == "fixed":
        policy = FixedLength(length=length or 256, block_length=block_length)
    else:
        policy = Threshold(length=length or 256, threshold=0.9 if threshold < 0 else threshold, block_length=block_length)
    p_ids = tok.encode(prompt if prompt.endswith("\n") else prompt + "\n")
    out = denoise(model_logits_fn(m), [p_ids] * num_samples, policy=policy,
                  ids=SpecialIds(tok.mask_id, tok.eos_id, tok.pad_id, tok.vocab_size),
                  temperature=max(temperature, 0.0), generator=g, max_seq_len=m.config.max_seq_len)
    for i, (toks, st) in enumerate(zip(out.tokens, out.stats)):
        if num_samples > 1:
            print(f"--- sample {i + 1}")
        print(tok.decode(toks))
        print(json.dumps(st), file=sys.stderr)
    return 0


def _calm_options(model: str, m, threshold: float, measure: str, calm_file: str = ""):
    """(CalmConfig, exit classifier or None) from the flags, falling back on the calm.json given or
    in the model folder, then on the defaults."""
    from .calm.decode import MEASURES
    from .calm.runtime import config_from_calm, load_calm, load_classifier
    from .checkpoint import read_config, resolve
    from .hf_causal import is_hf_spec
    folder = None if is_hf_spec(model) else resolve(model)
    if calm_file:
        try:
            stored = json.loads(Path(calm_file).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--calm {calm_file}: cannot read it ({e.__class__.__name__})") from None
    else:
        stored = load_calm(folder) if folder else {}
    trained_every = read_config(folder).get("meta", {}).get("calm", {}).get("exit_every", 1) if folder else 1
    measure = measure or stored.get("measure") or "margin"
    if measure not in MEASURES or measure == "oracle":
        raise UsageError(f"--measure must be one of margin, top1, state, classifier, not {measure!r}")
    if threshold < 0:
        threshold = stored["threshold"] if stored.get("threshold") is not None and stored.get("measure") == measure else 0.9
    if not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], not {threshold}")
    clf = load_classifier(folder, m) if measure == "classifier" and folder else None
    if measure == "classifier" and clf is None:
        raise UsageError(f"--measure classifier needs an exit classifier next to one of our checkpoints "
                         f"(`adaptive-lm calm-classifier CHECKPOINT`); {model} has none")
    return config_from_calm({"every": trained_every, **stored}, measure=measure, threshold=threshold), clf


def _generate_ar(m, tok, prompt, max_new_tokens, temperature, top_k, num_samples, g, calm=None, show_exits=False) -> int:
    from .lm import full_depth_step, generate as ar_generate
    ids = tok.encode(prompt) if prompt else [tok.encode("\n")[0]]
    if len(ids) + max_new_tokens > m.config.max_seq_len:
        raise UsageError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{m.config.max_seq_len}-token context")
    step = full_depth_step
    if calm is not None:
        from .calm.decode import CalmStep
        calm, clf = calm
        step = CalmStep(calm, max_new_tokens, clf)
    from .hf_causal import pad_id_of
    outs = ar_generate(m, [ids] * num_samples, max_new_tokens=max_new_tokens, pad_id=pad_id_of(tok), eos_id=tok.eos_id,
                       temperature=temperature, top_k=top_k, generator=g, step=step)
    for i, o in enumerate(outs):
        if num_samples > 1:
            print(f"--- sample {i + 1}")
        if calm is not None and show_exits:
            print(prompt + "".join(f"{tok.decode([t])}[{d}]" for t, d in zip(o, step.record.layers[i])))
        else:
            print(prompt + tok.decode(o))
        if calm is not None:
            lay = step.record.layers[i]
            print(json.dumps({"avg_layers": sum(lay) / max(len(lay), 1), "n_layer": m.config.n_layer,
                              "threshold": calm.threshold, "measure": calm.measure}), file=sys.stderr)
    return 0


@command
def calibrate(model: str, delta: float = 0.1, epsilon: float = 0.05, measure: str = "margin",
              distance: str = "mismatch", n: int = 64, prompt_len: int = 32, max_new_tokens: int = 32,
              corpus: str = "", split: str = "valid", tau: float = 4.0, seed: int = 0, batch_size: int = 8,
              data_dir: str = "", out: str = "") -> int:
    """Certify a CALM exit threshold by Learn-then-Test and write it next to the model (calm.json).

    Args:
        model: causal LM checkpoint folder, or hf:FOLDER, gguf:FILE, smollm2 (these and builtin:NAME need --out)
        delta: tolerated mean dissimilarity between early-exit and full-model outputs
        epsilon: allowed probability that the guarantee fails
        measure: confidence measure: margin, top1, state
        distance: dissimilarity: mismatch (token mismatch rate) or rouge (1 - ROUGE-L)
        n: calibration prompts
        prompt_len: tokens per calibration prompt
        max_new_tokens: tokens generated per prompt
        corpus: text the prompts are cut from (default: the model's training corpus)
        split: split of the corpus
        tau: decaying-threshold temperature
        seed: which prompts
        batch_size: sequences decoded together
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
        out: where to write calm.json (default: inside the model folder)
    """
    from .calm.calibrate import DISTANCES
    from .calm.decode import CalmConfig
    from .calm.runtime import CALM_FILE, calibrate_threshold, calibration_prompts, save_calm
    from .checkpoint import read_config, resolve
    from .data import read_text
    if not 0 < delta < 1 or not 0 < epsilon < 1:
        raise UsageError("--delta and --epsilon must be in (0, 1)")
    if measure not in ("margin", "top1", "state"):
        raise UsageError(f"--measure must be margin, top1 or state, not {measure!r}")
    if distance not in DISTANCES:
        raise UsageError(f"--distance must be one of {', '.join(sorted(DISTANCES))}, not {distance!r}")
    if n < 1 or prompt_len < 1 or max_new_tokens < 1 or batch_size < 1:
        raise UsageError("--n, --prompt-len, --max-new-tokens and --batch-size must be >= 1")
    if tau < 0:
        raise UsageError("--tau must be >= 0")
    if out and not Path(out).parent.is_dir():
        raise UsageError(f"--out {out}: folder {Path(out).parent} does not exist")
    from .hf_causal import is_hf_spec, load_causal_lm, pad_id_of
    hf = is_hf_spec(model)
    if (hf or model.startswith("builtin:")) and not out:
        raise UsageError(f"{model} is read-only here: pass --out FILE for calm.json")
    folder = None if hf else resolve(model)
    target = Path(out) if out else folder
    m, tok = load_causal_lm(model)
    if not m.config.causal:
        raise UsageError(f"{model} is a masked diffusion LM; CALM needs a causal LM")
    meta = read_config(folder).get("meta", {}) if folder else {}
    corpus = corpus or meta.get("corpus", "")
    every = meta.get("calm", {}).get("exit_every", 1)         # exits where the model was trained to exit
    if not corpus:
        raise UsageError("--corpus is needed: the checkpoint does not say what it was trained on")
    text = read_text(corpus, split, data_dir_flag=data_dir or None)
    try:
        prompts = calibration_prompts(tok, text, n=n, prompt_len=prompt_len, seed=seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if prompt_len + max_new_tokens > m.config.max_seq_len:
        raise UsageError(f"--prompt-len + --max-new-tokens exceeds the model's {m.config.max_seq_len}-token context")

    def show(t):
        print(f"  λ={t['threshold']:.4g}  risk={t['risk']:.4f}  p={t['p_value']:.3g}  layers/token={t['avg_layers']:.2f}",
              file=sys.stderr, flush=True)
    print(f"calibrating {model}: {n} prompts, δ={delta}, ε={epsilon}, measure={measure}, distance={distance}", file=sys.stderr)
    res = calibrate_threshold(m, prompts, delta=delta, epsilon=epsilon, pad_id=pad_id_of(tok), eos_id=tok.eos_id,
                              base=CalmConfig(measure=measure, tau=tau, every=every), distance=distance,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, on_test=show)
    if res["threshold"] is None or res["threshold"] >= 1.0:
        raise AdaptiveLMError(f"no threshold below 1.0 can be certified at delta={delta}, epsilon={epsilon} "
                              f"with {n} prompts (try a larger --delta or --n); nothing written")
    path = save_calm(target / CALM_FILE if target.is_dir() else target, res)
    print(json.dumps({"threshold": res["threshold"], "measure": measure, "delta": delta, "epsilon": epsilon,
                      "written": str(path)}))
    return 0


@command
def calm_classifier(model: str, steps: int = 300, lr: float = 1e-3, batch_size: int = 16, seq_len: int = 128,
                    seed: int = 0, data_dir: str = "", out: str = "") -> int:
    """Train CALM's early-exit classifier with the backbone frozen (CALM's second training step) and
    write exit_classifier.safetensors next to the model.

    Args:
        model: causal LM checkpoint folder (a builtin:NAME needs --out)
        steps: optimisation steps
        lr: learning rate
        batch_size: windows per step
        seq_len: tokens per window
        seed: data order
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
        out: folder to write exit_classifier.safetensors into (default: the model folder)
    """
    from .calm.runtime import save_classifier, train_classifier
    from .checkpoint import from_pretrained, read_config, resolve
    from .data import TokenStream, pack, read_text, step_generator
    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise UsageError("--steps and --batch-size must be >= 1, --seq-len >= 2")
    folder = resolve(model)
    if model.startswith("builtin:") and not out:
        raise UsageError("a builtin checkpoint is read-only: pass --out FOLDER")
    m, tok = from_pretrained(model)
    if not m.config.causal:
        raise UsageError(f"{model} is a masked diffusion LM; CALM needs a causal LM")
    if m.config.n_layer < 2:
        raise UsageError("an exit classifier needs a model of at least 2 layers")
    corpus = read_config(folder).get("meta", {}).get("corpus")
    if not corpus:
        raise UsageError("the checkpoint does not say what corpus it was trained on")
    stream = TokenStream(pack(tok, read_text(corpus, "train", data_dir_flag=data_dir or None)), min(seq_len, m.config.max_seq_len))

    def show(step, mets):
        if step % 50 == 0 or step == steps:
            agree = " ".join(f"{k[6:]}:{v:.2f}" for k, v in mets.items() if k.startswith("agree_"))
            print(f"step {step}/{steps} loss {mets['loss']:.4f} agreement by layer {agree}", file=sys.stderr, flush=True)
    clf = train_classifier(m, lambda step: stream.batch(batch_size, step_generator(seed, step)),
                           steps=steps, lr=lr, progress=show)
    target = Path(out) if out else folder
    target.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"written": str(save_classifier(target, clf)), "layers": clf.layers}))
    return 0


@command
def bench(name: str, json_: str = "", seed: int = 0, input_: str = "", options: list[str] = ()) -> int:
    """Run a benchmark: prints its table, writes JSON rows, prints the command that reruns it.

    Args:
        name: benchmark name (see `adaptive-lm bench list`)
        json_: write the result JSON here
        seed: random seed
        input: the input file of a bench that takes one (same as input=FILE), e.g. bench compress
        options: key=value settings of the benchmark
    """
    from .bench import run_bench
    return run_bench(name, json_path=json_ or None, seed=seed,
                     options=list(options) + ([f"input={input_}"] if input_ else []))


@command
def compress(file: str, output: str = "", model: str = "", chunk: int = 0, batch: int = 0,
             force: bool = False, quiet: bool = False) -> int:
    """Compress any file losslessly: a causal LM's next-token probabilities + arithmetic coding.

    Args:
        file: the file to compress (any bytes)
        output: the compressed file (default FILE.almz); never overwritten without --force
        model: the LM: builtin:NAME, a checkpoint folder, hf:FOLDER, gguf:FILE or smollm2 (default builtin:compress-pydocs)
        chunk: tokens per independently coded chunk (0 = the model's training window)
        batch: chunks coded together, one forward per position (0 = automatic)
        force: overwrite the output if it exists
        quiet: no progress bar
    """
    from .entropy.codec import CodecConfig
    from .entropy.runtime import compress_file
    r = compress_file(file, output, model=model, cfg=CodecConfig(chunk=chunk, batch=batch), force=force,
                      progress=not quiet)
    print(f"{r['output']}: {r['bytes_in']:,} -> {r['bytes_out']:,} bytes, {r['bits_per_byte']:.3f} bits/byte, "
          f"{r['bytes_in'] / 1024 / max(r['seconds'], 1e-9):,.1f} KB/s ({r['model']})")
    return 0


@command
def decompress(file: str, output: str = "", model: str = "", force: bool = False, quiet: bool = False) -> int:
    """Decompress a file made by `adaptive-lm compress`; nothing is written unless it decodes exactly.

    Args:
        file: the compressed file
        output: where to write the original (default FILE without .almz); never overwritten without --force
        model: the LM (default: the one named in the file; its fingerprint must match)
        force: overwrite the output if it exists
        quiet: no progress bar
    """
    from .entropy.runtime import decompress_file
    r = decompress_file(file, output, model=model, force=force, progress=not quiet)
    print(f"{r['output']}: {r['bytes_out']:,} bytes, {r['bytes_out'] / 1024 / max(r['seconds'], 1e-9):,.1f} KB/s")
    return 0


@command
def entropy(file: str, model: str = "builtin:eem-pydocs", short_model: str = "", window: int = 0, output: str = "",
            html: str = "", force: bool = False, quiet: bool = False) -> int:
    """Per-token entropy estimates of a text file by an EEM (chain rule over windows): JSON + an HTML heatmap.

    Args:
        file: the text (any bytes) to estimate
        model: an EEM checkpoint (builtin:NAME or folder); trained with data.left_pad for the single-model method
        short_model: an EEM of window N-1 for the two-model method (default: the single-model method)
        window: tokens per window N (0 = the model's training window + 1)
        output: the JSON file (default FILE.entropy.json)
        html: the heatmap (default FILE.entropy.html)
        force: overwrite existing outputs
        quiet: no progress bar
    """
    from .entropy.runtime import estimate_file
    from .report import entropy_heatmap
    from .io import atomic_write_text
    outs = [Path(output or file + ".entropy.json"), Path(html or file + ".entropy.html")]
    for o in outs:
        if o.exists() and not force:
            raise UsageError(f"{o} exists: pass --force to overwrite it")
    res = estimate_file(file, model=model, short_model=short_model, window=window, progress=not quiet)
    atomic_write_text(outs[0], json.dumps(res, indent=1))
    atomic_write_text(outs[1], entropy_heatmap([t["text"] for t in res["tokens"]], [t["bits"] for t in res["tokens"]],
                                               title=f"Per-token entropy: {Path(file).name}", summary=res["summary"]))
    s = res["summary"]
    mean = "no estimate" if s["mean_bits_per_token"] is None else f"mean {s['mean_bits_per_token']:.3f} bits/token"
    print(f"{s['tokens']} tokens, {mean} -> {outs[0]}, {outs[1]}")
    return 0


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
        level: generate: easy (naked + hidden singles solve it) | hard (unique, may need search)
        blanks: generate: blanks to aim for (fewer when the class cannot keep more)
        output: generate: the CSV file (columns puzzle,solution)
        force: generate: overwrite an existing output
        json_: solve: print the result as JSON
    """
    import torch
    from .tasks import sudoku as S
    if action == "generate":
        from .io import atomic_write_text
        if not output:
            raise UsageError("sudoku generate needs -o FILE.csv")
        if Path(output).exists() and not force:
            raise UsageError(f"{output} exists: pass --force to overwrite it")
        if n < 1 or not 17 <= blanks <= 64:
            raise UsageError("generate needs --n >= 1 and 17 <= --blanks <= 64")
        pairs = S.puzzles(n, split="test", seed=seed, generator=generator, level=level, blanks=blanks)
        atomic_write_text(Path(output), S.to_csv(pairs))
        print(f"{n} generator-{generator} {level} puzzles -> {output}")
        return 0
    if action != "solve":
        raise UsageError(f"unknown action {action!r}: use solve or generate")
    from .checkpoint import from_pretrained
    from .vmd.sudoku import solve as solve_grid
    grid = S.parse(puzzle)
    exact = S.solve(grid, limit=2)
    if not exact.solutions:
        raise UsageError("this puzzle has no solution (its givens admit no valid completion)")
    net, tok = from_pretrained(model)
    if getattr(net.config, "features", "") != "sudoku":
        raise UsageError(f"{model} is not a Sudoku model (expected a VMD / MDM trained by vmd-sudoku or mdm-sudoku)")
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


@command
def recipes(name: str = "") -> int:
    """List the training recipes, or every key of one recipe.

    Args:
        name: a recipe to describe in full
    """
    from .recipes import RECIPES, describe, get_recipe
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
    from .demo import run_demo
    return run_demo(seed=seed, out=out)


# ------------------------------------------------------------------ parser from signatures
def _doc_args(fn) -> tuple[str, dict]:
    doc = inspect.getdoc(fn) or ""
    head, _, rest = doc.partition("Args:")
    helps = {}
    for line in rest.splitlines():
        if ":" in line:
            k, v = line.strip().split(":", 1)
            helps[k.strip()] = v.strip()
    return head.strip(), helps


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="adaptive-lm", description="Language models that spend compute and bits only where needed.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn in COMMANDS.items():
        desc, helps = _doc_args(fn)
        sp = sub.add_parser(name, help=desc.splitlines()[0], description=desc,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        hints = typing.get_type_hints(fn)
        for pos, (pname, par) in enumerate(inspect.signature(fn).parameters.items()):
            typ, h = hints.get(pname, str), helps.get(pname.rstrip("_"), "")
            flag = "--" + pname.rstrip("_").replace("_", "-")
            short = [SHORT[pname]] if pname in SHORT else []
            if typing.get_origin(typ) is list:
                if pname == "overrides" or pname == "options":
                    sp.add_argument(pname, nargs="*", default=list(par.default), help=h, metavar="KEY=VALUE")
                else:
                    sp.add_argument(flag, dest=pname, nargs="*", default=list(par.default), help=h)
            elif par.default is inspect.Parameter.empty:
                sp.add_argument(pname, type=typ, help=h)
            elif (pos == 0 or pname in OPTIONAL_POSITIONALS) and typ is str:   # `generate [MODEL]`, `sudoku solve [PUZZLE]`
                sp.add_argument(pname, nargs="?", default=par.default, help=h)
            elif typ is bool:
                sp.add_argument(flag, dest=pname, action="store_true", help=h)
            else:
                sp.add_argument(flag, *short, dest=pname, type=typ, default=par.default, help=h)
        sp.set_defaults(_fn=fn)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "_fn")}
    # key=value words after --flags land in `extra`; they belong to the command's KEY=VALUE list
    rest = [k for k in ("overrides", "options") if k in kwargs]
    if extra and (not rest or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        kwargs[rest[0]] = list(kwargs[rest[0]]) + extra
    try:
        return int(args._fn(**kwargs) or 0)
    except AdaptiveLMError as e:
        print(f"adaptive-lm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("adaptive-lm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
