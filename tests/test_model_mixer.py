"""The masked mixer and learned positions (model.py options for the entropy models): causal, the
KV cache reproduces the full forward, and bad configurations are refused."""
import pytest
import torch

from adaptive_lm.model import ModelConfig, TransformerLM

VARIANTS = {"mixer": dict(mixer="masked_conv"), "mixer-2-heads": dict(mixer="masked_conv", n_head=2),
            "learned positions": dict(positions="learned"),
            "mixer + learned positions": dict(mixer="masked_conv", positions="learned")}


def _model(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=50, n_layer=2, n_head=1, d_model=32, max_seq_len=24)
    return TransformerLM(ModelConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_causal(name):
    m = _model(**VARIANTS[name])
    with torch.no_grad():
        for p in m.parameters():                       # make every weight matter
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randint(0, 50, (2, 20))
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 50
    a, b = m(x).logits, m(y).logits
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("exact", [False, True])
def test_kv_cache_equals_full_forward(name, exact):
    m = _model(**VARIANTS[name])
    x = torch.randint(0, 50, (3, 18))
    with torch.no_grad():
        full = m(x).logits
        cache = m.new_cache(3, 18)
        cache.exact = exact
        steps = [m(x[:, :5], cache=cache).logits] + [m(x[:, t:t + 1], cache=cache).logits for t in range(5, 18)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_mixer_weights_are_position_specific_and_masked():
    m = _model(mixer="masked_conv")
    mix = m.blocks[0].attn
    assert mix.weight.shape == (1, 24, 24)
    with torch.no_grad():
        mix.weight[:, 3, 7] = 100.0                     # above the diagonal: must have no effect
    x = torch.randint(0, 50, (1, 10))
    torch.testing.assert_close(m(x).logits, _model(mixer="masked_conv")(x).logits)


def test_padding_is_refused_by_the_mixer():
    m = _model(mixer="masked_conv")
    x = torch.randint(0, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="padded"):
        m(x, attention_mask=mask)


@pytest.mark.parametrize("kw,msg", [(dict(mixer="conv"), "mixer must be"), (dict(positions="abs"), "positions must be"),
                                    (dict(mixer="masked_conv", causal=False), "causal")])
def test_bad_configs(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, max_seq_len=8, **kw)
