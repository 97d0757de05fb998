"""Recipes: named, reproducible training presets (`adaptive-lm train NAME [key=value ...]`).

A recipe is a model config, a train config and a data spec, plus the ``build`` function that
turns them into (model, tokenizer, objective, batches, eval_fn) for the one trainer. Method
issues add their recipes to RECIPES with their own build functions.

Overrides are ``section.field=value`` (``model.n_layer=6``, ``train.lr=3e-4``, ``data.seq_len=128``)
or a bare ``field=value`` when the name is unique across the sections.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .data import TokenStream, lm_batch, pack, read_text
from .errors import UsageError
from .lm import evaluate_lm, lm_objective
from .model import ModelConfig, TransformerLM
from .tokenizer import BPETokenizer, CharTokenizer
from .train import TrainConfig


@dataclass
class DataSpec:
    corpus: str = "tinyshakespeare"   # corpus name (see data.py) or a path to a text file
    tokenizer: str = "char"           # char | bpe
    bpe_vocab: int = 4096             # BPE vocabulary size (tokenizer=bpe)
    seq_len: int = 256                # training window length in tokens
    holdout: float = 0.1              # held-out fraction for single-file corpora
    eval_windows: int = 64            # held-out windows scored at each evaluation (0 = all)


@dataclass
class Recipe:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    data: DataSpec
    build: Callable = None            # build(recipe, data_dir) -> Built
    budget: str = ""                  # the CPU time the recipe is meant to fit, for docs


@dataclass
class Built:
    model: torch.nn.Module
    tokenizer: object
    objective: Callable
    batches: Callable
    eval_fn: Optional[Callable]
    meta: dict = field(default_factory=dict)


def build_lm(recipe: Recipe, data_dir: Optional[str] = None) -> Built:
    """A causal LM on a text corpus: tokenizer fit on the train split, random windows, held-out loss."""
    d = recipe.data
    text = read_text(d.corpus, "train", holdout=d.holdout, data_dir_flag=data_dir)
    valid = read_text(d.corpus, "valid", holdout=d.holdout, data_dir_flag=data_dir)
    if d.tokenizer == "char":
        tok = CharTokenizer.from_text(text + valid)
    elif d.tokenizer == "bpe":
        tok = BPETokenizer.train([text], vocab_size=d.bpe_vocab)
    else:
        raise UsageError(f"data.tokenizer must be char or bpe, not {d.tokenizer!r}")
    train_stream = TokenStream(pack(tok, text), d.seq_len)
    valid_stream = TokenStream(pack(tok, valid), d.seq_len)
    mcfg = dataclasses.replace(recipe.model, vocab_size=tok.vocab_size, causal=True)
    torch.manual_seed(recipe.train.seed)
    model = TransformerLM(mcfg)
    vx, vy = valid_stream.eval_windows(d.eval_windows or None)
    n_bytes = len(tok.decode_bytes(vy.flatten().tolist()))              # bytes the scored targets cover

    def batches(step, micro, rank, world):
        return lm_batch(train_stream, recipe.train.batch_size, seed=recipe.train.seed, step=step,
                        micro=micro, n_micro=recipe.train.grad_accum, rank=rank, world=world)

    def eval_fn(m):
        return evaluate_lm(m, vx, vy, n_bytes=n_bytes)

    meta = {"recipe": recipe.name, "corpus": d.corpus, "seq_len": d.seq_len, "family": "causal-lm"}
    return Built(model, tok, lm_objective, batches, eval_fn, meta)


RECIPES: dict[str, Recipe] = {}


def register(r: Recipe) -> Recipe:
    if r.build is None:
        r.build = build_lm
    RECIPES[r.name] = r
    return r


register(Recipe(
    name="char-shakespeare",
    description="character-level causal LM on tinyshakespeare; the shipped builtin:shakespeare-char",
    model=ModelConfig(n_layer=4, n_head=4, d_model=128, max_seq_len=256),
    train=TrainConfig(steps=800, batch_size=32, lr=3e-3, warmup_steps=50, eval_every=200,
                      save_every=200, weight_decay=0.1, min_lr_ratio=0.1),
    data=DataSpec(corpus="tinyshakespeare", tokenizer="char", seq_len=128),
    budget="<= 5 minutes on 2 CPU cores",
))

register(Recipe(
    name="tiny-test",
    description="a few-second run on tinyshakespeare for tests and smoke checks",
    model=ModelConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=64),
    train=TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=10,
                      save_every=10, log_every=5),
    data=DataSpec(corpus="tinyshakespeare", tokenizer="char", seq_len=32, eval_windows=8),
    budget="seconds",
))


def _coerce(value: str, typ, key: str):
    typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ) if isinstance(typ, str) else typ
    try:
        if typ is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            return int(float(value)) if "e" in value.lower() and float(value).is_integer() else int(value)
        return typ(value)
    except ValueError:
        raise UsageError(f"{key}={value}: expected a {typ.__name__}") from None


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of the recipe with ``key=value`` overrides applied (UsageError on unknown keys)."""
    r = copy.deepcopy(recipe)
    sections = {"model": r.model, "train": r.train, "data": r.data}
    changes: dict[str, dict] = {}
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if "." in key:
            sec, name = key.split(".", 1)
            if sec not in sections:
                raise UsageError(f"unknown section {sec!r} in {key!r} (use model., train. or data.)")
        else:
            owners = [s for s, obj in sections.items() if name_in(obj, key)]
            if not owners:
                raise UsageError(f"unknown key {key!r}; see `adaptive-lm recipes {recipe.name}` for the keys")
            if len(owners) > 1:
                raise UsageError(f"key {key!r} is ambiguous; write one of {', '.join(o + '.' + key for o in owners)}")
            sec, name = owners[0], key
        obj = sections[sec]
        if not name_in(obj, name):
            raise UsageError(f"unknown key {sec}.{name}; see `adaptive-lm recipes {recipe.name}` for the keys")
        f = {f.name: f for f in dataclasses.fields(obj)}[name]
        changes.setdefault(sec, {})[name] = _coerce(value, f.type, key)
    try:
        for sec, ch in changes.items():
            setattr(r, sec, dataclasses.replace(sections[sec], **ch))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return r


def name_in(obj, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(obj)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def describe(r: Recipe) -> str:
    """Every key of a recipe with its value, for `adaptive-lm recipes NAME`."""
    lines = [f"{r.name}: {r.description}", f"  budget: {r.budget}"]
    for sec in ("model", "train", "data"):
        for f in dataclasses.fields(getattr(r, sec)):
            lines.append(f"  {sec}.{f.name} = {getattr(getattr(r, sec), f.name)!r}")
    return "\n".join(lines)
