"""VMD model, objective, bound and sampler: checked against the MDM code they extend and against
the slow obvious computation."""
import dataclasses

import pytest
import torch

from adaptive_lm.checkpoint import from_pretrained, save_pretrained
from adaptive_lm.diffusion.objective import mc_nll, mdm_loss
from adaptive_lm.diffusion.sampler import Row
from adaptive_lm.model import ModelConfig
from adaptive_lm.tasks import sudoku as S
from adaptive_lm.tokenizer import CharTokenizer
from adaptive_lm.vmd.model import VMD, VMDConfig, feature_table, gaussian_kl, warm_start
from adaptive_lm.vmd.objective import block_view, elbo, vmd_loss
from adaptive_lm.vmd.sample import LatentConditioner, sample
from adaptive_lm.vmd.sudoku import decode_grids, encode_grids, solve

MASK = 3
BASE = ModelConfig(vocab_size=14, n_layer=2, n_head=2, d_model=32, max_seq_len=12, causal=False, positions="learned")


def make(latent=4, block=0, features="", max_len=12, seed=0, readout="mean"):
    torch.manual_seed(seed)
    cfg = VMDConfig(denoiser=dataclasses.replace(BASE, max_seq_len=max_len), latent_dim=latent, enc_layers=1,
                    block_size=block, features=features, readout=readout)
    m = VMD(cfg)
    for p in m.parameters():                      # make the zero-initialised projections matter
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    return m.eval()


