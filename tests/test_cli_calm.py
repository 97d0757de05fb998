"""CALM on the command line: generate --method calm, calibrate (certifies and writes calm.json, or
refuses and writes nothing), calm-classifier; bad input -> one line."""
import json

import pytest
import torch

from adaptive_lm.checkpoint import save_pretrained
from adaptive_lm.model import ModelConfig, TransformerLM
from adaptive_lm.tokenizer import CharTokenizer
from tests.conftest import TEXT
from tests.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def calm_ckpt(tmp_path_factory):
    """A tiny causal checkpoint with peaked logits, trained on nothing; its corpus is a text file."""
    d = tmp_path_factory.mktemp("calm")
    (d / "text.txt").write_text(TEXT)
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=4, n_head=2, d_model=32, max_seq_len=64))
    with torch.no_grad():
        m.tok_emb.weight.mul_(8.0)
    save_pretrained(d / "ck", m, tok, meta={"corpus": str(d / "text.txt"), "family": "causal-lm"})
    return d / "ck"


@pytest.fixture(scope="module")
def untied_ckpt(tmp_path_factory):
    """A tiny causal checkpoint with its own output head: its exits change the tokens, so textual and
    risk consistency certify different thresholds on it."""
    d = tmp_path_factory.mktemp("untied")
    (d / "text.txt").write_text(TEXT)
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=4, n_head=2, d_model=32, max_seq_len=64,
                                  tie_embeddings=False))
    save_pretrained(d / "ck", m, tok, meta={"corpus": str(d / "text.txt"), "family": "causal-lm"})
    return d / "ck"


def _risks_by_hand(ck, split, *, n, prompt_len, max_new_tokens, seed, thresholds):
    """The risk-consistency risk of static exits at each λ, recomputed through the Python API: the
    prompts and their continuations cut from the checkpoint's corpus, decoded at λ and at full depth."""
    from adaptive_lm.calm.calibrate import mean_risk
    from adaptive_lm.calm.decode import CalmConfig
    from adaptive_lm.calm.runtime import calm_generate, prompts_and_references
    from adaptive_lm.checkpoint import from_pretrained, read_config
    from adaptive_lm.data import read_text
    m, tok = from_pretrained(ck)
    text = read_text(read_config(ck)["meta"]["corpus"], split)
    ps, refs = prompts_and_references(tok, text, n=n, prompt_len=prompt_len, reference_len=max_new_tokens, seed=seed)
    gen = dict(max_new_tokens=max_new_tokens, pad_id=tok.pad_id, eos_id=tok.eos_id)
    full = calm_generate(m, ps, CalmConfig(threshold=1.0), **gen)[0]
    out = {}
    for lam in thresholds:
        early = calm_generate(m, ps, CalmConfig(measure="static", threshold=lam, kv="recompute",
                                                horizon=max_new_tokens), **gen)[0]
        out[lam] = (mean_risk(early, full, refs), mean_risk(early, full))
    return out


def test_generate_calm_shows_exit_layers(calm_ckpt):
    rc, so, se = run("generate", str(calm_ckpt), "--method", "calm", "--threshold", "0.2", "--prompt", "All",
                     "--max-new-tokens", "6", "--temperature", "0", "--show-exits")
    assert rc == 0, se
    assert so.startswith("All") and so.count("[") == 6
    stats = json.loads(se.strip().splitlines()[-1])
    assert 1 <= stats["avg_layers"] <= 4 and stats["n_layer"] == 4


def test_calibrate_certifies_and_writes_calm_json(calm_ckpt, tmp_path):
    folder = tmp_path / "calibrations"                                  # --out FOLDER: FOLDER/calm.json
    folder.mkdir()
    rc, so, se = run("calibrate", str(calm_ckpt), "--delta", "0.5", "--n", "40", "--prompt-len", "8",
                     "--max-new-tokens", "6", "--split", "train", "--out", str(folder))
    assert rc == 0, se
    res = json.loads((folder / "calm.json").read_text())
    assert res["threshold"] < 1.0 and res["delta"] == 0.5
    tested = [t["threshold"] for t in res["tests"]]
    assert tested[0] == 1.0 and tested == sorted(tested, reverse=True)
    assert all(t["p_value"] <= 0.05 for t in res["tests"] if t["threshold"] >= res["threshold"])
    assert res["kv"] == "propagate" and res["consistency"] == "textual"


