"""Arithmetic recipes: MDM batches with canvases independent of the answer; the AR reference batch."""
import torch

from adaptive_lm.data import step_generator
from adaptive_lm.recipes.mdlm import ArithSpec, ar_arith_batch, arith_global_batch, arith_tokenizer
from adaptive_lm.tasks.arith import make_split


def test_mdm_batch_canvases_cut_or_eos_padded_within_the_spread():
    tok = arith_tokenizer()
    spec = ArithSpec(semi_ar_share=0.0)
    cut = padded = 0
    for step in range(20):
        b = arith_global_batch(tok, spec, 8, step_generator(0, step))
        pm, am, ids = b["prompt_mask"], b.get("attention_mask", torch.ones_like(b["input_ids"])), b["input_ids"]
        canvas = (am.bool() & ~pm).sum(1)                              # response positions per row
        assert int(canvas.max() - canvas.min()) <= spec.canvas_spread and int(canvas.max()) <= spec.max_canvas
        for i in range(ids.shape[0]):
            resp = ids[i][am[i].bool() & ~pm[i]].tolist()
            if tok.eos_id in resp:
                k = resp.index(tok.eos_id)
                assert set(resp[k:]) == {tok.eos_id}                  # answer, then EOS to the end
                padded += 1
            else:
                cut += 1
    assert cut > 10 and padded > 10                                    # both kinds occur


def test_ar_batch_scores_only_the_solution_and_its_eos():
    tok = arith_tokenizer()
    probs = make_split("train", 3, seed=0)
    x, y = ar_arith_batch(tok, probs)
    for i, p in enumerate(probs):
        want = tok.encode(p.solution) + [tok.eos_id]
        assert y[i][y[i] != -100].tolist() == want
        n = len(tok.encode(p.prompt)) + len(want) - 1
        assert x[i, :n].tolist() == (tok.encode(p.prompt) + want)[:-1]


def test_task_options_reach_the_batches_and_bad_ones_are_refused():
    """line_style / max_delta shape every row of the batch; the semi-AR weights are all 1 by default;
    a bad task setting is a UsageError before training."""
    import pytest
    from adaptive_lm.errors import UsageError
    from adaptive_lm.recipes.mdlm import check_spec
    tok = arith_tokenizer()
    spec = ArithSpec(line_style="full", max_delta=3, semi_ar_share=1.0, block_weight=4.0, future_weight=0.5)
    b = arith_global_batch(tok, spec, 8, step_generator(0, 0))
    w = b["loss_weight"]
    assert set(w.unique().tolist()) <= {1.0, 4.0, 0.5} and (w == 4.0).any()
    import re
    seen = 0
    for row, pm in zip(b["input_ids"], b["prompt_mask"]):
        lines = tok.decode(row[~pm].tolist()).splitlines()
        for line in lines[:-1]:                                     # the last one may be cut by the canvas
            if line.startswith("Day "):
                m = re.fullmatch(r"Day \d\d: (\d\d)([+-])(\d)=(\d\d)", line)   # "Day 01: 47-3=44"
                assert m and int(m[3]) <= 3 and int(m[4]) == int(m[1]) + int(m[3]) * (1 if m[2] == "+" else -1)
                seen += 1
    assert seen > 0
    assert bool((arith_global_batch(tok, ArithSpec(), 4, step_generator(0, 0))["loss_weight"] == 1).all())
    for bad in (ArithSpec(line_style="long"), ArithSpec(max_delta=1), ArithSpec(max_steps=17),
                ArithSpec(decision_cut_share=1.5)):
        with pytest.raises(UsageError):
            check_spec(bad)


