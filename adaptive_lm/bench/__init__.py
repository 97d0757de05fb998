"""Benchmarks: `adaptive-lm bench NAME [--json OUT] [--seed N] [key=value ...]`.

Each bench is a function ``bench(seed, **options) -> {"rows": [...], ...}`` registered in
BENCHES. ``run_bench`` adds the environment (torch version, CPU model, threads, date, the command
that reruns it), prints the rows as a table, and writes the JSON atomically. Speed targets live
here, never in unit tests.
"""
from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import platform
import re
import shlex
import sys
import typing
from pathlib import Path
from typing import Callable

import torch

from .. import THREADS_ENV
from .. import tasks  # noqa: F401  (registers the task corpora: a bench may read corpus=arith)
from ..data import joined_parts
from ..errors import UsageError
from ..io import atomic_write_text, check_output
from ..recipes import coerce

BENCHES: dict[str, tuple[Callable, type]] = {}   # name -> (function, options dataclass)


def register(name: str, options_cls: type):
    def deco(fn):
        BENCHES[name] = (fn, options_cls)
        return fn
    return deco


def bench_device(spec: str) -> str:
    """A bench's ``device`` option: cpu, cuda, cuda:N, or auto (cuda when available) -> the device
    used; anything else, or a GPU this machine lacks, is one UsageError."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if not m:
        raise UsageError(f"device={spec}: use cpu, cuda, cuda:N or auto")
    if device != "cpu" and not torch.cuda.is_available():
        raise UsageError(f"device={spec} but no CUDA device is available")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UsageError(f"device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return device


def environment() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"torch": torch.__version__, "cpu": cpu, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _cell(v) -> str:
    """A table cell: 4 significant digits, but never an exponent for large numbers (a speed of
    11,790 KB/s reads as 11790, not 1.179e+04)."""
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = _cell
    width = {c: max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols), "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(cell(r.get(c, "")).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def number_list(name: str, text: str, *, typ: type = int, lo=None, hi=None, open_interval: bool = False) -> list:
    """A bench option of comma-separated numbers, each in [lo, hi] ((lo, hi) if ``open_interval``;
    None = unbounded), or one UsageError naming the option."""
    try:
        vals = [typ(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name}={text}: expected comma-separated {'integers' if typ is int else 'numbers'}") from None

    def ok(v):
        above = lo is None or (v > lo if open_interval else v >= lo)
        below = hi is None or (v < hi if open_interval else v <= hi)
        return above and below
    if not vals or not all(ok(v) for v in vals):
        lb, rb = "()" if open_interval else "[]"
        span = f"in {lb}{lo}, {hi}{rb}" if lo is not None and hi is not None else \
            (f"{'>' if open_interval else '>='} {lo}" if lo is not None else f"{'<' if open_interval else '<='} {hi}")
        raise UsageError(f"{name}={text}: give one or more values, each {span}")
    return vals


def name_list(name: str, text: str, allowed) -> list[str]:
    """A bench option of comma-separated names from ``allowed``, or one UsageError."""
    vals = [x.strip() for x in text.split(",") if x.strip()]
    if not vals or any(v not in allowed for v in vals):
        raise UsageError(f"{name}={text}: use a comma-separated subset of {', '.join(allowed)}")
    return vals


def model_config(**fields):
    """A backbone ModelConfig from bench options; an impossible shape is one UsageError."""
    from ..model import ModelConfig
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise UsageError(str(e)) from None


def at_least(lo, **values) -> None:
    """One UsageError naming every option below ``lo``."""
    low = [k for k, v in values.items() if v < lo]
    if low:
        raise UsageError(f"{', '.join(low)} must be >= {lo}")


def parse_options(options_cls: type, items: list[str]):
    known = {f.name: f for f in dataclasses.fields(options_cls)}
    kw = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"bench option {item!r} is not key=value")
        k, v = item.split("=", 1)
        if k not in known:
            raise UsageError(f"unknown bench option {k!r}; options: {', '.join(known)}")
        kw[k] = coerce(v, known[k].type, k)
    return options_cls(**kw)


def load_benches() -> None:
    """Import every bench module (each registers its bench in BENCHES)."""
    from . import calm as _calm, compress as _compress, daedal as _daedal, eem as _eem  # noqa: F401
    from . import entropy_aware as _entropy_aware, train as _train  # noqa: F401
    from . import arith_probe as _arith_probe, vmd as _vmd  # noqa: F401


def option_types(name: str) -> dict[str, type]:
    """Bench ``name``'s KEY=VALUE options and their types ({} for an unknown bench)."""
    load_benches()
    entry = BENCHES.get(name)
    hints = typing.get_type_hints(entry[1]) if entry else {}
    return {f.name: hints[f.name] for f in dataclasses.fields(entry[1])} if entry else {}