def test_calibrate_risk_consistency_against_the_risk_by_hand(untied_ckpt, tmp_path):
    """--consistency risk: every risk calm.json lists is the one recomputed by hand from the corpus'
    continuations; calm.json says which consistency it holds; the certified λ is no higher than
    textual consistency's and, on this model, lower; generate applies it."""
    lam, tests = {}, {}
    for kind in ("textual", "risk"):
        out = tmp_path / f"{kind}.json"
        rc, so, se = run("calibrate", str(untied_ckpt), "--measure", "static", "--delta", "0.4", "--epsilon", "0.2", "--n", "40",
                         "--prompt-len", "8", "--max-new-tokens", "6", "--split", "train", "--kv", "recompute",
                         "--consistency", kind, "--out", str(out))
        assert rc == 0, se
        res = json.loads(out.read_text())
        assert res["consistency"] == kind and json.loads(so)["consistency"] == kind
        lam[kind], tests[kind] = res["threshold"], {t["threshold"]: t["risk"] for t in res["tests"]}
    assert lam["risk"] < lam["textual"]
    by_hand = _risks_by_hand(untied_ckpt, "train", n=40, prompt_len=8, max_new_tokens=6, seed=0,
                             thresholds=[t for t in tests["risk"] if t < 1])
    for t, r in tests["risk"].items():
        assert r == pytest.approx(by_hand[t][0] if t < 1 else 0.0, abs=1e-12)
    assert any(by_hand[t][1] > by_hand[t][0] for t in by_hand)           # risk and textual really differ here
    rc, so, se = run("generate", str(untied_ckpt), "--method", "calm", "--prompt", "All", "--max-new-tokens", "4",
                     "--measure", "static", "--calm", str(tmp_path / "risk.json"))
    assert rc == 0 and json.loads(se.strip().splitlines()[-1])["threshold"] == lam["risk"]


def test_calibrate_notes_a_small_n_only_when_the_bound_stopped_the_sweep(untied_ckpt, tmp_path):
    """40 prompts at δ 0.3 leave room for an empirical risk of only 0.135 (< δ/2), but this sweep
    certifies the grid's last threshold, so more prompts could not certify a lower one: no note."""
    from adaptive_lm.calm.calibrate import max_certifiable_risk
    assert max_certifiable_risk(40, 0.3, 0.05) < 0.3 / 2
    rc, so, se = run("calibrate", str(untied_ckpt), "--measure", "margin", "--kv", "recompute", "--delta", "0.3",
                     "--n", "40", "--prompt-len", "8", "--max-new-tokens", "6", "--split", "train",
                     "--out", str(tmp_path / "c.json"))
    assert rc == 0 and json.loads(so)["threshold"] == 0.05, se
    assert "note:" not in se


def test_calibrate_recompute_then_generate_uses_it_only_with_the_same_policy(calm_ckpt, tmp_path):
    out = tmp_path / "calm.json"
    rc, so, se = run("calibrate", str(calm_ckpt), "--delta", "0.5", "--n", "40", "--prompt-len", "8",
                     "--max-new-tokens", "6", "--split", "train", "--kv", "recompute", "--out", str(out))
    assert rc == 0, se
    res = json.loads(out.read_text())
    assert res["kv"] == "recompute" and res["threshold"] < 1.0
    base = ("generate", str(calm_ckpt), "--method", "calm", "--prompt", "All", "--max-new-tokens", "4",
            "--calm", str(out))
    rc, so, se = run(*base)
    stats = json.loads(se.strip().splitlines()[-1])
    assert rc == 0 and stats["kv"] == "recompute" and stats["threshold"] == res["threshold"]
    rc, so, se = run(*base, "--kv", "propagate")                         # not certified for this policy
    stats = json.loads(se.strip().splitlines()[-1])
    assert rc == 0 and stats["kv"] == "propagate" and stats["threshold"] == 0.9
    assert "note: no calm.json certifies measure=margin kv=propagate" in se       # ... and it says so


def test_calibrate_refuses_when_nothing_can_be_certified(calm_ckpt):
    rc, so, se = run("calibrate", str(calm_ckpt), "--delta", "0.01", "--n", "8", "--prompt-len", "8",
                     "--max-new-tokens", "4", "--split", "train")
    assert rc == 1 and "Traceback" not in se
    assert "no threshold below 1.0 can be certified" in se.strip().splitlines()[-1]
    assert not (calm_ckpt / "calm.json").exists()
    assert "not even a risk of 0 certifies" in se                       # 8 prompts at δ 0.01: no room at all


