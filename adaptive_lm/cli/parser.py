"""The parser of `adaptive-lm`, built from the command functions' signatures (see the package docstring)."""
from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import types
import typing
from typing import Optional

from .. import THREADS_ENV
from ..errors import AdaptiveLMError, UsageError

COMMANDS: dict[str, typing.Callable] = {}
SHORT = {"output": "-o"}            # short spellings of some flags
OPTIONAL_POSITIONALS = {"puzzle"}   # optional words after the leading positional(s)


def command(fn):
    COMMANDS[fn.__name__.rstrip("_").replace("_", "-")] = fn
    return fn


# ------------------------------------------------------------------ parser from signatures
def _doc_args(fn) -> tuple[str, dict]:
    doc = inspect.getdoc(fn) or ""
    head, _, rest = doc.partition("Args:")
    helps = {}
    for line in rest.splitlines():
        if ":" in line:
            k, v = line.strip().split(":", 1)
            helps[k.strip().rstrip("_")] = v.strip()            # `json_: ...` documents --json
    return head.strip(), helps


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it tells something: not for an empty or "auto" sentinel
    default (``""``, None, False, a negative number) nor where the help text already names it."""

    def _get_help_string(self, action):
        d, h = action.default, action.help or ""
        if "default" in h.lower() or d in (None, "", False, [], argparse.SUPPRESS) or \
                (isinstance(d, (int, float)) and not isinstance(d, bool) and d < 0):
            return h
        return super()._get_help_string(action)


def summary(desc: str) -> str:
    """The first sentence of a command's description (its first paragraph, lines joined)."""
    para = " ".join(desc.split("\n\n")[0].split())
    end = re.search(r"(?<!e\.g)(?<!i\.e)\.\s", para)                 # not at "e.g. " / "i.e. "
    return para if end is None else para[:end.start() + 1]


THREADS_HELP = (f"torch CPU threads (default: ${THREADS_ENV}, else torch's: one per core). On a busy machine 1 "
                "can be many times faster for the small shipped models")


def _env_threads() -> int:
    v = os.environ.get(THREADS_ENV, "").strip()
    if not v:
        return 0
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"{THREADS_ENV} must be a whole number, not {v!r}") from None


