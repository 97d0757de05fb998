"""CALM early-exit training: exit layers and weights, the weighted loss against a direct
computation, and the classifier's second step leaving the backbone untouched."""
import pytest
import torch
import torch.nn.functional as F

from adaptive_lm.calm import exits as E
from adaptive_lm.lm import lm_objective
from adaptive_lm.model import ModelConfig, TransformerLM


def _model():
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(vocab_size=30, n_layer=4, n_head=2, d_model=16, max_seq_len=32))


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 30, (3, 10), generator=g)
    return x, torch.roll(x, -1, 1)


def test_exit_layers_and_weights():
    assert E.exit_layers(6) == [1, 2, 3, 4, 5, 6]
    assert E.exit_layers(6, 2) == [2, 4, 6] and E.exit_layers(7, 3) == [3, 6, 7]
    w = E.exit_weights([1, 2, 3, 4])
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4]) / 10.0)
    assert torch.allclose(E.exit_weights([2, 4], "uniform"), torch.tensor([0.5, 0.5]))
    g = E.exit_weights([1, 2, 3], "geometric", ratio=0.5)
    assert torch.allclose(g, torch.tensor([1, 2, 4]) / 7.0)


def test_weighted_loss_is_the_weighted_sum_of_per_layer_ce():
    m, (x, y) = _model(), _batch()
    layers = [2, 4]
    w = E.exit_weights(layers)
    loss, mets = E.early_exit_loss(m, (x, y), layers=layers, weights=w)
    hs = m(x, output_hidden_states=True).hidden_states
    direct = sum(wi * F.cross_entropy(m.unembed(hs[i]).flatten(0, 1), y.flatten()) for wi, i in zip(w.tolist(), layers))
    assert torch.allclose(loss, direct, atol=1e-6)
    plain, _ = lm_objective(m, (x, y))
    assert torch.allclose(mets["ce_top"], plain, atol=1e-6)       # the top layer's CE is the plain LM loss
    top_only, _ = E.early_exit_loss(m, (x, y), layers=[4], weights=torch.ones(1))
    assert torch.allclose(top_only, plain, atol=1e-6)


def test_classifier_step_trains_heads_only():
    from adaptive_lm.calm.runtime import load_classifier, save_classifier, train_classifier
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    clf = train_classifier(m, lambda step: _batch(), steps=3)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.requires_grad for p in m.parameters())           # restored for later training
    assert clf.layers == [1, 2, 3]
    p = clf(2, torch.randn(5, 16))
    assert p.shape == (5,) and bool(((p >= 0) & (p <= 1)).all())
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        save_classifier(d, clf)
        back = load_classifier(d, m)
        h = torch.randn(4, 16)
        assert back.layers == clf.layers and torch.equal(back(3, h), clf(3, h))


def test_shipped_calibration_and_classifier_load_by_builtin_name(tmp_path):
    from adaptive_lm.calm.runtime import config_from_calm, load_calm, load_classifier
    from adaptive_lm.checkpoint import from_pretrained, resolve
    from adaptive_lm.errors import CheckpointError
    stored = load_calm("builtin:calm-arith")
    assert stored and stored == load_calm(resolve("builtin:calm-arith"))
    assert config_from_calm(stored).threshold == stored["threshold"]
    m, _ = from_pretrained("builtin:calm-arith")
    assert load_classifier("builtin:calm-arith", m) is not None
    assert load_calm(tmp_path) == {}                                   # a folder without one
    with pytest.raises(CheckpointError, match="does not exist"):
        load_calm(tmp_path / "missing")
