"""The compressor (entropy/codec.py): exact round trips on any bytes, independence from the thread
count and the batch layout, and refusal of anything that cannot decode exactly."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptive_lm.entropy.codec import (PRECISION, CodecConfig, CodecError, code_batch, compress, decompress,
                                       fingerprint, quantize, read_header, resolve_config)
from adaptive_lm.kvcache import KVCache, StepContext, attend
from adaptive_lm.model import ModelConfig

GOLDEN_WORDS = "006c5b2228763180"    # sha256[:16] of test_format_3_quantiser_is_stable's words (constriction 0.5.0)

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


def _step_probs(model, lengths, ids, version):
    """Every step's coder input of code_batch, as one array."""
    seen = []

    def code(t, p):
        seen.append(p.copy())
        return [ids[r][t] for r in range(p.shape[0])]
    code_batch(model, lengths, bos_id=1, code=code, version=version)
    return np.concatenate(seen)


@pytest.mark.parametrize("n_kv", [0, 1])
def test_the_coding_loop_is_independent_of_thread_count(codec_lm, n_kv):
    """compress/decompress pin torch to one thread, but files of format 1-2 were written with any
    count: the loop itself (exact attention) must give the same floats under 1 and 4 threads, at
    the shipped models' width (d=128, 4 heads; grouped K/V too), 16 rows of a batch."""
    from adaptive_lm.model import TransformerLM
    tok = codec_lm[2]
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=4, n_head=4, n_kv_head=n_kv, d_model=128,
                                      max_seq_len=64)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, tok.vocab_size, (16, 40), generator=g).tolist()
    lengths = [40] * 10 + [33] * 6
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 4):
            torch.set_num_threads(n)
            runs.append([_step_probs(model, lengths, ids, v) for v in (2, 3)])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


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
    """The coding loop's per-step probabilities (exact cache) are the model's parallel forward's;
    format 2's are the quantised frequencies of the same."""
    _, model, tok = codec_lm
    ids = tok.encode_bytes(SAMPLES["text"])[:20]
    with torch.no_grad():
        full = model(torch.tensor([[tok.bos_id] + ids[:-1]])).logits[0]
    for version, ref, tol in ((3, torch.softmax(full, -1).numpy(), 1e-6), (2, quantize(full), None)):
        seen = []
        code_batch(model, [20], bos_id=tok.bos_id, code=lambda t, f: (seen.append(f[0].copy()), [ids[t]])[1],
                   version=version)
        assert len(seen) == 20
        for t in range(20):
            err = np.abs(seen[t] - ref[t]).max()
            assert err <= (tol if tol else 1 + 1e-4 * ref[t].max())    # within rounding


def test_wrong_model_is_refused(codec_lm, other_lm):
    from adaptive_lm.checkpoint import from_pretrained
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    other, tok = from_pretrained(other_lm)
    assert fingerprint(other, tok) != fingerprint(codec_lm[1], codec_lm[2])
    with pytest.raises(CodecError, match="compressed with test .*not the same"):
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
    for short in (blob[:2], blob[:10]):                       # a frame's start, cut: truncated, not foreign
        with pytest.raises(CodecError, match="truncated"):
            decompress(short, model, tok)


@pytest.mark.parametrize("forge,why", [({"tokens": 10**12, "length": 10**12}, "payload ends early"),
                                       ({"tokens": 10**6, "length": 10}, "header is unreadable"),
                                       ({"tokens": 10**12, "length": 10**12, "batch": 10**12}, "batches of")])
