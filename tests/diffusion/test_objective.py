"""The masked-diffusion objective: masking, the SFT / pre-training loss against a slow hand
computation, the SFT batch layout and its noise, and the Monte-Carlo likelihood bound."""
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from adaptive_lm.diffusion.objective import (apply_mask, draw_noise, masked_ce, mc_nll, mdm_loss, semi_ar_noise,
                                             sft_batch)
from adaptive_lm.model import ModelConfig, TransformerLM

V, EOS, MASK = 20, 1, 19


@pytest.fixture
def mdm():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=32, max_seq_len=256, causal=False)
    return TransformerLM(cfg).eval()


class TableModel:
    """A 'model' whose logits at position j are table[j] whatever the input (records its inputs)."""

    def __init__(self, table):
        self.table = table                                   # (L, V)
        self.inputs = []

    def __call__(self, x, attention_mask=None):
        self.inputs.append(x.clone())
        return SimpleNamespace(logits=self.table.expand(x.shape[0], -1, -1).clone())


# ---- apply_mask / draw_noise ----------------------------------------------------------------

def test_apply_mask_never_masks_prompt_or_unmaskable_positions():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(3, 18, (4, 12), generator=g)
    maskable = torch.ones(4, 12, dtype=torch.bool)
    maskable[:, :5] = False                                  # prompt
    maskable[3, 9:] = False                                  # padding of one row
    for _ in range(50):
        t, u = draw_noise(4, 12, g)
        xt, masked = apply_mask(x0, maskable, t, u, MASK)
        assert not masked[~maskable].any()
        assert torch.equal(xt[~maskable], x0[~maskable])
        assert torch.equal(masked, maskable & (u < t[:, None]))
        assert (xt[masked] == MASK).all() and torch.equal(xt[~masked], x0[~masked])
    # t = 1: every maskable position is masked, still no prompt position
    xt, masked = apply_mask(x0, maskable, torch.ones(4), torch.rand(4, 12, generator=g) * 0.999, MASK)
    assert torch.equal(masked, maskable)


def test_draw_noise_ranges_and_reproducible():
    t, u = draw_noise(64, 7, torch.Generator().manual_seed(3), eps=0.25)
    assert t.shape == (64,) and u.shape == (64, 7)
    assert (t >= 0.25).all() and (t < 1).all() and (u >= 0).all() and (u < 1).all()
    t2, u2 = draw_noise(64, 7, torch.Generator().manual_seed(3), eps=0.25)
    assert torch.equal(t, t2) and torch.equal(u, u2)


# ---- mdm_loss --------------------------------------------------------------------------------

def slow_loss(model, x0, t, u, prompt_mask, attn):
    """LLaDA eq. 5 written out position by position."""
    B, L = x0.shape
    xt = x0.clone()
    masked = torch.zeros(B, L, dtype=torch.bool)
    maskable = torch.zeros(B, L, dtype=torch.bool)
    for i in range(B):
        for j in range(L):
            ok = (attn is None or attn[i, j] == 1) and (prompt_mask is None or not prompt_mask[i, j])
            maskable[i, j] = ok
            if ok and u[i, j] < t[i]:
                masked[i, j] = True
                xt[i, j] = MASK
    logp = model(xt, attention_mask=attn).logits.float().log_softmax(-1)
    per_seq = []
    for i in range(B):
        s = sum(-logp[i, j, x0[i, j]] for j in range(L) if masked[i, j])
        per_seq.append(s / t[i] / maskable[i].sum())
    return sum(per_seq) / B, masked


def test_mdm_loss_equals_hand_computation_sft(mdm):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(3, 18, (2, 6), generator=g)
    pm = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    t = torch.tensor([0.5, 0.8])
    u = torch.tensor([[0.1, 0.2, 0.3, 0.9, 0.4, 0.7], [0.0, 0.5, 0.95, 0.1, 0.7, 0.1]])
    loss, stats = mdm_loss(mdm, {"input_ids": x0, "prompt_mask": pm, "attention_mask": attn, "t": t, "u": u}, mask_id=MASK)
    ref, masked = slow_loss(mdm, x0, t, u, pm, attn)
    # masked: row 0 -> positions 2, 4 ; row 1 -> 1, 3, 4 (position 5 is padding, position 0 prompt)
    assert masked.nonzero().tolist() == [[0, 2], [0, 4], [1, 1], [1, 3], [1, 4]]
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    assert torch.isfinite(stats["masked_acc"]) and 0 <= stats["masked_acc"] <= 1


