"""Block diffusion's vectorised SFT loss (objective.block_diffusion_loss) against the slow obvious
way — each block denoised alone against its clean prefix with the rest of the row cut off — for
RoPE and learned positions, with padded rows; and the mixed loss of a batch with both views."""
import pytest
import torch
import torch.nn.functional as F

from adaptive_lm.diffusion.objective import (block_diffusion_loss, block_noise, block_pattern, mdm_loss,
                                             response_blocks, sft_batch, sft_loss)
from adaptive_lm.model import ModelConfig, TransformerLM, forward_with_pattern

V, EOS, MASK = 20, 1, 19


def _model(positions):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=32, max_seq_len=128, causal=False,
                      positions=positions)
    return TransformerLM(cfg).eval()


def _batch(block, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    responses = [[2, 3, 4, 5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 2, 3, 4]]
    b = sft_batch(prompts, responses, eos_id=EOS, generator=g, canvas_lens=[9, 4, 12])   # padded rows
    b["t_pos"] = block_noise(b["prompt_mask"], block, g)
    return b


def _slow_loss(model, b, block):
    """Sum over blocks of (1/t) * CE of the block's masked tokens, the model run on [clean prompt +
    clean earlier blocks + noisy block] only (the rest of the row cut off), the clean part
    attending block-causally (a clean token sees its own and earlier blocks: the prefix is computed
    once for all later blocks, as in BD3-LM), the noisy block attending to everything; per row
    divided by its response length; mean. Pattern built position by position here."""
    x0, pm, am, t, u = b["input_ids"], b["prompt_mask"], b["attention_mask"].bool(), b["t_pos"], b["u"]
    per_row = []
    for i in range(x0.shape[0]):
        n = int(am[i].sum())
        p = int(pm[i].sum())
        total = 0.0
        for start in range(p, n, block):
            end = min(start + block, n)
            seq = x0[i, :end].clone()
            masked = torch.zeros(end, dtype=torch.bool)
            masked[start:end] = u[i, start:end] < t[i, start:end]
            seq[masked] = MASK
            owner = [-1 if j < p else (j - p) // block for j in range(end)]
            allow = torch.tensor([[j >= start or owner[k] <= owner[j] for k in range(end)] for j in range(end)])
            logits = forward_with_pattern(model, seq[None], allow[None], torch.arange(end)[None]).logits[0]
            ce = F.cross_entropy(logits, x0[i, :end], reduction="none")
            total = total + (ce * masked / t[i, :end]).sum()
        per_row.append(total / (n - p))
    return torch.stack(per_row).mean()


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("block", [2, 4, 32])
def test_vectorised_block_loss_equals_each_block_alone(positions, block):
    m = _model(positions)
    b = _batch(block)
    fast, mets = block_diffusion_loss(m, b, mask_id=MASK, block=block)
    torch.testing.assert_close(fast, _slow_loss(m, b, block), rtol=1e-5, atol=1e-5)
    assert 0 <= float(mets["masked_acc"]) <= 1


def test_block_pattern_hides_the_future_and_the_noisy_copy_from_the_clean_one():
    pm = torch.tensor([[True, True, False, False, False, False]])
    real = torch.tensor([[True, True, True, True, True, False]])
    blk = response_blocks(pm, real, 2)
    assert blk[0, :5].tolist() == [-1, -1, 0, 0, 1]
    a = block_pattern(blk, real)[0]                                       # (12, 12)
    T = 6
    assert a[2, 3] and not a[2, 4]                                        # noisy block 0 sees noisy block 0 only
    assert a[4, T + 2] and a[4, T + 0] and not a[4, T + 4]                 # noisy block 1: clean past, not its own clean copy
    assert not a[T + 2, 2] and a[T + 2, T + 3] and not a[T + 2, T + 4]     # clean block 0: clean blocks <= 0
    assert not a[:, 5].any() or a[5, 5]                                   # padding is seen by nothing but itself
    assert not a[:5, T + 5].any()


def test_block_noise_is_constant_within_a_block():
    pm = torch.tensor([[True, False, False, False, False, False, False]])
    t = block_noise(pm, 3, torch.Generator().manual_seed(0))
    assert t[0, 0] == 1 and t[0, 1] == t[0, 2] == t[0, 3] and t[0, 4] == t[0, 5] == t[0, 6]
    assert 0 < float(t[0, 1]) < 1


def test_mixed_loss_averages_the_two_views_over_rows():
    m = _model("rope")
    b = _batch(4, seed=1)
    b["bd3"] = torch.tensor([True, False, True])
    loss, mets = sft_loss(m, b, mask_id=MASK, block=4)
    rows = lambda idx: {k: v[idx] for k, v in b.items()}
    l_bd, _ = block_diffusion_loss(m, rows(b["bd3"]), mask_id=MASK, block=4)
    l_mdm, _ = mdm_loss(m, rows(~b["bd3"]), mask_id=MASK)
    torch.testing.assert_close(loss, (2 * l_bd + l_mdm) / 3)
    assert "bd3_loss" in mets
    b["bd3"] = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(sft_loss(m, b, mask_id=MASK)[0], mdm_loss(m, b, mask_id=MASK)[0])
