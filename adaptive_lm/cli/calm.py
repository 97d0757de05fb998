"""`adaptive-lm` CALM commands (calibrate, calm-classifier, calm-finetune) and the CALM options of `generate`."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Optional

from ..errors import AdaptiveLMError, UsageError
from ..io import check_output, check_output_folder, read_json
from .parser import command


def _classifier_of(model: str, m):
    """The exit classifier next to a model with a folder (ours, builtin:NAME, hf:FOLDER), or None."""
    from ..calm.runtime import load_classifier
    return None if model == "smollm2" or model.startswith("gguf:") else load_classifier(model, m)


def _calm_options(model: str, m, threshold: Optional[float], measure: str, calm_file: str = "", kv: str = ""):
    """(CalmConfig, exit classifier or None) from the flags, falling back on the calm.json given or
    in the model folder, then on the defaults. The stored threshold is used only for the measure
    and K/V policy it was certified with."""
    from ..calm.decode import EXIT_MEASURES, KV_MODES
    from ..calm.runtime import check_calm, config_from_calm, load_calm, trained_exit_every
    from ..checkpoint import resolve
    from ..hf_causal import is_hf_spec
    folder = None if is_hf_spec(model) else resolve(model)
    if calm_file:
        stored = read_json(calm_file, UsageError)
    else:
        stored = load_calm(folder) if folder else {}
    stored = check_calm(stored, f"--calm {calm_file}" if calm_file else f"{folder}/calm.json")
    trained_every = trained_exit_every(model)
    measure = measure or stored.get("measure") or "margin"
    if measure not in EXIT_MEASURES:
        raise UsageError(f"--measure must be one of {', '.join(EXIT_MEASURES)}, not {measure!r}")
    kv = kv or stored.get("kv") or "propagate"
    if kv not in KV_MODES:
        raise UsageError(f"--kv must be one of {', '.join(KV_MODES)}, not {kv!r}")
    certified = True                                    # an explicit --threshold is the user's own
    if threshold is None:
        certified = stored.get("threshold") is not None and stored.get("measure") == measure \
            and stored.get("kv", "propagate") == kv
        if not certified and measure == "static":
            raise UsageError("--measure static needs --threshold (λ = k/L exits at layer k) or a calm.json "
                             "certified for it (`adaptive-lm calibrate MODEL --measure static`)")
        threshold = stored["threshold"] if certified else 0.9
    if not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], not {threshold}")
    clf = _classifier_of(model, m) if measure == "classifier" else None
    if measure == "classifier" and clf is None:
        raise UsageError(f"--measure classifier needs an exit classifier next to the model (ours or hf:FOLDER) "
                         f"(`adaptive-lm calm-classifier CHECKPOINT`); {model} has none")
    if not certified:                                   # every check passed: say what the run stands on
        print(f"note: no calm.json certifies measure={measure} kv={kv} for {model}: exiting at the uncertified "
              f"default threshold 0.9 (`adaptive-lm calibrate` certifies one; --threshold sets one)", file=sys.stderr)
    return config_from_calm({"every": trained_every, **stored}, measure=measure, threshold=threshold, kv=kv), clf


def _tagged(text: str, layer: int) -> str:
    """A token with its exit layer, token[layer]; a newline shows as \\n before the tag and breaks
    the line after it, so the tag stays with its own token."""
    return f"{text.replace(chr(10), chr(92) + 'n')}[{layer}]" + "\n" * text.count("\n")


def _generate_ar(m, tok, prompt, max_new_tokens, temperature, top_k, num_samples, g, calm=None, show_exits=False) -> int:
    from ..lm import full_depth_step, generate as ar_generate
    ids = tok.encode(prompt) if prompt else [tok.encode("\n")[0]]
    if len(ids) + max_new_tokens > m.config.max_seq_len:
        room = m.config.max_seq_len - len(ids)
        fix = f"pass --max-new-tokens {room} or less" if room > 0 else "shorten the prompt"
        raise UsageError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{m.config.max_seq_len}-token context: {fix}")
    step = full_depth_step
    if calm is not None:
        from ..calm.decode import CalmStep
        calm, clf = calm
        step = CalmStep(calm, max_new_tokens, clf)
    from ..hf_causal import pad_id_of
    outs = ar_generate(m, [ids] * num_samples, max_new_tokens=max_new_tokens, pad_id=pad_id_of(tok), eos_id=tok.eos_id,
                       temperature=temperature, top_k=top_k, generator=g, step=step)
    for i, o in enumerate(outs):
        if num_samples > 1:
            print(f"--- sample {i + 1}")
        if calm is not None and show_exits:
            print(prompt + "".join(_tagged(tok.decode([t]), d) for t, d in zip(o, step.record.layers[i])))
        else:
            print(prompt + tok.decode(o))
        if calm is not None:
            lay = step.record.layers[i]
            print(json.dumps({"avg_layers": sum(lay) / max(len(lay), 1), "n_layer": m.config.n_layer,
                              "threshold": calm.threshold, "measure": calm.measure, "kv": calm.kv}), file=sys.stderr)
    return 0


@command
def calibrate(model: str, delta: float = 0.1, epsilon: float = 0.05, measure: str = "margin",
              distance: str = "mismatch", n: int = 64, prompt_len: int = 32, max_new_tokens: int = 32,
              corpus: str = "", split: str = "valid", tau: float = 4.0, seed: int = 0, batch_size: int = 8,
              kv: str = "propagate", consistency: str = "textual", data_dir: str = "", out: str = "") -> int:
    """Certify a CALM exit threshold by Learn-then-Test and write it next to the model (calm.json).

    Args:
        model: causal LM checkpoint folder, or hf:FOLDER, gguf:FILE, smollm2 (these and builtin:NAME need --out)
        delta: tolerated mean dissimilarity between early-exit and full-model outputs
        epsilon: allowed probability that the guarantee fails
        measure: confidence measure: margin, top1, state, classifier (needs `calm-classifier` first), patience (margin + agreement between exits), static (the fixed-layer baseline)
        distance: dissimilarity: mismatch (token mismatch rate) or rouge (1 - ROUGE-L)
        n: calibration prompts
        prompt_len: tokens per calibration prompt
        max_new_tokens: tokens generated per prompt
        corpus: text the prompts are cut from (default: the model's training corpus)
        split: split of the corpus
        tau: decaying-threshold temperature
        seed: which prompts
        batch_size: sequences decoded together
        kv: skipped layers' K/V: propagate (the paper: computed from the exit state) or recompute (exact, when a later token reaches that layer)
        consistency: textual (the early-exit output close to the full model's) or risk (no further than the full model's from the text's own continuation of the prompt)
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
        out: where to write calm.json (default: inside the model folder)
    """
    from ..calm.calibrate import DISTANCES, max_certifiable_risk
    from ..calm.decode import EXIT_MEASURES, KV_MODES, CalmConfig
    from ..calm.runtime import (CALM_FILE, CONSISTENCIES, calibrate_threshold, prompts_and_references, save_calm,
                                trained_corpus, trained_exit_every)
    from ..checkpoint import resolve
    from ..data import read_text
    if not 0 < delta < 1 or not 0 < epsilon < 1:
        raise UsageError("--delta and --epsilon must be in (0, 1)")
    if measure not in EXIT_MEASURES:
        raise UsageError(f"--measure must be one of {', '.join(EXIT_MEASURES)}, not {measure!r}")
    if distance not in DISTANCES:
        raise UsageError(f"--distance must be one of {', '.join(sorted(DISTANCES))}, not {distance!r}")
    if n < 1 or prompt_len < 1 or max_new_tokens < 1 or batch_size < 1:
        raise UsageError("--n, --prompt-len, --max-new-tokens and --batch-size must be >= 1")
    if tau < 0:
        raise UsageError("--tau must be >= 0")
    if kv not in KV_MODES:
        raise UsageError(f"--kv must be one of {', '.join(KV_MODES)}, not {kv!r}")
    if consistency not in CONSISTENCIES:
        raise UsageError(f"--consistency must be one of {', '.join(CONSISTENCIES)}, not {consistency!r}")
    from ..hf_causal import is_hf_spec, load_causal_lm, pad_id_of
    hf = is_hf_spec(model)
    if (hf or model.startswith("builtin:")) and not out:
        raise UsageError(f"{model} is read-only here: pass --out FILE for calm.json")
    folder = None if hf else resolve(model)
    target = Path(out) if out else folder
    if target.is_dir():
        target = target / CALM_FILE
    check_output(target, force=True, flag="--out")                      # calm.json is replaced by design
    m, tok = load_causal_lm(model)
    if not m.config.causal:
        raise UsageError(f"{model} is a masked diffusion LM; CALM needs a causal LM")
    clf = None
    if measure == "classifier":                  # ours: next to the checkpoint; hf:FOLDER: in FOLDER
        clf = _classifier_of(model, m)
        if clf is None:
            raise UsageError(f"--measure classifier needs an exit classifier next to the model "
                             f"(`adaptive-lm calm-classifier MODEL`); {model} has none")
    corpus = corpus or trained_corpus(model)
    every = trained_exit_every(model)                         # exits where the model was trained to exit
    if not corpus:
        raise UsageError("--corpus is needed: the checkpoint does not say what it was trained on")
    text = read_text(corpus, split, data_dir_flag=data_dir or None)
    try:
        prompts, refs = prompts_and_references(tok, text, n=n, prompt_len=prompt_len, reference_len=max_new_tokens,
                                               seed=seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if prompt_len + max_new_tokens > m.config.max_seq_len:
        raise UsageError(f"--prompt-len + --max-new-tokens exceeds the model's {m.config.max_seq_len}-token context")

    def show(t):
        print(f"  λ={t['threshold']:.4g}  risk={t['risk']:.4f}  p={t['p_value']:.3g}  layers/token={t['avg_layers']:.2f}",
              file=sys.stderr, flush=True)
    print(f"calibrating {model}: {n} prompts, δ={delta}, ε={epsilon}, measure={measure}, kv={kv}, "
          f"{consistency} consistency, distance={distance}", file=sys.stderr)
    res = calibrate_threshold(m, prompts, delta=delta, epsilon=epsilon, pad_id=pad_id_of(tok), eos_id=tok.eos_id,
                              base=CalmConfig(measure=measure, tau=tau, every=every, kv=kv), distance=distance,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, on_test=show, classifier=clf,
                              references=refs if consistency == "risk" else None)
    room = max_certifiable_risk(n, delta, epsilon)             # the most a certified λ may risk on these prompts
    if res["threshold"] is None or res["threshold"] >= 1.0:
        why = (f"with {n} prompts not even a risk of 0 certifies at ε={epsilon}" if room == 0 else
               f"with {n} prompts only an empirical risk up to {room:.3f} certifies at ε={epsilon}")
        raise AdaptiveLMError(f"no threshold below 1.0 can be certified at delta={delta} ({why}; try a larger "
                              f"--delta or --n); nothing written")
    if room < delta / 2 and res["tests"][-1]["p_value"] > epsilon:     # the sweep stopped on the bound, not the grid's end
        print(f"note: with {n} prompts only an empirical risk up to {room:.3f} certifies at δ={delta}, ε={epsilon}; "
              f"more prompts (--n) may certify a lower threshold", file=sys.stderr)
    path = save_calm(target, res)
    print(json.dumps({"threshold": res["threshold"], "measure": measure, "kv": kv, "consistency": consistency,
                      "delta": delta, "epsilon": epsilon, "written": str(path)}))
    return 0


@command
def calm_classifier(model: str, steps: int = 300, lr: float = 1e-3, batch_size: int = 16, seq_len: int = 0,
                    seed: int = 0, every: int = 1, corpus: str = "", data_dir: str = "", out: str = "") -> int:
    """Train CALM's early-exit classifier with the backbone frozen (CALM's second training step) and
    write exit_classifier.safetensors next to the model.

    Args:
        model: causal LM checkpoint folder, or a Hugging Face spec (smollm2, hf:DIR, gguf:FILE); builtin:NAME and HF specs need --out
        steps: optimisation steps
        lr: learning rate
        batch_size: windows per step
        seq_len: tokens per window (0 = 128, or the model's context if shorter)
        seed: data order
        every: exit layers every k-th layer (k = 1: all but the top one)
        corpus: training text (default: the checkpoint's corpus; pydocs for a Hugging Face model)
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
        out: folder to write exit_classifier.safetensors into (default: the model folder)
    """
    from ..calm.exits import exit_layers
    from ..calm.runtime import save_classifier, train_classifier, trained_corpus
    from ..checkpoint import resolve
    from ..data import TokenStream, pack, read_text, step_generator
    from ..hf_causal import is_hf_spec, load_causal_lm
    if steps < 1 or batch_size < 1 or seq_len < 0 or seq_len == 1 or every < 1:
        raise UsageError("--steps, --batch-size and --every must be >= 1, --seq-len >= 2 (or 0 for the default)")
    if not 0 < lr < math.inf:
        raise UsageError(f"--lr must be a finite number > 0, not {lr}")
    hf = is_hf_spec(model)
    if (hf or model.startswith("builtin:")) and not out:
        raise UsageError(f"{model} has no folder of ours to write into: pass --out FOLDER")
    if out:
        check_output_folder(out)
    folder = None if hf else resolve(model)
    m, tok = load_causal_lm(model)
    if not m.config.causal:
        raise UsageError(f"{model} is a masked diffusion LM; CALM needs a causal LM")
    if m.config.n_layer < 2 or every >= m.config.n_layer:
        raise UsageError(f"an exit classifier needs an exit below the top layer ({m.config.n_layer} layers, --every {every})")
    corpus = corpus or trained_corpus(model) or ("pydocs" if hf else "")
    if not corpus:
        raise UsageError("the checkpoint does not say what corpus it was trained on")
    seq_len = seq_len or min(128, m.config.max_seq_len)
    if seq_len > m.config.max_seq_len:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {m.config.max_seq_len}-token context")
    stream = TokenStream(pack(tok, read_text(corpus, "train", data_dir_flag=data_dir or None)), seq_len)

    def show(step, mets):
        if step % 50 == 0 or step == steps:
            agree = " ".join(f"{k[6:]}:{v:.2f}" for k, v in mets.items() if k.startswith("agree_"))
            print(f"step {step}/{steps} loss {mets['loss']:.4f} agreement by layer {agree}", file=sys.stderr, flush=True)
    clf = train_classifier(m, lambda step: stream.batch(batch_size, step_generator(seed, step)),
                           steps=steps, lr=lr, layers=exit_layers(m.config.n_layer, every)[:-1], progress=show)
    target = Path(out) if out else folder
    target.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"written": str(save_classifier(target, clf)), "layers": clf.layers}))
    return 0


@command
def calm_finetune(model: str, out: str = "", steps: int = 100, lr: float = 5e-5, batch_size: int = 8,
                  seq_len: int = 64, every: int = 3, weights: str = "linear", seed: int = 0, corpus: str = "pydocs",
                  data_dir: str = "", save_every: int = 25, stop_at: int = 0, resume: bool = False) -> int:
    """Fine-tune a Hugging Face causal LM with CALM's weighted per-layer loss (its first training
    step; our own checkpoints get it from scratch: `adaptive-lm train calm-pydocs`) and write it as
    a transformers folder, usable afterwards as hf:OUT by calibrate, calm-classifier, generate and
    bench calm. Every --save-every steps the run leaves OUT.resume/ (weights, optimiser moments,
    step); a run cut off or stopped with --stop-at continues exactly with --resume.

    Args:
        model: a Hugging Face spec: smollm2, hf:DIR or gguf:FILE
        out: the folder to write (required; replaced only when the run finishes)
        steps: optimisation steps (AdamW, 10 warm-up steps, then cosine decay to 0: the trainer's schedule)
        lr: peak learning rate
        batch_size: windows per step
        seq_len: tokens per window
        every: an exit after every k-th layer (and the top one)
        weights: exit loss weights: linear (ω_i ∝ i, the paper), uniform or geometric
        seed: data order
        corpus: training text (its train split)
        data_dir: data folder (default $ADAPTIVE_LM_DATA or ../shared/data)
        save_every: write the resumable state OUT.resume/ every this many steps (0: only at --stop-at)
        stop_at: stop after this step with the resumable state written (0: run all --steps)
        resume: continue the run whose state is in OUT.resume/ (same settings)
    """
    import time
    from ..calm.exits import WEIGHT_SCHEMES, exit_layers, exit_weights
    from ..calm.runtime import finetune_exits
    from ..data import TokenStream, pack, read_text, step_generator
    from ..hf_causal import is_hf_spec, save_hf_causal
    from ..train import TrainConfig
    if not is_hf_spec(model):
        raise UsageError(f"{model}: calm-finetune takes a Hugging Face model (smollm2, hf:DIR, gguf:FILE); "
                         "train our checkpoints with `adaptive-lm train calm-pydocs`")
    if not out:
        raise UsageError("--out FOLDER is required")
    check_output_folder(out)
    if steps < 1 or batch_size < 1 or seq_len < 2 or every < 1 or not 0 < lr < math.inf or save_every < 0 or stop_at < 0:
        raise UsageError("--steps, --batch-size and --every must be >= 1, --seq-len >= 2, --lr > 0, "
                         "--save-every and --stop-at >= 0")
    if weights not in WEIGHT_SCHEMES:
        raise UsageError(f"--weights must be one of {', '.join(WEIGHT_SCHEMES)}, not {weights!r}")
    settings = {"from": model, "steps": steps, "lr": lr, "batch_size": batch_size, "seq_len": seq_len,
                "exit_every": every, "exit_weights": weights, "corpus": corpus, "seed": seed}
    state_dir = Path(str(Path(out)) + ".resume")
    m, tok, start, opt_state = _finetune_start(model, state_dir, settings, resume)
    if every >= m.config.n_layer:
        raise UsageError(f"--every {every} leaves no exit below the top of a {m.config.n_layer}-layer model")
    layers = exit_layers(m.config.n_layer, every)
    w = exit_weights(layers, weights)
    stream = TokenStream(pack(tok, read_text(corpus, "train", data_dir_flag=data_dir or None)),
                         min(seq_len, m.config.max_seq_len))
    t0 = time.time()

    def show(step, mets):
        if step % 10 == 0 or step in (1, start + 1, steps):
            ces = " ".join(f"{i}:{mets[f'ce_l{i}']:.2f}" for i in layers)
            print(f"step {step}/{steps} loss {mets['loss']:.4f} ({time.time() - t0:.0f}s) CE by layer {ces}",
                  file=sys.stderr, flush=True)

    def on_step(done, opt):
        stop = done == stop_at
        if done < steps and (stop or (save_every and done % save_every == 0)):
            _save_finetune_state(m, tok, opt, state_dir, settings, done)
            if stop:
                print(f"stopped after step {done}; continue with --resume (state in {state_dir})", file=sys.stderr)
        return stop
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(10, steps), min_lr_ratio=0.0,
                      weight_decay=0.0, beta2=0.999, seed=seed)
    opt = None
    if opt_state is not None:
        from ..train import make_optimizer, restore_state
        opt = make_optimizer(m, cfg)
        restore_state(opt, *opt_state)
    hist = finetune_exits(m, lambda step: stream.batch(batch_size, step_generator(seed, step))[:2], cfg=cfg,
                          layers=layers, weights=w, progress=show, start=start, opt=opt, on_step=on_step)
    if stop_at and start + len(hist) == stop_at < steps:
        return 0
    info = {"calm_finetune": {**settings, "exit_layers": layers, "seconds": round(time.time() - t0, 1),
                              "resumed_at": start, "last": hist[-1] if hist else None}}
    try:
        save_hf_causal(m, tok, out, extra=info)
    except (ValueError, OSError) as e:
        raise AdaptiveLMError(f"cannot write {out}: {str(e).splitlines()[0]}") from None
    shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps({"written": out, "exit_layers": layers, "ce_top": hist[-1]["ce_top"] if hist else None}))
    return 0


FINETUNE_STATE = "calm_finetune_state"


def _finetune_start(model: str, state_dir: Path, settings: dict, resume: bool):
    """(model, tokenizer, first step, (optimiser tensors, param groups) or None): a fresh start from
    ``model``, or with --resume the weights and optimiser state saved in ``state_dir``."""
    from ..hf_causal import load_causal_lm
    if not resume:
        if state_dir.exists():
            raise UsageError(f"{state_dir} holds an interrupted run: pass --resume to continue it, "
                             "or remove it to start again")
        m, tok = load_causal_lm(model)
        return m, tok, 0, None
    from safetensors.torch import load_file
    meta = state_dir / f"{FINETUNE_STATE}.json"
    if not meta.exists():
        raise UsageError(f"nothing to resume: {meta} does not exist")
    try:
        state = json.loads(meta.read_text())
        tensors = load_file(str(state_dir / f"{FINETUNE_STATE}.safetensors"))
        saved, step, groups = dict(state["settings"]), int(state["step"]), list(state["param_groups"])
    except Exception as e:  # corrupt JSON or safetensors, missing fields: one clear line
        raise AdaptiveLMError(f"cannot resume from {state_dir}: corrupt state ({e.__class__.__name__})") from None
    changed = sorted(k for k, v in settings.items() if saved.get(k) != v)     # --steps too: it shapes the schedule
    if changed:
        was = ", ".join(f"{k}={saved.get(k)}" for k in changed)
        raise UsageError(f"--resume with other settings than the interrupted run: {', '.join(changed)} (it used {was})")
    m, tok = load_causal_lm(f"hf:{state_dir}")
    print(f"resuming {state_dir} at step {step}", file=sys.stderr)
    return m, tok, step, (tensors, groups)


def _save_finetune_state(m, tok, opt, state_dir: Path, settings: dict, step: int) -> None:
    """The resumable state of calm-finetune, atomically: the model as a transformers folder plus the
    optimiser moments and RNG (train.state_tensors) and the step."""
    from safetensors.torch import save_file
    from ..distributed import DistInfo
    from ..hf_causal import save_hf_causal
    from ..train import state_tensors
    tensors = state_tensors(opt, DistInfo())
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]

    def files(tmp: Path):
        save_file(tensors, str(tmp / f"{FINETUNE_STATE}.safetensors"))
        (tmp / f"{FINETUNE_STATE}.json").write_text(json.dumps({"step": step, "settings": settings,
                                                                "param_groups": groups}, indent=2))
    try:
        save_hf_causal(m, tok, state_dir, files=files)
    except (ValueError, OSError) as e:
        raise AdaptiveLMError(f"cannot write {state_dir}: {str(e).splitlines()[0]}") from None
