"""CALM test fixtures: a tiny causal model (float64, so batch-size-dependent rounding cannot flip
an exit decision) with peaked logits, so intermediate layers have real confidences to exit on."""
import pytest
import torch

from adaptive_lm.model import ModelConfig, TransformerLM


@pytest.fixture
def calm_model():
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=40, n_layer=4, n_head=2, d_model=32, max_seq_len=64))
    with torch.no_grad():
        m.tok_emb.weight.mul_(8.0)                     # tied head: peaked, varied softmaxes
    return m.double().eval()


@pytest.fixture
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(4, 40, (n,), generator=g).tolist() for n in (5, 9, 3, 7)]


@pytest.fixture
def untied_model():
    """A tiny float64 causal model with its own output head: its greedy tokens vary and its exit
    depths mix, so a wrong K/V policy shows in the tokens."""
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=40, n_layer=4, n_head=2, d_model=32, max_seq_len=64,
                                  tie_embeddings=False))
    return m.double().eval()
