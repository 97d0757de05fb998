"""The ONE diffusion sampling loop, with the varying parts passed in as policies.

    out = denoise(logits_fn, prompts, policy=FixedLength(length=128), ids=SpecialIds(mask, eos, pad))

``logits_fn(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)`` is any masked
diffusion model: ours (``model_logits_fn(model)``) or a Hugging Face-style model whose output has
``.logits``. The loop keeps one canvas per sequence (prompt + response positions, [MASK] where
undecided), batches the unfinished sequences with left padding and an attention mask (each row has
its own canvas length), runs one forward pass per step, turns logits into predictions and
confidences (LLaDA: argmax of Gumbel-perturbed logits computed in float64; confidence = softmax
probability of the prediction, or a uniform draw for ``random`` remasking), and hands each row to
the policy, which commits tokens, may insert masks, and moves the row's block pointer. A row whose
pointer has passed its canvas is finished and stops costing forward passes.

Policies (each a small object; see daedal.py for DAEDAL):
- FixedLength — LLaDA's sampler: L masks, semi-autoregressive blocks, a linear number of tokens
  per step within each block (remainder to the first steps), top-k by confidence.
- Threshold — parallel decoding (Fast-dLLM): commit every mask of the block whose confidence
  exceeds τ, at least the most confident one.

Every policy takes ``order``: ``confidence`` (the papers' rule above) or ``left_to_right`` — a
diagnostic reference, not from the papers: the k leftmost masks of the block (FixedLength), or the
longest run of the block's leftmost masks whose confidence exceeds τ, at least the leftmost one
(Threshold, DAEDAL's fill). With one token per step it is autoregressive decoding by the MDM.

Per sequence the loop returns the answer tokens and stats: nfe (forward passes the sequence took
part in; classifier-free guidance counts two), n_token (response canvas length denoised), e_token
(n_token minus EOS tokens), hit_max (the canvas needed to grow past L_max), expansions (stage-2
mask insertions), start_masks (masks when stage 2 begins: L, or DAEDAL's stage-1 canvas), finished
(False only if max_steps ran out), and on request a step-by-step trace.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..errors import UsageError
from ..lm import check_prompts
from ..model import model_device


@dataclass(frozen=True)
class SpecialIds:
    """The token ids the sampling loop needs, from the tokenizer (never inline); ``check()`` refuses
    ids outside the vocabulary or colliding with the mask."""
    mask: int                     # the [MASK] id
    eos: int                      # EOS: end of answer and the padding of the canvas tail
    pad: int                      # left padding of the batch (never attended)
    vocab_size: Optional[int] = None   # for validating the ids above

    def check(self):
        if self.mask in (self.eos, self.pad):
            raise UsageError(f"the mask id {self.mask} must differ from the EOS ({self.eos}) and padding ({self.pad}) ids")
        for name in ("mask", "eos", "pad"):
            v = getattr(self, name)
            if v is None or v < 0 or (self.vocab_size is not None and v >= self.vocab_size):
                raise UsageError(f"{name} id {v} is outside the vocabulary of {self.vocab_size}")


@dataclass
class Row:
    """One sequence's state. ``canvas`` holds the response positions only (the prompt is fixed)."""
    prompt: list[int]
    canvas: torch.Tensor                  # (L,) long: response tokens, mask_id where undecided
    ptr: int = 0                          # start of the current block (response positions)
    block_step: int = 0                   # steps taken in the current block
    schedule: list = field(default_factory=list)   # tokens to commit per step of the block (fixed)
    nfe: int = 0
    done: bool = False
    hit_max: bool = False
    expansions: int = 0                   # stage-2 mask insertions (DAEDAL), each E_factor masks
    start_masks: int = 0                  # masks on the canvas when stage 2 begins (after DAEDAL's stage 1)
    trace: Optional[list] = None          # per step: canvas, committed, inserted (on request)
    generator: Optional[torch.Generator] = None   # this sequence's own randomness
    latent: Optional[torch.Tensor] = None # the conditioner's current vector for this row (VMD's z)
    latent_key: int = -1                  # what the latent was drawn for (the conditioner's bookkeeping)


@dataclass
class Prediction:
    """The model's view of one row at one step (response positions only)."""
    x0: torch.Tensor        # (L,) predicted token per position (Gumbel argmax)
    conf: torch.Tensor      # (L,) float64 confidence of x0 (prob, or uniform for random remasking)
    argmax: torch.Tensor    # (L,) clean argmax
    p_argmax: torch.Tensor  # (L,) probability of the clean argmax
    p_eos: torch.Tensor     # (L,) probability of EOS


ORDERS = ("confidence", "left_to_right")