def test_calibrate_and_generate_the_static_baseline(calm_ckpt, tmp_path):
    """--measure static: calibrated over one λ per exit layer (k/L), then used by generate; without
    a certified calm.json generate asks for --threshold instead of running the full model silently."""
    out = tmp_path / "calm.json"
    rc, so, se = run("calibrate", str(calm_ckpt), "--measure", "static", "--delta", "0.5", "--n", "40",
                     "--prompt-len", "8", "--max-new-tokens", "6", "--split", "train", "--kv", "recompute", "--out", str(out))
    assert rc == 0, se
    res = json.loads(out.read_text())
    assert res["measure"] == "static" and [t["threshold"] for t in res["tests"]] == [1.0, 0.75, 0.5, 0.25][:len(res["tests"])]
    base = ("generate", str(calm_ckpt), "--method", "calm", "--prompt", "All", "--max-new-tokens", "4", "--measure", "static")
    rc, so, se = run(*base, "--calm", str(out))
    stats = json.loads(se.strip().splitlines()[-1])
    assert rc == 0 and stats["threshold"] == res["threshold"] and stats["measure"] == "static"
    rc, so, se = run(*base)
    assert_one_line_error(rc, se, 2, "--measure static needs --threshold")


@pytest.mark.parametrize("args, words", [
    (["calibrate", "builtin:shakespeare-char"], ["read-only"]),
    (["calibrate", "CK", "--delta", "1.5"], ["--delta"]),
    (["calibrate", "CK", "--measure", "oracle"], ["--measure"]),
    (["generate", "CK", "--method", "calm", "--measure", "classifier", "--prompt", "a"], ["calm-classifier"]),
    (["generate", "CK", "--method", "calm", "--threshold", "2", "--prompt", "a"], ["--threshold"]),
    (["generate", "CK", "--method", "calm", "--kv", "copy", "--prompt", "a"], ["--kv"]),
    (["calibrate", "CK", "--kv", "copy"], ["--kv"]),
    (["calibrate", "CK", "--consistency", "semantic"], ["--consistency"]),
    (["generate", "CK", "--method", "calm", "--threshold", "0.5", "--prompt", "All", "--max-new-tokens", "70"],
     ["context", "--max-new-tokens 61 or less"]),
    (["calibrate", "CK", "--measure", "classifier"], ["calm-classifier"]),
])
def test_bad_calm_input_is_one_line(calm_ckpt, args, words):
    rc, so, se = run(*[str(calm_ckpt) if a == "CK" else a for a in args])
    assert_one_line_error(rc, se, 2, *words)


def test_calm_classifier_then_generate_with_it(calm_ckpt, tmp_path):
    rc, so, se = run("calm-classifier", str(calm_ckpt), "--steps", "3", "--seq-len", "16", "--batch-size", "4",
                     "--out", str(tmp_path))
    assert rc == 0, se
    assert (tmp_path / "exit_classifier.safetensors").exists()
    assert json.loads(so)["layers"] == [1, 2, 3]
    rc, so, se = run("calm-classifier", str(calm_ckpt), "--steps", "2", "--seq-len", "16", "--batch-size", "4",
                     "--every", "2", "--out", str(tmp_path / "every2"))
    assert rc == 0, se
    assert json.loads(so)["layers"] == [2]                             # exits every 2nd layer, below the top (4)
    rc, so, se = run("calm-classifier", "smollm2", "--steps", "1")      # a Hugging Face model: nowhere to write
    assert_one_line_error(rc, se, 2, "--out")
    rc, so, se = run("calm-classifier", str(calm_ckpt), "--every", "4", "--out", str(tmp_path / "x"))
    assert_one_line_error(rc, se, 2, "exit below the top")


