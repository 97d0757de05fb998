"""Causal LM recipes: a transformer LM on a text corpus (char or byte-level BPE)."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..calm.exits import early_exit_loss, exit_layers, exit_weights
from .. import tasks  # noqa: F401  (registers the task corpora: arith)
from ..data import TokenStream, joined_parts, lm_batch, pack, read_text
from ..errors import UsageError
from ..lm import evaluate_lm, lm_objective
from ..model import ModelConfig, TransformerLM
from ..tokenizer import BPETokenizer, CharTokenizer
from ..train import TrainConfig
from . import Built, DataSpec, Recipe, register


@dataclass
class LMData:
    """A tokenised corpus ready for a causal-LM-shaped recipe."""
    tokenizer: object
    train: TokenStream               # training windows
    vx: torch.Tensor                 # held-out windows (N, T) inputs
    vy: torch.Tensor                 # (N, T) next-token targets
    n_bytes: int                     # bytes the held-out targets cover


def lm_data(d: DataSpec, data_dir: Optional[str] = None) -> LMData:
    """Read the corpus, fit the tokenizer on the train split, cut train and held-out windows."""
    text = read_text(d.corpus, "train", holdout=d.holdout, data_dir_flag=data_dir)
    valid = read_text(d.corpus, "valid", holdout=d.holdout, data_dir_flag=data_dir)
    if d.tokenizer == "char":
        tok = CharTokenizer.from_text(text + valid)
    elif d.tokenizer == "bpe":
        tok = BPETokenizer.train([text], vocab_size=d.bpe_vocab)
    else:
        raise UsageError(f"data.tokenizer must be char or bpe, not {d.tokenizer!r}")
    # a joined corpus (A+B) is scored on windows spread over every part's held-out text; a single
    # corpus keeps its first windows, so the held-out figures in docs/benchmarks.md reproduce
    joined = joined_parts(d.corpus) is not None
    vx, vy = TokenStream(pack(tok, valid), d.seq_len).eval_windows(d.eval_windows or None, spread=joined)
    n_bytes = len(tok.decode_bytes(vy.flatten().tolist()))
    return LMData(tok, TokenStream(pack(tok, text), d.seq_len), vx, vy, n_bytes)


def build_lm(recipe: Recipe, data_dir: Optional[str] = None, *, data: Optional[LMData] = None) -> Built:
    """A causal LM on a text corpus: tokenizer fit on the train split, random windows, held-out loss.
    ``data``: an already tokenised corpus (benches that train several models on one)."""
    d = recipe.data
    if d.seq_len > recipe.model.max_seq_len:
        raise UsageError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={recipe.model.max_seq_len}")
    data = data or lm_data(d, data_dir)
    mcfg = dataclasses.replace(recipe.model, vocab_size=data.tokenizer.vocab_size, causal=True)
    torch.manual_seed(recipe.train.seed)
    model = TransformerLM(mcfg)
    meta = {"recipe": recipe.name, "corpus": d.corpus, "seq_len": d.seq_len, "family": "causal-lm"}
    objective = lm_objective
    if d.exit_weights:                                   # CALM: weighted per-layer loss (calm/exits.py)
        try:
            layers = exit_layers(mcfg.n_layer, d.exit_every)
            weights = exit_weights(layers, d.exit_weights)
        except ValueError as e:
            raise UsageError(str(e)) from None
        objective = functools.partial(early_exit_loss, layers=layers, weights=weights)
        meta["calm"] = {"exit_weights": d.exit_weights, "exit_every": d.exit_every, "exit_layers": layers}
    eval_fn = functools.partial(_eval_lm, data=data)
    return Built(model, data.tokenizer, objective, lm_batches(data, recipe), eval_fn, meta)


def _eval_lm(model, *, data: LMData) -> dict:
    return evaluate_lm(model, data.vx, data.vy, n_bytes=data.n_bytes)


def lm_batches(data: LMData, recipe: Recipe):
    """The trainer's batches(step, micro, rank, world) over the training windows."""
    def batches(step, micro, rank, world):
        return lm_batch(data.train, recipe.train.batch_size, seed=recipe.train.seed, step=step,
                        micro=micro, n_micro=recipe.train.grad_accum, rank=rank, world=world)
    return batches


