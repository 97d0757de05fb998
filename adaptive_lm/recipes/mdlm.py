"""Masked diffusion LM recipes: SFT on the synthetic arithmetic task (the shipped builtin:mdlm-arith).

Each global batch draws problems whose step counts sit in a narrow random band (so a batch of short
answers is short), then pads every row with EOS to the batch's longest answer plus a random extra
tail — mostly short, sometimes hundreds of tokens — so the model learns that EOS fills whatever
canvas is left, at every length the samplers will use. Half of the rows instead get a canvas too
short for their answer (the answer cut, no EOS): without them the model learns "the last positions
are always EOS" and its EOS confidence says nothing about whether a canvas is long enough.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..data import shard, step_generator
from ..diffusion.objective import mc_nll, mdm_loss, sft_batch
from ..model import ModelConfig, TransformerLM
from ..tasks.arith import ALPHABET, MAX_STEPS, make_split, sample_problem
from ..tokenizer import CharTokenizer
from ..train import TrainConfig
from . import Built, Recipe, register


@dataclass
class ArithSpec:
    band: int = 2                 # a batch's step counts lie within center ± band
    long_tail_prob: float = 0.25  # probability that a batch gets a long EOS tail
    short_tail: int = 16          # extra EOS tokens: U(0, short_tail) ...
    long_tail: int = 256          # ... or U(0, long_tail) with long_tail_prob
    eval_problems: int = 64       # held-out problems scored at each evaluation
    max_steps: int = MAX_STEPS    # longest chain (lines of the solution)
    stratified: bool = True       # low-discrepancy noise levels across the batch (less loss variance)
    cut_prob: float = 0.5         # share of rows whose canvas is too short (answer cut, no EOS)


def arith_tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


def arith_global_batch(tok, spec: ArithSpec, batch_size: int, generator: torch.Generator, split: str = "train") -> dict:
    """One global SFT batch of arithmetic problems with its diffusion noise."""
    g = generator
    c = int(torch.randint(1, spec.max_steps + 1, (1,), generator=g))
    lo, hi = max(1, c - spec.band), min(spec.max_steps, c + spec.band)
    probs = [sample_problem(g, split, max_steps=hi, min_steps=lo) for _ in range(batch_size)]
    long = bool(torch.rand(1, generator=g) < spec.long_tail_prob)
    extra = int(torch.randint(0, (spec.long_tail if long else spec.short_tail) + 1, (1,), generator=g))
    prompts, responses = [tok.encode(p.prompt) for p in probs], [tok.encode(p.solution) for p in probs]
    full = max(len(p) + len(r) for p, r in zip(prompts, responses)) + 1 + extra     # LLaDA: pad to the batch
    canvas = []
    for p, r in zip(prompts, responses):
        if float(torch.rand(1, generator=g)) < spec.cut_prob:
            canvas.append(int(torch.randint(1, len(r) + 1, (1,), generator=g)))     # too short: cut
        else:
            canvas.append(full - len(p))
    return sft_batch(prompts, responses, eos_id=tok.eos_id, generator=g, stratified=spec.stratified,
                     canvas_lens=canvas)


def build_mdlm_arith(recipe: Recipe, data_dir: Optional[str] = None) -> Built:
    spec, tc = recipe.data, recipe.train
    tok = arith_tokenizer()
    torch.manual_seed(tc.seed)
    model = TransformerLM(dataclasses.replace(recipe.model, vocab_size=tok.vocab_size, causal=False))

    def objective(m, batch):
        return mdm_loss(m, batch, mask_id=tok.mask_id)

    def batches(step, micro, rank, world):
        b = arith_global_batch(tok, spec, tc.batch_size, step_generator(tc.seed, step))
        return shard(b, tc.batch_size, micro=micro, n_micro=tc.grad_accum, rank=rank, world=world)

    g = torch.Generator().manual_seed(12345)
    held = make_split("test", spec.eval_problems, seed=777, max_steps=spec.max_steps)
    val = sft_batch([tok.encode(p.prompt) for p in held], [tok.encode(p.solution) for p in held],
                    eos_id=tok.eos_id, generator=g, extra=16)

    @torch.no_grad()
    def eval_fn(m):
        m.eval()
        loss, mets = mdm_loss(m, val, mask_id=tok.mask_id)
        return {"loss": float(loss), "masked_acc": float(mets["masked_acc"])}

    meta = {"recipe": recipe.name, "family": "masked-diffusion", "task": "arith"}
    return Built(model, tok, objective, batches, eval_fn, meta)


@torch.no_grad()
def eval_arith_nll(model, tok, *, n: int = 64, n_samples: int = 16, batch_size: int = 16, seed: int = 0) -> dict:
    """Monte-Carlo upper bound (LLaDA eq. 6) on -log p(answer + EOS | prompt) for held-out problems,
    per answer character; each row's canvas is its answer plus one EOS (the batch's right padding
    is masked out of attention, so a row's score does not depend on its batch-mates)."""
    probs = make_split("test", n, seed=seed + 777)
    g = torch.Generator().manual_seed(seed)
    total, chars = 0.0, 0
    for b in range(0, n, batch_size):
        chunk = probs[b:b + batch_size]
        batch = sft_batch([tok.encode(p.prompt) for p in chunk], [tok.encode(p.solution) for p in chunk],
                          eos_id=tok.eos_id, generator=g)
        x, pm = batch["input_ids"], batch["prompt_mask"]
        # score each row's answer and its first EOS; the rest of the padding stays visible
        lens = torch.tensor([len(tok.encode(p.prompt)) + len(tok.encode(p.solution)) + 1 for p in chunk])
        inside = torch.arange(x.shape[1])[None] < lens[:, None]     # prompt + answer + one EOS
        target = ~pm & inside
        total += float(mc_nll(model, x, target, mask_id=tok.mask_id, n_samples=n_samples, generator=g,
                              attention_mask=inside.long()).sum())
        chars += int(target.sum())
    return {"nll_per_char": total / chars, "bits_per_char": total / chars / 0.6931471805599453,
            "problems": n, "mc_samples": n_samples}


register(Recipe(
    build=build_mdlm_arith,
    name="mdlm-arith",
    description="masked diffusion LM SFT'd on multi-step arithmetic; the shipped builtin:mdlm-arith",
    model=ModelConfig(n_layer=6, n_head=4, d_model=128, max_seq_len=1024, causal=False),
    train=TrainConfig(steps=2400, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=200,
                      save_every=100, log_every=20, weight_decay=0.05, min_lr_ratio=0.05),
    data=ArithSpec(),
    budget="<= 45 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_mdlm_arith,
    name="mdlm-tiny-test",
    description="a seconds-long masked diffusion run for tests",
    model=ModelConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=1024, causal=False),
    train=TrainConfig(steps=4, batch_size=4, lr=2e-3, warmup_steps=1, eval_every=2, save_every=2, log_every=1),
    data=ArithSpec(long_tail=16, eval_problems=4, max_steps=3),
    budget="seconds",
))