def test_bench_calm_rows(calm_ckpt, tmp_path):
    out = tmp_path / "b.json"
    rc, so, se = run("bench", "calm", f"models={calm_ckpt}", "n_cal=40", "n_test=8", "prompt_len=8",
                     "max_new_tokens=6", "timing_prompts=8", "deltas=0.3,0.5", "measures=margin,state", "--json", str(out))
    assert rc == 0, se
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 8                                         # 2 measures x 2 K/V policies x 2 deltas
    assert res["device"] == "cpu"                                        # the default, recorded
    speeds = res["models"][str(calm_ckpt)]
    assert min(speeds[f"full{k}_tokens_per_s_b{b}"] for k in ("", "_decode") for b in (1, 8)) > 0
    assert {(r["measure"], r["kv"]) for r in res["rows"]} == {(m, k) for m in ("margin", "state")
                                                              for k in ("propagate", "recompute")}
    assert 0 <= speeds["full_reference_distance"] <= 1
    assert set(speeds["targets"]) == {"textual"}                         # the default guarantee only
    assert speeds["oracle_replay_agreement"] == 1.0                      # the ceiling decodes the full model's tokens
    assert speeds["oracle_speedup_b1"] > 0 and speeds["oracle_speedup_b8"] > 0
    assert all(lo <= speeds[f"oracle_speedup_b{b}"] <= hi for b in (1, 8) for lo, hi in [speeds[f"oracle_speedup_b{b}_range"]])
    assert speeds["oracle_ceiling_reaches"] == {"b1": speeds["oracle_speedup_b1"] >= 2.5, "b8": speeds["oracle_speedup_b8"] >= 2.0}
    for r in res["rows"]:
        assert set(r) == {"model", "guarantee", "delta", "measure", "kv", "threshold", "avg_layers", "oracle_layers",
                          "risk", "consistency", "speedup_b1", "speedup_b8", "speedup_b1_e2e", "speedup_b8_e2e",
                          "speedup_b1_range", "speedup_b8_range"}
        for b in (1, 8):                                                 # the median lies within the timings' range
            lo, hi = r[f"speedup_b{b}_range"]
            assert lo <= r[f"speedup_b{b}"] <= hi
        assert r["guarantee"] == "textual"
        assert 1 <= r["oracle_layers"] <= 4 and 1 <= r["avg_layers"] <= 4
        assert 0 <= r["consistency"] <= 1 and min(r[k] for k in r if k.startswith("speedup") and not k.endswith("_range")) > 0
        assert abs(r["risk"] + r["consistency"] - 1) < 1e-9                # risk: what Learn-then-Test bounds by δ
        if r["threshold"] == 1.0:                                      # nothing certified: the full model
            assert r["avg_layers"] == 4 and r["consistency"] == 1
    rc, so, se = run("bench", "calm", f"models={calm_ckpt}", "n_cal=0")
    assert_one_line_error(rc, se, 2, "n_cal")
    rc, so, se = run("bench", "calm", f"models={calm_ckpt}", "consistency=textual,semantic")
    assert_one_line_error(rc, se, 2, "consistency")
    rc, so, se = run("bench", "calm", f"models={calm_ckpt}", "timing_repeats=0")
    assert_one_line_error(rc, se, 2, "timing_repeats")
    rc, so, se = run("bench", "calm", f"models={calm_ckpt}", "max_new_tokens=1")
    assert_one_line_error(rc, se, 2, "max_new_tokens >= 2")
    rc, so, se = run("bench", "calm", f"models={calm_ckpt}", "kvs=copy")
    assert_one_line_error(rc, se, 2, "kvs")


def test_bench_calm_risk_consistency_rows(untied_ckpt, tmp_path):
    """consistency=textual,risk: one row per guarantee; each row's test risk, mismatch to the full
    model and depth are those recomputed by hand on the test split's prompts and continuations;
    rows that certify the same λ share one timing; targets are read per guarantee."""
    out = tmp_path / "r.json"
    rc, so, se = run("bench", "calm", f"models={untied_ckpt}", "n_cal=40", "n_test=8", "prompt_len=8",
                     "max_new_tokens=6", "timing_prompts=8", "deltas=0.3,0.4", "epsilon=0.2", "measures=static", "kvs=recompute",
                     "consistency=textual,risk", "--json", str(out))
    assert rc == 0, se
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert [(r["guarantee"], r["delta"]) for r in rows] == [("textual", 0.3), ("textual", 0.4), ("risk", 0.3), ("risk", 0.4)]
    lams = sorted({r["threshold"] for r in rows if r["threshold"] < 1})
    assert len(lams) >= 2                                                 # different λ: the sharing is tested
    by_hand = _risks_by_hand(untied_ckpt, "test", n=8, prompt_len=8, max_new_tokens=6, seed=1, thresholds=lams)
    for r in rows:
        if r["threshold"] == 1.0:
            continue
        risk, textual = by_hand[r["threshold"]]
        assert r["risk"] == round(risk if r["guarantee"] == "risk" else textual, 4)
        if r["guarantee"] == "risk":
            assert r["textual_risk"] == round(textual, 4) and r["risk"] <= r["textual_risk"]
        same = [q for q in rows if q["threshold"] == r["threshold"]]
        assert len({(q["speedup_b1"], q["speedup_b8"], q["avg_layers"]) for q in same}) == 1
    assert rows[2]["threshold"] < rows[0]["threshold"] and rows[3]["threshold"] <= rows[1]["threshold"]
    assert set(res["models"][str(untied_ckpt)]["targets"]) <= {"textual", "risk"}


