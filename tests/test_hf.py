"""Our checkpoints load through `transformers` Auto classes and give the same numbers."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install adaptive_lm[hf])")

from adaptive_lm import checkpoint as ck                       # noqa: E402
from adaptive_lm.diffusion.daedal import Daedal                # noqa: E402
from adaptive_lm.diffusion.sampler import SpecialIds, denoise, model_logits_fn  # noqa: E402
from adaptive_lm.model import ModelConfig, TransformerLM      # noqa: E402


def test_builtin_causal_lm_through_automodel_equals_ours():
    import adaptive_lm.hf as H
    hf = transformers.AutoModel.from_pretrained(H.builtin_path("shakespeare-char"))
    ours, _ = ck.from_pretrained("builtin:shakespeare-char")
    x = torch.randint(4, 60, (2, 12))
    assert torch.equal(hf(x).logits, ours(x).logits)
    assert hf.net.head.weight is hf.net.tok_emb.weight


def test_diffusion_model_through_automodel_runs_daedal_like_ours(tmp_path):
    import adaptive_lm.hf as H  # noqa: F401  (registers the Auto classes)
    torch.manual_seed(0)
    m = TransformerLM(ModelConfig(vocab_size=24, n_layer=2, n_head=2, d_model=32, max_seq_len=128, causal=False)).eval()
    ck.save_pretrained(tmp_path / "mdm", m)
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "mdm")).eval()
    ids = SpecialIds(mask=3, eos=2, pad=0, vocab_size=24)
    pol = lambda: Daedal(init_length=8, max_length=24, w_eos=4, e_factor=4)
    a = denoise(model_logits_fn(m), [[5, 6, 7], [8]], policy=pol(), ids=ids)
    b = denoise(model_logits_fn(hf), [[5, 6, 7], [8]], policy=pol(), ids=ids)
    assert a.canvases == b.canvases and a.stats == b.stats