register(Recipe(
    build=build_lm,
    name="char-shakespeare",
    description="character-level causal LM on tinyshakespeare; the shipped builtin:shakespeare-char",
    model=ModelConfig(n_layer=4, n_head=4, d_model=128, max_seq_len=256),
    train=TrainConfig(steps=800, batch_size=32, lr=3e-3, warmup_steps=50, eval_every=200,
                      save_every=200, weight_decay=0.1, min_lr_ratio=0.1),
    data=DataSpec(corpus="tinyshakespeare", tokenizer="char", seq_len=128),
    budget="<= 5 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_lm,
    name="calm-pydocs",
    description="causal LM with CALM's weighted per-layer loss on pydocs (BPE); the shipped builtin:calm-pydocs",
    model=ModelConfig(n_layer=8, n_head=4, d_model=128, max_seq_len=512),
    train=TrainConfig(steps=1500, batch_size=16, lr=2e-3, warmup_steps=60, eval_every=500,
                      save_every=100, log_every=20, weight_decay=0.1, min_lr_ratio=0.1),
    data=DataSpec(corpus="pydocs", tokenizer="bpe", bpe_vocab=2048, seq_len=256, eval_windows=64,
                  exit_weights="linear"),
    budget="<= 60 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_lm,
    name="calm-arith",
    description="calm-pydocs's model and loss on the arith corpus (characters): worked solutions that are "
                "mostly determined by the question, where early exits can pay (docs/benchmarks.md)",
    model=ModelConfig(n_layer=8, n_head=4, d_model=128, max_seq_len=512),
    train=TrainConfig(steps=1500, batch_size=16, lr=2e-3, warmup_steps=60, eval_every=500,
                      save_every=100, log_every=20, weight_decay=0.1, min_lr_ratio=0.1),
    data=DataSpec(corpus="arith", tokenizer="char", seq_len=256, eval_windows=64, exit_weights="linear"),
    budget="<= 30 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_lm,
    name="compress-pydocs",
    description="plain causal LM on pydocs (BPE 4096) for the LM compressor; the shipped builtin:compress-pydocs",
    model=ModelConfig(n_layer=8, n_head=4, d_model=128, max_seq_len=512),
    train=TrainConfig(steps=3000, batch_size=16, lr=2e-3, warmup_steps=60, eval_every=500,
                      save_every=100, log_every=20, weight_decay=0.1, min_lr_ratio=0.1),
    data=DataSpec(corpus="pydocs", tokenizer="bpe", bpe_vocab=4096, seq_len=256, eval_windows=64),
    budget="<= 60 minutes on 2 CPU cores",
))

COMPRESS_FAST = register(Recipe(
    build=build_lm,
    name="compress-pydocs-fast",
    description="4-layer causal LM with one shared K/V head on pydocs (BPE 4096): ~3x the compressor's "
                "speed of compress-pydocs; the shipped builtin:compress-pydocs-fast (the default before builtin:compress-mix)",
    model=ModelConfig(n_layer=4, n_head=4, n_kv_head=1, d_model=128, max_seq_len=512),
    train=TrainConfig(steps=5000, batch_size=16, lr=2e-3, warmup_steps=60, eval_every=500,
                      save_every=100, log_every=20, weight_decay=0.1, min_lr_ratio=0.1),
    data=DataSpec(corpus="pydocs", tokenizer="bpe", bpe_vocab=4096, seq_len=256, eval_windows=64),
    budget="<= 60 minutes on 2 CPU cores",
))

register(dataclasses.replace(
    COMPRESS_FAST,
    name="compress-mix",
    description="compress-pydocs-fast's shape and settings on pydocs + GSM8K + tinyshakespeare (BPE 4096 fit "
                "on the mix): a compressor for English prose as well as documentation; the shipped builtin:compress-mix",
    data=dataclasses.replace(COMPRESS_FAST.data, corpus="pydocs+gsm8k+tinyshakespeare"),
))

register(Recipe(
    build=build_lm,
    name="tiny-calm-test",
    description="a few-second CALM (weighted per-layer loss) run for tests",
    model=ModelConfig(n_layer=4, n_head=2, d_model=32, max_seq_len=64),
    train=TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=5,
                      save_every=5, log_every=5),
    data=DataSpec(corpus="tinyshakespeare", tokenizer="char", seq_len=32, eval_windows=8, exit_weights="linear"),
    budget="seconds",
))

register(Recipe(
    build=build_lm,
    name="tiny-test",
    description="a few-second run on tinyshakespeare for tests and smoke checks",
    model=ModelConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=64),
    train=TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=10,
                      save_every=10, log_every=5),
    data=DataSpec(corpus="tinyshakespeare", tokenizer="char", seq_len=32, eval_windows=8),
    budget="seconds",
))
