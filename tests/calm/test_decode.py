"""CALM decoding: never-exit equals the plain model; the oracle's tokens equal the full model's;
early exit with state propagation, and with the skipped K/V recomputed, each equal their slow
obvious reference; batched equals one at a time."""
import math

import pytest
import torch

from adaptive_lm.calm.decode import CalmConfig, CalmStep, _as_float32, threshold_at
from adaptive_lm.calm.exits import exit_layers
from adaptive_lm.confidence import margin
from adaptive_lm.lm import full_depth_step, generate

PAD, N = 0, 12


def _recording(step, sink):
    def f(m, ids, mask, cache):
        out = step(m, ids, mask, cache)
        sink.append(out.clone())
        return out
    return f


def _calm(model, prompts, cfg, **kw):
    step = CalmStep(cfg, N)
    out = generate(model, prompts, max_new_tokens=N, pad_id=PAD, temperature=0, step=step, **kw)
    return out, step.record.layers


def test_never_exit_equals_plain_model(calm_model, prompts):
    plain_logits, calm_logits = [], []
    plain = generate(calm_model, prompts, max_new_tokens=N, pad_id=PAD, temperature=0,
                     step=_recording(full_depth_step, plain_logits))
    step = CalmStep(CalmConfig(measure="margin", threshold=1.0), N)
    out = generate(calm_model, prompts, max_new_tokens=N, pad_id=PAD, temperature=0,
                   step=_recording(step, calm_logits))
    assert out == plain
    for a, b in zip(plain_logits, calm_logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert all(x == 4 for row in step.record.layers for x in row)


def test_oracle_tokens_equal_full_model_and_exit_at_first_agreeing_layer(calm_model, prompts):
    plain = generate(calm_model, prompts, max_new_tokens=N, pad_id=PAD, temperature=0)
    out, layers = _calm(calm_model, prompts, CalmConfig(measure="oracle"))
    assert out == plain
    flat = [x for row in layers for x in row]
    assert min(flat) < 4 and all(1 <= x <= 4 for x in flat)     # some tokens need fewer layers


@torch.no_grad()
def _threshold_for_median_margin(model, prompts):
    """A λ whose effective threshold (τ = 0: 0.9λ + 0.1) is the median layer-1..3 margin, so
    that about half of the tries exit."""
    x = torch.tensor([p[:3] for p in prompts])
    hs = model(x, output_hidden_states=True).hidden_states
    conf = torch.cat([margin(model.unembed(hs[i])).flatten() for i in (1, 2, 3)])
    return (float(conf.median()) - 0.1) / 0.9


def _threshold_for_median_cosine(model, prompts):
    """The same for the state measure: the median cosine between consecutive layers' states."""
    x = torch.tensor([p[:3] for p in prompts])
    hs = model(x, output_hidden_states=True).hidden_states
    conf = torch.cat([torch.nn.functional.cosine_similarity(hs[i], hs[i - 1], dim=-1).flatten() for i in (1, 2, 3)])
    return (float(conf.detach().median()) - 0.1) / 0.9


@torch.no_grad()
def reference_calm(model, prompt, cfg, n):
    """The slow obvious CALM at batch 1: no KV cache; every step re-runs the whole sequence layer
    by layer, and a token that exited at layer e keeps h_e as its state in every layer above
    (its K/V there come from h_e, as state propagation prescribes)."""
    ids, exits, toks = list(prompt), [model.config.n_layer] * len(prompt), []
    L = model.config.n_layer
    for t in range(n):
        x = torch.tensor([ids])
        ctx = model.prepare(x)
        h = model.embed(x)
        exited = torch.tensor(exits)                                  # (T,) exit layer per position
        lam = threshold_at(cfg, t, n) if t > 0 else math.inf          # 1st token: the prompt pass
        e_new = L
        for i in range(1, L + 1):
            nxt = model.layer(i - 1, h, ctx)
            keep = (exited < i)[None, :, None]
            h = torch.where(keep, h, nxt)                               # frozen states stay
            if e_new == L and i < L and i in exit_layers(L, cfg.every):
                if float(margin(model.unembed(h[0, -1]))) >= _as_float32(lam):
                    e_new = i
                    exits[-1] = i                                       # the new token's state freezes
                    exited = torch.tensor(exits)
        tok = int(model.unembed(h[0, -1]).argmax())                     # frozen state = state at exit
        toks.append(tok)
        ids.append(tok)
        exits.append(L)                                                 # decided when it is fed
    return toks


@pytest.mark.parametrize("which", ["calm_model", "untied_model"])
def test_early_exit_with_state_propagation_matches_slow_reference(which, prompts, request):
    calm_model = request.getfixturevalue(which)
    cfg = CalmConfig(measure="margin", threshold=_threshold_for_median_margin(calm_model, prompts), tau=2.0)
    for p in prompts:
        out, layers = _calm(calm_model, [p], cfg)
        assert out[0] == reference_calm(calm_model, p, cfg, N)
    flat = [x for row in layers for x in row]
    assert 1 <= min(flat) < 4 < max(flat) + 1                           # exits did happen


@torch.no_grad()
def reference_recompute(model, prompt, cfg, n):
    """kv=recompute, the slow obvious way at batch 1: every step runs the full model on the whole
    sequence (no cache), so every earlier token has the full model's states; the new token comes
    from the first exit layer whose margin (measure patience: its patience score) at the last
    position reaches λ_t. Returns the tokens and their exit layers."""
    ids, toks, depths = list(prompt), [], []
    L = model.config.n_layer
    for t in range(n):
        res = model(torch.tensor([ids]), output_hidden_states=True)
        lam = threshold_at(cfg, t, n) if t > 0 else math.inf          # 1st token: the prompt pass
        logits, e = res.logits[0, -1], L
        run, last = 0, None                     # patience: exits tried in a row with the same argmax
        for i in [i for i in exit_layers(L, cfg.every)[:-1] if i >= cfg.min_layer]:
            li = model.unembed(res.hidden_states[i][0, -1])
            conf = margin(li)
            if cfg.measure == "patience":
                arg = int(li.argmax())
                run = run + 1 if arg == last else 0
                last = arg
                conf = 1 - (1 - conf) * 0.5 ** run                      # the doubt halves per agreeing exit
            if float(conf) >= _as_float32(lam):                         # as the decode compares a float32 score
                logits, e = li, i
                break
        toks.append(int(logits.argmax()))
        depths.append(e)
        ids.append(toks[-1])
    return toks, depths


def test_recomputed_kv_matches_slow_reference(untied_model, prompts):
    m = untied_model
    cfg = CalmConfig(measure="margin", threshold=_threshold_for_median_margin(m, prompts), tau=0.0, kv="recompute")
    all_depths = []
    for p in prompts:
        out, layers = _calm(m, [p], cfg)
        toks, depths = reference_recompute(m, p, cfg, N)
        assert out[0] == toks
        assert layers[0] == depths
        all_depths += depths[1:]
    exited_then_full = sum(a < 4 and b == 4 for a, b in zip(all_depths, all_depths[1:]))
    assert exited_then_full >= 3                                        # full-depth tokens read recomputed K/V
    batch, _ = _calm(m, prompts, cfg)
    assert batch == [reference_recompute(m, p, cfg, N)[0] for p in prompts]
    prop, _ = _calm(m, prompts, CalmConfig(**{**cfg.__dict__, "kv": "propagate"}))
    assert prop != batch                                                # the two K/V policies differ on this model


@pytest.mark.parametrize("every,min_layer", [(2, 1), (1, 2)])
def test_recompute_with_sparse_exits_matches_slow_reference(untied_model, prompts, every, min_layer):
    m = untied_model
    cfg = CalmConfig(measure="margin", threshold=_threshold_for_median_margin(m, prompts), tau=0.0, kv="recompute",
                     every=every, min_layer=min_layer)
    refs = [reference_recompute(m, p, cfg, N) for p in prompts]
    batch, layers = _calm(m, prompts, cfg)
    assert batch == [toks for toks, _ in refs]
    assert layers == [depths for _, depths in refs]
    allowed = {i for i in exit_layers(4, every) if i >= min_layer} | {4}
    assert {d for _, depths in refs for d in depths} <= allowed
    assert any(d < 4 for _, depths in refs for d in depths)


@pytest.mark.parametrize("measure,kv", [("margin", "recompute"), ("state", "recompute"), ("state", "propagate")])
def test_batched_with_rows_stopping_at_eos_equals_one_at_a_time(untied_model, prompts, measure, kv):
    """Rows that stop early are fed padding and left out of the later windows; the rows still
    running must decode exactly as they would alone — tokens, exit layers and every step's logits
    (with the state measure the decided rows' logits come from one unembed at the end of the step)."""
    m = untied_model
    lam = (_threshold_for_median_margin if measure == "margin" else _threshold_for_median_cosine)(m, prompts)
    cfg = CalmConfig(measure=measure, threshold=lam, tau=0.0, kv=kv)
    free = [_calm(m, [p], cfg)[0][0] for p in prompts]
    eos = next(t for row in free for k, t in enumerate(row) if 2 <= k < N - 2 and t not in row[:k])

    def run(ps):                         # tokens, exit layers, and every step's logits (B, V)
        step, sink = CalmStep(cfg, N), []
        out = generate(m, ps, max_new_tokens=N, pad_id=PAD, temperature=0, eos_id=eos, step=_recording(step, sink))
        return out, step.record.layers, sink
    batch, layers, logits = run(prompts)
    for r, p in enumerate(prompts):
        out, lay, one = run([p])
        assert batch[r] == out[0] and layers[r] == lay[0]
        for k in range(min(len(out[0]) + 1, N)):                          # the steps that gave its tokens and EOS
            torch.testing.assert_close(logits[k][r], one[k][0], rtol=0, atol=1e-9)
    lengths = [len(r) for r in batch]
    assert min(lengths) < N - 2 and max(lengths) > min(lengths)            # some rows stopped while others ran on
    assert batch.index(min(batch, key=len)) < len(prompts) - 1             # ... and not only the last row
    assert any(d < 4 for row in layers for d in row)


def test_recompute_runs_each_layer_only_on_the_positions_lacking_it(untied_model, prompts):
    """Layer 1 takes the new token alone; layer i also the earlier tokens that exited below i —
    the widths follow from the exit depths alone (batch 1: a step runs to its token's depth)."""
    m = untied_model
    cfg = CalmConfig(measure="margin", threshold=_threshold_for_median_margin(m, prompts), tau=0.0, kv="recompute")
    calls, layer = [], m.layer
    m.layer = lambda i, h, ctx: (calls.append((i + 1, h.shape[1])), layer(i, h, ctx))[1]
    p = prompts[1]
    _, layers = _calm(m, [p], cfg)
    depth, want = [4] * len(p), [(i, len(p)) for i in range(1, 5)]   # the prompt pass: every layer, whole prompt
    for d in layers[0][1:]:                   # each later step feeds one token and decides the next at depth d
        depth.append(0)
        for i in range(1, d + 1):
            w = next(k for k in range(1, len(depth) + 1) if depth[-k] >= i) - 1   # trailing positions lacking layer i
            want.append((i, w))
            depth[-w:] = [i] * w
    assert calls == want
    assert any(w > 1 for i, w in want if i > 1) and all(w == 1 for i, w in want[4:] if i == 1)


@pytest.mark.parametrize("kv", ["propagate", "recompute"])
@pytest.mark.parametrize("measure", ["margin", "top1", "state"])
def test_batched_equals_one_at_a_time(calm_model, prompts, measure, kv):
    lam = _threshold_for_median_margin(calm_model, prompts) if measure != "state" else 0.5
    cfg = CalmConfig(measure=measure, threshold=lam, tau=2.0, kv=kv)
    batch, blayers = _calm(calm_model, prompts, cfg)
    for i, p in enumerate(prompts):
        one, olayers = _calm(calm_model, [p], cfg)
        assert batch[i] == one[0]
        assert blayers[i] == olayers[0]


def test_eos_stops_each_sequence_and_records_its_depths(calm_model, prompts):
    def gen():
        return torch.Generator().manual_seed(3)
    plain = generate(calm_model, prompts, max_new_tokens=N, pad_id=PAD, temperature=1.0, generator=gen())
    r, k = next((r, k) for r, row in enumerate(plain) for k, t in enumerate(row) if k and t not in row[:k])
    cfg = CalmConfig(measure="margin", threshold=1.0)
    step = CalmStep(cfg, N)                                             # sampling: same draws as plain
    out = generate(calm_model, prompts, max_new_tokens=N, pad_id=PAD, temperature=1.0, generator=gen(),
                   eos_id=plain[r][k], step=step)                       # row r emits it (k+1)-th
    layers = step.record.layers
    assert out[r] == plain[r][:k]
    assert len(layers[r]) == k + 1                                      # k tokens + the EOS


def test_decaying_threshold_formulas():
    paper = CalmConfig(threshold=0.5, tau=4.0)
    assert threshold_at(paper, 0, 10) == pytest.approx(0.9 * 0.5 + 0.1)
    assert threshold_at(paper, 10, 10) == pytest.approx(0.45 + 0.1 * math.exp(-4))
    ref = CalmConfig(threshold=0.5, tau=4.0, decay="reference")
    assert threshold_at(ref, 5, 10) == pytest.approx(0.45 + 0.5 * math.exp(-2) / 10)
    assert threshold_at(CalmConfig(threshold=1.0), 7, 10) == math.inf
    with pytest.raises(ValueError):
        threshold_at(CalmConfig(threshold=0.5, decay="nope"), 1, 10)


def test_bad_measure_and_missing_classifier_are_refused():
    with pytest.raises(ValueError, match="measure"):
        CalmStep(CalmConfig(measure="entropy"), 4)
    with pytest.raises(ValueError, match="classifier"):
        CalmStep(CalmConfig(measure="classifier"), 4)
    with pytest.raises(ValueError, match="kv"):
        CalmStep(CalmConfig(kv="copy"), 4)


def test_one_token_prompt_and_reused_step(calm_model):
    """A 1-token prompt is still the prompt pass (full depth, t restarts); a CalmStep reused for a
    second generate starts afresh."""
    plain = generate(calm_model, [[7]], max_new_tokens=N, pad_id=PAD, temperature=0)
    step = CalmStep(CalmConfig(threshold=1.0), N)
    for _ in range(2):
        assert generate(calm_model, [[7]], max_new_tokens=N, pad_id=PAD, temperature=0, step=step) == plain
        assert step.record.layers == [[4] * N] and step.t == N


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_recomputed_kv_on_hugging_face_models_matches_slow_reference(family, prompts):
    """The window-and-rewind path through the Hugging Face adapter (its own embeddings, positions
    and per-layer K/V), one at a time and batched."""
    transformers = pytest.importorskip("transformers")
    from adaptive_lm.hf_causal import HFCausalLM
    torch.manual_seed(0)
    c = (transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  tie_word_embeddings=False) if family == "llama" else
         transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=0,
                                 eos_token_id=0, tie_word_embeddings=False))
    m = HFCausalLM(transformers.AutoModelForCausalLM.from_config(c).double().eval())
    cfg = CalmConfig(measure="margin", threshold=_threshold_for_median_margin(m, prompts), tau=0.0, kv="recompute")
    refs = [reference_recompute(m, p, cfg, N) for p in prompts]
    for p, (toks, depths) in zip(prompts, refs):
        out, layers = _calm(m, [p], cfg)
        assert out[0] == toks and layers[0] == depths
    assert sum(d < 4 for _, depths in refs for d in depths) >= 10         # exits did happen
    batch, _ = _calm(m, prompts, cfg)
    assert batch == [toks for toks, _ in refs]


