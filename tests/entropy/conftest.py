"""A tiny byte-level BPE causal LM saved as a checkpoint folder (random weights: the coder must be
exact whatever the probabilities), and a second one with other weights."""
import pytest
import torch

from adaptive_lm.checkpoint import save_pretrained
from adaptive_lm.model import ModelConfig, TransformerLM
from adaptive_lm.tokenizer import BPETokenizer

from ..conftest import TEXT


def _save(folder, tok, seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=64)
    model = TransformerLM(cfg).eval()
    save_pretrained(folder, model, tok, meta={"seq_len": 32, "family": "causal-lm"})
    return model


@pytest.fixture(scope="package")
def codec_lm(tmp_path_factory):
    """(folder, model, tokenizer) of a tiny byte-level BPE LM."""
    tok = BPETokenizer.train([TEXT], vocab_size=300)
    folder = tmp_path_factory.mktemp("codec") / "lm"
    return folder, _save(folder, tok, 0), tok


@pytest.fixture(scope="package")
def other_lm(tmp_path_factory, codec_lm):
    """The same architecture and tokenizer with different weights."""
    folder = tmp_path_factory.mktemp("codec") / "other"
    _save(folder, codec_lm[2], 1)
    return folder
