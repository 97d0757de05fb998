"""The compressor (entropy/codec.py): exact round trips on any bytes, independence from the thread
count and the batch layout, and refusal of anything that cannot decode exactly."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptive_lm.entropy.codec import (PRECISION, CodecConfig, CodecError, code_batch, compress, decompress,
                                       fingerprint, quantize)
from adaptive_lm.model import KVCache, ModelConfig, StepContext, attend

SAMPLES = {
    "empty": b"",
    "one byte": b"a",
    "text": "First Citizen:\nBefore we proceed any further, hear me speak.\n".encode() * 5,
    "invalid utf-8": b"\xff\xfe\x80abc\xc3(\xe2\x82" * 7,
    "binary": bytes(np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8)),
    "special-token text": b"[EOS][BOS][PAD][MASK] <|endoftext|> \x00\x00",
    "unicode": "日本語のテキスト — émoji 🙂\r\n\t".encode() * 3,
}


def _rt(data, lm, **cfg):
    _, model, tok = lm
    blob = compress(data, model, tok, model_id="test", cfg=CodecConfig(**cfg), meta_seq_len=32)
    return blob, decompress(blob, model, tok)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_roundtrip_any_bytes(codec_lm, name):
    blob, back = _rt(SAMPLES[name], codec_lm)
    assert back == SAMPLES[name]


@pytest.mark.parametrize("chunk,batch", [(1, 1), (7, 3), (32, 2), (64, 100)])
def test_roundtrip_chunk_and_batch_layouts(codec_lm, chunk, batch):
    data = SAMPLES["text"] + SAMPLES["binary"][:200]
    _, back = _rt(data, codec_lm, chunk=chunk, batch=batch)
    assert back == data


def test_compression_follows_the_model(codec_lm):
    """The coded size is the model's cross-entropy (+ a few words per batch): check against -sum log2 p."""
    _, model, tok = codec_lm
    ids = tok.encode_bytes(SAMPLES["text"])[:60]
    data = tok.decode_bytes(ids)
    blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=len(ids), batch=1))
    with torch.no_grad():
        x = torch.tensor([[tok.bos_id] + ids[:-1]])
        nll = F.cross_entropy(model(x).logits[0], torch.tensor(ids), reduction="sum").item()
    payload_bits = 8 * len(blob)
    assert nll / np.log(2) <= payload_bits <= nll / np.log(2) * 1.01 + 8 * 600   # header + frame < 600 bytes


def test_decoding_is_independent_of_thread_count(codec_lm):
    _, model, tok = codec_lm
    data = SAMPLES["text"] * 3
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=48, batch=4))
        for n in (2, 3):
            torch.set_num_threads(n)
            assert decompress(blob, model, tok) == data
    finally:
        torch.set_num_threads(before)


def test_decoding_is_independent_of_thread_count_at_a_realistic_width(codec_lm):
    """d=128, 4 layers, 16 rows per batch: the shapes of the shipped model, 1 thread vs 4."""
    from adaptive_lm.model import TransformerLM
    tok = codec_lm[2]
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=4, n_head=4, d_model=128, max_seq_len=64)).eval()
    data = bytes(np.random.default_rng(1).integers(0, 256, 1500, dtype=np.uint8)) + SAMPLES["text"] * 4
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=64, batch=16))
        torch.set_num_threads(4)
        assert decompress(blob, model, tok) == data
    finally:
        torch.set_num_threads(before)


def test_quantize_rows_are_exact_integer_frequencies():
    logits = torch.randn(5, 300) * 8
    logits[0, 3] = 80.0                                         # one token takes nearly all the mass
    f = quantize(logits)
    assert f.dtype == np.float32 and f.flags["C_CONTIGUOUS"]
    assert np.all(f >= 0) and np.all(f == np.floor(f))
    assert np.all(f.sum(1) == (1 << PRECISION) - 300)
    assert np.array_equal(quantize(logits[2:3]), f[2:3])        # a row does not depend on the others


def test_exact_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    mask = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., :2] = False
    cfg = ModelConfig(vocab_size=8, n_layer=1, n_head=2, d_model=16, max_seq_len=8)
    for m in (None, mask):
        exact = StepContext(None, None, m, False, KVCache(cfg, 3, 8, exact=True))
        plain = StepContext(None, None, m, False, KVCache(cfg, 3, 8))
        torch.testing.assert_close(attend(q, k, v, exact), attend(q, k, v, plain))


def test_code_batch_logits_equal_the_full_forward(codec_lm):
    """The coding loop's per-step logits (exact cache) are the model's parallel forward's."""
    _, model, tok = codec_lm
    ids = tok.encode_bytes(SAMPLES["text"])[:20]
    seen = []
    code_batch(model, [20], bos_id=tok.bos_id, code=lambda t, f: (seen.append(f[0]), [ids[t]])[1])
    with torch.no_grad():
        full = model(torch.tensor([[tok.bos_id] + ids[:-1]])).logits[0]
    ref = quantize(full)
    assert len(seen) == 20
    for t in range(20):    # frequencies within rounding of the full forward's
        assert np.abs(seen[t] - ref[t]).max() <= 1 + 1e-4 * ref[t].max()