def test_mdm_loss_equals_hand_computation_pretraining(mdm):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(3, 18, (3, 8), generator=g)
    t, u = draw_noise(3, 8, g)
    loss, _ = mdm_loss(mdm, {"input_ids": x0, "t": t, "u": u}, mask_id=MASK)
    ref, _ = slow_loss(mdm, x0, t, u, None, None)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)


def test_mdm_loss_backpropagates(mdm):
    b = sft_batch([[3, 4]], [[5, 6, 7]], eos_id=EOS, generator=torch.Generator().manual_seed(0), extra=3)
    b["t"] = torch.ones(1)                                     # mask every response position
    loss, _ = mdm_loss(mdm, b, mask_id=MASK)
    loss.backward()
    assert mdm.tok_emb.weight.grad is not None and mdm.tok_emb.weight.grad.abs().sum() > 0


# ---- sft_batch -------------------------------------------------------------------------------

def test_sft_batch_layout():
    b = sft_batch([[3, 4], [5]], [[6, 7, 8], [9]], eos_id=EOS, generator=torch.Generator().manual_seed(0), extra=2)
    assert b["input_ids"].tolist() == [[3, 4, 6, 7, 8, 1, 1, 1], [5, 9, 1, 1, 1, 1, 1, 1]]
    assert b["prompt_mask"].tolist() == [[True, True] + [False] * 6, [True] + [False] * 7]
    assert b["t"].shape == (2,) and b["u"].shape == (2, 8)
    # without extra: the longest row still ends in exactly one EOS
    b = sft_batch([[3, 4], [5]], [[6, 7, 8], [9]], eos_id=EOS, generator=torch.Generator().manual_seed(0))
    assert b["input_ids"].tolist() == [[3, 4, 6, 7, 8, 1], [5, 9, 1, 1, 1, 1]]


def test_sft_batch_noise_comes_from_the_generator():
    args = ([[3, 4], [5]], [[6, 7, 8], [9]])
    a = sft_batch(*args, eos_id=EOS, generator=torch.Generator().manual_seed(7))
    b = sft_batch(*args, eos_id=EOS, generator=torch.Generator().manual_seed(7))
    c = sft_batch(*args, eos_id=EOS, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["u"], b["u"])
    assert not torch.equal(a["u"], c["u"])
    t, u = draw_noise(2, 6, torch.Generator().manual_seed(7))   # exactly the documented draw
    assert torch.equal(a["t"], t) and torch.equal(a["u"], u)


# ---- mc_nll ----------------------------------------------------------------------------------

def test_mc_nll_masks_only_targets_and_between_1_and_n_targets():
    L = 7
    model = TableModel(torch.zeros(L, V))
    x = torch.tensor([[3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]])
    tm = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mc_nll(model, x, tm, mask_id=MASK, n_samples=40, generator=torch.Generator().manual_seed(0))
    counts = set()
    for xt in model.inputs:
        masked = xt == MASK
        assert not masked[~tm].any() and torch.equal(xt[~masked], x[~masked])
        n = masked.sum(1)
        assert (n >= 1).all() and (n <= tm.sum(1)).all()
        counts.add(int(n[1]))
    assert counts == {1, 2, 3, 4, 5, 6}                         # l ~ U{1..n_t} is explored


def test_mc_nll_exact_when_every_position_has_the_same_loss():
    """Each draw is (n/l) * l * c = n * c: the estimate is exact for any number of samples."""
    row = torch.zeros(V)
    row[5] = 2.0
    model = TableModel(row.expand(6, V))
    c = -row.log_softmax(-1)[5].item()
    x = torch.tensor([[3, 5, 5, 5, 5, 5], [3, 4, 5, 5, 5, 5]])
    tm = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    nll = mc_nll(model, x, tm, mask_id=MASK, n_samples=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nll, torch.tensor([5 * c, 2 * c]), rtol=1e-5, atol=1e-5)


