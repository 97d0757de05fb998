"""The backbone: causal mask, KV cache vs full forward, shared unembed, padding, conditioning."""
import dataclasses

import pytest
import torch

from adaptive_lm.model import ModelConfig, TransformerLM

ATOL = 1e-5


def _decode(m, ids, first, mask=None, cond=None, cache=None):
    """Logits (B, T, V) of ids (B, T) through a KV cache: the first ``first`` tokens in one step,
    then one token per step."""
    cache = cache if cache is not None else m.new_cache(ids.shape[0])
    part = lambda a, b: None if mask is None else mask[:, a:b]
    out = [m(ids[:, :first], attention_mask=part(0, first), cond=cond, cache=cache).logits]
    for t in range(first, ids.shape[1]):
        out.append(m(ids[:, t:t + 1], attention_mask=part(t, t + 1), cond=cond, cache=cache).logits)
    return torch.cat(out, 1)


def test_causal_mask_future_tokens_never_change_past_logits(tiny_model):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 61, (2, 20), generator=g)
    y = x.clone()
    y[:, 12:] = torch.randint(0, 61, (2, 8), generator=g)
    a, b = tiny_model(x).logits, tiny_model(y).logits
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_bidirectional_model_sees_the_future(tiny_cfg):
    torch.manual_seed(0)
    m = TransformerLM(dataclasses.replace(tiny_cfg, causal=False)).eval()
    x = torch.randint(0, 61, (1, 10))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 61
    assert not torch.allclose(m(x).logits[:, 0], m(y).logits[:, 0])


def test_kv_cache_decoding_equals_full_forward(tiny_model):
    x = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(2))
    full = tiny_model(x).logits
    cache = tiny_model.new_cache(3)
    torch.testing.assert_close(_decode(tiny_model, x, 7, cache=cache), full, atol=ATOL, rtol=0)
    assert cache.length == 24


def test_unembed_of_last_hidden_state_equals_logits(tiny_model):
    x = torch.randint(0, 61, (2, 16))
    out = tiny_model(x, output_hidden_states=True)
    assert len(out.hidden_states) == tiny_model.config.n_layer + 1
    assert torch.equal(tiny_model.unembed(out.hidden_states[-1]), out.logits)


def test_left_padded_rows_equal_the_same_rows_alone(tiny_model):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(4, 61, (12,), generator=g), torch.randint(4, 61, (7,), generator=g)
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, 5:], mask[1, 5:] = b, 1
    out = tiny_model(ids, attention_mask=mask).logits
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[0], tiny_model(a[None]).logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1, 5:], tiny_model(b[None]).logits[0], atol=ATOL, rtol=0)