def test_wrong_model_is_refused(codec_lm, other_lm):
    from adaptive_lm.checkpoint import from_pretrained
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    other, tok = from_pretrained(other_lm)
    assert fingerprint(other, tok) != fingerprint(codec_lm[1], codec_lm[2])
    with pytest.raises(CodecError, match="compressed with model test"):
        decompress(blob, other, tok)


def test_truncated_altered_and_foreign_files_are_refused(codec_lm):
    _, model, tok = codec_lm
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    bad = {"truncated": blob[:-9], "cut to the header": blob[:20], "empty": b"", "not ours": b"PK\x03\x04" + blob[4:]}
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(blob), 12):
        flipped = bytearray(blob)
        flipped[i] ^= 1 << int(rng.integers(0, 8))
        bad[f"bit {i}"] = bytes(flipped)
    for name, b in bad.items():
        with pytest.raises(CodecError):
            decompress(b, model, tok)


def test_a_consistent_but_wrong_payload_is_caught_by_the_checksum(codec_lm):
    """An altered payload with a recomputed CRC (or trailing bytes) passes the frame check; the
    SHA-256 of the decoded bytes / the payload length must still refuse it."""
    import struct
    import zlib
    _, model, tok = codec_lm
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    from adaptive_lm.entropy.codec import read_header
    _, pos = read_header(blob)
    body = bytearray(blob[:-4])
    body[pos + 5] ^= 0x40                                  # inside the first payload word (the last may have slack bits)
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(CodecError, match="did not reproduce|corrupted"):
        decompress(forged, model, tok)
    longer = blob[:-4] + b"\0\0\0\0"
    longer += struct.pack("<I", zlib.crc32(longer))
    with pytest.raises(CodecError):
        decompress(longer, model, tok)


@pytest.mark.parametrize("kw", [dict(mixer="masked_conv"), dict(positions="learned")])
def test_roundtrip_with_the_other_backbones(codec_lm, kw):
    from adaptive_lm.model import TransformerLM
    tok = codec_lm[2]
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=40, **kw)).eval()
    data = SAMPLES["text"] + SAMPLES["invalid utf-8"]
    blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=40, batch=3))
    assert decompress(blob, model, tok) == data


def test_bad_chunk_is_a_clear_error(codec_lm):
    from adaptive_lm.errors import AdaptiveLMError
    _, model, tok = codec_lm
    with pytest.raises(AdaptiveLMError, match="chunk must be within"):
        compress(b"abc", model, tok, model_id="t", cfg=CodecConfig(chunk=65))


def test_header_is_compact_and_varints_round_trip():
    from adaptive_lm.entropy.codec import _read_varint, _varint
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        b = _varint(n)
        assert _read_varint(b + b"\xff", 0, len(b))[0] == n and len(b) == max(1, -(-n.bit_length() // 7))
    with pytest.raises(CodecError, match="varint"):
        _read_varint(b"\x80\x80", 0, 2)                         # continuation bit with nothing after it


def test_short_text_costs_little_more_than_its_payload(codec_lm):
    from adaptive_lm.entropy.codec import _varint, read_header
    blob, back = _rt(SAMPLES["one byte"], codec_lm)
    header, pos = read_header(blob)
    assert back == b"a" and header["version"] == 2
    ints = sum(len(_varint(header[k])) for k in ("length", "tokens", "chunk", "batch"))
    assert pos == 5 + 1 + len("test") + 8 + ints + 1 + 4 <= 32   # magic, version; spec; fingerprint; 4 varints; precision; CRC
    assert len(blob) - pos - 4 <= 1 + 4 * 2                    # one batch: a count and a word or two


def test_version_1_files_are_still_read(codec_lm):
    """A file in the old layout (JSON header with a SHA-256, u32 word counts), built from a new one."""
    import hashlib
    import json
    import struct
    import zlib
    from adaptive_lm.entropy.codec import _read_varint, read_header
    _, model, tok = codec_lm
    data = SAMPLES["text"] * 3
    blob, _ = _rt(data, codec_lm, chunk=16, batch=2)
    h, pos = read_header(blob)
    head = {"model": h["model"], "fingerprint": h["fingerprint"], "length": h["length"], "tokens": h["tokens"],
            "chunk": h["chunk"], "batch": h["batch"], "precision": h["precision"],
            "sha256": hashlib.sha256(data).hexdigest()}
    payload, end = b"", len(blob) - 4
    while pos < end:
        n, pos = _read_varint(blob, pos, end)
        payload += struct.pack("<I", n) + blob[pos:pos + 4 * n]
        pos += 4 * n
    js = json.dumps(head).encode()
    body = b"ALMZ" + bytes([1]) + struct.pack("<I", len(js)) + js + payload
    old = body + struct.pack("<I", zlib.crc32(body))
    assert len(old) > len(blob) + 150 and decompress(old, model, tok) == data
    sha = body.replace(head["sha256"].encode(), b"0" * 64)          # the old checksum is still checked
    with pytest.raises(CodecError, match="did not reproduce"):
        decompress(sha + struct.pack("<I", zlib.crc32(sha)), model, tok)
