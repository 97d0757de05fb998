"""Corpora and packed token streams.

The data folder is found by: the ``--data-dir`` flag, else the ``ADAPTIVE_LM_DATA`` environment
variable, else ``../shared/data`` (beside the current folder or beside the repository) where it
exists. The project never ships or commits corpora.

Corpus names resolve inside the data folder; a path to a file works everywhere:
    tinyshakespeare   text/tinyshakespeare.txt   (one file: held-out = its last 10%)
    pydocs            text/pydocs/{train,valid,test}.txt (its own splits)
    gsm8k             benchmarks/gsm8k_{train,test}.jsonl as text: each problem's question, a
                      newline, its worked answer; problems separated by a blank line (valid = test)
    arith             made by code, not read (tasks/arith.py): synthetic worked arithmetic
                      problems; train from the train number-tuples, valid / test from two
                      disjoint halves of the held-out ones
Corpora made by code register a function split -> text in ``GENERATED`` (``register_corpus``);
``import adaptive_lm.tasks`` registers the task corpora. A corpus name wins over a file of the
same name in the current folder: give such a file as ``./NAME``.
A ``+`` joins corpora into one (``pydocs+gsm8k+tinyshakespeare``): each part's split by its own
rule, the parts separated by a blank line.

Held-out convention: a corpus with split files uses them; a single file is split by position —
the first ``1 - holdout`` fraction trains, the rest is ``valid`` (and ``test`` = ``valid``). Splits
are cut on characters before tokenizing, so a tokenizer change never moves the boundary.

Batches for LM training are random windows of a packed token stream. Batch k of a run is a pure
function of (seed, k), so resuming at step k continues the data exactly (see ``lm_batch``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import DataError, UsageError

ENV_VAR = "ADAPTIVE_LM_DATA"
CORPORA = {
    "tinyshakespeare": "text/tinyshakespeare.txt",
    "pydocs": "text/pydocs/{split}.txt",
    "gsm8k": "benchmarks/gsm8k_{split}.jsonl",
}
SPLITS = ("train", "valid", "test")
JSONL_FIELDS = {"gsm8k": ("question", "answer")}   # JSON-lines corpora: the fields that make a record's text
SPLIT_FILES = {"gsm8k": {"valid": "test"}}          # a split read from another split's file
GENERATED: dict[str, Callable[[str], str]] = {}     # corpora made by code: name -> (split -> text)


def register_corpus(name: str, text_of_split: Callable[[str], str]) -> None:
    """Make ``name`` a corpus whose split text comes from ``text_of_split(split)`` (a task's generator)."""
    if name in CORPORA or "+" in name:
        raise ValueError(f"cannot register corpus {name!r}: a file corpus has that name, or it contains '+'")
    GENERATED[name] = text_of_split


def known_corpora() -> list[str]:
    return [*CORPORA, *GENERATED]


def data_dir(flag: Optional[str] = None) -> Path:
    """The data folder (flag > env var > ../shared/data). Raises DataError if none is found."""
    given = flag or os.environ.get(ENV_VAR)
    if given:
        p = Path(given).expanduser()
        if not p.is_dir():
            src = "--data-dir" if flag else ENV_VAR
            what = "is not a folder" if p.exists() else "does not exist"
            raise DataError(f"data folder {p} (from {src}) {what}")
        return p
    tried = (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data")
    for p in tried:
        if p.is_dir():
            return p
    raise DataError(f"no data folder: pass --data-dir or set {ENV_VAR} (none at {' or '.join(map(str, dict.fromkeys(tried)))})")


def corpus_path(name: str, split: str = "train", data_dir_flag: Optional[str] = None) -> tuple[Path, bool]:
    """(file, has_own_splits) for a corpus name or a file path."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name in CORPORA:
        pattern = CORPORA[name]
        p = data_dir(data_dir_flag) / pattern.format(split=SPLIT_FILES.get(name, {}).get(split, split))
        own = "{split}" in pattern
    else:
        p, own = Path(name).expanduser(), False
    if not p.exists():
        hint = "" if name in CORPORA else f" (known corpora: {', '.join(known_corpora())}" + \
            ("; `import adaptive_lm.tasks` registers those made by code, e.g. arith)" if not GENERATED else ")")
        raise DataError(f"corpus file {p} does not exist{hint}")
    if p.is_dir():
        raise DataError(f"corpus path {p} is a folder, not a text file")
    return p, own


def joined_parts(name: str) -> Optional[list[str]]:
    """The corpora ``A+B+...`` joins, when every part is a known corpus or an existing file and the
    whole name is not itself a file; else None (one corpus or file, e.g. a missing ``c++.txt``)."""
    if "+" not in name or Path(name).expanduser().exists():
        return None
    parts = [n.strip() for n in name.split("+")]
    if all(parts) and all(n in CORPORA or n in GENERATED or Path(n).expanduser().exists() for n in parts):
        return parts
    return None


def read_text(name: str, split: str = "train", *, holdout: float = 0.1, data_dir_flag: Optional[str] = None) -> str:
    """The text of one split of a corpus (see the module docstring for the held-out rule)."""
    if not 0 < holdout < 1:
        raise UsageError(f"holdout must be in (0, 1), not {holdout}")
    parts = joined_parts(name)
    if parts:
        try:
            return "\n\n".join(read_text(n, split, holdout=holdout, data_dir_flag=data_dir_flag) for n in parts)
        except DataError as e:
            raise DataError(f"corpus {name!r}: {e}") from None
    if name in GENERATED:                                 # like the named corpora: a file of that name is ./NAME
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return GENERATED[name](split)
    p, own = corpus_path(name, split, data_dir_flag)
    if name in JSONL_FIELDS:
        text = _jsonl_text(p, JSONL_FIELDS[name])
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not own:
        cut = int(len(text) * (1 - holdout))
        text = text[:cut] if split == "train" else text[cut:]
    if not text.strip():
        raise DataError(f"corpus {p} ({split} split) is empty")
    return text


def read_jsonl(path, fields=(), opener=open) -> list[dict]:
    """The records of a JSON-lines file (lines split on newlines only), each a JSON object with
    ``fields``; DataError naming the line otherwise."""
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {n} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {n} is not a JSON object")
                missing = [k for k in fields if k not in row]
                if missing:
                    raise DataError(f"{path} line {n} lacks the field(s) {', '.join(missing)}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows


def _jsonl_text(p: Path, fields: tuple[str, ...]) -> str:
    """A JSON-lines file as text: per record its ``fields`` joined by newlines, records by blank lines."""
    records = []
    for i, row in enumerate(read_jsonl(p, fields), 1):
        bad = [f for f in fields if not isinstance(row[f], str)]
        if bad:
            raise DataError(f"{p} record {i}: {', '.join(bad)} is not text")
        records.append("\n".join(row[f].strip() for f in fields))
    return "\n\n".join(records)


def pack(tokenizer, text: str) -> torch.Tensor:
    """Encode a text into one flat token stream (N,) int64."""
    ids = tokenizer.encode(text)
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class TokenStream:
    """A packed token stream and the windows drawn from it."""
    tokens: torch.Tensor   # (N,) int64
    seq_len: int           # window length T; each window gives T inputs and T next-token targets
    side: Optional[torch.Tensor] = None   # (N,) float per-token values (e.g. entropy estimates), drawn with the targets

    def __post_init__(self):
        if self.tokens.numel() < self.seq_len + 1:
            raise DataError(f"corpus has {self.tokens.numel()} tokens, fewer than seq_len+1={self.seq_len + 1}")
        if self.side is not None and self.side.shape != self.tokens.shape:
            raise DataError(f"side values {tuple(self.side.shape)} do not match the tokens {tuple(self.tokens.shape)}")

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Random windows: (x, y) each (B, T), y = x shifted by one; with ``side``, (x, y, s) where
        s (B, T) are the side values of the targets y."""
        hi = self.tokens.numel() - self.seq_len - 1
        starts = torch.randint(0, hi + 1, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        w = self.tokens[idx]
        if self.side is not None:
            return w[:, :-1], w[:, 1:], self.side[idx[:, 1:]]
        return w[:, :-1], w[:, 1:]

    def eval_windows(self, max_windows: Optional[int] = None, *, spread: bool = False):
        """Non-overlapping windows of the stream, (x, y) each (N, T): all of them, or the first
        ``max_windows``, or with ``spread`` ``max_windows`` of them evenly spaced over the whole
        stream (so a held-out split joined from several corpora is scored on each part)."""
        total = (self.tokens.numel() - 1) // self.seq_len
        n = min(total, max_windows) if max_windows else total
        idx = torch.arange(n)
        if spread and n < total:
            idx = torch.div(idx * total, n, rounding_mode="floor")              # (N,) window indices
        starts = idx * self.seq_len
        offs = torch.arange(self.seq_len)
        x = self.tokens[starts[:, None] + offs]                                 # (N, T)
        y = self.tokens[starts[:, None] + offs + 1]
        return x, y


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws batch ``step`` of a run: a pure function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def lm_batch(stream: TokenStream, global_batch: int, *, seed: int, step: int, micro: int = 0,
             n_micro: int = 1, rank: int = 0, world: int = 1):
    """Rows of global batch ``step`` that belong to (micro-step, rank). The global batch is the
    same whatever the number of processes, so 1 process and N processes see the same data."""
    return shard(stream.batch(global_batch, step_generator(seed, step)), global_batch,
                 micro=micro, n_micro=n_micro, rank=rank, world=world)


def shard(batch, global_batch: int, *, micro: int = 0, n_micro: int = 1, rank: int = 0, world: int = 1):
    """The rows of a global batch (tensor, tuple/list or dict of tensors with batch dim first)
    that belong to micro-step ``micro`` on process ``rank``."""
    per = global_batch // (n_micro * world)
    i0 = (micro * world + rank) * per
    if isinstance(batch, dict):
        return {k: v[i0:i0 + per] for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(b[i0:i0 + per] for b in batch)
    return batch[i0:i0 + per]