def test_a_crafted_header_with_a_huge_token_count_is_refused_at_once(codec_lm, monkeypatch, forge, why):
    """A hostile header (valid CRC) claiming 10^12 tokens must not make the decoder plan 10^12 rows:
    more batches than payload bytes, or more tokens than bytes, is refused before any work."""
    import struct
    import zlib
    from adaptive_lm.entropy import codec
    from adaptive_lm.entropy.codec import _pack_header
    _, model, tok = codec_lm
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    header, pos = read_header(blob)
    old = _pack_header(header, header["version"])
    assert blob[5:pos] == old                                       # the header sits between version and payload
    forged = blob[:5] + _pack_header({**header, **forge}, header["version"]) + blob[pos:-4]
    forged += struct.pack("<I", zlib.crc32(forged))
    monkeypatch.setattr(codec, "batch_plan", lambda *a: pytest.fail("the decoder planned the forged file's rows"))
    with pytest.raises(CodecError, match=why):
        decompress(forged, model, tok)


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
    assert back == b"a" and header["version"] == 4
    ints = sum(len(_varint(header[k])) for k in ("length", "tokens", "chunk", "batch"))
    assert pos == 5 + 1 + len("test") + 8 + ints + 1 + 4 + 1 <= 33   # magic, version; spec; fingerprint; 4 varints;
                                                                     # precision; CRC; mixing
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
    _, model, tok = codec_lm
    blob = compress(data, model, tok, model_id="test", cfg=CodecConfig(chunk=16, batch=2), version=2)
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


@pytest.mark.parametrize("version", [2, 3])
def test_version_2_and_3_files_are_still_read(codec_lm, version):
    """Formats 2 (our own quantiser) and 3 (no mixing) are written on request and read back
    exactly; their payloads differ from format 4's."""
    _, model, tok = codec_lm
    data = SAMPLES["text"] + SAMPLES["unicode"]
    old = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=24), version=version)
    new = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=24))
    (h_old, p_old), (h_new, p_new) = read_header(old), read_header(new)
    assert h_old["version"] == version and h_new["version"] == 4 and h_old["adapt"] == 0 and h_new["adapt"] == 3
    assert old[p_old:-4] != new[p_new:-4]                # the payloads differ, not just the version byte
    assert decompress(old, model, tok) == data == decompress(new, model, tok)


def test_format_3_equals_format_4_without_mixing(codec_lm):
    """adapt=0 codes the LM alone: the payload of format 3, byte for byte."""
    _, model, tok = codec_lm
    data = SAMPLES["text"] * 2
    v3 = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=24, batch=4), version=3)
    v4 = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=24, batch=4, adapt=0))
    (_, p3), (h4, p4) = read_header(v3), read_header(v4)
    assert h4["adapt"] == 0 and v3[p3:-4] == v4[p4:-4] and decompress(v4, model, tok) == data


