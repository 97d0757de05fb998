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

from ..errors import UsageError
from ..model import ModelConfig
from ..train import TrainConfig


@dataclass
class DataSpec:
    """Data (and objective) of a causal LM recipe (other families define their own spec dataclass)."""
    corpus: str = "tinyshakespeare"   # corpus name (see data.py) or a path to a text file
    tokenizer: str = "char"           # char | bpe
    bpe_vocab: int = 4096             # BPE vocabulary size (tokenizer=bpe)
    seq_len: int = 256                # training window length in tokens
    holdout: float = 0.1              # held-out fraction for single-file corpora
    eval_windows: int = 64            # held-out windows scored at each evaluation (0 = all)
    exit_weights: str = ""            # CALM weighted per-layer loss: linear | uniform | geometric; "" = plain LM
    exit_every: int = 1               # CALM: an exit after every k-th layer (the top one always)


@dataclass
class Recipe:
    name: str                         # what `adaptive-lm train NAME` calls it
    description: str                  # one line for `adaptive-lm recipes`
    model: ModelConfig                # the backbone (vocab_size is set from the tokenizer)
    train: TrainConfig                # the trainer's settings
    data: object                      # a dataclass: DataSpec for LMs, or the family's own spec
    build: Callable = None            # build(recipe, data_dir) -> Built
    budget: str = ""                  # the CPU time the recipe is meant to fit, for docs


@dataclass
class Built:
    model: torch.nn.Module            # freshly initialised (seeded with train.seed)
    tokenizer: object                 # saved into every checkpoint
    objective: Callable               # objective(model, batch) -> (loss, metrics)
    batches: Callable                 # batches(step, micro, rank, world) -> batch
    eval_fn: Optional[Callable]       # eval_fn(model) -> held-out metrics
    meta: dict = field(default_factory=dict)   # stored in config.json (recipe, corpus, family)


RECIPES: dict[str, Recipe] = {}


def register(r: Recipe) -> Recipe:
    RECIPES[r.name] = r
    return r


def coerce(value: str, typ, key: str):
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
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(typ.__name__, typ.__name__)
        raise UsageError(f"{key}={value}: expected {kind}") from None


# model fields every recipe derives itself (an override would be silently replaced)
SET_BY_RECIPE = {"vocab_size": "from the tokenizer; for BPE choose data.bpe_vocab",
                 "causal": "from the model family"}


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
        if sec == "model" and name in SET_BY_RECIPE:
            raise UsageError(f"model.{name} is set by the recipe ({SET_BY_RECIPE[name]}), not by an override")
        f = {f.name: f for f in dataclasses.fields(obj)}[name]
        changes.setdefault(sec, {})[name] = coerce(value, f.type, key)
    try:
        for sec, ch in changes.items():
            setattr(r, sec, dataclasses.replace(sections[sec], **ch))
    except (ValueError, ZeroDivisionError) as e:
        raise UsageError(f"invalid setting: {e}") from None
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


from . import eem as _eem, lm as _lm, mdlm as _mdlm, vmd as _vmd  # noqa: E402,F401  (each module registers its recipes)