def print_options(name: str) -> int:
    """Print bench ``name``'s options: KEY=DEFAULT and the comment its dataclass gives the field."""
    if name not in BENCHES:
        raise UsageError(f"unknown bench {name!r}; available: {', '.join(sorted(BENCHES))}")
    fn, opt_cls = BENCHES[name]
    try:
        src = inspect.getsource(opt_cls)
    except (OSError, TypeError):                                     # no source shipped: names and defaults only
        src = ""
    notes = dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$", src, flags=re.M))
    print(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0]}")
    default = lambda f: f.default_factory() if f.default is dataclasses.MISSING else f.default
    items = [(f"{f.name}={default(f)}", notes.get(f.name, "")) for f in dataclasses.fields(opt_cls)]
    width = max(len(k) for k, _ in items)
    for k, note in items:
        print(f"  {k:{width}s}  {note}".rstrip())
    return 0


def is_bench_result(res) -> bool:
    """Whether parsed JSON is what `bench NAME --json OUT` writes."""
    return isinstance(res, dict) and "bench" in res and isinstance(res.get("rows"), list)


def _is_bench_result(path) -> bool:
    """Whether a file is a bench's JSON (which a rerun replaces by design)."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError):                             # unreadable, not JSON
        return False
    return is_bench_result(res)


def run_bench(name: str, *, json_path=None, seed: int = 0, options: list[str] = ()) -> int:
    load_benches()
    if name == "list" and options:                                  # `bench list NAME`: that bench's options
        return print_options(options[0])
    if name == "list":
        width = max(map(len, BENCHES))
        for n, (fn, _) in sorted(BENCHES.items()):
            print(f"{n:{width}s}  {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if name not in BENCHES:
        raise UsageError(f"unknown bench {name!r}; available: {', '.join(sorted(BENCHES))}")
    fn, opt_cls = BENCHES[name]
    opts = parse_options(opt_cls, list(options))
    if json_path:                                                    # a bench result is replaced by design, its input never
        named = [getattr(opts, k) for k in ("input", "puzzles", "corpus") if getattr(opts, k, "")]
        inputs = [f for v in named for f in (joined_parts(v) or [v]) if Path(f).expanduser().is_file()]
        check_output(json_path, force=True, inputs=inputs, flag="--json")
        if Path(json_path).is_file() and not _is_bench_result(json_path):
            raise UsageError(f"--json {json_path}: that file exists and is not a bench result, so it is not "
                             "replaced; remove it or choose another path")
    torch.manual_seed(seed)
    result = fn(seed, opts)
    threads = os.environ.get(THREADS_ENV, "").strip()              # set by the CLI's --threads
    cmd = "adaptive-lm " + (f"--threads {shlex.quote(threads)} " if threads else "") + "bench " + \
        " ".join(shlex.quote(a) for a in [name, "--seed", str(seed), *options] +
                 (["--json", str(json_path)] if json_path else []))
    result = {"bench": name, "command": cmd, "options": dataclasses.asdict(opts), "environment": environment(), **result}
    print(format_table(result["rows"]))
    for k, v in result.items():
        if k not in ("rows", "options", "environment", "bench", "command"):
            print(f"{k}: {v}")
    print(f"rerun: {cmd}", file=sys.stderr)
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=2))
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
