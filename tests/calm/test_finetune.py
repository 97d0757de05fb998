"""CALM's first training step on a Hugging Face model: finetune_exits trains every weight on the
weighted per-layer loss, and `adaptive-lm calm-finetune` writes a transformers folder that loads
back as hf:OUT with the trained weights; bad input -> one line, nothing written."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from adaptive_lm.calm.exits import early_exit_loss, exit_layers, exit_weights  # noqa: E402
from adaptive_lm.calm.runtime import finetune_exits, trained_exit_every  # noqa: E402
from adaptive_lm.hf_causal import HFCausalLM, load_hf_causal  # noqa: E402
from adaptive_lm.train import TrainConfig  # noqa: E402
from tests.conftest import TEXT  # noqa: E402
from tests.test_cli import assert_one_line_error, run  # noqa: E402


def _tiny_llama(vocab: int = 300):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer saved as a transformers folder, and a corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    d = tmp_path_factory.mktemp("hf")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=290, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")
    hf = _tiny_llama(vocab=max(300, tk.get_vocab_size()))
    hf.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "text.txt").write_text(TEXT * 4)
    return d


def test_finetune_exits_lowers_the_weighted_loss_on_a_fixed_batch():
    m = HFCausalLM(_tiny_llama())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 300, (4, 17), generator=g)
    batch = (x[:, :-1], x[:, 1:])
    layers = exit_layers(4, 2)
    w = exit_weights(layers)
    with torch.no_grad():
        before = float(early_exit_loss(m, batch, layers=layers, weights=w)[0])
    cfg = TrainConfig(steps=30, batch_size=4, lr=3e-3, warmup_steps=1, min_lr_ratio=0.0, weight_decay=0.0)
    hist = finetune_exits(m, lambda step: batch, cfg=cfg, layers=layers, weights=w)
    with torch.no_grad():
        after = float(early_exit_loss(m, batch, layers=layers, weights=w)[0])
    assert len(hist) == 30 and set(hist[0]) >= {"loss", "ce_top", "ce_l2", "ce_l4"}
    assert after < before - 0.5
    assert not m.training


def test_calm_finetune_writes_a_loadable_hf_folder(hf_folder, tmp_path):
    out = tmp_path / "ft"
    rc, so, se = run("calm-finetune", f"hf:{hf_folder / 'model'}", "--out", str(out), "--steps", "3",
                     "--batch-size", "2", "--seq-len", "16", "--every", "2", "--lr", "1e-3",
                     "--corpus", str(hf_folder / "text.txt"))
    assert rc == 0, se
    res = json.loads(so.strip().splitlines()[-1])
    assert res["exit_layers"] == [2, 4]
    info = json.loads((out / "adaptive_lm.json").read_text())["calm_finetune"]
    assert info["steps"] == 3 and info["exit_every"] == 2
    assert trained_exit_every(f"hf:{out}") == 2 and trained_exit_every(f"hf:{hf_folder / 'model'}") == 1
    tuned, _ = load_hf_causal(f"hf:{out}")
    orig, _ = load_hf_causal(f"hf:{hf_folder / 'model'}")
    a, b = tuned.hf.state_dict(), orig.hf.state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, words", [
    (["calm-finetune", "builtin:calm-pydocs", "--out", "OUT"], ["Hugging Face model"]),
    (["calm-finetune", "hf:MODEL"], ["--out"]),
    (["calm-finetune", "hf:MODEL", "--out", "OUT", "--every", "4"], ["--every"]),
    (["calm-finetune", "hf:MODEL", "--out", "OUT", "--weights", "cubic"], ["--weights"]),
    (["calm-finetune", "hf:MODEL", "--out", "MODEL/config.json"], ["is a file"]),
])
def test_calm_finetune_bad_input_is_one_line(hf_folder, tmp_path, args, words):
    args = [a.replace("MODEL", str(hf_folder / "model")).replace("OUT", str(tmp_path / "o")) for a in args]
    rc, so, se = run(*args, "--corpus", str(hf_folder / "text.txt"))
    assert_one_line_error(rc, se, 2, *words)
    assert not (tmp_path / "o").exists()


def _weights(folder):
    m, _ = load_hf_causal(f"hf:{folder}")
    return m.hf.state_dict()


def test_calm_finetune_stopped_and_resumed_equals_one_run(hf_folder, tmp_path):
    common = ["--steps", "4", "--batch-size", "2", "--seq-len", "16", "--every", "2", "--lr", "1e-3",
              "--corpus", str(hf_folder / "text.txt")]
    model = f"hf:{hf_folder / 'model'}"
    rc, so, se = run("calm-finetune", model, "--out", str(tmp_path / "one"), *common)
    assert rc == 0, se
    part = tmp_path / "two"
    rc, so, se = run("calm-finetune", model, "--out", str(part), "--stop-at", "2", *common)
    assert rc == 0, se
    assert not part.exists() and (tmp_path / "two.resume").is_dir()
    rc, so, se = run("calm-finetune", model, "--out", str(part), *common)      # forgot --resume
    assert_one_line_error(rc, se, 2, "--resume")
    rc, so, se = run("calm-finetune", model, "--out", str(part), *common[:-4], "--lr", "2e-3", *common[-2:], "--resume")
    assert_one_line_error(rc, se, 2, "lr")
    rc, so, se = run("calm-finetune", model, "--out", str(part), "--resume", "--steps", "5", *common[2:])
    assert_one_line_error(rc, se, 2, "steps")                              # the schedule depends on --steps
    state = tmp_path / "two.resume" / "calm_finetune_state.json"
    kept = state.read_text()
    state.write_text("{}")
    rc, so, se = run("calm-finetune", model, "--out", str(part), "--resume", *common)
    assert_one_line_error(rc, se, 1, "corrupt")
    state.write_text(kept)
    rc, so, se = run("calm-finetune", model, "--out", str(part), "--resume", *common)
    assert rc == 0, se
    assert "resuming" in se and not (tmp_path / "two.resume").exists()
    assert json.loads((part / "adaptive_lm.json").read_text())["calm_finetune"]["resumed_at"] == 2
    a, b = _weights(tmp_path / "one"), _weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rc, so, se = run("calm-finetune", model, "--out", str(tmp_path / "three"), "--resume", *common)
    assert_one_line_error(rc, se, 2, "nothing to resume")


def test_a_finetuned_folder_says_its_corpus_and_exit_spacing(tmp_path):
    """calibrate / calm-classifier / bench calm read what calm-finetune wrote into adaptive_lm.json
    (no --corpus needed); a folder without it, or with a damaged one, says nothing."""
    from adaptive_lm.calm.runtime import trained_corpus, trained_exit_every
    (tmp_path / "adaptive_lm.json").write_text(json.dumps({"calm_finetune": {"corpus": "pydocs", "exit_every": 3}}))
    assert trained_corpus(f"hf:{tmp_path}") == "pydocs" and trained_exit_every(f"hf:{tmp_path}") == 3
    (tmp_path / "adaptive_lm.json").write_text('{"calm_finetune": {"exit_every": "x"')
    assert trained_corpus(f"hf:{tmp_path}") == "" and trained_exit_every(f"hf:{tmp_path}", default=1) == 1
    assert trained_corpus("smollm2") == "" and trained_corpus("builtin:calm-pydocs") == "pydocs"