def test_left_padded_cache_decoding_equals_full_forward(tiny_model):
    ids = torch.randint(4, 61, (2, 16), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :6] = 0
    full = tiny_model(ids, attention_mask=mask).logits
    got = _decode(tiny_model, ids, 8, mask=mask)
    torch.testing.assert_close(got[0], full[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[1, 6:], full[1, 6:], atol=ATOL, rtol=0)


def test_layer_by_layer_with_fill_kv_equals_forward(tiny_model):
    """Running layers one at a time and filling the top layer's K/V from a copied hidden state
    (CALM state propagation) writes exactly what running that layer would have written."""
    x = torch.randint(0, 61, (2, 10))
    c1, c2 = tiny_model.new_cache(2), tiny_model.new_cache(2)
    tiny_model(x, cache=c1)
    ctx = tiny_model.prepare(x, cache=c2)
    h = tiny_model.embed(x)
    for i in range(tiny_model.config.n_layer - 1):
        h = tiny_model.layer(i, h, ctx)
    last = tiny_model.config.n_layer - 1
    tiny_model.fill_kv(last, h, ctx)
    tiny_model.commit(ctx)
    assert c2.length == c1.length
    torch.testing.assert_close(c2.k[last][:, :, :10], c1.k[last][:, :, :10], atol=ATOL, rtol=0)
    torch.testing.assert_close(c2.v[last][:, :, :10], c1.v[last][:, :, :10], atol=ATOL, rtol=0)
    # rows= limits the write to some sequences
    c3 = tiny_model.new_cache(2)
    ctx3 = tiny_model.prepare(x, cache=c3)
    tiny_model.fill_kv(0, tiny_model.embed(x), ctx3, rows=torch.tensor([False, True]))
    assert c3.k[0][0].abs().sum() == 0 and c3.k[0][1].abs().sum() > 0


def test_conditioning_per_sequence_and_per_position(tiny_cfg):
    torch.manual_seed(0)
    m = TransformerLM(dataclasses.replace(tiny_cfg, cond_dim=5)).eval()
    torch.nn.init.normal_(m.cond_proj.weight)
    x = torch.randint(0, 61, (2, 8))
    z = torch.randn(2, 5)
    base, seq = m(x).logits, m(x, cond=z).logits
    assert not torch.allclose(base, seq)
    torch.testing.assert_close(m(x, cond=z[:, None].expand(2, 8, 5)).logits, seq)
    with pytest.raises(ValueError):
        TransformerLM(tiny_cfg)(x, cond=z)


def test_config_validation_and_length_limit(tiny_model):
    with pytest.raises(ValueError):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError):
        tiny_model(torch.zeros(1, 49, dtype=torch.long))


def _gqa_pair(tiny_cfg, n_kv):
    """A grouped-K/V model and the plain multi-head model that repeats each K/V head for its group."""
    torch.manual_seed(0)
    gqa = TransformerLM(dataclasses.replace(tiny_cfg, n_head=4, n_kv_head=n_kv)).eval()
    mha = TransformerLM(dataclasses.replace(tiny_cfg, n_head=4)).eval()
    state = dict(gqa.state_dict())
    C, Dh, g = tiny_cfg.d_model, tiny_cfg.d_model // 4, 4 // n_kv
    for name, w in gqa.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = w[:C], w[C:C + n_kv * Dh], w[C + n_kv * Dh:]
            rep = lambda t: t.view(n_kv, Dh, C).repeat_interleave(g, 0).reshape(4 * Dh, C)
            state[name] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    return gqa, mha


