"""The LM compressor: lossless coding of any bytes with a causal LM's next-token probabilities and
a range coder from the `constriction` library (brief entropy.md, "Anchors for LM compression").

    bytes --tokenizer (byte-level: exact on any bytes)--> ids --chunks of `chunk` tokens--> rows
    rows --lockstep batches of `batch` rows--> one KV-cache step per position: logits (b, V)
         --softmax--> probabilities (b, V)
         --mixed with the file's own token statistics (adapt.py; format 4, on by default)-->
         --constriction's leaky quantiser--> integer frequencies at 24 bits (every token >= 1)
         --range coder--> words

Each chunk is coded from a BOS context alone, so chunks are independent and a batch of them runs
as one forward per position. Batches are independent too: ``workers`` of them run at once on
Python threads with every torch op single-threaded (the ops release the GIL), which on a small
model is ~1.4x faster than one batch on all cores — small ops split across threads mostly wait
on each other. Decompression runs the very same steps (same batch shapes, single-threaded ops and
the cache's ``exact`` attention, whose result does not depend on the thread count anyway) and so
computes bit-identical probabilities: the range decoder then returns exactly the encoded ids.
Rows whose chunk has ended keep their last input; they are computed and ignored on both sides.

File layout, version 4 (integers little-endian; varint = unsigned LEB128):
    b"ALMZ" | version u8 | header | payload | CRC-32 u32 of all before
    header: model spec (varint length + UTF-8) | fingerprint (8 bytes) | original length, token
            count, chunk, batch (4 varints) | precision u8 | CRC-32 u32 of the original bytes |
            mode u8 (0: the LM alone; 0xFF: stored; else context mixing, the longest context K in
            bits 0-3, the short chain's in 4-7)
    payload: per batch, a word count (varint) then that many u32 words of the range coder
Version 3 is version 4 without the mode byte and without mixing. A stored file (mode 0xFF, token
count 0) holds the original bytes as its payload: written when coding would come out larger than
the input (random or already-compressed bytes), so no file grows by more than its ~50-byte frame.
The header costs ~45 bytes for a builtin model (version 1's JSON header and SHA-256 cost ~235, which
outweighed the payload of a short text). Version 2 is the same layout with our own quantiser
(``quantize``: floor of p·total, the rest to the top token — three more passes over (b, V) than
handing constriction the probabilities); version 1 files (header length u32 + JSON header with a
SHA-256, u32 word counts) are still read. A wrong model, a truncated or altered file is refused
(``CodecError``) before any output is produced; the decoded bytes are checked against the stored
checksum before they are returned.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import AdaptiveLMError, UsageError
from ..model import kv_heads
from .adapt import MAX_ORDER, ContextMixer, MixerConfig, mixer_config

MAGIC, VERSION = b"ALMZ", 4         # versions 1 (JSON header), 2 (our quantiser), 3 (no mixing) are still read
STORED = 0xFF                       # format 4's mode byte of a stored file
PRECISION = 24                      # range coder precision (bits): frequencies sum to 2^24
BATCH_CACHE_BYTES = 1 << 28         # default batch: at most 256 MiB of KV cache (and MAX_ROWS rows)
MAX_ROWS = 512                      # default batch without mixing: at most this many rows (larger: ~10 % faster)
MAX_CACHE_BYTES = 1 << 30           # batches in flight at once: at most this much KV cache together
MAX_FILE_ROWS = 1 << 16             # the largest batch a file may ask for (a crafted header cannot plan more)
MIX_BATCH_TOKENS = 1 << 18          # with context mixing, at most this many tokens a batch (its n-gram tables:
                                    # ~0.5 KB per token and order), when writing and when reading
MIX_BATCH_BYTES = 1 << 29           # with context mixing, the default batch's budget (KV cache + mixing
                                    # buffers): larger than without, as its statistics grow with its rows
SPLIT = 2                           # default layout: a multiple of SPLIT batches, shared evenly by 1 or 2 workers


class CodecError(AdaptiveLMError):
    """A compressed file that cannot be decoded: not ours, truncated, altered, or another model's."""