def batch(B=6, L=8, latent=4, seed=0, block=None, n_blocks=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(4, 14, (B, L), generator=g)
    b = {"input_ids": x0, "t": torch.rand(B, generator=g) * 0.9 + 0.1, "u": torch.rand(B, L, generator=g),
         "block": block if block is not None else torch.randint(0, n_blocks, (B,), generator=g),
         "beta": torch.full((B,), 0.5)}
    if latent:
        b["eps"] = torch.randn(B, latent, generator=g)
    return b


def test_config_validation():
    with pytest.raises(ValueError, match="bidirectional"):
        VMDConfig(denoiser=dataclasses.replace(BASE, causal=True))
    with pytest.raises(ValueError, match="encoder"):
        VMDConfig(denoiser=BASE, latent_dim=4, enc_layers=0)
    with pytest.raises(ValueError, match="features"):
        VMDConfig(denoiser=BASE, features="chess")
    cfg = VMDConfig(denoiser=dataclasses.replace(BASE, max_seq_len=81), latent_dim=5, features="sudoku")
    assert cfg.denoiser.cond_dim == 27 + 5
    assert cfg.n_blocks(8) == 1 and VMDConfig(denoiser=BASE, block_size=3).n_blocks(8) == 3


def test_readout_mean_first_reads_the_blocks_first_position_too():
    with pytest.raises(ValueError, match="readout"):
        VMDConfig(denoiser=BASE, latent_dim=4, readout="max")
    old = VMDConfig(denoiser=BASE, latent_dim=4).to_dict()
    del old["readout"]                                    # a checkpoint saved before the option existed
    assert VMDConfig.from_dict(old).readout == "mean"
    m = make(latent=4, block=4, readout="mean+first")
    x0 = torch.randint(4, 14, (2, 8))
    block = torch.zeros(2, 8, dtype=torch.bool)
    block[:, 4:] = True                                # block 1: positions 4..7
    masked = torch.rand(2, 8) < 0.5
    mu, logvar = m.encode(x0, masked, block)
    out = m.encoder(x0, cond=masked.float()[..., None], output_hidden_states=True)
    h = m.encoder.norm_f(out.hidden_states[-1])        # (B, T, C)
    want = m.posterior(torch.cat([h[:, 4:].mean(1), h[:, 4]], -1)).chunk(2, -1)
    assert torch.allclose(mu, want[0], atol=1e-6) and torch.allclose(logvar, want[1].clamp(-12, 6), atol=1e-6)
    x1 = x0.clone()
    x1[:, 4:] = x0[:, 4:].flip(1)                      # the same tokens in another order
    assert not torch.allclose(m.encode(x1, masked, block)[0], mu)


def test_sudoku_features_are_row_col_box_one_hots():
    f = feature_table("sudoku")
    assert f.shape == (81, 27) and torch.equal(f.sum(1), torch.full((81,), 3.0))
    i = 4 * 9 + 7                                   # r5c8: row 4, column 7, box 5
    assert f[i].nonzero().flatten().tolist() == [4, 9 + 7, 18 + 5]


def test_without_latent_the_loss_is_the_mdm_loss():
    m = make(latent=0)
    b = batch(latent=0)
    loss, mets = vmd_loss(m, b, mask_id=MASK)
    ref, _ = mdm_loss(m.denoiser, b, mask_id=MASK)
    assert torch.allclose(loss, ref, atol=1e-6) and float(mets["kl"]) == 0


def test_loss_is_data_term_plus_beta_kl():
    m = make(latent=4)
    b = batch(latent=4)
    loss, mets = vmd_loss(m, b, mask_id=MASK)
    b1 = {**b, "beta": torch.ones(6)}
    loss1, _ = vmd_loss(m, b1, mask_id=MASK)
    kl_per_token = float(mets["kl"]) / 8
    assert float(mets["kl"]) > 0
    assert abs(float((loss1 - loss).detach()) - 0.5 * kl_per_token) < 1e-5
    assert abs(float(mets["bound"]) - float(loss1.detach())) < 1e-5


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(gaussian_kl(mu, logvar), ref, atol=1e-6)


def test_block_view_hides_later_blocks_and_keeps_earlier_ones():
    x0 = torch.arange(4, 12)[None]                 # (1, 8)
    masked = torch.tensor([[True] * 8])
    xt, seen, block = block_view(x0, masked, torch.tensor([2]), torch.tensor([4]), MASK)
    assert xt.tolist() == [[4, 5, MASK, MASK, MASK, MASK, MASK, MASK]]
    assert seen.tolist() == [[4, 5, 6, 7, MASK, MASK, MASK, MASK]]
    assert block.tolist() == [[False, False, True, True, False, False, False, False]]


@pytest.mark.parametrize("readout", ["mean", "mean+first"])
def test_encoder_never_reads_later_blocks(readout):
    m = make(latent=4, block=4, readout=readout)
    b = batch(latent=4, block=torch.zeros(6, dtype=torch.long))
    _, m1 = vmd_loss(m, b, mask_id=MASK)
    x2 = b["input_ids"].clone()
    x2[:, 4:] = 4 + (x2[:, 4:] - 3) % 10          # change block 1 only
    _, m2 = vmd_loss(m, {**b, "input_ids": x2}, mask_id=MASK)
    assert torch.allclose(m1["kl"], m2["kl"]) and torch.allclose(m1["masked_ce"], m2["masked_ce"])


def test_block_loss_counts_every_block():
    """With blocks, the loss for block b is n_blocks x (block b's terms) / L: the mean over b is the
    whole-sequence bound."""
    m = make(latent=0, block=4)
    b = batch(latent=0, block=torch.ones(6, dtype=torch.long))
    loss, _ = vmd_loss(m, b, mask_id=MASK)
    # the slow way: mask block 1 where u < t, hide nothing after it (it is the last block)
    x0, t, u = b["input_ids"], b["t"], b["u"]
    masked = (u < t[:, None]) & (torch.arange(8) >= 4)
    xt = torch.where(masked, torch.full_like(x0, MASK), x0)
    logp = m.denoise(xt).log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
    ref = (2 * (-(logp * masked).sum(1) / t) / 8).mean()
    assert torch.allclose(loss, ref, atol=1e-5)


def test_elbo_without_latent_equals_llada_mc_nll():
    m = make(latent=0)
    x0 = batch(latent=0)["input_ids"]
    a = elbo(m, x0, mask_id=MASK, n_samples=3, generator=torch.Generator().manual_seed(1))
    ref = mc_nll(m.denoiser, x0, torch.ones_like(x0, dtype=torch.bool), mask_id=MASK, n_samples=3,
                 generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, ref, rtol=1e-5)


def test_elbo_with_latent_adds_the_kl_of_the_fully_masked_posterior():
    m = make(latent=4)
    x0 = batch()["input_ids"]
    nll = elbo(m, x0, mask_id=MASK, n_samples=2, generator=torch.Generator().manual_seed(0))
    mu, logvar = m.encode(x0, torch.ones_like(x0, dtype=torch.bool), torch.ones_like(x0, dtype=torch.bool))
    kl = gaussian_kl(mu, logvar).sum(-1)
    assert torch.all(nll > kl) and torch.isfinite(nll).all()


def test_conditioner_draws_once_per_block_or_every_step():
    row = Row([], torch.full((8,), MASK), generator=torch.Generator().manual_seed(0))
    c = LatentConditioner(3, block_size=4)
    z0 = c(row)
    row.nfe += 1
    assert torch.equal(c(row), z0)                # same block: same z
    row.ptr = 4
    z1 = c(row)
    assert not torch.equal(z1, z0)                # next block: a new z
    r = LatentConditioner(3, block_size=4, redraw=True)
    a = r(row).clone()
    row.nfe += 1
    assert not torch.equal(r(row), a)


def test_sampling_keeps_givens_fills_masks_and_is_batch_independent():
    m = make(latent=4)
    canv = torch.full((5, 8), MASK)  # temperature 1: the per-row generators matter
    canv[:, 0] = 7
    g = torch.Generator().manual_seed(0)
    out, nfes = sample(m, canv, nfe=4, policy="margin", mask_id=MASK, generator=g, temperature=1.0)
    assert (out[:, 0] == 7).all() and not (out == MASK).any() and nfes == [4] * 5
    alone, _ = sample(m, canv, nfe=4, policy="margin", mask_id=MASK, generator=torch.Generator().manual_seed(0),
                      batch_size=1, temperature=1.0)
    same, _ = sample(m, canv, nfe=4, policy="margin", mask_id=MASK, generator=torch.Generator().manual_seed(0),
                     temperature=1.0)
    assert torch.equal(out, same) and torch.equal(out, alone)


def test_one_step_commits_everything_and_blocks_take_their_share():
    m = make(latent=0, block=4)
    out, nfes = sample(m, torch.full((3, 8), MASK), nfe=2, policy="top_prob", mask_id=MASK)
    assert not (out == MASK).any() and nfes == [2, 2, 2]
    with pytest.raises(Exception, match="divide"):
        sample(m, torch.full((3, 8), MASK), nfe=3, policy="top_prob", mask_id=MASK)


def test_latent_changes_the_samples():
    m = make(latent=4)
    a, _ = sample(m, torch.full((64, 8), MASK), nfe=1, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in a.tolist()}) > 1      # greedy decoding, yet z makes rows differ
    mdm = make(latent=0)
    b, _ = sample(mdm, torch.full((64, 8), MASK), nfe=1, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in b.tolist()}) == 1     # without z greedy one-step decoding is deterministic


