"""Recipes on the synthetic arithmetic task: the masked diffusion LM SFT (the shipped
builtin:mdlm-arith) and, as its reference, a causal LM of the same size on the same problems.

Every row's canvas length is drawn INDEPENDENTLY of its answer: the answer followed by EOS when the
canvas is longer, the answer cut (no EOS) when it is shorter. The model then learns the prefix
marginals of "answer + EOS forever", which do not depend on the canvas: EOS confidence at a
position says whether the answer has ended there — DAEDAL's signal — and a fixed canvas is filled
with the answer and then EOS. (Padding every row to its batch's longest answer, LLaDA's recipe,
let our model read the answer's length off the canvas when a batch's answers had similar lengths:
it filled any canvas with worked lines instead of stopping at the value condition; see
docs/benchmarks.md.) A batch's canvases lie within ``canvas_spread`` of a length drawn per batch,
so a batch of short canvases is cheap; the answers' step counts are uniform over 1..max_steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..checkpoint import CheckpointError, from_pretrained
from ..data import shard, step_generator
from ..diffusion.objective import block_noise, mc_nll, mdm_loss, semi_ar_noise, sft_batch, sft_loss
from ..errors import UsageError
from ..lm import lm_objective, next_token_ce
from ..model import ModelConfig, TransformerLM, causal_forward
from ..tasks.arith import ALPHABET, MAX_STEPS, check_options, make_split, sample_problem
from ..tokenizer import CharTokenizer
from ..train import TrainConfig
from . import Built, Recipe, register


@dataclass
class ArithSpec:
    max_canvas: int = 320         # a batch's canvas length is drawn uniformly from 1..max_canvas ...
    canvas_spread: int = 32       # ... and each row's from that length minus U(0, canvas_spread)
    eval_problems: int = 64       # held-out problems scored at each evaluation
    max_steps: int = MAX_STEPS    # longest chain (lines of the solution)
    stratified: bool = True       # low-discrepancy noise levels across the batch (less loss variance)
    semi_ar_share: float = 0.5    # share of rows seen as the block sampler sees them (objective.semi_ar_noise)
    semi_ar_block: int = 32       # the block length of those rows (the samplers' default)
    future_weight: float = 1.0    # loss weight of those rows' always-masked future (objective.semi_ar_noise)
    block_weight: float = 1.0     # loss weight of those rows' block (objective.semi_ar_noise)
    line_style: str = "delta"     # worked lines: "delta" ("Day 02: -2=31") or "full" ("Day 02: 33-2=31")
    max_delta: int = 9            # largest daily change (tasks.arith.sample_problem)
    bd3_share: float = 0.0        # share of rows trained in block diffusion's view, all blocks at once (objective.block_diffusion_loss)
    bd3_block: int = 32           # the block length of those rows
    decision_cut_share: float = 0.0   # share of the semi-AR rows whose cut lies where a decision is made — a worked line's last digit or the next line's first character; the stop decision (first character after the last worked line) drawn half of the time — instead of anywhere (objective.semi_ar_noise's cut_points)
    ar_steps: int = 0             # the first steps train the model as a causal LM (next-token loss on the solution), then the masked objective: adapting a causal LM into a diffusion LM (set model.shift_logits)
    init_from: str = ""           # a checkpoint of the same shape whose weights start the model (e.g. an ar-arith run's)

    def task(self) -> dict:
        """The problem generator's options; stored in the checkpoint's meta so that benches pose
        the problems the model was trained on."""
        return {"max_steps": self.max_steps, "style": self.line_style, "max_delta": self.max_delta}


def arith_tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


def arith_global_batch(tok, spec: ArithSpec, batch_size: int, generator: torch.Generator, split: str = "train") -> dict:
    """One global SFT batch of arithmetic problems with its diffusion noise; canvases independent
    of the answers (module docstring)."""
    g = generator
    probs = [sample_problem(g, split, **spec.task()) for _ in range(batch_size)]
    top = int(torch.randint(1, spec.max_canvas + 1, (1,), generator=g))
    canvas = [max(1, top - int(torch.randint(0, spec.canvas_spread + 1, (1,), generator=g))) for _ in probs]
    prompts, responses = [tok.encode(p.prompt) for p in probs], [tok.encode(p.solution) for p in probs]
    batch = sft_batch(prompts, responses, eos_id=tok.eos_id, generator=g, stratified=spec.stratified,
                      canvas_lens=canvas)
    bd3 = torch.zeros(batch_size, dtype=torch.bool)
    if spec.bd3_share > 0:                           # (no draw otherwise: older recipes keep their noise)
        bd3 = torch.rand(batch_size, generator=g) < spec.bd3_share
        batch["bd3"] = bd3
        batch["t_pos"] = block_noise(batch["prompt_mask"], spec.bd3_block, g)
    if spec.semi_ar_share > 0:                        # among the other rows
        starts = [len(p) for p in prompts]
        ends = [a if b else a + c for a, c, b in zip(starts, canvas, bd3.tolist())]
        cuts = None
        if spec.decision_cut_share > 0:                # the stop decision weighs as much as all the others together
            nl = tok.encode("\n")[0]
            cuts = [[a + j for j in decision_points(r, nl) + [stop_point(p.solution)] * len(decision_points(r, nl))]
                    for a, r, p in zip(starts, responses, probs)]
        batch["t"], batch["u"], w = semi_ar_noise(batch["t"], batch["u"], starts, ends, share=spec.semi_ar_share,
                                                  block=spec.semi_ar_block, generator=g,
                                                  future_weight=spec.future_weight, block_weight=spec.block_weight,
                                                  cut_points=cuts, cut_share=spec.decision_cut_share)
        batch["loss_weight"] = w
    return batch


def decision_points(response: list[int], newline_id: int) -> list[int]:
    """Positions (in the response) where the worked solution makes a decision: the last character
    of each line (a worked line's result digit) and the first character of the line after it
    (another "Day" line, or the conclusion: the stop decision)."""
    out = []
    for j, tok_id in enumerate(response):
        if tok_id == newline_id:
            out += [j - 1, j + 1] if j > 0 else [j + 1]
    return [j for j in out if j < len(response)]


def stop_point(solution: str) -> int:
    """Position of the first character after the last worked line: where the solution decides to
    stop (the conclusion "05<6, so 7 days." instead of another "Day" line)."""
    last = solution.rfind("Day ")
    return solution.index("\n", last) + 1


def check_spec(spec: ArithSpec) -> None:
    """Bad task settings -> one clear error before any training starts."""
    try:
        check_options(spec.line_style, spec.max_delta)
    except ValueError as e:
        raise UsageError(f"data.line_style / data.max_delta: {e}") from None
    if not 0 <= spec.bd3_share <= 1 or spec.bd3_block < 1:
        raise UsageError("data.bd3_share must be in [0, 1] and data.bd3_block >= 1")
    if not 1 <= spec.max_steps <= MAX_STEPS:
        raise UsageError(f"data.max_steps must be in 1..{MAX_STEPS}, not {spec.max_steps}")
    if not 0 <= spec.decision_cut_share <= 1:
        raise UsageError(f"data.decision_cut_share must be in [0, 1], not {spec.decision_cut_share}")
    if spec.ar_steps < 0:
        raise UsageError(f"data.ar_steps must be >= 0, not {spec.ar_steps}")


def warm_start_from(model, path: str) -> None:
    """Copy every weight of the checkpoint at ``path`` (any family: a causal LM's weights start a
    diffusion LM) into model; one clear error when the shapes differ."""
    try:
        source, _ = from_pretrained(path, with_tokenizer=False)
    except (CheckpointError, OSError, ValueError) as e:
        raise UsageError(f"data.init_from={path}: {e}") from None
    mine, theirs = model.state_dict(), source.state_dict()
    if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
        raise UsageError(f"data.init_from={path}: its weights do not have this model's shapes")
    model.load_state_dict(theirs)


def ar_phase_loss(m, batch: dict) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy of the model run causally (model.causal_forward) on an ar_arith_batch
    stored as ``ar_x`` / ``ar_y``: the causal phase of ``ar_steps``."""
    loss = next_token_ce(causal_forward(m, batch["ar_x"]).logits, batch["ar_y"])
    return loss, {"loss": loss.detach(), "ar_loss": loss.detach()}


def build_mdlm_arith(recipe: Recipe, data_dir: Optional[str] = None) -> Built:
    spec, tc = recipe.data, recipe.train
    check_spec(spec)
    tok = arith_tokenizer()
    torch.manual_seed(tc.seed)
    model = TransformerLM(dataclasses.replace(recipe.model, vocab_size=tok.vocab_size, causal=False))
    if model.config.shift_logits and spec.bd3_share > 0:
        raise UsageError("data.bd3_share needs model.shift_logits=false (the block view scores unshifted logits)")
    if spec.init_from:
        warm_start_from(model, spec.init_from)

    def objective(m, batch):
        if "ar_x" in batch:
            return ar_phase_loss(m, batch)
        return sft_loss(m, batch, mask_id=tok.mask_id, block=spec.bd3_block)

    def batches(step, micro, rank, world):
        g = step_generator(tc.seed, step)
        if step < spec.ar_steps:
            x, y = ar_arith_batch(tok, [sample_problem(g, "train", **spec.task()) for _ in range(tc.batch_size)])
            b = {"ar_x": x, "ar_y": y}
        else:
            b = arith_global_batch(tok, spec, tc.batch_size, g)
        return shard(b, tc.batch_size, micro=micro, n_micro=tc.grad_accum, rank=rank, world=world)

    g = torch.Generator().manual_seed(12345)
    held = make_split("test", spec.eval_problems, seed=777, **spec.task())
    val = sft_batch([tok.encode(p.prompt) for p in held], [tok.encode(p.solution) for p in held],
                    eos_id=tok.eos_id, generator=g, extra=16)

    @torch.no_grad()
    def eval_fn(m):
        m.eval()
        dev = next(m.parameters()).device
        loss, mets = mdm_loss(m, {k: v.to(dev) for k, v in val.items()}, mask_id=tok.mask_id)
        return {"loss": float(loss), "masked_acc": float(mets["masked_acc"])}

    meta = {"recipe": recipe.name, "family": "masked-diffusion", "task": "arith", "task_options": spec.task(),
            **({"init_from": spec.init_from} if spec.init_from else {})}
    return Built(model, tok, objective, batches, eval_fn, meta)


def ar_arith_batch(tok, problems) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM batch (x, y) of (B, T): prompt + solution + EOS, right-padded; loss only on the
    solution and its EOS (y = -100 elsewhere, cross-entropy's ignore index)."""
    seqs, starts = [], []
    for p in problems:
        prompt = tok.encode(p.prompt)
        seqs.append(prompt + tok.encode(p.solution) + [tok.eos_id])
        starts.append(len(prompt) - 1)                      # y[start] is the first solution token
    T = max(len(s) for s in seqs) - 1
    x = torch.full((len(seqs), T), tok.pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (s, a) in enumerate(zip(seqs, starts)):
        x[i, :len(s) - 1] = torch.tensor(s[:-1])
        y[i, a:len(s) - 1] = torch.tensor(s[a + 1:])
    return x, y


@torch.no_grad()
def ar_answers(model, tok, problems, *, batch_size: int = 32, max_new_tokens: int = 320) -> list[list[int]]:
    """A causal LM's greedy answers (ids, EOS excluded) to the problems, batch_size at a time."""
    from ..lm import generate
    outs = []
    for b in range(0, len(problems), batch_size):
        outs += generate(model, [tok.encode(p.prompt) for p in problems[b:b + batch_size]],
                         max_new_tokens=max_new_tokens, pad_id=tok.pad_id, eos_id=tok.eos_id, temperature=0)
    return outs


def arith_generation_acc(model, tok, problems, *, batch_size: int = 32, max_new_tokens: int = 320) -> float:
    """Share of problems a causal LM answers right by greedy decoding (last \\boxed{} checker)."""
    from ..tasks.arith import score
    outs = ar_answers(model, tok, problems, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return sum(score(tok.decode(o), p) for o, p in zip(outs, problems)) / len(problems)


def build_ar_arith(recipe: Recipe, data_dir: Optional[str] = None) -> Built:
    spec, tc = recipe.data, recipe.train
    check_spec(spec)
    tok = arith_tokenizer()
    torch.manual_seed(tc.seed)
    model = TransformerLM(dataclasses.replace(recipe.model, vocab_size=tok.vocab_size, causal=True))

    def batches(step, micro, rank, world):
        g = step_generator(tc.seed, step)
        b = ar_arith_batch(tok, [sample_problem(g, "train", **spec.task()) for _ in range(tc.batch_size)])
        return shard(b, tc.batch_size, micro=micro, n_micro=tc.grad_accum, rank=rank, world=world)

    held = make_split("test", spec.eval_problems, seed=777, **spec.task())
    vx, vy = ar_arith_batch(tok, held)

    @torch.no_grad()
    def eval_fn(m):
        m.eval()
        dev = next(m.parameters()).device
        loss, _ = lm_objective(m, (vx.to(dev), vy.to(dev)))
        return {"loss": float(loss), "acc": arith_generation_acc(m, tok, held)}

    meta = {"recipe": recipe.name, "family": "causal-lm", "task": "arith", "task_options": spec.task()}
    return Built(model, tok, lm_objective, batches, eval_fn, meta)


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
    model=ModelConfig(n_layer=6, n_head=4, d_model=128, max_seq_len=1024, causal=False, shift_logits=True),
    train=TrainConfig(steps=3800, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=500,
                      save_every=200, log_every=20, weight_decay=0.05, min_lr_ratio=0.05),
    data=ArithSpec(ar_steps=1600),
    budget="<= 45 minutes on 2 CPU cores",
))

register(Recipe(
    build=build_mdlm_arith,
    name="mdlm-tiny-test",
    description="a seconds-long masked diffusion run for tests",
    model=ModelConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=1024, causal=False),
    train=TrainConfig(steps=4, batch_size=4, lr=2e-3, warmup_steps=1, eval_every=2, save_every=2, log_every=1),
    data=ArithSpec(max_canvas=64, eval_problems=4, max_steps=3),
    budget="seconds",
))

register(Recipe(
    build=build_ar_arith,
    name="ar-arith",
    description="reference: a causal LM of mdlm-arith's size on the same arithmetic problems",
    model=ModelConfig(n_layer=6, n_head=4, d_model=128, max_seq_len=1024, causal=True),
    train=TrainConfig(steps=2400, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=400,
                      save_every=100, log_every=20, weight_decay=0.05, min_lr_ratio=0.05),
    data=ArithSpec(),
    budget="<= 30 minutes on 2 CPU cores",
))