class Policy:
    """What varies between samplers. ``step`` edits the row in place and returns
    (committed positions, inserted positions) for the trace, both indexing the canvas as it is
    after the step."""
    block_length: int = 32
    max_length: Optional[int] = None      # longest response canvas (None: no growth)
    thresholded: bool = False             # decides from confidence thresholds (needs real confidences)
    order: str = "confidence"             # which masks a step commits: see the module docstring

    def check_order(self):
        if self.order not in ORDERS:
            raise UsageError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")

    def initial_length(self) -> int:
        raise NotImplementedError

    def prepare(self, rows: list[Row], predict: Callable, ids: SpecialIds) -> None:
        """Before stage 2 (DAEDAL's stage 1 grows canvases here). ``predict(rows)`` runs one
        batched forward pass and returns a Prediction per row."""

    def step(self, row: Row, pred: Prediction, ids: SpecialIds) -> tuple[list[int], list[int]]:
        raise NotImplementedError


def block_masks(row: Row, ids: SpecialIds, block_length: int) -> torch.Tensor:
    """Indices of the masks inside the row's current block."""
    end = min(row.ptr + block_length, row.canvas.numel())
    return (row.canvas[row.ptr:end] == ids.mask).nonzero().flatten() + row.ptr


def commit(row: Row, pred: Prediction, positions: torch.Tensor) -> list[int]:
    row.canvas[positions] = pred.x0[positions]
    return positions.tolist()


def advance(row: Row, ids: SpecialIds, block_length: int) -> None:
    """Move the block pointer past blocks without masks; the row is done past its canvas."""
    while row.ptr < row.canvas.numel() and not (row.canvas[row.ptr:row.ptr + block_length] == ids.mask).any():
        row.ptr += block_length
        row.block_step = 0
        row.schedule = []
    row.done = row.ptr >= row.canvas.numel()