def test_mc_nll_unbiased_for_an_input_independent_model():
    """E over l and the subset of (n/l) sum_masked ce_i equals sum_i ce_i exactly."""
    g = torch.Generator().manual_seed(4)
    table = torch.randn(5, V, generator=g) * 2
    x = torch.tensor([[3, 5, 6, 7, 8]])
    tm = torch.tensor([[0, 1, 1, 1, 1]], dtype=torch.bool)
    exact = F.cross_entropy(table[1:], x[0, 1:], reduction="sum").item()
    # 400 copies of the row draw independently: 4000 draws in 10 passes
    est = mc_nll(TableModel(table), x.expand(400, -1), tm.expand(400, -1), mask_id=MASK, n_samples=10,
                 generator=g).mean().item()
    assert abs(est - exact) < 0.03 * exact


def test_mc_nll_matches_exact_expectation_on_a_tiny_real_model(mdm):
    """Three targets: enumerate every l and every subset of l masked targets."""
    x = torch.tensor([[3, 4, 5, 6, 7]])
    tm = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.bool)
    targets = [2, 3, 4]
    n = len(targets)
    exact = 0.0
    for l in range(1, n + 1):
        subsets = list(itertools.combinations(targets, l))
        for S in subsets:
            xt = x.clone()
            xt[0, list(S)] = MASK
            logp = mdm(xt).logits.float().log_softmax(-1)
            s = sum(-logp[0, j, x[0, j]].item() for j in S)
            exact += (1 / n) * (1 / len(subsets)) * (n / l) * s
    est = mc_nll(mdm, x.expand(200, -1), tm.expand(200, -1), mask_id=MASK, n_samples=3,
                 generator=torch.Generator().manual_seed(0)).mean().item()
    assert math.isfinite(est) and est > 0
    assert abs(est - exact) < 0.02 * exact