def test_ar_phase_trains_the_diffusion_model_causally_then_switches(tmp_path):
    """data.ar_steps: the first steps' batches are causal-LM batches whose loss is the causal
    model's next-token loss (same weights); later steps are masked-diffusion batches. data.init_from
    starts the model from a checkpoint's weights, and refuses one of another shape."""
    import dataclasses
    import pytest
    from adaptive_lm.checkpoint import save_pretrained
    from adaptive_lm.errors import UsageError
    from adaptive_lm.lm import lm_objective
    from adaptive_lm.model import TransformerLM
    from adaptive_lm.recipes import get_recipe
    r = get_recipe("mdlm-tiny-test")
    r = dataclasses.replace(r, model=dataclasses.replace(r.model, shift_logits=True),
                            data=dataclasses.replace(r.data, ar_steps=2))
    built = r.build(r)
    first, later = built.batches(1, 0, 0, 1), built.batches(2, 0, 0, 1)
    assert set(first) == {"ar_x", "ar_y"} and "input_ids" in later and "ar_x" not in later
    causal = TransformerLM(dataclasses.replace(built.model.config, causal=True, shift_logits=False)).eval()
    causal.load_state_dict(built.model.state_dict())
    built.model.eval()
    got, _ = built.objective(built.model, first)
    want, _ = lm_objective(causal, (first["ar_x"], first["ar_y"]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    save_pretrained(tmp_path / "src", built.model, built.tokenizer, {})
    warm = dataclasses.replace(r, data=dataclasses.replace(r.data, ar_steps=0, init_from=str(tmp_path / "src")))
    m2 = warm.build(warm).model
    assert all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(), built.model.state_dict().values()))
    wide = dataclasses.replace(warm, model=dataclasses.replace(warm.model, d_model=64))
    with pytest.raises(UsageError, match="shapes"):
        wide.build(wide)


def test_decision_cuts_land_on_a_line_end_or_the_next_line_start():
    """decision_points marks each line's last character and the next line's first; with
    decision_cut_share=1 every semi-AR row's first hidden position is one of them (its block
    starts where the solution computes a digit or decides to stop); 0 keeps the old batches."""
    from adaptive_lm.recipes.mdlm import decision_points, stop_point
    from adaptive_lm.tasks.arith import save_problem
    tok = arith_tokenizer()
    sol = save_problem("Kai", "beads", 60, 2, 63).solution          # Day 01: +2=62 / Day 02: +2=64 / 64>=63, ...
    assert sol[stop_point(sol):].startswith("64>=63, so 2 days.")
    nl = tok.encode("\n")[0]
    r = tok.encode("ab\ncd\ne")
    assert decision_points(r, nl) == [1, 3, 4, 6]
    spec = ArithSpec(semi_ar_share=1.0, decision_cut_share=1.0)
    b = arith_global_batch(tok, spec, 8, step_generator(0, 3))
    seen = 0
    for row, pm, u in zip(b["input_ids"], b["prompt_mask"], b["u"]):
        k = int((u != 2.0).nonzero()[0])                            # the row's cut (semi_ar_noise keeps u=2 before it)
        resp = row[~pm].tolist()                                    # the canvas (answer cut, or + EOS)
        j = k - int(pm.sum())
        nls = [i for i, x in enumerate(resp) if x == nl]
        if not nls:                                                 # a canvas too short for one line: plain rule
            continue
        assert j + 1 in nls or j - 1 in nls or j + 1 == len(resp), (j, tok.decode(resp))
        seen += 1
    assert seen > 0
    plain = arith_global_batch(tok, ArithSpec(), 8, step_generator(0, 3))
    same = arith_global_batch(tok, ArithSpec(decision_cut_share=0.0), 8, step_generator(0, 3))
    assert all(torch.equal(plain[k], same[k]) for k in plain)


def test_calm_arith_builds_a_char_lm_with_every_exit_on_the_arith_corpus(monkeypatch):
    from adaptive_lm.recipes import get_recipe
    from adaptive_lm.tasks import arith
    monkeypatch.setitem(arith.CORPUS_PROBLEMS, "train", 200)            # the real one has 40,000 problems
    r = get_recipe("calm-arith")
    built = r.build(r)
    text = arith.corpus_text("test")
    assert built.tokenizer.decode(built.tokenizer.encode(text)) == text   # held-out text is all in the char vocabulary
    assert built.meta["calm"]["exit_layers"] == list(range(1, r.model.n_layer + 1))
    x, y = built.batches(0, 0, 0, 1)
    assert x.shape == (r.train.batch_size, r.data.seq_len) and torch.equal(x[:, 1:], y[:, :-1])
    assert "\\boxed{" in built.tokenizer.decode(x.flatten().tolist())  # windows of worked solutions