@pytest.mark.parametrize("n_kv", [1, 2])
def test_grouped_kv_heads_equal_repeated_heads(tiny_cfg, n_kv):
    """Grouped-query attention (n_kv_head < n_head) computes what multi-head attention computes with
    each K/V head repeated for its group — in the full forward, and with a KV cache (SDPA and the
    thread-count-independent ``exact`` path), padded rows included."""
    gqa, mha = _gqa_pair(tiny_cfg, n_kv)
    assert gqa.num_params() < mha.num_params()
    ids = torch.randint(4, 61, (2, 16), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0
    full = mha(ids, attention_mask=mask).logits
    plain = gqa(ids, attention_mask=mask).logits
    torch.testing.assert_close(plain[0], full[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(plain[1, 5:], full[1, 5:], atol=ATOL, rtol=0)
    for exact in (False, True):
        cache = gqa.new_cache(2)
        assert cache.k[0].shape[1] == n_kv
        cache.exact = exact
        got = _decode(gqa, ids, 9, mask=mask, cache=cache)
        torch.testing.assert_close(got[0], full[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(got[1, 5:], full[1, 5:], atol=ATOL, rtol=0)


def test_grouped_kv_heads_config_checks(tiny_cfg):
    with pytest.raises(ValueError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="masked mixer"):
        ModelConfig(n_head=4, n_kv_head=2, mixer="masked_conv")
    assert ModelConfig(n_head=4).kv_heads == 4 and ModelConfig(n_head=4, n_kv_head=1).kv_heads == 1


def test_adaln_conditioning(tiny_cfg):
    """cond_mode=adaln: zero-initialised it is a no-op; trained (here: random) it changes the
    logits; a per-sequence vector equals the same vector at every position; KV-cache decoding with
    it equals the full forward; layer-by-layer filling of K/V sees it too."""
    torch.manual_seed(0)
    m = TransformerLM(dataclasses.replace(tiny_cfg, cond_dim=5, cond_mode="adaln")).eval()
    assert m.cond_proj is None and all(b.ada is not None for b in m.blocks)
    x = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(6))
    z = torch.randn(2, 5)
    torch.testing.assert_close(m(x, cond=z).logits, m(x).logits)
    for blk in m.blocks:
        torch.nn.init.normal_(blk.ada.weight, std=0.3)
    seq = m(x, cond=z).logits
    assert not torch.allclose(seq, m(x).logits, atol=1e-3)
    torch.testing.assert_close(m(x, cond=z[:, None].expand(2, 8, 5)).logits, seq)
    torch.testing.assert_close(_decode(m, x, 4, cond=z), seq, atol=ATOL, rtol=0)
    c1, c2 = m.new_cache(2), m.new_cache(2)
    m(x, cond=z, cache=c1)
    ctx = m.prepare(x, cache=c2)
    h = m.embed(x, z, ctx=ctx)
    for i in range(m.config.n_layer - 1):
        h = m.layer(i, h, ctx)
    m.fill_kv(m.config.n_layer - 1, h, ctx)
    torch.testing.assert_close(c2.k[-1][:, :, :8], c1.k[-1][:, :, :8], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="cond_mode"):
        ModelConfig(cond_mode="film")
    assert "cond_mode" in m.config.to_dict() and "cond_mode" not in tiny_cfg.to_dict()


@pytest.mark.parametrize("causal", [False, True])
def test_forward_with_pattern_equals_forward_for_the_model_s_own_pattern(causal):
    from adaptive_lm.model import forward_with_pattern
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=32,
                                  causal=causal)).eval()
    x = torch.randint(0, 50, (2, 9))
    allow = torch.ones(9, 9, dtype=torch.bool)
    allow = allow.tril() if causal else allow
    got = forward_with_pattern(m, x, allow[None].expand(2, 9, 9), torch.arange(9)[None].expand(2, 9)).logits
    torch.testing.assert_close(got, m(x).logits, rtol=1e-5, atol=1e-5)


def test_shift_logits_scores_token_i_at_position_i_minus_1():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layer=2, n_head=4, d_model=32, max_seq_len=32, causal=False)
    plain = TransformerLM(cfg).eval()
    shifted = TransformerLM(dataclasses.replace(cfg, shift_logits=True)).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.randint(0, 50, (2, 9))
    a, b = plain(x).logits, shifted(x).logits
    assert torch.equal(b[:, 1:], a[:, :-1]) and torch.equal(b[:, 0], a[:, 0])
    assert "shift_logits" in shifted.config.to_dict() and "shift_logits" not in cfg.to_dict()
    with pytest.raises(ValueError, match="shift_logits"):
        ModelConfig(shift_logits=True, causal=True)


def test_causal_forward_of_a_bidirectional_model_equals_the_causal_model():
    from adaptive_lm.model import causal_forward
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layer=2, n_head=4, d_model=32, max_seq_len=32, causal=True)
    causal = TransformerLM(cfg).eval()
    bidir = TransformerLM(dataclasses.replace(cfg, causal=False, shift_logits=True)).eval()
    bidir.load_state_dict(causal.state_dict())
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(causal_forward(bidir, x).logits, causal(x).logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bidir(x).logits[:, 1:], causal(x).logits[:, :-1])   # the bidirectional pass differs


def test_model_device_reads_the_first_parameter():
    from adaptive_lm.model import model_device
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    m = torch.nn.Linear(2, 2)
    assert model_device(m) == torch.device("cpu")
    assert model_device(m.to("meta")) == torch.device("meta")            # read afresh, never cached
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")          # no parameters
    assert model_device(lambda x: x) == torch.device("cpu")              # duck-typed
