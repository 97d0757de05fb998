"""Shared fixtures: a tiny model config and a small text corpus, so every test runs in seconds."""
import pytest
import torch

from adaptive_lm.model import ModelConfig, TransformerLM

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


@pytest.fixture
def tiny_cfg():
    return ModelConfig(vocab_size=61, n_layer=3, n_head=2, d_model=32, max_seq_len=48)


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return TransformerLM(tiny_cfg).eval()


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return p
