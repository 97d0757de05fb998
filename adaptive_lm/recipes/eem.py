"""EEM recipes (brief entropy.md): an encoder-augmented causal decoder on a text corpus, and the
causal baseline of the same size it is measured against (`adaptive-lm bench eem`)."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..entropy.eem import EEM, FORMATS, EEMConfig, eem_objective, evaluate_eem
from ..errors import UsageError
from ..model import ModelConfig
from ..train import TrainConfig
from . import Built, DataSpec, Recipe, register
from .lm import LMData, build_lm, lm_batches, lm_data


@dataclass
class EEMSpec(DataSpec):
    """A causal LM's data spec plus the EEM's own settings (the decoder is the recipe's model)."""
    enc_layers: int = 2          # encoder layers (same width and mixer as the decoder)
    compression: int = 16        # embedding values per window = d_model // compression
    injection: str = "add"       # prepend | concat | add
    noise_q: float = 0.0         # noise-injection QAT: U(-q, q) on the embedding in training (0 = off)
    eval_format: str = "fp16"    # the embedding's storage format at evaluation (charged at its width)
    left_pad: bool = False       # train on windows of every length (random left padding): the single-model entropy estimate


def build_eem(recipe: Recipe, data_dir: Optional[str] = None, *, data: Optional[LMData] = None) -> Built:
    """An EEM: tokenizer and windows as for a causal LM (recipes/lm.py); each window (T+1 tokens) is
    read whole by the encoder and predicted by the decoder from its compressed embedding."""
    d = recipe.data
    if d.eval_format not in FORMATS:
        raise UsageError(f"data.eval_format must be one of {', '.join(FORMATS)}, not {d.eval_format!r}")
    if d.left_pad and recipe.model.mixer != "attention":
        raise UsageError("data.left_pad needs attention stacks (the masked mixer takes no padding)")
    if d.seq_len + 1 > recipe.model.max_seq_len:
        raise UsageError(f"data.seq_len={d.seq_len}: an EEM window needs seq_len + 1 "
                         f"<= model.max_seq_len={recipe.model.max_seq_len}")
    data = data or lm_data(d, data_dir)
    dec = dataclasses.replace(recipe.model, vocab_size=data.tokenizer.vocab_size, causal=True)
    try:
        cfg = EEMConfig(encoder=dataclasses.replace(dec, n_layer=d.enc_layers), decoder=dec,
                        compression=d.compression, injection=d.injection, noise_q=d.noise_q)
    except ValueError as e:
        raise UsageError(str(e)) from None
    torch.manual_seed(recipe.train.seed)
    model = EEM(cfg)
    eval_fn = functools.partial(_eval_eem, data=data, fmt=d.eval_format)
    meta = {"recipe": recipe.name, "corpus": d.corpus, "seq_len": d.seq_len, "family": "eem", "left_pad": d.left_pad}
    objective = functools.partial(eem_objective, left_pad=d.left_pad)
    return Built(model, data.tokenizer, objective, lm_batches(data, recipe), eval_fn, meta)


def _eval_eem(model, *, data: LMData, fmt: str) -> dict:
    return evaluate_eem(model, data.vx, data.vy, n_bytes=data.n_bytes, fmt=fmt)


_SMALL = ModelConfig(n_layer=2, n_head=4, d_model=128, max_seq_len=160)
_TRAIN = TrainConfig(steps=1000, batch_size=16, lr=2e-3, warmup_steps=50, eval_every=250, save_every=250,
                     log_every=20, weight_decay=0.1, min_lr_ratio=0.1)

register(Recipe(
    build=build_eem,
    name="eem-pydocs",
    description="EEM (2-layer encoder + 2-layer decoder, d=128, 8-value embedding, left-padded windows) on "
                "pydocs (BPE 2048); the shipped builtin:eem-pydocs behind `adaptive-lm entropy`",
    model=_SMALL, train=dataclasses.replace(_TRAIN, steps=2000, eval_every=500, save_every=100),
    data=EEMSpec(corpus="pydocs", tokenizer="bpe", bpe_vocab=2048, seq_len=128, eval_windows=64, left_pad=True),
    budget="<= 20 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_lm,
    name="eem-baseline-pydocs",
    description="the causal baseline of eem-pydocs: 4 layers, d=128, same data, steps and parameter count",
    model=dataclasses.replace(_SMALL, n_layer=4), train=_TRAIN,
    data=DataSpec(corpus="pydocs", tokenizer="bpe", bpe_vocab=2048, seq_len=128, eval_windows=64),
    budget="<= 20 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_eem,
    name="tiny-eem-test",
    description="a few-second EEM run for tests",
    model=ModelConfig(n_layer=1, n_head=2, d_model=32, max_seq_len=40),
    train=TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=5, save_every=5, log_every=5),
    data=EEMSpec(corpus="tinyshakespeare", tokenizer="char", seq_len=32, eval_windows=8, enc_layers=1, compression=4),
    budget="seconds",
))
