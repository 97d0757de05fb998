"""`adaptive-lm` commands of the entropy family: compress, decompress, entropy."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UsageError
from .parser import command


@command
def compress(file: str, output: str = "", model: str = "", chunk: int = 0, batch: int = 0, workers: int = 0,
             adapt: int = 3, force: bool = False, quiet: bool = False) -> int:
    """Compress any file losslessly: a causal LM's next-token probabilities + arithmetic coding.

    Args:
        file: the file to compress (any bytes); - reads standard input
        output: the compressed file (default FILE.almz; with input -, standard output); - writes standard output; never overwritten without --force
        model: the LM: builtin:NAME, a checkpoint folder, hf:FOLDER, gguf:FILE or smollm2 (default builtin:compress-mix)
        chunk: tokens per independently coded chunk (0 = the model's training window)
        batch: chunks coded together, one forward per position (0 = automatic)
        workers: batches coded at once, one thread each (0 = one per core torch uses); never changes the output
        adapt: mix the LM with n-gram statistics of the file itself, contexts of up to N tokens (default 3; 0 = the LM alone)
        force: overwrite the output if it exists
        quiet: no progress bar
    """
    from ..entropy.codec import CodecConfig
    from ..entropy.runtime import compress_file
    cfg = CodecConfig(chunk=chunk, batch=batch, workers=workers, adapt=adapt)
    r = compress_file(file, output, model=model, cfg=cfg, force=force,
                      progress=not quiet)
    if r["bytes_in"]:
        rate = f"{r['bits_per_byte']:.3f} bits/byte, {r['bytes_in'] / 1024 / max(r['seconds'], 1e-9):,.1f} KB/s"
    else:
        rate = "empty input: the header alone"
    print(f"{r['output']}: {r['bytes_in']:,} -> {r['bytes_out']:,} bytes, {rate} ({r['model']})",
          file=sys.stderr if r["output"] == "-" else sys.stdout)
    return 0


@command
def decompress(file: str, output: str = "", model: str = "", workers: int = 0, force: bool = False,
               quiet: bool = False) -> int:
    """Decompress a file made by `adaptive-lm compress`; nothing is written unless it decodes exactly.

    Args:
        file: the compressed file; - reads standard input
        output: where to write the original (default FILE without .almz; with input -, standard output); - writes standard output; never overwritten without --force
        model: the LM (default: the one named in the file; its fingerprint must match)
        workers: batches decoded at once, one thread each (0 = one per core torch uses)
        force: overwrite the output if it exists
        quiet: no progress bar
    """
    from ..entropy.runtime import decompress_file
    r = decompress_file(file, output, model=model, workers=workers, force=force, progress=not quiet)
    speed = f"{r['bytes_out'] / 1024 / max(r['seconds'], 1e-9):,.1f} KB/s" if r["bytes_out"] else "empty"
    print(f"{r['output']}: {r['bytes_out']:,} bytes, {speed}", file=sys.stderr if r["output"] == "-" else sys.stdout)
    return 0


@command
def entropy(file: str, model: str = "builtin:eem-pydocs", short_model: str = "", window: int = 0, output: str = "",
            html: str = "", force: bool = False, quiet: bool = False) -> int:
    """Per-token entropy estimates of a text file by an EEM (chain rule over windows): JSON + an HTML heatmap.

    Args:
        file: the text (any bytes) to estimate
        model: an EEM checkpoint (builtin:NAME or folder); trained with data.left_pad for the single-model method
        short_model: an EEM of window N-1 for the two-model method (default: the single-model method)
        window: tokens per window N (0 = the model's training window + 1)
        output: the JSON file (default FILE.entropy.json)
        html: the heatmap (default FILE.entropy.html)
        force: overwrite existing outputs
        quiet: no progress bar
    """
    from ..entropy.runtime import estimate_file
    from ..report import entropy_heatmap
    from ..io import atomic_write_text, check_output
    outs = [check_output(output or file + ".entropy.json", force=force, inputs=[file], flag="-o"),
            check_output(html or file + ".entropy.html", force=force, inputs=[file], flag="--html")]
    if outs[0].resolve() == outs[1].resolve():
        raise UsageError(f"-o and --html name the same file {outs[0]}: give two")
    res = estimate_file(file, model=model, short_model=short_model, window=window, progress=not quiet)
    atomic_write_text(outs[0], json.dumps(res, indent=1))
    atomic_write_text(outs[1], entropy_heatmap([t["text"] for t in res["tokens"]], [t["bits"] for t in res["tokens"]],
                                               title=f"Per-token entropy: {Path(file).name}", summary=res["summary"]))
    s = res["summary"]
    mean = "no estimate" if s["mean_bits_per_token"] is None else f"mean {s['mean_bits_per_token']:.3f} bits/token"
    print(f"{s['tokens']} tokens, {mean} -> {outs[0]}, {outs[1]}")
    return 0