def test_calm_config_refuses_what_is_not_a_setting():
    for bad in ({"threshold": "0.5"}, {"threshold": float("nan")}, {"tau": -1.0}, {"every": 0}, {"horizon": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CalmConfig(**bad)
    assert CalmConfig(threshold=-0.1).threshold == -0.1                 # the paper's λ_t clips it to [0, 1]


@torch.no_grad()
def test_static_exit_equals_the_model_read_at_that_layer(untied_model, prompts):
    """measure="static", λ = k/L: every generated token but the first (the full-depth prompt pass)
    exits at layer k; with kv=recompute the tokens equal a slow reference that runs the whole
    sequence at full depth and reads layer k's state of the last position."""
    m = untied_model
    for k in (1, 3):
        out, layers = _calm(m, prompts, CalmConfig(measure="static", threshold=k / 4, kv="recompute"))
        assert all(row[0] == 4 and set(row[1:]) == {k} for row in layers)
        for p, got in zip(prompts, out):
            seq = list(p)
            for t in range(N):
                hs = m(torch.tensor([seq]), output_hidden_states=True).hidden_states
                seq.append(int(m.unembed(hs[4 if t == 0 else k][:, -1]).argmax(-1)))
            assert got == seq[len(p):]
    never, _ = _calm(m, prompts, CalmConfig(measure="static", threshold=1.0))
    assert never == _calm(m, prompts, CalmConfig(threshold=1.0))[0]          # λ = 1: the plain model


def test_static_calibration_tries_one_threshold_per_layer(untied_model, prompts):
    """Learn-then-Test for measure="static" walks λ = L/L, (L−1)/L, … 1/L (one per exit layer)."""
    from adaptive_lm.calm.runtime import calibrate_threshold
    res = calibrate_threshold(untied_model, prompts * 8, delta=0.9, epsilon=0.5, pad_id=PAD,
                              base=CalmConfig(measure="static", kv="recompute"), max_new_tokens=4)
    tried = [t["threshold"] for t in res["tests"]]
    assert tried == [1.0, 0.75, 0.5, 0.25][:len(tried)] and res["threshold"] in tried
    from adaptive_lm.calm.runtime import static_candidates
    assert static_candidates(8, CalmConfig(every=3, min_layer=4)) == (1.0, 6 / 8)   # exit layers 3 and 6; 3 < min_layer


def test_prompts_and_references_cut_the_continuation():
    """Each reference is exactly the text's next reference_len tokens after its prompt, fewer where
    the text ends first."""
    from adaptive_lm.calm.runtime import prompts_and_references
    from adaptive_lm.tokenizer import CharTokenizer
    g = torch.Generator().manual_seed(0)
    text = "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (40,), generator=g))
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    ps, refs = prompts_and_references(tok, text, n=60, prompt_len=7, reference_len=5, seed=3)
    assert len(ps) == len(refs) == 60
    short = 0
    for p, z in zip(ps, refs):
        starts = [i for i in range(len(ids) - 6) if ids[i:i + 7] == p]
        assert len(starts) == 1                                   # random letters: every 7-gram here is unique
        s0 = starts[0]
        assert len(p) == 7 and z == ids[s0 + 7:s0 + 12] and len(z) == min(5, len(ids) - s0 - 7)
        short += len(z) < 5
    assert short > 0                                              # the text's end was reached at least once


def test_risk_consistency_certifies_at_least_as_low_a_threshold(untied_model, prompts):
    """With equal-length outputs the mismatch rate is a metric, so max(0, D(e, Z) − D(f, Z)) <= D(e, f)
    per example: risk consistency's empirical risk is at most the textual one at every λ, and the
    fixed-sequence test certifies a λ at least as low. With the layer-1 outputs themselves as the
    references, the risk at λ = 1/4 is exactly 0 though those outputs differ from the full model's."""
    from adaptive_lm.calm.calibrate import mean_risk
    from adaptive_lm.calm.runtime import calibrate_threshold, calm_generate
    m, ps = untied_model, prompts * 8
    g = torch.Generator().manual_seed(5)
    refs = [torch.randint(4, 40, (N,), generator=g).tolist() for _ in ps]
    kw = dict(delta=0.3, epsilon=0.3, pad_id=PAD, base=CalmConfig(measure="static", kv="recompute"), max_new_tokens=N)
    textual = calibrate_threshold(m, ps, **kw)
    risk = calibrate_threshold(m, ps, references=refs, **kw)
    assert (textual["consistency"], risk["consistency"]) == ("textual", "risk")
    by_lam = {t["threshold"]: t["risk"] for t in textual["tests"]}
    assert len(risk["tests"]) >= len(textual["tests"]) >= 2
    assert all(t["risk"] <= by_lam[t["threshold"]] + 1e-12 for t in risk["tests"] if t["threshold"] in by_lam)
    assert any(t["risk"] > 0 for t in textual["tests"])                          # the comparison is not 0 <= 0
    assert (risk["threshold"] or 1.0) <= (textual["threshold"] or 1.0)
    gen = dict(max_new_tokens=N, pad_id=PAD)
    layer1 = calm_generate(m, ps, CalmConfig(measure="static", threshold=0.25, kv="recompute"), **gen)[0]
    full = calm_generate(m, ps, CalmConfig(threshold=1.0), **gen)[0]
    assert mean_risk(layer1, full) > 0.2
    exact = calibrate_threshold(m, ps, references=layer1, **kw)
    assert exact["threshold"] == 0.25 and exact["tests"][-1] == {**exact["tests"][-1], "threshold": 0.25, "risk": 0.0}


def _replay(model, prompts, schedule, kv, threshold=0.0):
    step = CalmStep(CalmConfig(measure="replay", threshold=threshold, kv=kv), N, schedule=schedule)
    out = generate(model, prompts, max_new_tokens=N, pad_id=PAD, temperature=0, step=step)
    return out, step.record.layers


def test_replaying_the_oracle_with_recompute_gives_the_full_model_at_the_oracle_depths(untied_model, prompts):
    """measure="replay" exits exactly where its schedule says; the oracle's depths replayed with an
    exact cache give the full model's tokens (each exit's argmax is the top layer's), batched and
    one at a time — the bench's speed ceiling decodes what the full model decodes."""
    m = untied_model
    plain = generate(m, prompts, max_new_tokens=N, pad_id=PAD, temperature=0)
    _, oracle = _calm(m, prompts, CalmConfig(measure="oracle"))
    assert any(d < 4 for row in oracle for d in row[1:])                     # the schedule really exits early
    out, layers = _replay(m, prompts, oracle, "recompute")
    assert out == plain and layers == oracle
    for r, p in enumerate(prompts):
        assert _replay(m, [p], [oracle[r]], "recompute") == ([plain[r]], [oracle[r]])
    # with state propagation the exits follow the schedule too, but the cache is perturbed: not the
    # full model's tokens any more on this model (the reason for kv=recompute)
    out_p, layers_p = _replay(m, prompts, oracle, "propagate")
    assert layers_p == oracle and out_p != plain


def test_replay_of_a_constant_schedule_is_the_static_exit(untied_model, prompts):
    m = untied_model
    for kv in ("propagate", "recompute"):
        static = _calm(m, prompts, CalmConfig(measure="static", threshold=2 / 4, kv=kv))
        assert _replay(m, prompts, [[4] + [2] * N for _ in prompts], kv) == static
    short = _replay(m, prompts, [[4, 1] for _ in prompts], "recompute")[1]        # past its list: full depth
    assert all(row[:2] == [4, 1] and set(row[2:]) == {4} for row in short)
    ones = [[4] + [1] * N for _ in prompts]
    assert _replay(m, prompts, ones, "recompute", threshold=1.0) == _replay(m, prompts, ones, "recompute")  # λ unused


def test_replay_needs_a_schedule_that_fits_the_batch(untied_model, prompts):
    with pytest.raises(ValueError, match="schedule"):
        CalmStep(CalmConfig(measure="replay"), N)
    with pytest.raises(ValueError, match="schedule"):
        CalmStep(CalmConfig(measure="margin"), N, schedule=[[4]])
    with pytest.raises(ValueError, match="2 sequences for a batch of 4"):
        _replay(untied_model, prompts, [[4], [4]], "recompute")


def _threshold_for_median_patience(model, prompts):
    """A λ whose effective threshold (τ = 0) is the median patience score at layers 1..3."""
    x = torch.tensor([p[:3] for p in prompts])
    hs = model(x, output_hidden_states=True).hidden_states
    lg = [model.unembed(hs[i]) for i in (1, 2, 3)]
    run, scores = torch.zeros(x.shape, dtype=torch.long), []
    for i, li in enumerate(lg):
        if i:
            run = (run + 1) * (li.argmax(-1) == lg[i - 1].argmax(-1))
        scores.append((1 - (1 - margin(li)) * 0.5 ** run).flatten())
    return (float(torch.cat(scores).detach().median()) - 0.1) / 0.9


@pytest.mark.parametrize("every", [1, 2])
def test_patience_matches_slow_reference(untied_model, prompts, every):
    """measure="patience" with kv=recompute: tokens and exit layers equal the slow reference that
    scores every exit layer from the full model's states, batched and one at a time; some exits
    come from the agreement bonus (the margin alone would not have exited there)."""
    m = untied_model
    cfg = CalmConfig(measure="patience", threshold=_threshold_for_median_patience(m, prompts), tau=0.0,
                     kv="recompute", every=every)
    refs = [reference_recompute(m, p, cfg, N) for p in prompts]
    batch, layers = _calm(m, prompts, cfg)
    assert batch == [toks for toks, _ in refs] and layers == [depths for _, depths in refs]
    for r, p in enumerate(prompts):
        assert _calm(m, [p], cfg) == ([refs[r][0]], [refs[r][1]])
    assert any(d < 4 for _, depths in refs for d in depths[1:])
    plain = [reference_recompute(m, p, CalmConfig(**{**cfg.__dict__, "measure": "margin"}), N) for p in prompts]
    if every == 1:                 # (every=2 on 4 layers tries one exit, layer 2: no run to agree with)
        assert plain != refs                                             # the bonus changed some exits
        assert sum(d for _, ds in refs for d in ds) < sum(d for _, ds in plain for d in ds)   # ... to shallower ones
    else:
        assert plain == refs


def test_patience_batched_with_state_propagation_equals_one_at_a_time(untied_model, prompts):
    """With state propagation rows leave the batch as they exit; each row's agreement run must
    stay its own."""
    m = untied_model
    cfg = CalmConfig(measure="patience", threshold=_threshold_for_median_patience(m, prompts), tau=0.0)
    batch, layers = _calm(m, prompts, cfg)
    assert [(_calm(m, [p], cfg)) for p in prompts] == [([b], [lay]) for b, lay in zip(batch, layers)]
    assert len({d for row in layers for d in row}) >= 3                   # rows exit at different depths
