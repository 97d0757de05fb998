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
