"""Checkpoints: bit-identical save/load, atomic replacement, clear errors, built-ins."""
import string

import pytest
import torch

from adaptive_lm import checkpoint as ck
from adaptive_lm.errors import CheckpointError
from adaptive_lm.tokenizer import CharTokenizer

from .conftest import TEXT


def test_save_load_is_bit_identical(tmp_path, tiny_model):
    tok = CharTokenizer.from_text(TEXT)
    ck.save_pretrained(tmp_path / "m", tiny_model, tok, {"note": "x"})
    m2, tok2 = ck.from_pretrained(tmp_path / "m")
    sd1, sd2 = tiny_model.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert m2.head.weight is m2.tok_emb.weight          # tying survives the round trip
    x = torch.randint(0, 61, (2, 9))
    assert torch.equal(tiny_model(x).logits, m2(x).logits)
    assert tok2.encode("Speak") == tok.encode("Speak")
    assert ck.read_config(tmp_path / "m")["meta"] == {"note": "x"}


def test_failed_save_keeps_the_old_checkpoint(tmp_path, tiny_model):
    ck.save_pretrained(tmp_path / "m", tiny_model)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def boom(_):
        raise RuntimeError("killed mid-write")
    with torch.no_grad():
        tiny_model.tok_emb.weight.add_(1)
    with pytest.raises(RuntimeError):
        ck.save_pretrained(tmp_path / "m", tiny_model, extra=boom)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]       # no temp folder left behind


def test_kill_between_the_two_renames_recovers_the_old_checkpoint(tmp_path, tiny_model, monkeypatch):
    import os
    from adaptive_lm import io
    ck.save_pretrained(tmp_path / "m", tiny_model)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    real = os.replace
    calls = []

    def flaky(a, b):
        calls.append(a)
        if len(calls) == 2:                       # the second rename: tmp -> m
            raise KeyboardInterrupt("killed")
        return real(a, b)
    monkeypatch.setattr(io.os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        ck.save_pretrained(tmp_path / "m", tiny_model)
    monkeypatch.setattr(io.os, "replace", real)
    assert not (tmp_path / "m").exists()
    model, _ = ck.from_pretrained(tmp_path / "m", with_tokenizer=False)    # recovered
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_saved_files_are_readable_by_others(tmp_path, tiny_model):
    import os
    old = os.umask(0o022)
    try:
        ck.save_pretrained(tmp_path / "m", tiny_model)
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "m" / "config.json").stat().st_mode & 0o777 == 0o644


def test_tokenizer_bigger_than_the_model_is_refused(tmp_path, tiny_model):
    ck.save_pretrained(tmp_path / "m", tiny_model, CharTokenizer.from_text(string.printable))
    with pytest.raises(CheckpointError, match="do not belong together"):
        ck.from_pretrained(tmp_path / "m")


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.from_pretrained(tmp_path / "nope")
    ck.save_pretrained(tmp_path / "m", tiny_model)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt weights"):
        ck.from_pretrained(tmp_path / "m", with_tokenizer=False)
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no built-in"):
        ck.from_pretrained("builtin:does-not-exist")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path, tiny_model, tiny_cfg):
    ck.save_pretrained(tmp_path / "m", tiny_model)
    import json
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"]["n_layer"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        ck.from_pretrained(tmp_path / "m", with_tokenizer=False)


def test_shipped_checkpoints_load_and_fit_the_size_limit():
    names = ck.builtin_names()
    assert "shakespeare-char" in names
    for name in names:
        folder = ck.resolve(f"builtin:{name}")
        assert sum(p.stat().st_size for p in folder.iterdir()) <= 10 * 2**20
        model, tok = ck.from_pretrained(f"builtin:{name}")
        assert model.config.vocab_size == tok.vocab_size


def test_a_run_folder_given_for_its_checkpoint_gets_a_hint(tmp_path):
    from adaptive_lm.checkpoint import read_config
    from adaptive_lm.errors import CheckpointError
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="a training run's model is .*checkpoint"):
        read_config(tmp_path)
