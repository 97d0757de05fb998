"""CALM in use: batched early-exit generation, the calibration run, and the ``calm.json`` file that
stores a certified threshold next to a checkpoint.

``calibrate_threshold`` is CALM §"Calibration" end to end: the full model's outputs on n
calibration prompts are the reference (textual consistency needs no labels), every candidate
λ_1 = 1 > λ_2 > … is decoded on the same prompts, its empirical risk (mean dissimilarity) gets a
Hoeffding–Bentkus p-value, and fixed-sequence testing certifies the most aggressive λ it can.
With references Z (for text, the corpus' own continuation of each prompt:
``prompts_and_references``) the risk is risk consistency instead: how much further from Z the
early-exit output is than the full model's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import UsageError
from ..io import atomic_write_text, read_json
from ..lm import generate
from ..model import model_device
from .calibrate import DISTANCES, fixed_sequence_test, mean_risk
from .decode import EXIT_MEASURES, KV_MODES, CalmConfig, CalmStep, ExitRecord
from .exits import exit_layers

CALM_FILE = "calm.json"
CONSISTENCIES = ("textual", "risk")   # what a certified λ bounds: D(early, full), or max(0, D(early, Z) − D(full, Z))
CLASSIFIER_FILE = "exit_classifier.safetensors"
# 1.0, then fine steps near 1 (cosine similarities of hidden states live there), then 0.9 … 0.05
DEFAULT_CANDIDATES = (1.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.96, 0.95) + tuple(round(0.9 - 0.05 * k, 2) for k in range(18))


def calm_generate(model, prompts: list[list[int]], cfg: CalmConfig, *, max_new_tokens: int, pad_id: int,
                  eos_id: Optional[int] = None, classifier=None, temperature: float = 0.0,
                  generator: Optional[torch.Generator] = None, batch_size: int = 8,
                  schedule: Optional[list[list[int]]] = None) -> tuple[list[list[int]], ExitRecord]:
    """CALM decoding of many prompts, ``batch_size`` at a time. Returns the generated ids per prompt
    and the exit layer of every token produced (its EOS included). ``schedule`` (measure replay):
    per prompt, the exit layers to replay (e.g. an oracle run's ``ExitRecord.layers``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    outs, record = [], ExitRecord()
    for b in range(0, len(prompts), batch_size):
        step = CalmStep(cfg, max_new_tokens, classifier, None if schedule is None else schedule[b:b + batch_size])
        outs += generate(model, prompts[b:b + batch_size], max_new_tokens=max_new_tokens, pad_id=pad_id,
                         eos_id=eos_id, temperature=temperature, generator=generator, step=step)
        record.layers += step.record.layers
    return outs, record


def prompts_and_references(tok, text: str, *, n: int, prompt_len: int, reference_len: int, seed: int = 0
                           ) -> tuple[list[list[int]], list[list[int]]]:
    """n prompts of prompt_len tokens cut from a text at random offsets (deterministic from seed),
    and each one's reference Z for risk consistency: the text's next reference_len tokens (fewer
    where the text ends first)."""
    ids = tok.encode(text)
    if len(ids) < prompt_len + 1:
        raise ValueError(f"the text has {len(ids)} tokens; need more than prompt_len={prompt_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - prompt_len, (n,), generator=g).tolist()
    return ([ids[s:s + prompt_len] for s in starts],
            [ids[s + prompt_len:s + prompt_len + reference_len] for s in starts])


def static_candidates(n_layer: int, cfg: CalmConfig) -> tuple[float, ...]:
    """Measure "static": 1 (the full model), then λ = k/L for each exit layer k below the top that
    the config lets a token leave at (k >= min_layer), deepest first — one candidate per depth."""
    ks = [k for k in exit_layers(n_layer, cfg.every)[:-1] if k >= cfg.min_layer]
    return (1.0,) + tuple(k / n_layer for k in reversed(ks))


def calibrate_threshold(model, prompts: list[list[int]], *, delta: float, epsilon: float, pad_id: int,
                        eos_id: Optional[int] = None, base: CalmConfig = CalmConfig(), distance: str = "mismatch",
                        candidates: Optional[Sequence[float]] = None, max_new_tokens: int = 32,
                        classifier=None, batch_size: int = 8, references: Optional[list[list[int]]] = None,
                        on_test: Optional[Callable] = None, memo: Optional[dict] = None) -> dict:
    """Learn-then-Test over descending thresholds (module docstring). With ``references`` the risk
    is risk consistency max(0, D(early, Z) − D(full, Z)); without, textual consistency D(early, full).
    Returns {"threshold": certified λ or None, "tests": [{"threshold", "risk", "p_value",
    "avg_layers"}, ...], "n", "delta", "epsilon", "consistency" (textual or risk), "distance",
    "measure", ...}. ``memo`` (a dict kept by the caller) reuses the decodes of an earlier call on
    the same prompts and settings — several δ, or both consistencies, cost one sweep."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {sorted(DISTANCES)}, not {distance!r}")
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    dist = DISTANCES[distance]
    base = CalmConfig(**{**base.__dict__, "horizon": base.horizon or max_new_tokens})
    kw = dict(max_new_tokens=max_new_tokens, pad_id=pad_id, eos_id=eos_id, classifier=classifier, batch_size=batch_size)
    memo = {} if memo is None else memo
    if "full" not in memo:
        memo["full"] = calm_generate(model, prompts, CalmConfig(measure=base.measure, threshold=1.0), **kw)[0]
    full = memo["full"]
    tests, depth = [], {}

    def risk_of(lam: float) -> float:
        if lam not in memo:
            cfg = CalmConfig(**{**base.__dict__, "threshold": lam})
            memo[lam] = calm_generate(model, prompts, cfg, **kw) if lam < 1.0 else (full, None)
        early, rec = memo[lam]
        depth[lam] = rec.mean_layers() if rec else float(model.config.n_layer)
        return mean_risk(early, full, references, dist)

    def record(lam, r, p):
        tests.append({"threshold": lam, "risk": r, "p_value": p, "avg_layers": depth[lam]})
        if on_test is not None:
            on_test(tests[-1])

    if candidates is None:
        candidates = static_candidates(model.config.n_layer, base) if base.measure == "static" else DEFAULT_CANDIDATES
    lam = fixed_sequence_test(candidates, risk_of, n=len(prompts), delta=delta, epsilon=epsilon, on_test=record)
    return {"threshold": lam, "tests": tests, "n": len(prompts), "delta": delta, "epsilon": epsilon,
            "consistency": "textual" if references is None else "risk", "distance": distance,
            "measure": base.measure, "tau": base.tau, "decay": base.decay, "every": base.every, "horizon": base.horizon,
            "kv": base.kv, "max_new_tokens": max_new_tokens, "prompt_len": len(prompts[0])}


def save_calm(path, result: dict) -> Path:
    """Write the calibration result (atomically) to ``path``, normally the checkpoint's calm.json."""
    path = Path(path)
    atomic_write_text(path, json.dumps({**result, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
    return path


def check_calm(stored, source: str) -> dict:
    """``stored`` if it has the shape of a calm.json (calibrate's output), else one clear UsageError."""
    def bad(why):
        return UsageError(f"{source}: not a calm.json ({why})")
    if not isinstance(stored, dict):
        raise bad(f"a JSON {type(stored).__name__}, not an object")
    num = (int, float)
    for key, ok in (("threshold", lambda v: isinstance(v, num) and 0 <= v <= 1), ("tau", lambda v: isinstance(v, num) and v >= 0),
                    ("every", lambda v: isinstance(v, int) and v >= 1), ("horizon", lambda v: isinstance(v, int) and v >= 1),
                    ("measure", lambda v: v in EXIT_MEASURES), ("kv", lambda v: v in KV_MODES),
                    ("decay", lambda v: v in ("paper", "reference")),
                    ("consistency", lambda v: v in CONSISTENCIES)):
        v = stored.get(key)
        if v is not None and (isinstance(v, bool) or not ok(v)):
            raise bad(f"{key} = {v!r}")
    return stored


def config_from_calm(stored: dict, **overrides) -> CalmConfig:
    """The CalmConfig a calm.json describes (its certified threshold, measure, τ, decay, exit
    spacing, horizon, K/V policy), defaults where it says nothing, ``overrides`` on top."""
    keys = ("measure", "threshold", "tau", "decay", "every", "horizon", "kv")
    vals = {k: stored[k] for k in keys if stored.get(k) is not None}
    vals.setdefault("threshold", 0.9)
    return CalmConfig(**{**vals, **overrides})


def _finetuned(spec: str, key: str):
    """A setting of the ``calm-finetune`` run that wrote an hf:FOLDER (its adaptive_lm.json), or None."""
    try:
        return json.loads((Path(spec[3:]) / "adaptive_lm.json").read_text())["calm_finetune"][key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trained_exit_every(spec: str, default: int = 1) -> int:
    """The exit spacing a model was trained with: our checkpoint's meta (``calm.exit_every``), or
    the adaptive_lm.json that ``calm-finetune`` writes into an hf:FOLDER; ``default`` otherwise."""
    from ..checkpoint import read_config, resolve
    if spec.startswith("hf:"):
        every = _finetuned(spec, "exit_every")
        return every if isinstance(every, int) and every >= 1 else default
    if spec == "smollm2" or spec.startswith("gguf:"):
        return default
    return int(read_config(resolve(spec)).get("meta", {}).get("calm", {}).get("exit_every", default))


def trained_corpus(spec: str) -> str:
    """The corpus a model was trained (or CALM-fine-tuned) on, from our checkpoint's meta or an
    hf:FOLDER's adaptive_lm.json; "" when it does not say."""
    from ..checkpoint import read_config, resolve
    if spec.startswith("hf:"):
        corpus = _finetuned(spec, "corpus")
        return corpus if isinstance(corpus, str) else ""
    if spec == "smollm2" or spec.startswith("gguf:"):
        return ""
    return str(read_config(resolve(spec)).get("meta", {}).get("corpus", ""))


def _folder(model) -> Path:
    """A model's folder: ``builtin:NAME`` resolved, ``hf:FOLDER`` its folder, a path checked to exist."""
    from ..checkpoint import resolve
    s = str(model)
    return resolve(s[3:] if s.startswith("hf:") else s)


def load_calm(folder) -> dict:
    """The calibration stored next to a checkpoint (a folder, builtin:NAME or hf:FOLDER), or {} when
    it has none; a folder that does not exist is an error."""
    path = _folder(folder) / CALM_FILE
    return read_json(path, UsageError) if path.exists() else {}


def train_classifier(model, batches: Callable, *, steps: int = 300, lr: float = 1e-3, layers: Optional[list[int]] = None,
                     progress: Optional[Callable] = None):
    """CALM's second step: fit the early-exit classifier (exits.ExitClassifier) with the backbone
    frozen. ``batches(step)`` -> (x, y) causal-LM batches. Returns the classifier (eval mode)."""
    from .exits import ExitClassifier, classifier_loss, exit_layers
    L = model.config.n_layer
    dev = model_device(model)
    clf = ExitClassifier(model.config.d_model, layers or exit_layers(L)[:-1]).to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr)
    try:
        for step in range(steps):
            loss, mets = classifier_loss(clf, model, tuple(t.to(dev) for t in batches(step)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, {k: float(v) for k, v in mets.items()})
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return clf.eval()


def finetune_exits(model, batches: Callable, *, cfg, layers: Sequence[int], weights: torch.Tensor,
                   progress: Optional[Callable] = None, start: int = 0, opt=None,
                   on_step: Optional[Callable] = None) -> list[dict]:
    """CALM's first training step on an existing causal LM (ours or a Hugging Face one through
    hf_causal.HFCausalLM): every weight trained on the weighted per-layer loss
    (exits.early_exit_loss) for steps ``start`` .. ``cfg.steps`` − 1 with the trainer's optimiser
    and schedule (train.make_optimizer, train.lr_at; ``cfg`` a TrainConfig) and gradient clipping.
    ``batches(step)`` -> (x, y) causal-LM batches, a function of the step alone, so a run resumed
    at ``start`` with the optimiser ``opt`` it saved continues exactly. ``on_step(done, opt)``
    after every step (saves); returning True stops the run there. Returns each step's metrics;
    the model is left in eval mode."""
    from ..train import lr_at, make_optimizer
    from .exits import early_exit_loss
    opt = opt if opt is not None else make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    model.train()
    history = []
    try:
        for step in range(start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            loss, mets = early_exit_loss(model, batches(step), layers=list(layers), weights=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            history.append({k: float(v) for k, v in mets.items()})
            if progress is not None:
                progress(step + 1, history[-1])
            if on_step is not None and on_step(step + 1, opt):
                break
    finally:
        model.eval()
    return history


def save_classifier(folder, clf) -> Path:
    """exit_classifier.safetensors next to the checkpoint (atomically); its layers in the metadata."""
    from safetensors.torch import save as st_save
    from ..io import atomic_write_bytes
    path = Path(folder) / CLASSIFIER_FILE
    tensors = {k: v.detach().contiguous() for k, v in clf.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"layers": ",".join(map(str, clf.layers))}))
    return path


def load_classifier(folder, model):
    """The exit classifier stored next to a checkpoint (a folder, builtin:NAME or hf:FOLDER), or None;
    a folder that does not exist is an error."""
    from safetensors import safe_open
    from .exits import ExitClassifier
    path = _folder(folder) / CLASSIFIER_FILE
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        layers = [int(x) for x in f.metadata()["layers"].split(",")]
        state = {k: f.get_tensor(k) for k in f.keys()}
    clf = ExitClassifier(model.config.d_model, layers)
    clf.load_state_dict(state)
    return clf.to(next(model.parameters()).device).eval()