def _unoptional(typ):
    """``Optional[float]`` -> float: a flag whose default None means "the method's own default"."""
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    union = typing.get_origin(typ) in (typing.Union, types.UnionType)     # Optional[X] or X | None
    return args[0] if union and len(args) == 1 else typ


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="adaptive-lm", description="Language models that spend compute and bits only where needed.")
    p.add_argument("--threads", dest="_threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn in COMMANDS.items():
        desc, helps = _doc_args(fn)
        sp = sub.add_parser(name, help=summary(desc), description=desc, formatter_class=DefaultsFormatter)
        # also accepted after the command; SUPPRESS keeps a value given before it
        sp.add_argument("--threads", dest="_threads", type=int, default=argparse.SUPPRESS, metavar="N", help=THREADS_HELP)
        hints = typing.get_type_hints(fn)
        optional_positionals = []
        for pos, (pname, par) in enumerate(inspect.signature(fn).parameters.items()):
            typ, h = _unoptional(hints.get(pname, str)), helps.get(pname.rstrip("_"), "")
            flag = "--" + pname.rstrip("_").replace("_", "-")
            short = [SHORT[pname]] if pname in SHORT else []
            if typing.get_origin(typ) is list:
                if par.default is inspect.Parameter.empty:                       # `report FILE [FILE ...]`
                    sp.add_argument(pname, nargs="+", help=h)
                elif pname == "overrides" or pname == "options":
                    sp.add_argument(pname, nargs="*", default=list(par.default), help=h, metavar="KEY=VALUE")
                else:
                    sp.add_argument(flag, dest=pname, nargs="*", default=list(par.default), help=h)
            elif par.default is inspect.Parameter.empty:
                sp.add_argument(pname, type=typ, help=h)
            elif (pos == 0 or pname in OPTIONAL_POSITIONALS) and typ is str:   # `generate [MODEL]`, `sudoku solve [PUZZLE]`
                sp.add_argument(pname, nargs="?", default=par.default, help=h)
                optional_positionals.append((pname, par.default))
            elif typ is bool:
                sp.add_argument(flag, dest=pname, action="store_true", help=h)
            else:
                sp.add_argument(flag, *short, dest=pname, type=typ, default=par.default, help=h)
        sp.set_defaults(_fn=fn, _optpos=optional_positionals)
    return p


BENCH_OWN_FLAGS = {"json", "seed", "input", "threads", "help"}   # `bench`'s own flags stay flags


def bench_flags_as_options(argv: list[str]) -> list[str]:
    """`bench NAME --n 8 --init-lengths=32` read as `bench NAME n=8 init_lengths=32`: a bench's
    KEY=VALUE options also work as flags (the issues write them so). A bool option may stand alone."""
    i = 0
    while i < len(argv) and argv[i].startswith("--threads"):                 # the global flag before the command
        i += 1 if "=" in argv[i] else 2
    if i + 1 >= len(argv) or argv[i] != "bench":
        return argv
    from ..bench import option_types
    opts = {k: t for k, t in option_types(argv[i + 1]).items() if k not in BENCH_OWN_FLAGS}
    out, j = argv[:i + 2], i + 2
    while j < len(argv):
        a = argv[j]
        key, eq, val = a[2:].partition("=")
        key = key.replace("-", "_")
        if not (a.startswith("--") and key in opts):
            out.append(a)
        elif eq:
            out.append(f"{key}={val}")
        elif opts[key] is bool and (j + 1 == len(argv) or argv[j + 1].startswith("-") or "=" in argv[j + 1]):
            out.append(f"{key}=true")
        elif j + 1 < len(argv):
            out.append(f"{key}={argv[j + 1]}")
            j += 1
        else:
            out.append(a)                                                    # no value: argparse says so
        j += 1
    return out


def _fill_optional_positionals(args, extra: list[str]) -> list[str]:
    """`sudoku solve --nfe 20 PUZZLE`: argparse settles an optional positional (nargs="?") when it
    meets the first word, so a word after the flags lands in ``extra``; it fills the positionals
    still at their defaults, in order. Returns what is left of ``extra``."""
    bare = [i for i, e in enumerate(extra) if not e.startswith("-") and "=" not in e]
    used = []
    for (name, default), i in zip([p for p in args._optpos if getattr(args, p[0]) == p[1]], bare):
        setattr(args, name, extra[i])
        used.append(i)
    return [e for i, e in enumerate(extra) if i not in used]


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(bench_flags_as_options(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    extra = _fill_optional_positionals(args, extra)
    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "_fn", "_threads", "_optpos")}
    # key=value words after --flags land in `extra`; they belong to the command's KEY=VALUE list
    rest = [k for k in ("overrides", "options") if k in kwargs]
    if extra and (not rest or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        kwargs[rest[0]] = list(kwargs[rest[0]]) + extra
    env_before, threads_before = os.environ.get(THREADS_ENV), None
    try:
        threads = args._threads or _env_threads()
        if threads < 0:
            raise UsageError(f"--threads must be >= 0, got {threads}" if args._threads
                             else f"{THREADS_ENV} must be >= 0, not {threads}")
        if threads:
            import torch
            threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
            os.environ[THREADS_ENV] = str(threads)          # a bench writes it into its rerun command
        return int(args._fn(**kwargs) or 0)
    except AdaptiveLMError as e:
        print(f"adaptive-lm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("adaptive-lm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                     # `adaptive-lm ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:                                    # in-process callers (tests, notebooks) get their settings back
        if threads_before is not None:
            import torch
            torch.set_num_threads(threads_before)
            if env_before is None:
                os.environ.pop(THREADS_ENV, None)
            else:
                os.environ[THREADS_ENV] = env_before


if __name__ == "__main__":
    sys.exit(main())