def test_mc_nll_finite_positive_lower_for_an_oracle_and_reproducible(mdm):
    x = torch.tensor([[3, 4, 5, 6, 7, 8], [3, 9, 10, 11, 12, 13]])
    tm = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    real = mc_nll(mdm, x, tm, mask_id=MASK, n_samples=16, generator=torch.Generator().manual_seed(0))
    again = mc_nll(mdm, x, tm, mask_id=MASK, n_samples=16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(real, again)
    assert torch.isfinite(real).all() and (real > 0).all()

    class Oracle:   # puts most of the probability on the true token of row 0 (the rows share it here)
        def __call__(self, xt, attention_mask=None):
            lg = torch.zeros(*xt.shape, V)
            lg.scatter_(-1, x[:1].expand(xt.shape[0], -1)[..., None], 8.0)
            return SimpleNamespace(logits=lg)

    xo = x[:1].expand(2, -1).clone()
    oracle = mc_nll(Oracle(), xo, tm, mask_id=MASK, n_samples=16, generator=torch.Generator().manual_seed(0))
    uniform = mc_nll(TableModel(torch.zeros(6, V)), xo, tm, mask_id=MASK, n_samples=16,
                     generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(oracle).all() and (oracle > 0).all()
    torch.testing.assert_close(uniform, tm.sum(1).float() * math.log(V), rtol=1e-5, atol=1e-5)
    assert (oracle < 0.01 * uniform).all()
    assert (oracle < real).all()


def test_stratified_noise_covers_the_levels_evenly():
    from adaptive_lm.diffusion.objective import draw_noise
    t, u = draw_noise(8, 5, torch.Generator().manual_seed(0), eps=0.0, stratified=True)
    gaps = t.sort().values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)      # one per stratum
    assert u.shape == (8, 5)
    t2, _ = draw_noise(8, 5, torch.Generator().manual_seed(0), eps=0.0, stratified=True)
    assert torch.equal(t, t2)


def test_sft_batch_with_canvas_lengths_cuts_pads_and_masks_attention():
    from adaptive_lm.diffusion.objective import sft_batch
    g = torch.Generator().manual_seed(0)
    b = sft_batch([[7, 7], [8]], [[1, 2, 3], [4, 5]], eos_id=9, generator=g, canvas_lens=[2, 4])
    assert b["input_ids"][0].tolist()[:4] == [7, 7, 1, 2]                 # cut: no EOS at all
    assert b["input_ids"][1].tolist()[:5] == [8, 4, 5, 9, 9]               # padded with EOS
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b["prompt_mask"].tolist() == [[True, True, False, False, False], [True, False, False, False, False]]
    full = sft_batch([[7, 7], [8]], [[1, 2, 3], [4, 5]], eos_id=9, generator=g)
    assert "attention_mask" not in full and full["input_ids"].shape == (2, 6)


def test_semi_ar_noise_gives_the_block_samplers_view():
    """A converted row: clean before its cut k, masked at level t inside [k, k+block), masked after;
    weight 1 (t := 1), its future's loss weight future_weight. Unconverted rows and the caller's
    tensors are untouched."""
    g = torch.Generator().manual_seed(0)
    B, L, block = 6, 40, 8
    t, u = draw_noise(B, L, g)
    t0, u0 = t.clone(), u.clone()
    starts, ends = [5] * B, [35] * B
    nt, nu, w = semi_ar_noise(t, u, starts, ends, share=0.5, block=block, generator=torch.Generator().manual_seed(1),
                              future_weight=0.25)
    assert torch.equal(t, t0) and torch.equal(u, u0)
    converted = (nt == 1.0).nonzero().flatten().tolist()
    assert 0 < len(converted) < B
    maskable = torch.ones(B, L, dtype=torch.bool)
    maskable[:, :5] = False
    for i in range(B):
        masked = maskable[i] & (nu[i] < nt[i])
        if i not in converted:
            assert torch.equal(nu[i], u0[i]) and nt[i] == t0[i] and bool((w[i] == 1).all())
            continue
        k = int((nu[i] != 2.0).nonzero()[0])                       # first position not kept clean
        assert 5 <= k < 35 and not masked[:k].any()
        assert torch.equal(masked[k:k + block], u0[i, k:k + block] < t0[i])
        assert masked[k + block:].all()
        assert bool((w[i, :k + block] == 1).all()) and bool((w[i, k + block:] == 0.25).all())


def test_loss_weight_scales_each_positions_term():
    """mdm_loss with a loss_weight of 1 everywhere is the plain loss; halving every weight halves it;
    masked_ce with weights equals the per-position sum of w * CE / t computed one term at a time."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=12, n_layer=1, n_head=2, d_model=16, max_seq_len=32, causal=False))
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 10, (3, 12), generator=g)
    t, u = draw_noise(3, 12, g)
    batch = {"input_ids": x, "t": t, "u": u}
    plain, _ = mdm_loss(model, batch, mask_id=11)
    ones, _ = mdm_loss(model, {**batch, "loss_weight": torch.ones(3, 12)}, mask_id=11)
    half, _ = mdm_loss(model, {**batch, "loss_weight": torch.full((3, 12), 0.5)}, mask_id=11)
    assert torch.allclose(plain, ones) and torch.allclose(half, plain / 2)
    logits = torch.randn(3, 12, 12, generator=g)
    masked = u < t[:, None]
    w = torch.rand(3, 12, generator=g)
    got, _ = masked_ce(logits, x, masked, t, w)
    ce = -torch.log_softmax(logits, -1).gather(-1, x[..., None])[..., 0]       # (3, 12), the slow way
    want = torch.tensor([sum(float(ce[b, i] * w[b, i] / t[b]) for i in range(12) if masked[b, i]) for b in range(3)])
    assert torch.allclose(got, want.float(), atol=1e-5)


def test_semi_ar_noise_cuts_at_the_given_points():
    """cut_share=1: every converted row's cut is one of its cut points (inside its response);
    cut_share=0 (or no points) draws exactly what the plain rule draws."""
    B, L, block = 8, 40, 8
    t, u = draw_noise(B, L, torch.Generator().manual_seed(0))
    starts, ends = [5] * B, [35] * B
    points = [[3, 9, 17, 36]] * B                                   # 3 and 36 lie outside [5, 35)
    nt, nu, _ = semi_ar_noise(t, u, starts, ends, share=1.0, block=block, generator=torch.Generator().manual_seed(1),
                              cut_points=points, cut_share=1.0)
    cuts = [int((nu[i] != 2.0).nonzero()[0]) for i in range(B)]
    assert set(cuts) <= {9, 17} and len(set(cuts)) == 2 and bool((nt == 1).all())
    plain = semi_ar_noise(t, u, starts, ends, share=0.5, block=block, generator=torch.Generator().manual_seed(1))
    for kw in ({"cut_points": points, "cut_share": 0.0}, {"cut_points": None, "cut_share": 1.0}):
        again = semi_ar_noise(t, u, starts, ends, share=0.5, block=block, generator=torch.Generator().manual_seed(1), **kw)
        assert all(torch.equal(x, y) for x, y in zip(plain, again))