def test_shipped_calm_arith_exits_early_with_its_certified_threshold(tmp_path):
    """builtin:calm-arith's calm.json (λ certified at δ 0.1 with recompute) is used when no --threshold is
    given; on a worked-arithmetic prompt most tokens leave after the first layers. The corpus is made by
    code, so no data folder is needed."""
    prompt = "Leo has 12 cards and gets 7 more each day until at least 80. How many days?"
    rc, so, se = run("--threads", "1", "generate", "builtin:calm-arith", "--method", "calm", "--prompt", prompt,
                     "--max-new-tokens", "40", cwd=tmp_path)
    assert rc == 0, se
    stats = json.loads(se.strip().splitlines()[-1])
    from adaptive_lm.checkpoint import resolve
    stored = json.loads((resolve("builtin:calm-arith") / "calm.json").read_text())
    assert 0 < stored["threshold"] < 1 and stored["delta"] == 0.1
    assert (stats["threshold"], stats["kv"], stats["measure"]) == (stored["threshold"], "recompute", stored["measure"])
    assert stored["measure"] in ("margin", "patience")
    assert stats["avg_layers"] < 3 and "Day 01:" in so
    rc, so, se = run("--threads", "1", "eval", "builtin:calm-arith", "--split", "test", "--max-windows", "2", cwd=tmp_path)
    assert rc == 0, se
    res = json.loads(so.strip().splitlines()[-1])
    assert res["corpus"] == "arith" and res["bits_per_byte"] < 1.0


def test_show_exits_keeps_a_newline_tag_with_its_own_token():
    from adaptive_lm.cli.calm import _tagged
    assert _tagged("a", 3) == "a[3]"
    assert _tagged("\n", 8) == "\\n[8]\n"                       # shown, tagged, then the line breaks
    assert _tagged("x\n\n", 2) == "x\\n\\n[2]\n\n"


def test_calibrate_the_classifier_measure_and_generate_with_it(calm_ckpt, tmp_path):
    import shutil
    ck = tmp_path / "ck"
    shutil.copytree(calm_ckpt, ck)
    rc, so, se = run("calm-classifier", str(ck), "--steps", "3", "--seq-len", "16", "--batch-size", "4")
    assert rc == 0 and (ck / "exit_classifier.safetensors").exists(), se
    rc, so, se = run("calibrate", str(ck), "--measure", "classifier", "--delta", "0.5", "--n", "40", "--prompt-len",
                     "8", "--max-new-tokens", "6", "--split", "train")
    assert rc == 0, se
    stored = json.loads((ck / "calm.json").read_text())
    assert stored["measure"] == "classifier" and stored["threshold"] < 1.0
    rc, so, se = run("generate", str(ck), "--method", "calm", "--measure", "classifier", "--prompt", "All",
                     "--max-new-tokens", "4")
    assert rc == 0, se
    assert json.loads(se.strip().splitlines()[-1])["threshold"] == stored["threshold"]   # the certified one


def test_calm_classifier_seq_len_fits_the_model(calm_ckpt, tmp_path):
    rc, so, se = run("calm-classifier", str(calm_ckpt), "--steps", "1", "--seq-len", "100000", "--out", str(tmp_path))
    assert_one_line_error(rc, se, 2, "--seq-len 100000", "64-token context")
    rc, so, se = run("calm-classifier", str(calm_ckpt), "--steps", "1", "--batch-size", "2", "--out", str(tmp_path))
    assert rc == 0, se                                                 # default: the model's 64, not 128


def test_timed_decode_separates_the_prompt_pass(calm_ckpt):
    """The decode seconds start after each batch's prompt pass: a prompt pass that sleeps 50 ms is in
    the total and not in the decode time; the decode steps' 10 ms sleeps are in both."""
    import time
    from adaptive_lm.bench.calm import timed_decode
    from adaptive_lm.checkpoint import from_pretrained
    from adaptive_lm.lm import full_depth_step
    m, tok = from_pretrained(calm_ckpt)

    def slow_prompt(model, ids, mask, cache):
        time.sleep(0.05 if cache.length == 0 else 0.01)
        return full_depth_step(model, ids, mask, cache)
    total, decode = timed_decode(m, [[1, 2, 3]] * 2, lambda lo, hi: slow_prompt, batch_size=1, max_new_tokens=3, pad_id=tok.pad_id)
    assert total - decode >= 2 * 0.05                                 # two batches, each prompt pass slept once
    assert decode >= 2 * 2 * 0.01                                     # ... and 2 decode steps each (3 tokens, the first from the prompt)