@dataclass
class CodecConfig:
    chunk: int = 0        # tokens per independently coded chunk; 0 = the model's training window (<= 512)
    batch: int = 0        # chunks coded together, one forward per position; 0 = equal batches of <= MAX_ROWS
                          # rows (KV cache <= 256 MiB), a multiple of SPLIT of them — the same on any machine
    workers: int = 0      # batches coded at once, one thread each; 0 = torch.get_num_threads(). Changes
                          # the speed, never the output
    adapt: int = 3        # mix the LM with n-gram statistics of the file itself, contexts of up to this many
                          # tokens (adapt.py; format 4); 0 = the LM alone


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
    """Format 1-2's quantiser. Next-token logits (b, V) -> integer frequencies (b, V) as float32,
    each row summing exactly to 2^PRECISION - V (constriction's leaky categorical adds one per
    symbol and then uses them as they are). Floor of p·total, the remainder to the most likely
    token. Row-wise and elementwise ops only, so a row's result does not depend on the other rows
    or the thread count."""
    V = logits.shape[-1]
    total = float((1 << PRECISION) - V)
    p = torch.softmax(logits.float(), dim=-1)
    f = torch.floor(p * total)
    rest = total - f.sum(-1, keepdim=True)                # exact: sums of integers < 2^24 in float32
    f.scatter_add_(-1, p.argmax(-1, keepdim=True), rest)
    return np.ascontiguousarray(f.numpy(), dtype=np.float32)


def probabilities(logits: torch.Tensor, version: int = VERSION, out: Optional[torch.Tensor] = None) -> np.ndarray:
    """What the range coder is given for a step's logits (b, V), (b, V) float64 (format 3) or
    float32 integers (formats 1-2): from format 3 the
    softmax, which constriction's ``Categorical(perfect=False)`` turns into integer frequencies at
    2^PRECISION with every token >= 1 (deterministic: the same floats give the same integers; the
    quantiser is constriction's, so its version is pinned in pyproject.toml; a golden test guards
    it); formats 1-2 pass ``quantize``'s integers through it unchanged. Float64 on purpose: given
    float32, constriction accumulates the cumulative sums in float32, which can round the last
    token's share of a confident row to zero (a panic when that token is coded). ``out`` (b, V)
    float64, contiguous: a buffer to reuse across steps (a fresh 7 MB array per step costs more
    in page faults than the softmax itself)."""
    if version >= 3:
        p = torch.softmax(logits.float(), dim=-1)
        if out is None:
            return np.ascontiguousarray(p.double().numpy())
        return out.copy_(p).numpy()
    return quantize(logits)


def _bos(tok) -> int:
    for i in (tok.bos_id, tok.eos_id):
        if i is not None:
            return i
    raise AdaptiveLMError("this tokenizer has neither a BOS nor an EOS token to start a chunk from")


def _workers(n: int) -> int:
    if n < 0:
        raise UsageError(f"workers must be >= 1 (or 0 for one per torch thread), not {n}")
    return n or torch.get_num_threads()


def _row_bytes(model, chunk: int, adapt: int = 0) -> int:
    """Bytes one row of ``chunk`` tokens holds while its batch is coded: its KV cache (float32) and,
    with context mixing, its two (V,) float64 rows (the LM's probabilities and the mixture)."""
    c = model.config
    return 2 * c.n_layer * kv_heads(c) * c.head_dim * chunk * 4 + (16 * c.vocab_size if adapt else 0)


