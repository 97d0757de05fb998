"""Tokenizers: exact round trips (BPE on arbitrary bytes), save/load, clear errors."""
import json
import random

import pytest

from adaptive_lm.tokenizer import BPETokenizer, CharTokenizer, HFTokenizer, TokenizerError, load_tokenizer

from .conftest import TEXT


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train([TEXT, "naïve café — 日本語 テキスト 🙂"], vocab_size=300)


def test_char_round_trip_and_specials():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    ids = {tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id}
    assert len(ids) == 4 and max(ids) < 4
    assert tok.decode([tok.eos_id] + tok.encode("ow")) == "ow"
    with pytest.raises(TokenizerError, match="not in this tokenizer"):
        tok.encode("xyz")
    with pytest.raises(TokenizerError):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("seed", range(5))
def test_bpe_round_trips_arbitrary_bytes(bpe, seed):
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
    assert bpe.decode_bytes(bpe.encode_bytes(data)) == data


@pytest.mark.parametrize("data", [b"", b"\xff\xfe\x00", b"abc\x80def\xc3", "日本語 🙂 naïve".encode(),
                                  b"\r\n\t  trailing  ", b"a" * 1000, "\u0000\u200b".encode()])
def test_bpe_round_trips_edge_cases(bpe, data):
    assert bpe.decode_bytes(bpe.encode_bytes(data)) == data


def test_bpe_treats_special_token_text_as_text(bpe):
    for data in (b"hello [EOS] world", b"[MASK]", b"[PAD][BOS]"):
        ids = bpe.encode_bytes(data)
        assert bpe.decode_bytes(ids) == data
        assert bpe.eos_id not in ids and bpe.mask_id not in ids


def test_bpe_encode_bytes_is_linear_on_binary_data(bpe):
    data = bytes(random.Random(0).randrange(256) for _ in range(200_000))
    assert bpe.decode_bytes(bpe.encode_bytes(data)) == data


def test_bpe_compresses_its_training_text(bpe):
    ids = bpe.encode(TEXT[:500])
    assert len(ids) < 0.6 * 500
    assert bpe.decode(ids) == TEXT[:500]
    assert bpe.mask_id is not None and bpe.eos_id is not None


def test_save_and_load_each_tokenizer(tmp_path, bpe):
    for tok, name in ((CharTokenizer.from_text(TEXT), "c"), (bpe, "b")):
        d = tmp_path / name
        d.mkdir()
        tok.save(d)
        back = load_tokenizer(d)
        assert type(back) is type(tok)
        assert back.encode(TEXT[:200]) == tok.encode(TEXT[:200])
        assert (back.pad_id, back.eos_id, back.mask_id) == (tok.pad_id, tok.eos_id, tok.mask_id)


def test_hf_wrapper_reads_a_tokenizer_json_folder(tmp_path, bpe):
    bpe.tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "[EOS]", "pad_token": {"content": "[PAD]"}}))
    hf = HFTokenizer.from_pretrained(tmp_path)
    assert hf.encode("Speak, speak.") == bpe.encode("Speak, speak.")
    assert hf.eos_id == bpe.eos_id and hf.pad_id == bpe.pad_id
    assert hf.decode(hf.encode("Speak, speak.")) == "Speak, speak."


def test_hf_wrapper_save_load_round_trip(tmp_path, bpe):
    bpe.tok.save(str(tmp_path / "tokenizer.json"))
    hf = HFTokenizer.from_pretrained(tmp_path)
    out = tmp_path / "saved"
    out.mkdir()
    hf.save(out)
    back = load_tokenizer(out)
    assert isinstance(back, HFTokenizer)
    assert back.encode("Speak, speak.") == hf.encode("Speak, speak.")


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"type": "char"}')            # no alphabet
    with pytest.raises(TokenizerError, match="cannot load"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"type": "bpe"}')
    (tmp_path / "tokenizer.json").write_text("{corrupt")
    with pytest.raises(TokenizerError, match="cannot load"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="JSON object"):
        load_tokenizer(tmp_path)