def test_bench_calm_targets_summary():
    """Only δ = 0.1 rows whose test risk is within δ count; the best setting per batch size, and
    whether one setting meets both targets."""
    from adaptive_lm.bench.calm import targets

    def row(measure, b1, b8, risk=0.05, delta=0.1, threshold=0.5):
        return {"measure": measure, "kv": "recompute", "delta": delta, "risk": risk, "threshold": threshold,
                "speedup_b1": b1, "speedup_b8": b8}
    rows = [row("margin", 3.0, 1.5), row("state", 2.0, 2.2), row("top1", 4.0, 4.0, risk=0.2), row("x", 9, 9, delta=0.2),
            row("classifier", 1.0, 1.0, risk=0.0, threshold=1.0)]              # nothing certified: not a setting
    t = targets(rows)
    assert t["best_b1"] == {"setting": "margin/recompute", "speedup": 3.0}
    assert t["best_b8"] == {"setting": "state/recompute", "speedup": 2.2}
    assert t["b1_met"] and t["b8_met"] and not t["both_met_by_one_setting"]
    assert targets(rows + [row("classifier", 2.6, 2.1)])["both_met_by_one_setting"]
    assert targets([row("margin", 3.0, 3.0, delta=0.2)]) == {} == targets([row("state", 1.0, 1.0, threshold=1.0)])
    assert "static" not in t
    fast_static = {**row("static", 9.0, 9.0), "avg_layers": 1.0}                 # the baseline: reported apart
    t = targets(rows + [fast_static, {**row("static", 2.0, 2.0), "avg_layers": 3.0}])
    best = {"setting": "static/recompute", "avg_layers": 1.0, "speedup": 9.0}
    assert t["best_b1"]["speedup"] == 3.0 and t["static"] == {"best_b1": best, "best_b8": best}
    assert not t["adaptive_beats_static_b1"] and not t["adaptive_beats_static_b8"]
    assert targets([fast_static]) == {"static": t["static"]}                     # no adaptive row: the baseline alone
    t = targets(rows + [{**row("static", 2.0, 2.5), "avg_layers": 3.0}])
    assert t["adaptive_beats_static_b1"] and not t["adaptive_beats_static_b8"]      # 3.0 > 2.0; 2.2 < 2.5
    # the same depth under both K/V policies: each batch size is judged against the faster one
    slow_prop = {**row("static", 1.3, 1.4), "kv": "propagate", "avg_layers": 3.0}
    fast_rec = {**row("static", 2.2, 2.5), "avg_layers": 3.0}
    t = targets(rows + [slow_prop, fast_rec])
    assert t["static"]["best_b8"] == {"setting": "static/recompute", "avg_layers": 3.0, "speedup": 2.5}
    assert t["adaptive_beats_static_b1"] and not t["adaptive_beats_static_b8"]      # 3.0 > 2.2; 2.2 < 2.5


def test_bench_oracle_ceiling_uses_the_models_exit_spacing(tmp_path):
    """A model trained with an exit every 2nd layer: the oracle looks for exits only there, so its
    depths replayed with that spacing give back the full model's tokens (agreement 1.0); an oracle
    searched over every layer and replayed at every 2nd would not (0.5 on this model)."""
    (tmp_path / "text.txt").write_text(TEXT)
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=4, n_head=2, d_model=32, max_seq_len=64,
                                  tie_embeddings=False))
    save_pretrained(tmp_path / "ck", m, tok, meta={"corpus": str(tmp_path / "text.txt"), "family": "causal-lm",
                                                   "calm": {"exit_every": 2}})
    out = tmp_path / "b.json"
    rc, so, se = run("bench", "calm", f"models={tmp_path / 'ck'}", "n_cal=20", "n_test=8", "prompt_len=8",
                     "max_new_tokens=6", "timing_prompts=8", "timing_repeats=1", "deltas=0.5", "measures=static",
                     "kvs=recompute", "--json", str(out))
    assert rc == 0, se
    res = json.loads(out.read_text())
    info = res["models"][str(tmp_path / "ck")]
    assert info["oracle_replay_agreement"] == 1.0
    assert res["rows"][0]["oracle_layers"] >= 2                        # no exit at layer 1 exists
