"""The EEM (entropy/eem.py): every injection mode runs and learns, the decoder is causal given the
embedding, the embedding's bits are charged, storage formats, and checkpoints round-trip."""
import math

import pytest
import torch
import torch.nn.functional as F

from adaptive_lm.checkpoint import from_pretrained, save_pretrained
from adaptive_lm.entropy.eem import EEM, FORMATS, EEMConfig, eem_objective, evaluate_eem, quantize_embedding
from adaptive_lm.model import ModelConfig


def _cfg(injection="add", mixer="attention", **kw):
    enc = ModelConfig(vocab_size=40, n_layer=1, n_head=2, d_model=32, max_seq_len=33, mixer=mixer)
    dec = ModelConfig(vocab_size=40, n_layer=1, n_head=2, d_model=32, max_seq_len=33, mixer=mixer)
    return EEMConfig(encoder=enc, decoder=dec, injection=injection, **{"compression": 4, **kw})


@pytest.mark.parametrize("injection", ["prepend", "concat", "add"])
@pytest.mark.parametrize("mixer", ["attention", "masked_conv"])
def test_shapes_and_decoder_causality(injection, mixer):
    torch.manual_seed(0)
    m = EEM(_cfg(injection, mixer)).eval()
    w = torch.randint(0, 40, (3, 17))
    assert m(w).shape == (3, 16, 40)
    e = m.embed_window(w)
    assert e.shape == (3, 8)
    a = m.decode(w[:, :-1], e)
    w2 = w.clone()
    w2[:, 10] = (w2[:, 10] + 1) % 40
    b = m.decode(w2[:, :-1], e)                       # same embedding: only positions >= 10 may change
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("injection", ["prepend", "concat", "add"])
def test_every_injection_learns(injection):
    torch.manual_seed(0)
    m = EEM(_cfg(injection))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x = torch.randint(0, 40, (8, 16))
    y = torch.roll(x, -1, 1)
    first = None
    for _ in range(80):                    # random tokens: only the embedding can lower the loss below ln 40
        loss, _ = eem_objective(m, (x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.6 * first < 0.6 * math.log(40) + 0.1


def test_charged_ce_adds_the_embedding_bits():
    torch.manual_seed(0)
    m = EEM(_cfg())
    x = torch.randint(0, 40, (4, 16))
    y = torch.randint(0, 40, (4, 16))
    for fmt, bits in FORMATS.items():
        r = evaluate_eem(m, x, y, n_bytes=100, fmt=fmt)
        assert r["ce_charged"] == pytest.approx(r["ce"] + 8 * bits * math.log(2) / 16)
        assert r["bpb_charged"] - r["bpb"] == pytest.approx(4 * 8 * bits / 100)


def test_evaluate_matches_the_forward_pass_and_foreign_embeddings_cost():
    torch.manual_seed(0)
    m = EEM(_cfg())
    x = torch.randint(0, 40, (5, 16))
    y = torch.roll(x, -1, 1)
    full = torch.cat([x[:, :1], y], 1)
    m.eval()
    ref = F.cross_entropy(m(full, fmt="fp16").flatten(0, 1), y.flatten()).item()
    r = evaluate_eem(m, x, y, fmt="fp16", batch_size=2)        # chunks of 2, 2, 1
    assert r["ce"] == pytest.approx(ref, rel=1e-6)
    # a fresh EEM's `up` is zero: the embedding changes nothing, so a foreign one costs nothing
    assert evaluate_eem(m, x, y, foreign=True, batch_size=2)["ce_foreign"] == pytest.approx(r["ce"], rel=1e-6)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(80):                                        # random tokens: learn to read the embedding
        loss, _ = eem_objective(m, (x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    both = evaluate_eem(m, x, y, foreign=True, batch_size=2)
    own, other = evaluate_eem(m, x, y, batch_size=2)["ce"], both["ce_foreign"]
    assert both["ce"] == own                                            # the plain CE is unchanged by the option
    assert other > own + 0.5
    with pytest.raises(ValueError, match="two windows"):
        evaluate_eem(m, x[:1], y[:1], foreign=True)


def test_storage_formats():
    e = torch.tensor([[0.1234567, -3.3, 100.0, 1e-3]])
    assert torch.equal(quantize_embedding(e, "fp32"), e)
    for fmt, tol in [("fp16", 1e-3), ("bf16", 1e-2), ("int8", 0.01), ("e4m3", 0.07), ("e5m2", 0.13)]:
        q = quantize_embedding(e, fmt)
        assert q.dtype == torch.float32
        big = e.abs() > 0.05
        assert ((q - e).abs()[big] <= tol * e.abs()[big] + (0.4 if fmt == "int8" else 0)).all(), fmt
    with pytest.raises(ValueError, match="unknown embedding format"):
        quantize_embedding(e, "fp4")


def test_noise_injection_only_in_training():
    torch.manual_seed(0)
    m = EEM(_cfg(noise_q=2 ** -4))
    w = torch.randint(0, 40, (2, 9))
    m.eval()
    clean = m.embed_window(w)
    m.train()
    noisy = m.embed_window(w, generator=torch.Generator().manual_seed(0))
    d = (noisy - clean).abs()
    assert (d > 0).all() and (d <= 2 ** -4 + 1e-6).all()


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = EEM(_cfg("concat", "masked_conv")).eval()
    save_pretrained(tmp_path / "eem", m)
    back, _ = from_pretrained(tmp_path / "eem", with_tokenizer=False)
    w = torch.randint(0, 40, (2, 12))
    torch.testing.assert_close(back(w), m(w))


@pytest.mark.parametrize("kw,msg", [(dict(injection="mul"), "injection"), (dict(compression=5), "compression"),
                                    (dict(noise_q=-1.0), "noise_q")])
def test_bad_configs(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _cfg(**kw)
