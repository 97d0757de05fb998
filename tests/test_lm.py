"""The causal LM sampling loop: batching, per-row stop, determinism."""
import pytest
import torch

from adaptive_lm.lm import generate


def _one_by_one(model, prompts, **kw):
    return [generate(model, [p], **kw)[0] for p in prompts]


def test_batched_greedy_equals_one_at_a_time(tiny_model):
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    kw = dict(max_new_tokens=12, pad_id=0, temperature=0)
    assert generate(tiny_model, prompts, **kw) == _one_by_one(tiny_model, prompts, **kw)


def test_greedy_equals_argmax_of_the_full_forward(tiny_model):
    ids = [5, 6, 7]
    out = generate(tiny_model, [ids], max_new_tokens=6, pad_id=0, temperature=0)[0]
    seq = list(ids)
    for _ in range(6):
        seq.append(tiny_model(torch.tensor([seq])).logits[0, -1].argmax().item())
    assert out == seq[3:]


def test_each_row_stops_at_its_own_eos(tiny_model):
    prompts = [[5, 6], [7, 8, 9]]
    free = generate(tiny_model, prompts, max_new_tokens=10, pad_id=0, temperature=0)
    eos = free[0][2]                                   # make row 0's third token the EOS
    out = generate(tiny_model, prompts, max_new_tokens=10, pad_id=0, eos_id=eos, temperature=0)
    assert out[0] == free[0][:free[0].index(eos)]
    cut = free[1].index(eos) if eos in free[1] else 10
    assert out[1] == free[1][:cut]


def test_sampling_is_reproducible_with_a_generator(tiny_model):
    kw = dict(max_new_tokens=10, pad_id=0, temperature=1.0, top_k=5)
    a = generate(tiny_model, [[4, 5]] * 2, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(tiny_model, [[4, 5]] * 2, generator=torch.Generator().manual_seed(1), **kw)
    assert a == b


def test_generate_refuses_prompts_that_are_not_token_id_lists(tiny_cfg):
    import numpy as np
    from adaptive_lm.lm import generate
    from adaptive_lm.model import TransformerLM
    m = TransformerLM(tiny_cfg)
    kw = dict(max_new_tokens=2, pad_id=0, temperature=0)
    for bad, words in ((torch.tensor([[1, 2]]), ".tolist()"), ([1, 2, 3], "a batch of one"), (["ab"], "not a list"),
                       ([[1, tiny_cfg.vocab_size]], "not a token id"), ([[1, -1]], "not a token id"),
                       ([[]], "empty"), ([], "non-empty")):
        with pytest.raises(ValueError, match=words):
            generate(m, bad, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, [[1]], max_new_tokens=0, pad_id=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, [[1]], max_new_tokens=1, pad_id=0, temperature=float("nan"))
    assert generate(m, [list(np.array([1, 2]))], **kw) == generate(m, [[1, 2]], **kw)   # numpy ints are ids too
