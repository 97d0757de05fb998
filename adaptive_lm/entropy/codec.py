"""The LM compressor: lossless coding of any bytes with a causal LM's next-token probabilities and
a range coder from the `constriction` library (brief entropy.md, "Anchors for LM compression").

    bytes --tokenizer (byte-level: exact on any bytes)--> ids --chunks of `chunk` tokens--> rows
    rows --lockstep batches of `batch` rows--> one KV-cache step per position: logits (b, V)
         --quantise--> integer frequencies (b, V) summing to 2^24 - V --range coder--> words

Each chunk is coded from a BOS context alone, so chunks are independent and a batch of them runs
as one forward per position. Decompression runs the very same steps (same batch shapes, the
cache's ``exact`` attention, whose result does not depend on the thread count) and so computes
bit-identical frequencies: the range decoder then returns exactly the encoded ids. Rows whose
chunk has ended keep their last input; they are computed and ignored on both sides alike.

File layout, version 2 (integers little-endian; varint = unsigned LEB128):
    b"ALMZ" | version u8 | header | payload | CRC-32 u32 of all before
    header: model spec (varint length + UTF-8) | fingerprint (8 bytes) | original length, token
            count, chunk, batch (4 varints) | precision u8 | CRC-32 u32 of the original bytes
    payload: per batch, a word count (varint) then that many u32 words of the range coder
The header costs ~45 bytes for a builtin model (version 1's JSON header and SHA-256 cost ~235, which
outweighed the payload of a short text). Version 1 files (header length u32 + JSON header with a
SHA-256, u32 word counts) are still read. A wrong model, a truncated or altered file is refused
(``CodecError``) before any output is produced; the decoded bytes are checked against the stored
checksum before they are returned.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import AdaptiveLMError

MAGIC, VERSION = b"ALMZ", 2         # version 1 (JSON header) is still read
PRECISION = 24                      # range coder precision (bits): frequencies sum to 2^24 - V
MAX_CACHE_BYTES = 1 << 30           # default batch: the largest whose KV cache fits in this


class CodecError(AdaptiveLMError):
    """A compressed file that cannot be decoded: not ours, truncated, altered, or another model's."""


@dataclass
class CodecConfig:
    chunk: int = 0        # tokens per independently coded chunk; 0 = the model's training window (<= 512)
    batch: int = 0        # chunks coded together, one forward per position; 0 = fit the KV cache in 1 GiB


def _constriction():
    try:
        import constriction
    except ImportError:
        raise AdaptiveLMError("the compressor needs `constriction`: pip install constriction") from None
    return constriction


def fingerprint(model, tok) -> str:
    """SHA-256 (hex, 16 digits) of what decoding depends on: every weight, and each id's bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for i in range(tok.vocab_size):
        b = tok.decode_bytes([i])
        h.update(struct.pack("<I", len(b)) + b)
    return h.hexdigest()[:16]


def quantize(logits: torch.Tensor) -> np.ndarray:
    """Next-token logits (b, V) -> integer frequencies (b, V) as float32, each row summing exactly to
    2^PRECISION - V (constriction's leaky categorical adds one per symbol and then uses them as
    they are). Floor of p·total, the remainder to the most likely token. Row-wise and elementwise
    ops only, so a row's result does not depend on the other rows or the thread count."""
    V = logits.shape[-1]
    total = float((1 << PRECISION) - V)
    p = torch.softmax(logits.float(), dim=-1)
    f = torch.floor(p * total)
    rest = total - f.sum(-1, keepdim=True)                # exact: sums of integers < 2^24 in float32
    f.scatter_add_(-1, p.argmax(-1, keepdim=True), rest)
    return np.ascontiguousarray(f.numpy(), dtype=np.float32)


def _bos(tok) -> int:
    for i in (tok.bos_id, tok.eos_id):
        if i is not None:
            return i
    raise AdaptiveLMError("this tokenizer has neither a BOS nor an EOS token to start a chunk from")


