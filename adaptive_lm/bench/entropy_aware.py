"""`adaptive-lm bench entropy-aware`: entropy-aware training against plain cross-entropy in an
overfitting regime (brief entropy.md, "Entropy-aware training").

A small slice of the corpus (``train_tokens`` from the ``split`` the EEM never saw — test by
default; held-out CE on valid), its per-token entropy estimates from an EEM (single-model chain rule, entropy/estimate.py), and the same causal model trained from the
same initialisation for the same (many) steps with each objective: plain CE, mean |CE − e|
("abs"), and the same without the tokens with e ≥ ``drop_above`` nats ("drop"). Reported: the CE
on the training slice and on held-out windows (valid split), their gap, and the mean estimated
entropy of the training slice (the floor entropy-aware training aims at). The claim under test:
a smaller train–test gap and a better held-out CE than plain CE.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import tempfile
from dataclasses import dataclass

import torch

from ..data import TokenStream, lm_batch, pack, read_text
from ..entropy.aware import MODES, entropy_aware_loss
from ..entropy.estimate import token_entropies
from ..entropy.runtime import Meter, load_estimator
from ..errors import UsageError
from ..lm import evaluate_lm, lm_objective
from ..model import TransformerLM
from ..train import TrainConfig, train
from . import at_least, model_config, name_list, register


@dataclass
class EntropyAwareOptions:
    eem: str = "builtin:eem-pydocs"   # the EEM giving the estimates (its tokenizer is used throughout)
    corpus: str = "pydocs"            # corpus name or text file
    split: str = "test"               # the training slice's split: text the EEM never saw (held-out CE: valid; a single-file corpus: use train)
    train_tokens: int = 20000         # size of the training slice (small: the overfitting regime)
    steps: int = 800                  # optimizer steps per model (many epochs of the slice)
    batch_size: int = 16              # windows per step
    seq_len: int = 128                # window length
    lr: float = 2e-3                  # peak learning rate
    n_layer: int = 2                  # causal model depth
    d_model: int = 128                # causal model width
    objectives: str = "ce,abs,drop"   # ce (plain) and the entropy-aware modes
    drop_above: float = 6.0           # "drop": tokens with e >= this (nats) carry no loss
    eval_windows: int = 64            # held-out windows
    data_dir: str = ""                # data folder (default $ADAPTIVE_LM_DATA or ../shared/data)


def _ce_objective(model, batch):
    return lm_objective(model, batch[:2])


@register("entropy-aware", EntropyAwareOptions)
def bench_entropy_aware(seed: int, o: EntropyAwareOptions) -> dict:
    """Entropy-aware training (|CE − e|, and with high-entropy tokens dropped) vs plain CE: train and test CE."""
    objectives = name_list("objectives", o.objectives, ["ce", *MODES])
    at_least(1, train_tokens=o.train_tokens, steps=o.steps, batch_size=o.batch_size, seq_len=o.seq_len,
             n_layer=o.n_layer, d_model=o.d_model, eval_windows=o.eval_windows)
    shape = model_config(vocab_size=2, n_layer=o.n_layer, n_head=4, d_model=o.d_model, max_seq_len=o.seq_len)
    eem, _, tok, window = load_estimator(o.eem)
    text = read_text(o.corpus, o.split, data_dir_flag=o.data_dir or None)
    ids = tok.encode(text[: o.train_tokens * 8])[: o.train_tokens]
    if len(ids) < o.train_tokens:
        raise UsageError(f"the corpus has only {len(ids)} tokens; lower train_tokens")
    est = token_entropies(eem, ids, window=window, pad_id=tok.pad_id or 0, batch_size=128,
                          progress=Meter("estimates", len(tok.decode_bytes(ids)), True))
    known = [h for h in est if h is not None]
    side = torch.tensor([sum(known) / len(known) if h is None else h for h in est])
    stream = TokenStream(torch.tensor(ids), o.seq_len, side=side)
    valid = TokenStream(pack(tok, read_text(o.corpus, "valid", data_dir_flag=o.data_dir or None)), o.seq_len)
    tx, ty = stream.eval_windows(o.eval_windows)
    vx, vy = valid.eval_windows(o.eval_windows)
    mean_e = side[1: tx.numel() + 1].mean().item()                     # the targets of the train windows
    cfg = dataclasses.replace(shape, vocab_size=tok.vocab_size)
    tcfg = TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup_steps=min(50, o.steps // 10 + 1),
                       eval_every=0, save_every=0, log_every=20, seed=seed)
    batches = lambda step, micro, rank, world: lm_batch(stream, o.batch_size, seed=seed, step=step, micro=micro,
                                                        rank=rank, world=world)
    rows = []
    for name in objectives:
        torch.manual_seed(seed)
        model = TransformerLM(cfg)
        objective = _ce_objective if name == "ce" else functools.partial(entropy_aware_loss, mode=name,
                                                                          drop_above=o.drop_above)
        print(f"[bench entropy-aware] training with {name}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            train(model, objective, batches, cfg=tcfg, out_dir=tmp, progress=True)
        tr = evaluate_lm(model, tx, ty)["loss"]
        te = evaluate_lm(model, vx, vy)["loss"]
        rows.append({"objective": name, "train_ce": tr, "test_ce": te, "gap": te - tr, "train_entropy_est": mean_e})
    return {"rows": rows, "estimate_window": window, "train_tokens": len(ids),
            "mean_estimate_bits": mean_e / math.log(2)}
