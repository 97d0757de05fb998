"""`adaptive-lm bench compress`: the LM compressor against the standard codecs, on one file.

Bits per byte (compressed size, header and frame included, × 8 / original size) and compress /
decompress speed (KB/s of original data, wall clock, as many worker threads as torch threads) for our
compressor with each model given, with its default context mixing (``adapt``, the file's own n-gram
statistics; entropy/adapt.py) and with the LM alone, and for gzip -9, bz2 -9, xz -9e, zstd -19 and brotli -q 11
through their own libraries. Every codec's round trip is checked byte for byte (``roundtrip``).
Default input: the pydocs test split (never seen in training); `input=FILE` for any other file,
e.g. English prose the model never saw (tinyshakespeare.txt), or `corpus=NAME split=S` for one
split of a named corpus (data.py), e.g. `corpus=gsm8k split=test`, as UTF-8. Targets (issue 6): ours ≤ 0.75 ×
xz on pydocs test, ≤ 0.9 × xz on unseen prose, ≥ 50 KB/s both ways on 2 CPU cores.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import corpus_path, read_text
from ..entropy.adapt import MAX_ORDER, ContextMixer, mixer_config
from ..entropy.codec import CodecConfig, batch_plan, compress, decompress, resolve_config, token_grid
from ..entropy.runtime import DEFAULT_MODEL, Meter, load_codec_model, tune_allocator
from ..errors import UsageError
from . import number_list, register


@dataclass
class CompressBenchOptions:
    input: str = ""               # file to compress (default: the pydocs test split)
    corpus: str = ""              # instead of input: a named corpus (data.py), its `split` as UTF-8
    split: str = "test"           # the split of `corpus` to compress
    models: str = DEFAULT_MODEL   # comma-separated causal LMs: builtin:NAME, folders, hf:FOLDER, gguf:FILE, smollm2
    max_bytes: int = 0            # use only the first N bytes of the input (0 = all)
    chunk: int = 0                # tokens per chunk (0 = the model's training window)
    batch: int = 0                # chunks per batch (0 = automatic)
    workers: int = 0              # batches coded at once, one thread each (0 = torch.get_num_threads())
    adapt: str = "3,0"            # context mixing orders to run per model (comma-separated; 0 = the LM alone)
    ngram_alone: bool = True      # also the first order's file statistics under a uniform LM (ideal code length)
    baselines: bool = True        # also run gzip, bz2, xz, zstd, brotli
    data_dir: str = ""            # data folder (default $ADAPTIVE_LM_DATA or ../shared/data)


def standard_codecs() -> dict:
    """name -> (compress, decompress) of the standard codecs at their strongest usual settings."""
    codecs = {"gzip -9": (lambda b: gzip.compress(b, 9, mtime=0), gzip.decompress),
              "bz2 -9": (lambda b: bz2.compress(b, 9), bz2.decompress),
              "xz -9e": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress)}
    try:
        import zstandard
        codecs["zstd -19"] = (zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress)
    except ImportError:
        pass
    try:
        import brotli
        codecs["brotli -q 11"] = (lambda b: brotli.compress(b, quality=11), brotli.decompress)
    except ImportError:
        pass
    return codecs


def _row(codec: str, data: bytes, blob: bytes, back: bytes, t_c: float, t_d: float) -> dict:
    kb = len(data) / 1024
    return {"codec": codec, "bpb": 8 * len(blob) / max(len(data), 1), "compress_kbps": kb / max(t_c, 1e-9),
            "decompress_kbps": kb / max(t_d, 1e-9), "roundtrip": back == data}


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def ngram_alone_bits(model, tok, data: bytes, cfg: CodecConfig, meta_seq_len) -> float:
    """Ideal code length (bits) of ``data`` under the context mixer with a uniform distribution in
    place of the LM, in the compressor's own chunk and batch layout: what the file's own statistics
    give without the model."""
    ids = np.asarray(tok.encode_bytes(data), dtype=np.int64)
    chunk, batch = resolve_config(model, meta_seq_len, cfg, len(ids))
    V, bits = model.config.vocab_size, 0.0                  # the logits' width, as the compressor's mixer
    for first, lengths in batch_plan(len(ids), chunk, batch):
        rows = token_grid(ids, first, lengths, chunk)                          # (b, chunk)
        mixer = ContextMixer(V, len(lengths), mixer_config(cfg.adapt))
        uniform = np.full((len(lengths), V), 1.0 / V)
        for t in range(lengths[0]):
            live = sum(1 for n in lengths if n > t)
            x = rows[:live, t]
            bits -= float(np.log2(mixer.mix(uniform[:live])[np.arange(live), x]).sum())
            mixer.update(x)
    return bits


def _input_bytes(o: CompressBenchOptions) -> tuple[bytes, str]:
    """(the bytes to compress, where they came from) for input=, corpus= or the default."""
    if o.input and o.corpus:
        raise UsageError("give input=FILE or corpus=NAME, not both")
    if o.corpus:
        return read_text(o.corpus, o.split, data_dir_flag=o.data_dir or None).encode("utf-8"), f"{o.corpus}:{o.split}"
    path = Path(o.input) if o.input else corpus_path("pydocs", "test", o.data_dir or None)[0]
    if not path.is_file():
        raise UsageError(f"input={path}: no such file")
    return path.read_bytes(), str(path)


@register("compress", CompressBenchOptions)
def bench_compress(seed: int, o: CompressBenchOptions) -> dict:
    """The LM compressor vs gzip/bz2/xz/zstd/brotli: bits per byte, KB/s both ways, round trip."""
    if o.max_bytes < 0:
        raise UsageError(f"max_bytes must be >= 0 (0 = all), not {o.max_bytes}")
    orders = number_list("adapt", o.adapt, lo=0, hi=MAX_ORDER)
    data, source = _input_bytes(o)
    if o.max_bytes > 0:
        data = data[:o.max_bytes]
    rows = []
    tune_allocator()                                      # as the CLI does
    for spec in [s.strip() for s in o.models.split(",") if s.strip()]:
        model, tok, seq_len = load_codec_model(spec)
        for k in orders:
            cfg = CodecConfig(chunk=o.chunk, batch=o.batch, workers=o.workers, adapt=k)
            name = f"lm {spec}" + (f" + {k}-token contexts" if k else "")
            blob, t_c = _timed(lambda: compress(data, model, tok, model_id=spec, cfg=cfg, meta_seq_len=seq_len,
                                                progress=Meter(f"{name} compress", len(data), True)))
            back, t_d = _timed(lambda: decompress(blob, model, tok, workers=o.workers,
                                                  progress=Meter(f"{name} decompress", len(data), True)))
            rows.append(_row(name, data, blob, back, t_c, t_d))
        if o.ngram_alone and orders and orders[0] > 0 and data:
            cfg = CodecConfig(chunk=o.chunk, batch=o.batch, adapt=orders[0])
            bits = ngram_alone_bits(model, tok, data, cfg, seq_len)
            rows.append({"codec": f"{orders[0]}-token contexts alone, {spec}'s tokens (ideal code length, no LM)",
                         "bpb": bits / len(data), "compress_kbps": None, "decompress_kbps": None, "roundtrip": None})
    if o.baselines:
        for name, (enc, dec) in standard_codecs().items():
            blob, t_c = _timed(enc, data)
            back, t_d = _timed(dec, blob)
            rows.append(_row(name, data, blob, back, t_c, t_d))
    out = {"rows": rows, "input": source, "bytes": len(data)}
    xz = next((r["bpb"] for r in rows if r["codec"] == "xz -9e"), None)
    if xz:
        ours = [r for r in rows if r["codec"].startswith("lm ") or r["roundtrip"] is None]
        out["ratio_to_xz"] = {r["codec"]: round(r["bpb"] / xz, 4) for r in ours}
    return out