def linear_schedule(n_masks: int, steps: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens: n masks spread evenly over steps, remainder first."""
    base, rem = divmod(n_masks, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


@dataclass
class FixedLength(Policy):
    """LLaDA's baseline: a fixed canvas of ``length`` masks, filled block by block in ``steps``
    denoising steps (the k most confident masks, or the k leftmost, per step)."""
    length: int = 128             # response canvas L
    block_length: int = 32        # semi-autoregressive block
    steps: int = 0                # total denoising steps; 0 = L (one token per step)
    order: str = "confidence"     # top-k by confidence (LLaDA) or the k leftmost masks

    def __post_init__(self):
        self.check_order()
        if self.length < 1 or self.block_length < 1 or self.steps < 0:
            raise UsageError("length and block_length must be >= 1 and steps >= 0")
        n_blocks = -(-self.length // self.block_length)
        if self.steps and self.steps % n_blocks:
            raise UsageError(f"steps={self.steps} must divide into the {n_blocks} blocks of the canvas (LLaDA)")
        # steps=0: one token per step in every block, the last (shorter) block included
        self.steps_per_block = self.steps // n_blocks if self.steps else self.block_length

    def initial_length(self) -> int:
        return self.length

    def step(self, row, pred, ids):
        masks = block_masks(row, ids, self.block_length)
        if not row.schedule:
            row.schedule = linear_schedule(masks.numel(), self.steps_per_block)
        k = min(row.schedule[min(row.block_step, len(row.schedule) - 1)] or 1, masks.numel())
        top = masks[:k] if self.order == "left_to_right" else masks[pred.conf[masks].topk(k).indices]
        done = commit(row, pred, top)
        row.block_step += 1
        advance(row, ids, self.block_length)
        return done, []


@dataclass
class Threshold(Policy):
    """Confidence-threshold parallel decoding on a fixed canvas: each step commits every mask of the
    current block whose confidence exceeds ``threshold`` (at least one)."""
    length: int = 128             # response canvas L
    threshold: float = 0.9        # commit every block mask with confidence above it
    block_length: int = 32
    order: str = "confidence"     # every mask above τ, or the leftmost run of them
    thresholded = True

    def __post_init__(self):
        self.check_order()
        if not 0 <= self.threshold <= 1:
            raise UsageError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.length < 1 or self.block_length < 1:
            raise UsageError("length and block_length must be >= 1")

    def initial_length(self) -> int:
        return self.length

    def step(self, row, pred, ids):
        masks = block_masks(row, ids, self.block_length)
        done = commit(row, pred, fill_above(pred, masks, self.threshold, self.order))
        advance(row, ids, self.block_length)
        return done, []


def fill_above(pred: Prediction, masks: torch.Tensor, threshold: float, order: str = "confidence") -> torch.Tensor:
    """``masks`` (ascending positions) with confidence > threshold, or the single most confident one
    if none; ``left_to_right``: the leading run of them, at least the leftmost mask."""
    c = pred.conf[masks]
    if order == "left_to_right":
        run = int((c > threshold).long().cumprod(0).sum())
        return masks[:max(run, 1)]
    chosen = masks[c > threshold]
    return chosen if chosen.numel() else masks[c.argmax()][None]


@dataclass
class DiffusionOutput:
    tokens: list[list[int]]       # per sequence: the answer, up to (excluding) the first EOS
    canvases: list[list[int]]     # per sequence: the whole response canvas
    stats: list[dict]             # per sequence: nfe, n_token, e_token, hit_max
    traces: Optional[list] = None


def model_logits_fn(model) -> Callable:
    """Our TransformerLM, a VMD (or any model returning logits or an object with .logits) as a
    logits_fn; ``cond`` (B, C) is passed on only when a conditioner supplies one."""
    dev = model_device(model)

    def fn(input_ids, attention_mask, cond=None):                  # inputs moved to the model's device
        kw = {} if cond is None else {"cond": cond.to(dev)}
        am = None if attention_mask is None else attention_mask.to(dev)
        out = model(input_ids.to(dev), attention_mask=am, **kw)
        return out.logits if hasattr(out, "logits") else out
    return fn


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """LLaDA's add_gumbel_noise + argmax: argmax exp(logits) / (-log U)^temperature in float64."""
    if temperature <= 0:
        return logits.argmax(-1)
    l64 = logits.double()
    u = torch.rand(l64.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return (l64.exp() / (-u.log()) ** temperature).argmax(-1)


@torch.no_grad()
def denoise(logits_fn: Callable, prompts: list[list[int]], *, policy: Policy, ids: SpecialIds,
            temperature: float = 0.0, remasking: str = "low_confidence", cfg_scale: float = 0.0,
            generator: Optional[torch.Generator] = None, trace: bool = False, max_steps: int = 100_000,
            max_seq_len: Optional[int] = None, device=None, canvases: Optional[list] = None,
            conditioner: Optional[Callable] = None) -> DiffusionOutput:
    """Run the policy to completion on every prompt (see the module docstring).

    Randomness (temperature > 0, random remasking, the conditioner's draws) comes from one generator
    per sequence, seeded from ``generator``, so a sequence's result does not depend on its batch-mates.
    ``max_seq_len``: the model's context; prompt + the largest canvas must fit (checked up front).
    ``remasking`` — the mask predictor's score of a masked position: ``low_confidence`` (top prob:
    the prediction's probability), ``margin`` (top-1 minus top-2 probability) or ``random``.
    ``canvases``: a starting canvas per prompt ((L,) ids, ``ids.mask`` where undecided; L must be the
    policy's initial length) — e.g. a Sudoku's givens; prompts may then be empty.
    ``conditioner(row) -> (C,)``: a conditioning vector per row and step, handed to
    ``logits_fn(x, attention_mask, cond (B, C))`` — VMD's latent z (vmd/sample.py).
    """
    if not isinstance(ids, SpecialIds):
        raise UsageError(f"ids must be SpecialIds(mask=..., eos=..., pad=...), not {type(ids).__name__}")
    ids.check()
    if remasking not in REMASKING:
        raise UsageError(f"remasking must be one of {', '.join(REMASKING)}, not {remasking!r}")
    if remasking == "random" and policy.thresholded:
        raise UsageError(f"{type(policy).__name__} decides from confidence thresholds; use remasking=low_confidence")
    if isinstance(policy, type):
        raise UsageError(f"policy must be an instance, e.g. {policy.__name__}(), not the class")
    try:
        check_prompts(prompts, ids.vocab_size, allow_empty=canvases is not None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    L0 = policy.initial_length()
    if canvases is not None and (len(canvases) != len(prompts) or any(len(c) != L0 for c in canvases)):
        raise UsageError(f"give one starting canvas of {L0} positions per prompt")
    if policy.max_length is not None and L0 > policy.max_length:
        raise UsageError(f"initial length {L0} exceeds the maximum length {policy.max_length}")
    longest = max(len(p) for p in prompts) + max(L0, policy.max_length or 0)
    if max_seq_len is not None and longest > max_seq_len:
        raise UsageError(f"prompt + canvas ({longest} tokens) exceeds the model's {max_seq_len}-token context")
    seeds = torch.randint(0, 2**62, (len(prompts),), generator=generator).tolist()
    start = canvases or [torch.full((L0,), ids.mask, dtype=torch.long)] * len(prompts)
    rows = [Row(list(p), torch.as_tensor(c, dtype=torch.long).clone(), trace=[] if trace else None,
                generator=torch.Generator().manual_seed(sd)) for p, c, sd in zip(prompts, start, seeds)]
    for r in rows:
        advance(r, ids, policy.block_length)          # a given canvas may have whole blocks decided

    def predict(batch_rows: list[Row]) -> list[Prediction]:
        return _predict(logits_fn, batch_rows, ids, temperature, remasking, cfg_scale, device, conditioner)

    policy.prepare(rows, predict, ids)
    for r in rows:
        r.start_masks = int((r.canvas == ids.mask).sum())
    for _ in range(max_steps):
        alive = [r for r in rows if not r.done]
        if not alive:
            break
        for r, pred in zip(alive, predict(alive)):
            done, inserted = policy.step(r, pred, ids)
            if r.trace is not None:
                r.trace.append({"canvas": r.canvas.tolist(), "committed": done, "inserted": inserted, "ptr": r.ptr})
    return _finish(rows, ids)


REMASKING = ("low_confidence", "margin", "random")


def _logits(logits_fn, x, am, device, cond=None) -> torch.Tensor:
    out = logits_fn(x.to(device), am.to(device)) if cond is None else logits_fn(x.to(device), am.to(device), cond.to(device))
    return getattr(out, "logits", out)                  # Hugging Face outputs carry .logits


def _predict(logits_fn, rows, ids, temperature, remasking, cfg_scale, device, conditioner=None) -> list[Prediction]:
    """One batched forward pass over the rows' canvases (left padded) -> a Prediction per row.
    Softmax, argmax and confidences are computed where the logits are; only (B, T) tensors move."""
    seqs = [r.prompt + r.canvas.tolist() for r in rows]
    T = max(len(s) for s in seqs)
    x = torch.full((len(seqs), T), ids.pad, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, T - len(s):] = torch.tensor(s)
        am[i, T - len(s):] = 1
    c = None if conditioner is None else torch.stack([conditioner(r) for r in rows])   # (B, C)
    if cfg_scale > 0:                                    # unconditional pass: prompt masked
        xu = x.clone()
        for i, r in enumerate(rows):
            xu[i, T - len(seqs[i]):T - len(seqs[i]) + len(r.prompt)] = ids.mask
        cond, unc = _logits(logits_fn, torch.cat([x, xu]), torch.cat([am, am]), device,
                            None if c is None else torch.cat([c, c])).float().chunk(2)
        logits = unc + (cfg_scale + 1) * (cond - unc)
    else:
        logits = _logits(logits_fn, x, am, device, c).float()                   # (B, T, V)
    V = logits.shape[-1]
    if max(ids.mask, ids.eos, ids.pad) >= V:
        raise UsageError(f"special ids (mask {ids.mask}, eos {ids.eos}, pad {ids.pad}) outside the model's vocabulary of {V}")
    logits[..., ids.mask] = -float("inf")        # [MASK] is never a prediction (MDLM's zero-masking)
    probs = logits.softmax(-1)
    p_arg, arg = (t.cpu() for t in probs.max(-1))                              # (B, T)
    if remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        gap = (top2[..., 0] - top2[..., 1]).cpu()                            # (B, T) top-prob margin
    p_eos = probs[..., ids.eos].cpu()
    lg = logits.cpu() if temperature > 0 else None                               # one copy, not one per row
    out = []
    for i, r in enumerate(rows):
        r.nfe += 2 if cfg_scale > 0 else 1
        L = r.canvas.numel()
        masked = r.canvas == ids.mask
        if temperature > 0:
            x0 = gumbel_argmax(lg[i, T - L:], temperature, r.generator)
        else:
            x0 = arg[i, T - L:]
        x0 = torch.where(masked, x0, r.canvas)
        if remasking == "random":
            conf = torch.rand(L, generator=r.generator, dtype=torch.float64)
        elif remasking == "margin":
            conf = gap[i, T - L:].double()
        elif temperature > 0:
            conf = probs[i, T - L:].gather(-1, x0.to(probs.device)[:, None]).squeeze(1).double().cpu()
        else:
            conf = p_arg[i, T - L:].double()
        conf = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
        out.append(Prediction(x0, conf, arg[i, T - L:], p_arg[i, T - L:], p_eos[i, T - L:]))
    return out


def _finish(rows: list[Row], ids: SpecialIds) -> DiffusionOutput:
    tokens, canvases, stats = [], [], []
    for r in rows:
        c = r.canvas.tolist()
        ans = c[:c.index(ids.eos)] if ids.eos in c else c
        tokens.append([t for t in ans if t != ids.mask])
        canvases.append(c)
        n_eos = sum(1 for t in c if t == ids.eos)
        stats.append({"nfe": r.nfe, "n_token": len(c), "e_token": len(c) - n_eos, "hit_max": r.hit_max,
                      "expansions": r.expansions, "start_masks": r.start_masks, "finished": r.done})
    traces = [r.trace for r in rows] if rows and rows[0].trace is not None else None
    return DiffusionOutput(tokens, canvases, stats, traces)