def test_checkpoint_round_trip(tmp_path):
    m = make(latent=4, block=4)
    tok = CharTokenizer("0123456789")
    save_pretrained(tmp_path / "ck", m, tok, meta={"family": "vmd"})
    m2, tok2 = from_pretrained(tmp_path / "ck")
    x = torch.randint(4, 14, (2, 8))
    z = torch.randn(2, 4)
    assert torch.equal(m.denoise(x, z), m2.denoise(x, z)) and tok2.vocab_size == 14


def test_sudoku_solver_never_calls_an_invalid_grid_valid():
    tok = CharTokenizer(S.DIGITS)
    m = make(latent=4, features="sudoku", max_len=81)
    puzzle, sol = S.generate(5)
    ids = encode_grids(tok, [puzzle])
    assert decode_grids(tok, ids) == [puzzle]
    res = solve(m, tok, puzzle, nfe=5, tries=2, generator=torch.Generator().manual_seed(0))
    assert res.valid == S.is_solution(res.grid, puzzle)
    assert all(p == "." or p == g for p, g in zip(puzzle, res.grid))   # givens are never changed
    done = solve(m, tok, sol)                                         # nothing to fill
    assert done.valid and done.grid == sol and done.nfe == 0


def test_warm_start_copies_the_denoiser_and_zeroes_the_z_columns():
    """A VMD warm-started from its MDM baseline predicts exactly what the MDM does, whatever z;
    the encoder is untouched; a source of another layout is refused."""
    den = ModelConfig(vocab_size=14, n_layer=1, n_head=2, d_model=16, max_seq_len=81, causal=False, positions="learned")
    torch.manual_seed(0)
    mdm = VMD(VMDConfig(denoiser=den, latent_dim=0, features="sudoku"))
    with torch.no_grad():
        for p in mdm.parameters():
            p.add_(0.1 * torch.randn_like(p))                         # not the initial values
    vmd = VMD(VMDConfig(denoiser=den, latent_dim=4, enc_layers=1, features="sudoku"))
    enc_before = {k: v.clone() for k, v in vmd.encoder.state_dict().items() if k != "tok_emb.weight" and k != "head.weight"}
    warm_start(vmd, mdm)
    x = torch.randint(0, 14, (3, 81))
    for z in (torch.zeros(3, 4), torch.randn(3, 4), 5 * torch.randn(3, 4)):
        assert torch.equal(vmd.denoise(x, z), mdm.denoise(x))
    assert all(torch.equal(v, vmd.encoder.state_dict()[k]) for k, v in enc_before.items())
    other = VMD(VMDConfig(denoiser=dataclasses.replace(den, n_layer=2), latent_dim=0, features="sudoku"))
    with pytest.raises(ValueError, match="warm start"):
        warm_start(vmd, other)