def resolve_config(model, meta_seq_len: Optional[int], cfg: CodecConfig, n_tokens: int = 0) -> tuple[int, int]:
    """(chunk, batch) for a model and a text of ``n_tokens``: the chunk from the model's training
    window; by default the batch that splits the rows into batches of at most MAX_ROWS rows and
    256 MiB of KV cache (with ``cfg.adapt``: at most MIX_BATCH_TOKENS tokens and 512 MiB of KV cache
    and mixing buffers, as a batch's statistics grow with its rows), a multiple of SPLIT of them,
    of equal size but the last (fewer rows
    than SPLIT: one row per batch). It does not depend on the machine or the worker count, so an input
    compresses to the same file everywhere."""
    c = model.config
    chunk = cfg.chunk or min(meta_seq_len or 512, 512, c.max_seq_len)
    if not 1 <= chunk <= c.max_seq_len:
        raise UsageError(f"chunk must be within 1..{c.max_seq_len} (the model's max_seq_len; 0 = the default), not {chunk}")
    if not 0 <= cfg.batch <= MAX_FILE_ROWS:
        raise UsageError(f"batch must be within 1..{MAX_FILE_ROWS} (or 0 for the default), not {cfg.batch}")
    if cfg.adapt and cfg.batch * chunk > MIX_BATCH_TOKENS:
        raise UsageError(f"with context mixing a batch holds at most {MIX_BATCH_TOKENS:,} tokens: "
                         f"batch x chunk = {cfg.batch * chunk:,}")
    _workers(cfg.workers)
    if cfg.batch:
        return chunk, cfg.batch
    cap, budget = (MIX_BATCH_TOKENS // chunk, MIX_BATCH_BYTES) if cfg.adapt else (MAX_ROWS, BATCH_CACHE_BYTES)
    most = max(1, min(cap, budget // _row_bytes(model, chunk, cfg.adapt)))
    rows = max(1, math.ceil(n_tokens / chunk))
    n = min(rows, math.ceil(math.ceil(rows / most) / SPLIT) * SPLIT)
    for m in range(n, rows + 1):                      # ceil(rows / batch) can fall short of m: the first
        batch = math.ceil(rows / m)                   # m whose batches come out a multiple of SPLIT
        if rows < SPLIT or math.ceil(rows / batch) % SPLIT == 0:
            return chunk, batch
    return chunk, math.ceil(rows / n)


def _concurrency(model, chunk: int, batch: int, workers: int, adapt: int = 0) -> int:
    """Worker threads for batches of ``batch`` rows: ``workers`` (0 = torch's thread count), fewer
    if their KV caches (and mixing buffers) together would pass MAX_CACHE_BYTES."""
    return max(1, min(_workers(workers), MAX_CACHE_BYTES // max(1, batch * _row_bytes(model, chunk, adapt))))


@contextmanager
def _coder_errors(kind: type, what: str):
    """constriction's failures as one of ours: its errors, and its Rust panics, which Python sees as
    a BaseException (pyo3's PanicException) that would otherwise escape as a traceback."""
    try:
        yield
    except (MemoryError, _Stopped):
        raise
    except BaseException as e:
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise                                          # KeyboardInterrupt, SystemExit
        raise kind(f"{what} ({type(e).__name__}: {str(e)[:200]})") from e


class _Stopped(Exception):
    """Another worker failed: this one stops at its next step."""


_THREADS = threading.Lock()
_THREAD_USERS = [0, 0]              # coding calls running now, torch's thread count before the first


@contextmanager
def _single_threaded_ops():
    """torch ops single-threaded while any coding call runs in this process (re-entrant: nested or
    concurrent calls restore the original count when the last one ends)."""
    with _THREADS:
        if _THREAD_USERS[0] == 0:
            _THREAD_USERS[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREAD_USERS[0] += 1
    try:
        yield
    finally:
        with _THREADS:
            _THREAD_USERS[0] -= 1
            if _THREAD_USERS[0] == 0:
                torch.set_num_threads(_THREAD_USERS[1])


def _in_parallel(jobs: list, workers: int, fn: Callable, *, progress: Optional[Callable[[int, int], None]] = None,
                 total: int = 0) -> list:
    """[fn(job, tick) ...] in order, ``workers`` jobs at a time on threads, with every torch op
    single-threaded meanwhile: the results cannot depend on the thread or core count. Jobs report
    tokens done with ``tick(n)`` (-> ``progress(done, total)``, serialised). The first failure (or
    Ctrl-C) sets a stop flag that ``tick`` raises on, so running jobs end at their next step;
    queued jobs are cancelled or end at their start; the failure is re-raised."""
    stop = threading.Event()
    tick = _ticker(progress, total, stop)

    def run(job):
        tick(0)                                            # not started after another job failed
        return fn(job, tick)

    with _single_threaded_ops():
        if workers <= 1 or len(jobs) <= 1:
            return [run(j) for j in jobs]
        pool = ThreadPoolExecutor(min(workers, len(jobs)))
        futures = []
        try:
            futures = [pool.submit(run, j) for j in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
            if errors:                                     # the first real failure, not a _Stopped it caused
                raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
            return [f.result() for f in futures]
        finally:
            if not all(f.done() for f in futures) or len(futures) < len(jobs):
                stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


def _ticker(progress: Optional[Callable[[int, int], None]], total: int, stop: threading.Event) -> Callable[[int], None]:
    """A thread-safe ``tick(n)``: n more tokens done -> ``progress(done, total)``; raises _Stopped
    once ``stop`` is set."""
    lock, done = threading.Lock(), [0]

    def tick(n: int) -> None:
        if stop.is_set():
            raise _Stopped
        with lock:
            done[0] += n
            if progress:
                progress(done[0], total)
    return tick


@torch.no_grad()
def code_batch(model, lengths: list[int], *, bos_id: int, code: Callable[[int, np.ndarray], np.ndarray],
               version: int = VERSION, mixing: Optional[MixerConfig] = None) -> None:
    """The one coding loop, shared by compression and decompression. ``lengths`` (b,) are the rows'
    token counts, longest first. At step t the rows with more than t tokens are live; their
    ``probabilities`` (n_live, V) — with ``mixing``, mixed with the batch's own token statistics
    (adapt.ContextMixer) — go to ``code(t, probs)``, which returns their tokens at t (encoded
    from the known ids, or decoded) — the next step's inputs. ``probs`` is a buffer reused at the
    next step: copy it to keep it."""
    b = len(lengths)
    cache = model.new_cache(b, lengths[0])
    cache.exact = True
    inp = torch.full((b, 1), bos_id, dtype=torch.long)
    buf, mixer = None, None
    for t in range(lengths[0]):
        logits = model(inp, cache=cache).logits[:, -1]                       # (b, V)
        if buf is None:
            buf = torch.empty(b, logits.shape[-1], dtype=torch.float64)      # the coder's input, reused
            mixer = ContextMixer(logits.shape[-1], b, mixing) if mixing else None
        live = sum(1 for n in lengths if n > t)
        probs = probabilities(logits[:live], version, out=buf[:live])
        ids = code(t, mixer.mix(probs) if mixer else probs)
        if mixer:
            mixer.update(ids)
        inp[:live, 0] = torch.from_numpy(np.asarray(ids, dtype=np.int64))


def batch_plan(n_tokens: int, chunk: int, batch: int) -> list[tuple[int, list[int]]]:
    """[(first token, [row lengths]), ...]: chunks of ``chunk`` tokens (the last may be shorter)
    grouped ``batch`` at a time."""
    rows = [(s, min(chunk, n_tokens - s)) for s in range(0, n_tokens, chunk)]
    return [(rows[i][0], [n for _, n in rows[i:i + batch]]) for i in range(0, len(rows), batch)]


def token_grid(ids: np.ndarray, first: int, lengths: list[int], chunk: int) -> np.ndarray:
    """(b, lengths[0]) the tokens of one batch of ``batch_plan``, row r = chunk r from ``first``,
    zero-padded after its length."""
    grid = np.zeros((len(lengths), lengths[0]), dtype=ids.dtype)
    for r, n in enumerate(lengths):
        grid[r, :n] = ids[first + r * chunk: first + r * chunk + n]
    return grid


def compress(data: bytes, model, tok, *, model_id: str, cfg: CodecConfig = CodecConfig(),
             meta_seq_len: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None,
             version: int = VERSION) -> bytes:
    """Bytes -> the compressed file (module docstring). ``model_id``: how decompression finds the
    model again (builtin:NAME, a folder, hf:FOLDER...), stored in the header with the model's
    fingerprint. ``meta_seq_len``: the model's training window, the default chunk length
    (``runtime.load_codec_model`` returns it; without it chunks are min(512, max_seq_len)).
    ``progress(tokens_done, tokens_total)`` (called from worker threads, serialised).
    ``version=2`` or ``3`` writes a previous format (neither mixes: ``cfg.adapt`` is then ignored)."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"compress takes bytes, not {type(data).__name__} (encode text first, e.g. s.encode())")
    cs = _constriction()
    try:
        ids = tok.encode_bytes(data)
        exact = tok.decode_bytes(ids) == data
    except (UnicodeError, ValueError):
        exact = False
    if not exact:
        raise AdaptiveLMError(f"the tokenizer of {model_id} does not reproduce these bytes exactly "
                              "(not byte-level); use a byte-level BPE model such as builtin:compress-mix")
    if len(ids) > len(data):                             # the reader's rule: a token covers >= 1 byte
        raise AdaptiveLMError(f"the tokenizer of {model_id} makes more tokens than bytes; the compressor cannot code it")
    if version not in (2, 3, VERSION):
        raise AdaptiveLMError(f"can write format versions 2 to {VERSION}, not {version}")
    if not 0 <= cfg.adapt <= MAX_ORDER:
        raise UsageError(f"adapt must be within 0..{MAX_ORDER} (the longest context in tokens; 0 = no mixing), "
                         f"not {cfg.adapt}")
    if version < 4:
        cfg = replace(cfg, adapt=0)                      # formats 2-3 do not mix: their layout too
    chunk, batch = resolve_config(model, meta_seq_len, cfg, len(ids))
    model.eval()
    header = {"model": model_id, "fingerprint": fingerprint(model, tok), "length": len(data),
              "crc32": zlib.crc32(data), "tokens": len(ids), "chunk": chunk, "batch": batch, "precision": PRECISION,
              "adapt": cfg.adapt, "adapt_low": mixer_config(cfg.adapt).low if cfg.adapt else 0}
    family = cs.stream.model.Categorical(perfect=False)
    ids_np, bos = np.asarray(ids, dtype=np.int32), _bos(tok)

    def job(batch_rows, tick):
        first, lengths = batch_rows
        enc = cs.stream.queue.RangeEncoder()
        rows = token_grid(ids_np, first, lengths, chunk)                       # (b, chunk)

        def code(t, probs):
            sym = np.ascontiguousarray(rows[:probs.shape[0], t])
            with _coder_errors(AdaptiveLMError, "the range coder failed"):
                enc.encode(sym, family, probs)
            tick(len(sym))
            return sym

        code_batch(model, lengths, bos_id=bos, code=code, version=version, mixing=_mixing(header))
        words = enc.get_compressed()
        return _varint(len(words)) + words.astype("<u4").tobytes()

    workers = _concurrency(model, chunk, batch, cfg.workers, cfg.adapt)
    payload = _in_parallel(batch_plan(len(ids), chunk, batch), workers,
                           job, progress=progress, total=len(ids))
    coded = b"".join(payload)
    if version >= 4 and len(coded) > len(data):                        # coding did not pay: keep the bytes
        header, coded = {**header, "tokens": 0, "stored": True}, data
    body = MAGIC + bytes([version]) + _pack_header(header, version) + coded
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


def _pack_header(h: dict, version: int) -> bytes:
    """Versions 2-4's binary header (module docstring)."""
    spec = h["model"].encode()
    return (_varint(len(spec)) + spec + bytes.fromhex(h["fingerprint"])
            + b"".join(_varint(h[k]) for k in ("length", "tokens", "chunk", "batch"))
            + bytes([h["precision"]]) + struct.pack("<I", h["crc32"])
            + (bytes([_mode_byte(h)]) if version >= 4 else b""))


def _mode_byte(h: dict) -> int:
    """Format 4's mode byte: STORED, or the mixing (K | low << 4; 0 = the LM alone)."""
    return STORED if h.get("stored") else h["adapt"] | h["adapt_low"] << 4


def _unpack_header(blob: bytes, pos: int, end: int, version: int) -> tuple[dict, int]:
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
    pos, h["adapt"], h["adapt_low"], h["stored"] = pos + 5, 0, 0, False
    if version >= 4:
        if pos >= end:
            raise ValueError
        mode, pos = blob[pos], pos + 1
        if mode == STORED:
            h["stored"] = True
            if h["tokens"] != 0 or end - pos != h["length"]:             # the payload is the original, exactly
                raise ValueError
        else:
            h["adapt"], h["adapt_low"] = mode & 15, mode >> 4
            if (h["adapt"] or h["adapt_low"]) and not 1 <= h["adapt_low"] <= h["adapt"] <= MAX_ORDER:
                raise ValueError
    return h, pos


def _mixing(header: dict) -> Optional[MixerConfig]:
    """The context mixing a file's header asks for, or None."""
    return MixerConfig(order=header["adapt"], low=header["adapt_low"]) if header.get("adapt") else None


def read_header(blob: bytes) -> tuple[dict, int]:
    """Check a compressed file's frame (magic, version, CRC) -> (header, payload offset)."""
    if blob and len(blob) < 13 and MAGIC.startswith(blob[:4]):
        raise CodecError(f"the file is truncated ({len(blob)} bytes: shorter than a compressed file's frame)")
    if len(blob) < 13 or blob[:4] != MAGIC:
        raise CodecError("not an adaptive-lm compressed file (bad magic)")
    if struct.unpack("<I", blob[-4:])[0] != zlib.crc32(blob[:-4]):
        raise CodecError("the file is truncated or corrupted (CRC-32 mismatch)")
    if blob[4] not in (1, 2, 3, 4):
        raise CodecError(f"format version {blob[4]} is not supported (this adaptive-lm reads versions 1 to {VERSION})")
    try:
        if blob[4] == 1:                                   # JSON header with a SHA-256
            (n,) = struct.unpack("<I", blob[5:9])
            header, pos = json.loads(blob[9:9 + n]), 9 + n
            checksum = isinstance(header, dict) and isinstance(header.get("sha256"), str)
            if checksum:
                header["adapt"] = header["adapt_low"] = 0
                header["stored"] = False
        else:
            header, pos = _unpack_header(blob, 5, len(blob) - 4, blob[4])
            checksum = True
        ints = ("length", "tokens", "chunk", "batch", "precision")
        if not (checksum and all(isinstance(header.get(k), str) for k in ("model", "fingerprint"))
                and all(isinstance(header.get(k), int) and header[k] >= 0 for k in ints)
                and header["chunk"] >= 1 and header["batch"] >= 1 and pos <= len(blob) - 4
                and header["tokens"] <= header["length"]):               # a byte-level token covers >= 1 byte
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CodecError("the file's header is unreadable") from None
    if header["precision"] != PRECISION:
        raise CodecError(f"precision {header['precision']} is not supported")
    rows = -(-header["tokens"] // header["chunk"])
    if -(-rows // header["batch"]) > len(blob) - 4 - pos:               # each batch's size takes >= 1 byte
        raise CodecError("the file is truncated (payload ends early)")
    if min(rows, header["batch"]) > MAX_FILE_ROWS:
        raise CodecError(f"the file's batches of {min(rows, header['batch']):,} rows are beyond what this compressor "
                         f"writes (<= {MAX_FILE_ROWS:,})")
    if header["adapt"] and min(rows, header["batch"]) * header["chunk"] > MIX_BATCH_TOKENS:
        raise CodecError(f"the file's batches of {min(rows, header['batch']) * header['chunk']:,} tokens with context "
                         f"mixing are beyond what this compressor writes (<= {MIX_BATCH_TOKENS:,})")
    header["version"] = blob[4]
    return header, pos


def decompress(blob: bytes, model, tok, *, progress: Optional[Callable[[int, int], None]] = None,
               workers: int = 0) -> bytes:
    """The compressed file -> the original bytes, exactly; CodecError when it cannot be. ``workers``
    batches are decoded at once (0 = torch.get_num_threads()); any count gives the same bytes."""
    if isinstance(blob, (bytearray, memoryview)):
        blob = bytes(blob)
    if not isinstance(blob, bytes):
        raise TypeError(f"decompress takes the compressed bytes, not {type(blob).__name__}")
    cs = _constriction()
    header, pos = read_header(blob)
    if header.get("stored"):                                           # the original bytes, no model needed
        data = blob[pos:len(blob) - 4]
        if zlib.crc32(data) != header["crc32"]:
            raise CodecError("the stored bytes do not match the original's checksum")
        return data
    if fingerprint(model, tok) != header["fingerprint"]:
        raise CodecError(f"this file was compressed with {header['model']} (fingerprint {header['fingerprint']}); "
                         f"the model used here is not the same (fingerprint {fingerprint(model, tok)}): pass --model "
                         "with the exact model it was made with")
    if header["chunk"] > model.config.max_seq_len:
        raise CodecError(f"the file's chunk {header['chunk']} exceeds the model's max_seq_len")
    model.eval()
    family = cs.stream.model.Categorical(perfect=False)
    end, segments, version, bos = len(blob) - 4, [], header["version"], _bos(tok)
    for _, lengths in batch_plan(header["tokens"], header["chunk"], header["batch"]):
        if version == 1:
            if pos + 4 > end:
                raise CodecError("the file is truncated (payload ends early)")
            (n,), pos = struct.unpack("<I", blob[pos:pos + 4]), pos + 4
        else:
            n, pos = _read_varint(blob, pos, end)
        if pos + 4 * n > end:
            raise CodecError("the file is truncated (payload ends early)")
        segments.append((lengths, np.frombuffer(blob, "<u4", n, pos).astype(np.uint32)))
        pos += 4 * n

    def job(segment, tick):
        lengths, words = segment
        dec = cs.stream.queue.RangeDecoder(words)
        rows = np.zeros((len(lengths), lengths[0]), dtype=np.int64)

        def code(t, probs):
            with _coder_errors(CodecError, "the payload is corrupted"):   # the decoder ran off a damaged payload
                sym = dec.decode(family, probs)
            rows[:len(sym), t] = sym
            tick(len(sym))
            return sym

        code_batch(model, lengths, bos_id=bos, code=code, version=version, mixing=_mixing(header))
        return [int(x) for r, ln in enumerate(lengths) for x in rows[r, :ln]]

    workers = _concurrency(model, header["chunk"], header["batch"], workers, header["adapt"])
    out = [i for ids in _in_parallel(segments, workers, job, progress=progress, total=header["tokens"]) for i in ids]
    data = tok.decode_bytes(out) if out else b""
    same = (hashlib.sha256(data).hexdigest() == header["sha256"] if header["version"] == 1
            else zlib.crc32(data) == header["crc32"])
    if pos != end or len(data) != header["length"] or not same:
        raise CodecError("decoding did not reproduce the original (checksum mismatch): the file or the model "
                         "differs, or the file was made with another torch version or CPU instruction set")
    return data