@pytest.mark.parametrize("enc_workers,dec_workers", [(1, 2), (2, 1), (3, 2)])
def test_any_worker_count_decodes_any_file(codec_lm, enc_workers, dec_workers):
    """Batches coded on 1, 2 or 3 worker threads give one file per batch layout, decodable with any
    worker count; the torch thread count is restored afterwards."""
    _, model, tok = codec_lm
    data = SAMPLES["text"] * 2 + SAMPLES["binary"]
    before = torch.get_num_threads()
    blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=16, batch=3, workers=enc_workers))
    one = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=16, batch=3, workers=1))
    assert blob == one                                   # workers change the speed, never the bytes
    assert decompress(blob, model, tok, workers=dec_workers) == data
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("adapt", [0, 3])
def test_default_batches_are_even_and_machine_independent(codec_lm, adapt):
    """The default layout: at most MAX_ROWS rows a batch without mixing (with mixing, as many as
    the KV-cache budget allows); a multiple of SPLIT batches (so the workers share them evenly)
    whenever the rows allow it; fewer rows than SPLIT -> one row per batch; never dependent on the
    worker count (the same input makes the same file anywhere)."""
    from adaptive_lm.entropy.codec import MAX_ROWS, MIX_BATCH_BYTES, MIX_BATCH_TOKENS, SPLIT, _row_bytes
    _, model, _ = codec_lm
    most = min(MIX_BATCH_BYTES // _row_bytes(model, 32, adapt), MIX_BATCH_TOKENS // 32) if adapt else MAX_ROWS
    for rows in list(range(1, 40)) + [511, 512, 513, 860, 1025, 4097, 9000]:
        chunk, batch = resolve_config(model, 32, CodecConfig(adapt=adapt), rows * 32 - 3)
        assert chunk == 32 and 1 <= batch <= most
        if adapt and rows >= SPLIT and rows <= SPLIT * most:
            assert -(-rows // batch) == SPLIT            # with mixing: as few batches as the layout allows
        n = -(-rows // batch)                            # batches actually made
        if rows < SPLIT:
            assert batch == 1
        else:
            assert n % SPLIT == 0
        assert n * batch - rows < batch                  # only the last batch is short
        for workers in (1, 3, 16):
            assert resolve_config(model, 32, CodecConfig(workers=workers, adapt=adapt), rows * 32 - 3) == (chunk, batch)
    with pytest.raises(Exception, match="workers"):
        resolve_config(model, 32, CodecConfig(workers=-1), 10)


def test_default_batches_are_even_for_a_large_cache(codec_lm, monkeypatch):
    """A model whose KV cache allows only 11 rows a batch (SmolLM2-sized): the batch count is still
    a multiple of SPLIT whenever some batch size <= 11 gives one."""
    from adaptive_lm.entropy import codec
    _, model, _ = codec_lm
    monkeypatch.setattr(codec, "MIX_BATCH_BYTES", 11 * codec._row_bytes(model, 32, adapt=3))
    for rows in range(2, 400):
        _, batch = resolve_config(model, 32, CodecConfig(), rows * 32)
        assert batch <= 11
        possible = any(-(-rows // b) % codec.SPLIT == 0 for b in range(1, 12))
        assert (-(-rows // batch) % codec.SPLIT == 0) == possible


def test_a_damaged_payload_is_refused_with_workers(codec_lm):
    """A damaged batch in the middle of a file decoded by two workers: one CodecError, and the
    thread count restored."""
    import struct
    import zlib
    _, model, tok = codec_lm
    data = SAMPLES["text"] * 4
    blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=16, batch=2, workers=2))
    body = bytearray(blob[:-4])
    body[len(body) // 2] ^= 0xFF                         # inside the payload, past the first batch
    bad = bytes(body) + struct.pack("<I", zlib.crc32(body))
    before = torch.get_num_threads()
    with pytest.raises(CodecError):
        decompress(bad, model, tok, workers=2)
    assert torch.get_num_threads() == before


def test_progress_from_workers_counts_every_token_once(codec_lm):
    _, model, tok = codec_lm
    data = SAMPLES["text"] * 3
    seen = []
    blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=16, batch=2, workers=2),
                    progress=lambda done, total: seen.append((done, total)))
    total = read_header(blob)[0]["tokens"]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (total, total)


def test_in_parallel_raises_the_failure_not_the_stop_it_caused():
    """Job 0 runs until told to stop; job 1 fails: the caller sees job 1's error, job 0 stopped."""
    import time
    from adaptive_lm.entropy.codec import _in_parallel, _Stopped
    stopped = []

    def job(j, tick):
        if j == 1:
            time.sleep(0.05)
            raise CodecError("batch 1 is damaged")
        try:
            for _ in range(2000):                        # ~10 s at most: a missing stop fails, not hangs
                tick(0)
                time.sleep(0.005)
        except _Stopped:
            stopped.append(j)
            raise
        return "ran to the end"

    with pytest.raises(CodecError, match="batch 1"):
        _in_parallel([0, 1], 2, job)
    assert stopped == [0]


def test_a_confident_row_still_codes_the_last_token():
    """The last id of the vocabulary at ~1e-4000 probability (logit -1e4 among confident rows): its
    frequency must stay >= 1 so it encodes and decodes (float32 inputs made constriction round
    it to zero and panic)."""
    import constriction
    from adaptive_lm.entropy.codec import probabilities
    V = 4096
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, V, generator=g) * 4
    logits[:, 7] = 30.0                                  # confident rows
    logits[:, -1] = -1e4
    probs = probabilities(logits)
    sym = np.full(64, V - 1, dtype=np.int32)
    family = constriction.stream.model.Categorical(perfect=False)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(sym, family, probs)
    dec = constriction.stream.queue.RangeDecoder(enc.get_compressed())
    assert np.array_equal(dec.decode(family, probs), sym)


def test_format_3_quantiser_is_stable():
    """Golden words: fixed probabilities and symbols -> the exact range-coder output this release
    writes. If constriction's quantiser or coder changed, format-3 files would stop decoding."""
    import hashlib
    import constriction
    rng = np.random.default_rng(1234)
    probs = rng.dirichlet(np.full(300, 0.3), size=32)            # (32, 300) float64
    sym = np.array([rng.choice(300, p=p) for p in probs], dtype=np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(sym, constriction.stream.model.Categorical(perfect=False), probs)
    words = enc.get_compressed().astype("<u4").tobytes()
    assert hashlib.sha256(words).hexdigest()[:16] == GOLDEN_WORDS


def test_a_file_written_by_the_previous_release_still_decodes(codec_lm):
    """data/v2_fixture.almz was written by the release before format 3 (commit c94e34b, 2 torch
    threads, the codec_lm fixture's weights, chunk 16, batch 3): today's code must decode it
    exactly, through the rewritten attention and the worker threads."""
    from pathlib import Path
    _, model, tok = codec_lm
    blob = (Path(__file__).parent / "data" / "v2_fixture.almz").read_bytes()
    assert read_header(blob)[0]["version"] == 2
    want = "First Citizen:\nBefore we proceed any further, hear me speak.\n".encode() * 5 + b"\xff\xfe\x80abc" + \
        "日本語 🙂".encode()
    for workers in (1, 2):
        try:
            got = decompress(blob, model, tok, workers=workers)
        except CodecError:
            if _float_probe(model, tok, want) != WRITER_FLOAT_PROBE:
                pytest.skip("this CPU computes the fixture model's logits with other rounding than the machine "
                            "that wrote the file (a documented limit of the format, see CodecError)")
            raise
        assert got == want


# sha256[:16] of the v2 quantiser's frequencies for the fixture model's logits on the fixture's first
# 15 tokens, on a machine that decodes data/v2_fixture.almz (the CPU-2 dev machine, 2026-12-03).
WRITER_FLOAT_PROBE = "b92db84b4d05f9e7"


def _float_probe(model, tok, data: bytes) -> str:
    """A fingerprint of how this machine rounds the model's forward pass (see WRITER_FLOAT_PROBE)."""
    import hashlib
    from adaptive_lm.entropy.codec import _bos, quantize
    ids = torch.tensor([[_bos(tok)] + tok.encode_bytes(data)[:15]])
    with torch.no_grad():
        logits = model(ids).logits[0]                                   # (16, V)
    return hashlib.sha256(quantize(logits).tobytes()).hexdigest()[:16]


def test_float_probe_tells_weights_apart(codec_lm):
    """The probe that lets the fixture test skip on other CPUs does see a change in the logits."""
    _, model, tok = codec_lm
    data = b"First Citizen:\nBefore we proceed any further"
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.weight[0, 0] += 1e-3
    assert _float_probe(other, tok, data) != _float_probe(model, tok, data)


@pytest.mark.parametrize("byte", [0x31, 0x20, 0x0F | 0x00])
def test_a_mixing_byte_it_cannot_decode_is_refused(codec_lm, byte):
    """The header's mixing byte: a short chain longer than the long one, a short chain without a
    long one, or a long one without a short one is an unreadable header, not a wrong decode."""
    import struct
    import zlib
    _, model, tok = codec_lm
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    header, pos = read_header(blob)
    assert blob[pos - 1] == header["adapt"] | header["adapt_low"] << 4 == 0x23     # the default: K 3, short chain 2
    body = blob[:pos - 1] + bytes([byte]) + blob[pos:-4]
    with pytest.raises(CodecError, match="header is unreadable"):
        decompress(body + struct.pack("<I", zlib.crc32(body)), model, tok)


def test_mixing_batches_are_capped_when_writing_and_when_reading(codec_lm):
    """With context mixing a batch's n-gram tables grow with its tokens: the writer refuses a
    batch x chunk over MIX_BATCH_TOKENS, and a file that asks for more is refused before any work."""
    import struct
    import zlib
    from adaptive_lm.entropy.codec import MIX_BATCH_TOKENS, _pack_header
    from adaptive_lm.errors import UsageError
    _, model, tok = codec_lm
    with pytest.raises(UsageError, match="at most"):
        resolve_config(model, 32, CodecConfig(chunk=32, batch=MIX_BATCH_TOKENS // 32 + 1), 10**6)
    assert resolve_config(model, 32, CodecConfig(chunk=32, batch=MIX_BATCH_TOKENS // 32 + 1, adapt=0), 10**6)[1] > 0
    blob, _ = _rt(SAMPLES["text"], codec_lm)
    header, pos = read_header(blob)
    big = {**header, "chunk": 32, "batch": MIX_BATCH_TOKENS // 32 + 1, "tokens": 32 * (MIX_BATCH_TOKENS // 32 + 1)}
    big["length"] = big["tokens"]
    body = blob[:5] + _pack_header(big, 4) + b"\x00" * (big["tokens"] // 1000) + blob[pos:-4]
    with pytest.raises(CodecError, match="tokens with context mixing"):
        decompress(body + struct.pack("<I", zlib.crc32(body)), model, tok)


def test_incompressible_bytes_are_stored_and_grow_by_the_frame_only(codec_lm, other_lm):
    """Random bytes code to more than they are: the file then holds them as they are (mode STORED),
    decodes without the model's arithmetic, and checks them against the original's CRC."""
    import struct
    import zlib
    from adaptive_lm.checkpoint import from_pretrained
    from adaptive_lm.entropy.codec import STORED
    _, model, tok = codec_lm
    data = np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    blob = compress(data, model, tok, model_id="t", cfg=CodecConfig(chunk=32))
    header, pos = read_header(blob)
    assert header["stored"] and header["tokens"] == 0 and blob[pos - 1] == STORED
    assert blob[pos:-4] == data and len(blob) - len(data) <= 60
    assert decompress(blob, model, tok) == data
    other, other_tok = from_pretrained(other_lm)
    assert decompress(blob, other, other_tok) == data                  # stored bytes need no model
    text = SAMPLES["text"] * 3                                          # text still codes
    assert not read_header(compress(text, model, tok, model_id="t"))[0]["stored"]
    for bad in (blob[:pos] + data[:-1], blob[:pos] + data + b"x"):       # a payload of the wrong size
        with pytest.raises(CodecError, match="header is unreadable"):
            decompress(bad + struct.pack("<I", zlib.crc32(bad)), model, tok)
    flipped = blob[:pos] + bytes([data[0] ^ 1]) + data[1:]              # consistent frame, wrong bytes
    with pytest.raises(CodecError, match="checksum"):
        decompress(flipped + struct.pack("<I", zlib.crc32(flipped)), model, tok)
    assert not read_header(compress(data, model, tok, model_id="t", version=3))[0]["stored"]   # format 3: never


def test_bytes_like_inputs_and_clear_type_errors(codec_lm):
    _, model, tok = codec_lm
    data = b"def f(x):\n    return x\n"
    blob = compress(memoryview(data), model, tok, model_id="t")
    assert blob == compress(bytearray(data), model, tok, model_id="t") == compress(data, model, tok, model_id="t")
    assert decompress(memoryview(blob), model, tok) == data
    with pytest.raises(TypeError, match="encode text first"):
        compress("text", model, tok, model_id="t")
    with pytest.raises(TypeError, match="compressed bytes"):
        decompress(blob.decode("latin-1"), model, tok)