def test_adaln_latent_conditioning(tmp_path):
    """A denoiser with cond_mode=adaln takes z through every block's norms (the encoder keeps the
    additive input for its mask indicator); z changes one-step samples; a checkpoint round-trips;
    per-position features are refused with AdaLN."""
    torch.manual_seed(0)
    cfg = VMDConfig(denoiser=dataclasses.replace(BASE, cond_mode="adaln"), latent_dim=4, enc_layers=1)
    m = VMD(cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    m.eval()
    assert m.denoiser.cond_proj is None and m.denoiser.blocks[0].ada is not None
    assert m.encoder.config.cond_mode == "add" and m.encoder.cond_proj is not None
    x = torch.randint(4, 14, (2, 8))
    assert not torch.allclose(m.denoise(x, torch.randn(2, 4)), m.denoise(x, torch.randn(2, 4)))
    a, _ = sample(m, torch.full((64, 8), MASK), nfe=1, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in a.tolist()}) > 1
    save_pretrained(tmp_path / "ck", m, CharTokenizer("0123456789"), meta={"family": "vmd"})
    m2, _ = from_pretrained(tmp_path / "ck")
    z = torch.randn(2, 4)
    assert m2.config.denoiser.cond_mode == "adaln" and torch.equal(m.denoise(x, z), m2.denoise(x, z))
    with pytest.raises(ValueError, match="AdaLN"):
        VMDConfig(denoiser=dataclasses.replace(BASE, max_seq_len=81, cond_mode="adaln"), latent_dim=4,
                  features="sudoku")


def test_adaln_warm_start_and_config_dict():
    """An AdaLN VMD warm-started from an MDM (which has no AdaLN weights) predicts exactly what the
    MDM does, whatever z; its config dict names cond_mode, the default one does not (older readers
    load it)."""
    den = dataclasses.replace(BASE, n_layer=1)
    torch.manual_seed(0)
    mdm = VMD(VMDConfig(denoiser=den, latent_dim=0))
    with torch.no_grad():
        for p in mdm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vmd = VMD(VMDConfig(denoiser=dataclasses.replace(den, cond_mode="adaln"), latent_dim=4, enc_layers=1))
    with torch.no_grad():
        for p in vmd.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))                         # AdaLN weights nonzero before
    warm_start(vmd, mdm)
    x = torch.randint(0, 14, (3, 8))
    for z in (torch.randn(3, 4), 5 * torch.randn(3, 4)):
        assert torch.equal(vmd.denoise(x, z), mdm.denoise(x))
    assert vmd.config.to_dict()["denoiser"]["cond_mode"] == "adaln"
    assert "cond_mode" not in mdm.config.to_dict()["denoiser"]
