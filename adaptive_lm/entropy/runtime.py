"""The compressor as the CLI and benches use it: load a model by spec, code files with a progress
bar, write outputs atomically, and turn every failure into one clear error."""
from __future__ import annotations

import ctypes
import math
import sys
import time
from pathlib import Path

from ..errors import AdaptiveLMError, UsageError
from ..io import atomic_write_bytes, check_output
from .codec import CodecConfig, compress, decompress, read_header

DEFAULT_MODEL = "builtin:compress-mix"
SUFFIX = ".almz"


def tune_allocator() -> None:
    """glibc only, process-wide: keep freed blocks of up to 32 MiB for reuse instead of returning
    them to the system (M_MMAP_THRESHOLD 32 MiB — older glibc refuses more — then M_TRIM_THRESHOLD
    128 MiB, only if the first was taken: alone it would freeze glibc's own adaptation). The loop's
    largest per-step array is 16 MiB (512 rows x 4096 float64). The coding loop
    allocates the same few-MB tensors (logits, probabilities) at every step; without this each is
    fresh memory faulted in page by page — ~8 % of the compressor's time on 2 cores. The CLI and
    the benches call it; library callers decide for their own process."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(-3, 32 << 20) == 1:  # M_MMAP_THRESHOLD (1 = accepted)
            libc.mallopt(-1, 128 << 20)      # M_TRIM_THRESHOLD
    except (OSError, AttributeError):        # not glibc: nothing to tune
        pass


def load_codec_model(spec: str, *, quiet: bool = False):
    """(model, tokenizer, training window or None) for any causal LM spec: builtin:NAME, a
    checkpoint folder, hf:FOLDER, gguf:FILE or smollm2. ``quiet``: what the libraries print while
    loading (transformers' GGUF conversion bar, its warnings) is dropped; errors still raise."""
    import contextlib
    import io
    from ..checkpoint import read_config
    from ..hf_causal import is_hf_spec, load_causal_lm
    with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
        model, tok = load_causal_lm(spec)
    if not hasattr(model, "new_cache") or not getattr(model.config, "causal", True):
        raise UsageError(f"{spec} is not a causal LM (the compressor needs next-token probabilities)")
    seq_len = None if is_hf_spec(spec) else read_config(spec).get("meta", {}).get("seq_len")
    return model, tok, seq_len


class Meter:
    """A progress bar on stderr for a long coding job: tokens done, percentage, KB/s."""

    def __init__(self, label: str, n_bytes: int, enabled: bool):
        self.label, self.n_bytes, self.enabled = label, n_bytes, enabled
        self.tty, self.t0 = sys.stderr.isatty(), time.time()
        self.last = self.t0                   # the first line after one interval: a short job prints only its end

    def __call__(self, done: int, total: int):
        now = time.time()
        if not self.enabled or (now - self.last < (0.2 if self.tty else 5.0) and done < total):
            return
        self.last = now
        frac = done / max(total, 1)
        kbps = frac * self.n_bytes / 1024 / max(now - self.t0, 1e-9)
        line = f"{self.label} [{'#' * int(24 * frac):<24}] {frac:6.1%} {done:,}/{total:,} tokens {kbps:,.1f} KB/s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty and done >= total:
            print(file=sys.stderr)


STDIO = "-"                  # an input or output path meaning standard input / output


def _read_input(path: str) -> bytes:
    if path == STDIO:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("- reads standard input, which is a terminal here: pipe or redirect the data in")
        return sys.stdin.buffer.read()
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{path} is a folder, not a file")
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise AdaptiveLMError(f"{path}: cannot read ({e.strerror})") from None


def _output(dst: str, *, force: bool, src: str, binary: bool):
    """The output path, checked (``-``: standard output, which takes compressed bytes only through
    a pipe or a redirection, never onto a terminal)."""
    if dst == STDIO:
        if binary and sys.stdout.isatty():
            raise UsageError("compressed data is not written to a terminal: give -o FILE or redirect the output")
        return STDIO
    return check_output(Path(dst), force=force, inputs=[] if src == STDIO else [src])


def _write_output(dst, data: bytes) -> None:
    if dst == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write_bytes(dst, data)


def compress_file(src: str, out: str = "", *, model: str = "", cfg: CodecConfig = CodecConfig(),
                  force: bool = False, progress: bool = True) -> dict:
    """Compress ``src`` into ``out`` (default SRC.almz; ``-`` for either: standard input / output,
    and standard input goes to standard output unless ``out`` is given). Returns sizes, bits per
    byte and speed."""
    data = _read_input(src)
    dst = _output(out or (STDIO if src == STDIO else src + SUFFIX), force=force, src=src, binary=True)
    spec = model or DEFAULT_MODEL
    m, tok, seq_len = load_codec_model(spec, quiet=not progress)
    tune_allocator()
    if Path(spec).is_dir():                  # a folder: named absolutely, so decompression finds it from anywhere
        spec = str(Path(spec).resolve())
    t0 = time.time()
    blob = compress(data, m, tok, model_id=spec, cfg=cfg, meta_seq_len=seq_len,
                    progress=Meter("compress", len(data), progress))
    secs = time.time() - t0
    _write_output(dst, blob)
    return {"input": src, "output": str(dst), "bytes_in": len(data), "bytes_out": len(blob),
            "bits_per_byte": 8 * len(blob) / max(len(data), 1), "seconds": secs, "model": spec}


def decompress_file(src: str, out: str = "", *, model: str = "", workers: int = 0, force: bool = False,
                    progress: bool = True) -> dict:
    """Decompress ``src`` into ``out`` (default: SRC without .almz; ``-``: standard input / output,
    and standard input goes to standard output unless ``out`` is given). Nothing is written unless
    the result matches the original's checksum."""
    blob = _read_input(src)
    header, _ = read_header(blob)
    default = STDIO if src == STDIO else (src[:-len(SUFFIX)] if src.endswith(SUFFIX) else src + ".out")
    dst = _output(out or default, force=force, src=src, binary=False)
    if header.get("stored"):                              # the original bytes as they are: no model to load
        m = tok = None
    else:
        m, tok, _ = load_codec_model(model or header["model"], quiet=not progress)
        tune_allocator()
    t0 = time.time()
    data = decompress(blob, m, tok, workers=workers, progress=Meter("decompress", header["length"], progress))
    secs = time.time() - t0
    _write_output(dst, data)
    return {"input": src, "output": str(dst), "bytes_out": len(data), "seconds": secs, "model": model or header["model"]}



def load_estimator(model: str, short_model: str = "", window: int = 0):
    """(EEM, short EEM or None, tokenizer, window N) for per-token estimates, checked: EEMs with
    attention stacks (the estimates left-pad short windows); for the single-model method one trained
    with left padding; for the two-model method a short model of the same vocabulary and embedding
    size that takes windows of N-1."""
    from ..checkpoint import from_pretrained, read_config
    from .eem import EEM

    def load(spec):
        m, tok = from_pretrained(spec)
        if not isinstance(m, EEM):
            raise UsageError(f"{spec} is not an EEM (entropy estimates need one: adaptive-lm train eem-pydocs)")
        if m.config.encoder.mixer != "attention" or m.config.decoder.mixer != "attention":
            raise UsageError(f"{spec} has masked-mixer stacks, which take no left padding: estimates need attention stacks")
        return m, tok, read_config(spec).get("meta", {})

    m, tok, meta = load(model)
    n = window or meta.get("seq_len", 127) + 1
    if not 2 <= n <= m.config.max_seq_len:
        raise UsageError(f"window must be within 2..{m.config.max_seq_len}, not {n}")
    short = None
    if short_model:
        short, _, _ = load(short_model)
        if short.config.vocab_size != m.config.vocab_size or short.config.d_emb != m.config.d_emb:
            raise UsageError(f"{short_model} does not match {model} (vocabulary and embedding size must agree)")
        if n - 1 > short.config.max_seq_len:
            raise UsageError(f"{short_model} takes windows of at most {short.config.max_seq_len}, not {n - 1}")
    elif not meta.get("left_pad"):
        raise UsageError(f"{model} was not trained with left padding (data.left_pad=true): the single-model "
                         "estimate needs that, or pass --short-model for the two-model method")
    return m, short, tok, n


def estimate_file(src: str, *, model: str, short_model: str = "", window: int = 0, progress: bool = True) -> dict:
    """Per-token entropy estimates of a file (estimate.py) -> {"model", "window", "summary", "tokens":
    [{"id", "text", "bytes" (hex: the token's exact bytes), "bits"}]} (bits None for the first token)."""
    from .estimate import summarize, token_entropies
    data = _read_input(src)
    m, short, tok, n = load_estimator(model, short_model, window)
    ids = tok.encode_bytes(data)
    bar = Meter("entropy", len(data), progress)
    est = token_entropies(m, ids, window=n, short_model=short, pad_id=tok.pad_id or 0, progress=bar)
    raw = [tok.decode_bytes([i]) for i in ids]
    pieces = [r.decode("utf-8", errors="replace") for r in raw]   # a character split across tokens shows as U+FFFD
    bits = [None if h is None else h / math.log(2) for h in est]
    return {"model": model, "short_model": short_model or None, "window": n,
            "summary": summarize(pieces, est),
            "tokens": [{"id": i, "text": p, "bytes": r.hex(), "bits": b} for i, p, r, b in zip(ids, pieces, raw, bits)]}