def resolve_config(model, meta_seq_len: Optional[int], cfg: CodecConfig) -> tuple[int, int]:
    """(chunk, batch) for a model: defaults from its training window and its KV-cache size."""
    c = model.config
    chunk = cfg.chunk or min(meta_seq_len or 512, 512, c.max_seq_len)
    if not 1 <= chunk <= c.max_seq_len:
        raise AdaptiveLMError(f"chunk must be within 1..{c.max_seq_len} (the model's max_seq_len), not {chunk}")
    if cfg.batch < 0:
        raise AdaptiveLMError(f"batch must be >= 1 (or 0 for the default), not {cfg.batch}")
    kv_heads = getattr(c, "n_kv_head", c.n_head)
    row_bytes = 2 * c.n_layer * kv_heads * c.head_dim * chunk * 4
    return chunk, cfg.batch or max(1, min(256, MAX_CACHE_BYTES // row_bytes))


@torch.no_grad()
def code_batch(model, lengths: list[int], *, bos_id: int, code: Callable[[int, np.ndarray], np.ndarray]) -> None:
    """The one coding loop, shared by compression and decompression. ``lengths`` (b,) are the rows'
    token counts, longest first. At step t the rows with more than t tokens are live; their
    frequencies (n_live, V) go to ``code(t, freqs)``, which returns their tokens at t (encoded
    from the known ids, or decoded) — the next step's inputs."""
    b = len(lengths)
    cache = model.new_cache(b, lengths[0])
    cache.exact = True
    inp = torch.full((b, 1), bos_id, dtype=torch.long)
    for t in range(lengths[0]):
        logits = model(inp, cache=cache).logits[:, -1]                       # (b, V)
        live = sum(1 for n in lengths if n > t)
        ids = code(t, quantize(logits[:live]))
        inp[:live, 0] = torch.from_numpy(np.asarray(ids, dtype=np.int64))


def _batches(n_tokens: int, chunk: int, batch: int) -> list[tuple[int, list[int]]]:
    """[(first token, [row lengths]), ...]: chunks of ``chunk`` tokens (the last may be shorter)
    grouped ``batch`` at a time."""
    rows = [(s, min(chunk, n_tokens - s)) for s in range(0, n_tokens, chunk)]
    return [(rows[i][0], [n for _, n in rows[i:i + batch]]) for i in range(0, len(rows), batch)]


def compress(data: bytes, model, tok, *, model_id: str, cfg: CodecConfig = CodecConfig(),
             meta_seq_len: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> bytes:
    """Bytes -> the compressed file (module docstring). ``progress(tokens_done, tokens_total)``."""
    cs = _constriction()
    try:
        ids = tok.encode_bytes(data)
        exact = tok.decode_bytes(ids) == data
    except (UnicodeError, ValueError):
        exact = False
    if not exact:
        raise AdaptiveLMError(f"the tokenizer of {model_id} does not reproduce these bytes exactly "
                              "(not byte-level); use a byte-level BPE model such as builtin:compress-pydocs")
    chunk, batch = resolve_config(model, meta_seq_len, cfg)
    model.eval()
    header = {"model": model_id, "fingerprint": fingerprint(model, tok), "length": len(data),
              "crc32": zlib.crc32(data), "tokens": len(ids), "chunk": chunk, "batch": batch, "precision": PRECISION}
    family = cs.stream.model.Categorical(perfect=False)
    ids_np = np.asarray(ids, dtype=np.int32)
    payload, done = [], 0
    for first, lengths in _batches(len(ids), chunk, batch):
        enc = cs.stream.queue.RangeEncoder()
        rows = np.zeros((len(lengths), lengths[0]), dtype=np.int32)           # (b, chunk) token grid
        for r, n in enumerate(lengths):
            rows[r, :n] = ids_np[first + r * chunk: first + r * chunk + n]

        def code(t, freqs):
            nonlocal done
            sym = np.ascontiguousarray(rows[:freqs.shape[0], t])
            enc.encode(sym, family, freqs)
            done += len(sym)
            if progress:
                progress(done, len(ids))
            return sym

        code_batch(model, lengths, bos_id=_bos(tok), code=code)
        words = enc.get_compressed()
        payload.append(_varint(len(words)) + words.astype("<u4").tobytes())
    body = MAGIC + bytes([VERSION]) + _pack_header(header) + b"".join(payload)
    return body + struct.pack("<I", zlib.crc32(body))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(blob: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); CodecError past ``end`` or beyond 10 bytes."""
    n = shift = 0
    for i in range(pos, min(end, pos + 10)):
        n |= (blob[i] & 0x7F) << shift
        shift += 7
        if not blob[i] & 0x80:
            return n, i + 1
    raise CodecError("the file is truncated or corrupted (bad varint)")


def _pack_header(h: dict) -> bytes:
    """Version 2's binary header (module docstring)."""
    spec = h["model"].encode()
    return (_varint(len(spec)) + spec + bytes.fromhex(h["fingerprint"])
            + b"".join(_varint(h[k]) for k in ("length", "tokens", "chunk", "batch"))
            + bytes([h["precision"]]) + struct.pack("<I", h["crc32"]))


def _unpack_header(blob: bytes, pos: int, end: int) -> tuple[dict, int]:
    n, pos = _read_varint(blob, pos, end)
    if pos + n + 8 > end:
        raise ValueError
    h = {"model": blob[pos:pos + n].decode(), "fingerprint": blob[pos + n:pos + n + 8].hex()}
    pos += n + 8
    for k in ("length", "tokens", "chunk", "batch"):
        h[k], pos = _read_varint(blob, pos, end)
    if pos + 5 > end:
        raise ValueError
    h["precision"], (h["crc32"],) = blob[pos], struct.unpack("<I", blob[pos + 1:pos + 5])
    return h, pos + 5


def read_header(blob: bytes) -> tuple[dict, int]:
    """Check a compressed file's frame (magic, version, CRC) -> (header, payload offset)."""
    if len(blob) < 13 or blob[:4] != MAGIC:
        raise CodecError("not an adaptive-lm compressed file (bad magic)")
    if struct.unpack("<I", blob[-4:])[0] != zlib.crc32(blob[:-4]):
        raise CodecError("the file is truncated or corrupted (CRC-32 mismatch)")
    if blob[4] not in (1, 2):
        raise CodecError(f"format version {blob[4]} is not supported (this adaptive-lm reads versions 1 and {VERSION})")
    try:
        if blob[4] == 1:                                   # JSON header with a SHA-256
            (n,) = struct.unpack("<I", blob[5:9])
            header, pos = json.loads(blob[9:9 + n]), 9 + n
            checksum = isinstance(header, dict) and isinstance(header.get("sha256"), str)
        else:
            header, pos = _unpack_header(blob, 5, len(blob) - 4)
            checksum = True
        ints = ("length", "tokens", "chunk", "batch", "precision")
        if not (checksum and all(isinstance(header.get(k), str) for k in ("model", "fingerprint"))
                and all(isinstance(header.get(k), int) and header[k] >= 0 for k in ints)
                and header["chunk"] >= 1 and header["batch"] >= 1 and pos <= len(blob) - 4):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CodecError("the file's header is unreadable") from None
    if header["precision"] != PRECISION:
        raise CodecError(f"precision {header['precision']} is not supported")
    header["version"] = blob[4]
    return header, pos


def decompress(blob: bytes, model, tok, *, progress: Optional[Callable[[int, int], None]] = None) -> bytes:
    """The compressed file -> the original bytes, exactly; CodecError when it cannot be."""
    cs = _constriction()
    header, pos = read_header(blob)
    if fingerprint(model, tok) != header["fingerprint"]:
        raise CodecError(f"this file was compressed with model {header['model']} (fingerprint "
                         f"{header['fingerprint']}); the model given differs — pass --model {header['model']}")
    if header["chunk"] > model.config.max_seq_len:
        raise CodecError(f"the file's chunk {header['chunk']} exceeds the model's max_seq_len")
    model.eval()
    family = cs.stream.model.Categorical(perfect=False)
    end, out, done = len(blob) - 4, [], 0
    for _, lengths in _batches(header["tokens"], header["chunk"], header["batch"]):
        if header["version"] == 1:
            if pos + 4 > end:
                raise CodecError("the file is truncated (payload ends early)")
            (n,), pos = struct.unpack("<I", blob[pos:pos + 4]), pos + 4
        else:
            n, pos = _read_varint(blob, pos, end)
        if pos + 4 * n > end:
            raise CodecError("the file is truncated (payload ends early)")
        dec = cs.stream.queue.RangeDecoder(np.frombuffer(blob, "<u4", n, pos).astype(np.uint32))
        pos += 4 * n
        rows = np.zeros((len(lengths), lengths[0]), dtype=np.int64)

        def code(t, freqs):
            nonlocal done
            try:
                sym = dec.decode(family, freqs)
            except Exception as e:                         # the range decoder ran off a damaged payload
                raise CodecError(f"the payload is corrupted ({type(e).__name__})") from None
            rows[:len(sym), t] = sym
            done += len(sym)
            if progress:
                progress(done, header["tokens"])
            return sym

        code_batch(model, lengths, bos_id=_bos(tok), code=code)
        out.extend(int(x) for r, ln in enumerate(lengths) for x in rows[r, :ln])
    data = tok.decode_bytes(out) if out else b""
    same = (hashlib.sha256(data).hexdigest() == header["sha256"] if header["version"] == 1
            else zlib.crc32(data) == header["crc32"])
    if pos != end or len(data) != header["length"] or not same:
        raise CodecError("decoding did not reproduce the original (checksum mismatch): the file or the model differs")
    return data
