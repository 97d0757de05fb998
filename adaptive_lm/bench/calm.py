"""`adaptive-lm bench calm`: certified CALM thresholds and what they buy, on held-out text.

For each confidence measure and each δ (at one ε): Learn-then-Test certifies a threshold on
calibration prompts (the corpus' valid split); then, on test prompts (the test split, never used
in calibration), the early-exit decode is compared with the full model: average layers per token,
the oracle's (exit at the first layer whose argmax equals the top layer's — the floor), the
consistency achieved (mean token mismatch, or 1 − ROUGE-L, with the full model's output), and the
wall-clock decode speed of CALM over the same model at full depth with its KV cache, greedy, at
batch 1 and batch 8, measured in this run (one untimed warm-up each; the full-depth timing is
taken once and shared by the rows). A row whose δ certifies nothing below λ = 1 is the full model.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass


from ..calm.calibrate import DISTANCES
from ..calm.decode import MEASURES, CalmConfig, CalmStep
from ..calm.runtime import calibrate_threshold, calibration_prompts, calm_generate, load_classifier
from ..checkpoint import read_config, resolve
from ..data import read_text
from ..errors import UsageError
from ..hf_causal import is_hf_spec, load_causal_lm, pad_id_of
from ..lm import full_depth_step, generate
from . import register


@dataclass
class CalmBenchOptions:
    models: str = "builtin:calm-pydocs"  # comma-separated causal LMs: checkpoints, builtin:NAME, hf:FOLDER, gguf:FILE, smollm2
    deltas: str = "0.05,0.1,0.2"         # consistency tolerances δ
    epsilon: float = 0.05                # failure probability ε of the guarantee
    measures: str = "margin,top1,state,classifier"   # confidence measures (classifier: if the checkpoint has one)
    distance: str = "mismatch"           # mismatch (token mismatch rate) or rouge (1 - ROUGE-L)
    n_cal: int = 64                      # calibration prompts (valid split)
    n_test: int = 64                     # test prompts (test split)
    prompt_len: int = 32                 # tokens per prompt
    max_new_tokens: int = 32             # tokens generated per prompt
    tau: float = 4.0                     # decaying-threshold temperature
    timing_prompts: int = 16             # test prompts decoded for the tokens/s figures
    corpus: str = ""                     # default: the corpus the checkpoint was trained on (pydocs for HF models)
    data_dir: str = ""                   # data folder (default $ADAPTIVE_LM_DATA or ../shared/data)


def _floats(name: str, s: str) -> list[float]:
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name}={s!r}: expected comma-separated numbers") from None
    if not vals or not all(0 < v < 1 for v in vals):
        raise UsageError(f"{name}: every value must be in (0, 1)")
    return vals


def tokens_per_second(model, prompts, step_factory, *, batch_size: int, max_new_tokens: int, pad_id: int) -> float:
    """Greedy decode of the prompts, batch_size at a time; generated tokens per wall second."""
    def run():
        n = 0
        for b in range(0, len(prompts), batch_size):
            outs = generate(model, prompts[b:b + batch_size], max_new_tokens=max_new_tokens, pad_id=pad_id,
                            temperature=0, step=step_factory())
            n += sum(len(o) for o in outs)
        return n
    run()                                                                 # warm-up, untimed
    t0 = time.perf_counter()
    n = run()
    return n / (time.perf_counter() - t0)


@register("calm", CalmBenchOptions)
def bench_calm(seed: int, o: CalmBenchOptions) -> dict:
    """CALM thresholds certified by Learn-then-Test, and their layers, consistency and speed-up."""
    deltas = _floats("deltas", o.deltas)
    if not 0 < o.epsilon < 1:
        raise UsageError("epsilon must be in (0, 1)")
    if o.distance not in DISTANCES:
        raise UsageError(f"distance must be one of {sorted(DISTANCES)}")
    measures = [x.strip() for x in o.measures.split(",") if x.strip()]
    bad = [x for x in measures if x not in MEASURES or x == "oracle"]
    if bad or not measures:
        raise UsageError(f"measures: unknown {bad}; use margin, top1, state, classifier")
    names = [x.strip() for x in o.models.split(",") if x.strip()]
    if not names:
        raise UsageError("models: give at least one model")
    rows, per_model = [], {}
    for name in names:
        model_rows, info = bench_one(name, seed, o, deltas, list(measures))
        rows += model_rows
        per_model[name] = info
    return {"models": per_model, "rows": rows}


def bench_one(name: str, seed: int, o: CalmBenchOptions, deltas: list[float], measures: list[str]):
    """The rows of one model (module docstring) and its full-depth figures."""
    model, tok = load_causal_lm(name)
    if not model.config.causal:
        raise UsageError(f"{name} is a masked diffusion LM; CALM needs a causal LM")
    folder = None if is_hf_spec(name) else resolve(name)
    clf = load_classifier(folder, model) if folder else None
    if "classifier" in measures and clf is None:
        print(f"{name}: no exit classifier next to the checkpoint: skipping measure=classifier", file=sys.stderr)
        measures.remove("classifier")
    corpus = o.corpus or (read_config(folder).get("meta", {}).get("corpus", "") if folder else "pydocs")
    if not corpus:
        raise UsageError("corpus= is needed: the checkpoint does not say what it was trained on")
    if o.prompt_len + o.max_new_tokens > model.config.max_seq_len:
        raise UsageError(f"prompt_len + max_new_tokens exceeds the model's {model.config.max_seq_len}-token context")
    dd = o.data_dir or None
    cal = calibration_prompts(tok, read_text(corpus, "valid", data_dir_flag=dd), n=o.n_cal, prompt_len=o.prompt_len, seed=seed)
    test = calibration_prompts(tok, read_text(corpus, "test", data_dir_flag=dd), n=o.n_test, prompt_len=o.prompt_len, seed=seed + 1)
    L, dist, pad = model.config.n_layer, DISTANCES[o.distance], pad_id_of(tok)
    kw = dict(max_new_tokens=o.max_new_tokens, pad_id=pad, classifier=clf)
    full_test, _ = calm_generate(model, test, CalmConfig(threshold=1.0), **kw)
    _, oracle = calm_generate(model, test, CalmConfig(measure="oracle"), **kw)
    timed = test[:o.timing_prompts]
    tps = dict(max_new_tokens=o.max_new_tokens, pad_id=pad)
    print(f"{name}: timing the full-depth decode ...", file=sys.stderr, flush=True)
    full_b1 = tokens_per_second(model, timed, lambda: full_depth_step, batch_size=1, **tps)
    full_b8 = tokens_per_second(model, timed, lambda: full_depth_step, batch_size=8, **tps)
    rows = []
    for measure in measures:
        memo = {}
        base = CalmConfig(measure=measure, tau=o.tau)
        for delta in deltas:
            print(f"{name}: measure={measure} delta={delta}: calibrating ...", file=sys.stderr, flush=True)
            res = calibrate_threshold(model, cal, delta=delta, epsilon=o.epsilon, base=base, distance=o.distance,
                                      memo=memo, batch_size=8, **kw)
            lam = res["threshold"] if res["threshold"] is not None else 1.0
            cfg = CalmConfig(measure=measure, threshold=lam, tau=o.tau)
            early, rec = calm_generate(model, test, cfg, **kw)
            row = {"model": name, "delta": delta, "measure": measure, "threshold": lam,
                   "avg_layers": round(rec.mean_layers(), 3), "oracle_layers": round(oracle.mean_layers(), 3),
                   "consistency": round(1 - sum(dist(e, f) for e, f in zip(early, full_test)) / len(test), 4)}
            if lam < 1.0:
                mk = lambda: CalmStep(cfg, o.max_new_tokens, clf)
                row["speedup_b1"] = round(tokens_per_second(model, timed, mk, batch_size=1, **tps) / full_b1, 3)
                row["speedup_b8"] = round(tokens_per_second(model, timed, mk, batch_size=8, **tps) / full_b8, 3)
            else:
                row["speedup_b1"] = row["speedup_b8"] = 1.0                  # nothing certified: the full model
            rows.append(row)
    return rows, {"n_layer": L, "full_tokens_per_s_b1": round(full_b1, 1), "full_tokens_per_s_b8": round(full_b8, 1),
                  "corpus": corpus}
