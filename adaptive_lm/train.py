"""The one trainer. Every method plugs in an objective ``objective(model, batch) -> (loss, metrics)``
and a batch source ``batches(step, micro, rank, world) -> batch``; the loop does the rest:

AdamW (decay on matrices only), linear warmup + cosine decay to ``min_lr_ratio``, gradient
clipping, gradient accumulation, periodic evaluation, a checkpoint every ``save_every`` steps,
``resume`` that continues exactly (weights, optimizer moments, schedule, data position, RNG), a
progress line with loss and tokens/s, metrics appended to ``metrics.jsonl``, data-parallel
training under `torchrun` (DDP), bf16 autocast where it pays.

A run folder:
    OUT/checkpoint/   a loadable checkpoint (see checkpoint.py) + trainer_state.{json,safetensors}
    OUT/metrics.jsonl one JSON object per logged step / eval
Nothing here pickles: optimizer state and RNG states are stored as safetensors tensors + JSON.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from . import distributed as D
from .distributed import unwrap
from .checkpoint import load_weights, read_config, save_pretrained
from .errors import AdaptiveLMError, CheckpointError, UsageError
from .io import atomic_write_text, recover_folder

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"


@dataclass
class TrainConfig:
    steps: int = 1000             # optimizer steps in the whole run
    batch_size: int = 32          # sequences per optimizer step, over all processes and micro-steps
    grad_accum: int = 1           # micro-steps per optimizer step (per process)
    lr: float = 1e-3              # peak learning rate
    min_lr_ratio: float = 0.1     # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100       # linear warmup from 0
    weight_decay: float = 0.1     # AdamW decay on 2-D weights only
    beta1: float = 0.9            # AdamW beta1
    beta2: float = 0.95           # AdamW beta2
    grad_clip: float = 1.0        # max global grad norm; 0 = off
    eval_every: int = 250         # steps between evaluations; 0 = only at the end
    save_every: int = 500         # steps between checkpoints; 0 = only at the end
    log_every: int = 10           # steps between metrics.jsonl lines
    seed: int = 0                 # data order and dropout (train() seeds torch's global RNG with it); recipes also init the model from it
    precision: str = "auto"       # auto | fp32 | bf16 (autocast); auto = bf16 on GPU or CPUs with bf16 units
    threads: int = 0              # torch CPU threads per process; 0 = leave torch's default
    compile: bool = False         # torch.compile the model (needs a C++ compiler on CPU)

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        for name in ("eval_every", "save_every", "warmup_steps", "threads", "grad_clip", "weight_decay"):
            if not getattr(self, name) >= 0:                       # NaN fails too
                raise UsageError(f"{name} must be >= 0, not {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise UsageError(f"lr must be a finite number > 0, not {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}")
        if not math.isfinite(self.grad_clip) or not math.isfinite(self.weight_decay):
            raise UsageError("grad_clip and weight_decay must be finite")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warmup, then cosine to the floor."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * frac))


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16 units. Without them (e.g. AVX2-only CPUs) bf16 matmuls are emulated and
    run ~100x slower than fp32, so `auto` precision stays fp32 there."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in info or "avx512_bf16" in info


def autocast_dtype(precision: str, device: str) -> Optional[torch.dtype]:
    """bf16 autocast when asked, or with ``auto`` where bf16 is fast: a GPU with bf16 units (Ampere
    or later; older ones only emulate it), a CPU with AMX / AVX-512 BF16."""
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        return None
    fast = (torch.cuda.is_bf16_supported(including_emulation=False) if device.startswith("cuda")
            else cpu_has_fast_bf16())
    return torch.bfloat16 if fast else None


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


# ---- trainer state: optimizer + RNG + position, as tensors and JSON (no pickle) ----
def state_tensors(opt: torch.optim.Optimizer, info: D.DistInfo) -> dict[str, torch.Tensor]:
    """Optimizer moments and every process's RNG states (``rng.cpu.RANK``), as named tensors.
    Collective under DDP: every rank must call it."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    dev = info.device if info.device.startswith("cuda") else "cpu"   # nccl gathers on the GPU
    for r, t in enumerate(D.gather_rows(torch.get_rng_state().to(dev), info)):
        out[f"rng.cpu.{r}"] = t.cpu()
    if torch.cuda.is_available():
        for r, t in enumerate(D.gather_rows(torch.cuda.get_rng_state().to(dev), info)):
            out[f"rng.cuda.{r}"] = t.cpu()
    return out


def restore_state(opt: torch.optim.Optimizer, tensors: dict, groups: list, rank: int = 0) -> None:
    state: dict = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    sd = opt.state_dict()
    for g, saved in zip(sd["param_groups"], groups):
        saved = {**saved, "params": g["params"]}
        g.update(saved)
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    if f"rng.cpu.{rank}" not in tensors:
        raise CheckpointError(f"trainer state has no RNG state for rank {rank}: resume with the same number of processes")
    torch.set_rng_state(tensors[f"rng.cpu.{rank}"])
    if f"rng.cuda.{rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"])


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a line per log step otherwise."""

    def __init__(self, total: int, enabled: bool, every: int):
        self.total, self.enabled, self.every = total, enabled, max(every, 1)
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()

    def update(self, step: int, loss: float, tok_s: float, lr: float, start: int):
        if not self.enabled or (not self.tty and step % self.every and step != self.total):
            return
        done = step - start
        eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
        n = 24
        bar = "#" * int(n * step / self.total)
        line = (f"[{bar:<{n}}] {step}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                f"{tok_s:,.0f} tok/s eta {eta:,.0f}s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines an interrupted run wrote after its last checkpoint."""
    if path.exists():
        keep = []
        for ln in path.read_text().splitlines():
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:       # a line cut short by the kill
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                keep.append(ln)
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


class _CtrlC:
    """While it is entered (one process, the main thread, Ctrl-C not ignored or handled by someone
    else): the first Ctrl-C only sets ``hit``, so the step in flight finishes and the loop can save
    before stopping; a second one stops at once."""
    def __init__(self, active: bool):
        self.active = (active and threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        self.hit = False

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        print("\n[train] interrupted: saving a checkpoint after this step (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        if self.active:
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self.old)


def train(model, objective: Callable, batches: Callable, *, cfg: TrainConfig, out_dir, tokenizer=None,
          meta: Optional[dict] = None, eval_fn: Optional[Callable] = None, resume: bool = False,
          stop_at: Optional[int] = None, progress: bool = True, dist: Optional[D.DistInfo] = None) -> dict:
    """Train ``model`` for ``cfg.steps`` optimizer steps; returns the last logged metrics.

    batches(step, micro, rank, world) gives this process's share of micro-step ``micro`` of global
    step ``step``. eval_fn(model) -> dict of held-out metrics. ``stop_at`` ends the run early after
    that step with a checkpoint, exactly as a kill right after a checkpoint would (tests, budgets).
    Ctrl-C (one process) finishes the step in flight, saves, and raises KeyboardInterrupt.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    log_path = out_dir / "metrics.jsonl"
    info = dist or D.setup()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % (cfg.grad_accum * info.world):
        raise UsageError(f"batch_size {cfg.batch_size} must divide by grad_accum x processes = {cfg.grad_accum * info.world}")
    model.to(info.device)
    opt = make_optimizer(model, cfg)
    start = 0
    if resume:
        start = _resume(model, opt, ckpt_dir, cfg, info, meta)
        if info.is_main:
            _truncate_log(log_path, start)
            if start >= cfg.steps:
                print(f"[train] {ckpt_dir} is already at step {start} of {cfg.steps}: nothing to do "
                      "(raise train.steps to train on)", file=sys.stderr)
    else:
        torch.manual_seed(cfg.seed + info.rank)
        if info.is_main:
            recover_folder(ckpt_dir)
            if (ckpt_dir / STATE_JSON).exists():
                raise UsageError(f"{out_dir} already holds a training run: pass --resume to continue it, or choose another --out")
            out_dir.mkdir(parents=True, exist_ok=True)
            log_path.unlink(missing_ok=True)
    net = model
    if cfg.compile:
        net = torch.compile(net)
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[info.local_rank] if info.device.startswith("cuda") else None)
    amp = autocast_dtype(cfg.precision, info.device)
    bar = Progress(cfg.steps, progress and info.is_main, cfg.log_every)
    end = min(cfg.steps, stop_at) if stop_at else cfg.steps
    with _CtrlC(info.world == 1) as ctrl_c:
        last = _loop(model, net, opt, objective, batches, cfg=cfg, info=info, amp=amp, bar=bar, start=start, end=end,
                     ckpt_dir=ckpt_dir, log_path=log_path, tokenizer=tokenizer, meta=meta, eval_fn=eval_fn,
                     ctrl_c=ctrl_c)
    bar.close()
    return last


def _loop(model, net, opt, objective, batches, *, cfg, info, amp, bar, start, end, ckpt_dir, log_path, tokenizer,
          meta, eval_fn, ctrl_c) -> dict:
    """The optimizer steps start..end-1 of ``train``: logging, evaluation, checkpoints."""
    last: dict = {}
    t_last, tok_since = time.time(), 0
    for step in range(start, end):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum, mets_sum, gnorm, n_tok = optimizer_step(
            net, model, opt, objective, [batches(step, mi, info.rank, info.world) for mi in range(cfg.grad_accum)],
            cfg=cfg, device=info.device, amp=amp, world=info.world)
        tok_since += n_tok * info.world
        done = step + 1
        loss_all = D.mean_across(loss_sum, info).item()
        if not math.isfinite(loss_all):            # NaN weights are never saved over a good checkpoint
            raise AdaptiveLMError(f"the training loss is {loss_all} at step {done}: stopped; "
                                  f"{ckpt_dir} keeps the last good checkpoint, if any (lower train.lr?)")
        now = time.time()
        tok_s = tok_since / max(now - t_last, 1e-9)
        if done % cfg.log_every == 0 or done == end:
            row = {"step": done, "loss": loss_all, "lr": lr, "tok_s": tok_s,
                   **{k: float(v) for k, v in mets_sum.items() if k != "loss"}}
            if gnorm is not None:
                row["grad_norm"] = float(gnorm)
            if info.is_main:
                _log(log_path, row)
            last = row
            t_last, tok_since = now, 0
        bar.update(done, loss_all, tok_s, lr, start)
        is_eval = eval_fn is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps)
        if is_eval and info.is_main:
            ev = {f"val_{k}": v for k, v in eval_fn(model).items()}
            _log(log_path, {"step": done, **ev})
            last = {**last, **ev}
        saved = (cfg.save_every and done % cfg.save_every == 0) or done == end
        if saved or ctrl_c.hit:
            _save(model, opt, ckpt_dir, tokenizer, meta, cfg, done, info)
        if ctrl_c.hit:
            print(f"[train] saved at step {done}: continue with --resume", file=sys.stderr)
            raise KeyboardInterrupt
    return last


def optimizer_step(net, model, opt, objective, micro_batches: list, *, cfg: TrainConfig, device: str,
                   amp: Optional[torch.dtype], world: int = 1):
    """One optimizer step over ``micro_batches`` (gradient accumulation; DDP syncs on the last).
    Returns (mean loss tensor, mean metrics, grad norm or None, tokens this process saw)."""
    net.train()
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    n = len(micro_batches)
    loss_sum, mets_sum, n_tok = torch.zeros((), device=device), {}, 0
    for i, batch in enumerate(micro_batches):
        batch = _to(batch, device)
        sync = i == n - 1 or world == 1
        with (contextlib.nullcontext() if sync else net.no_sync()), \
             torch.autocast(dev_type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, mets = objective(net, batch)
        (loss / n).backward()
        loss_sum += loss.detach() / n
        for k, v in mets.items():
            mets_sum[k] = mets_sum.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float32).detach().cpu() / n
        n_tok += _count_tokens(batch)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum, mets_sum, gnorm, n_tok


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _count_tokens(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else next(iter(batch.values())) if isinstance(batch, dict) else batch
    return first.numel() if isinstance(first, torch.Tensor) else 0


def _save(model, opt, ckpt_dir: Path, tokenizer, meta, cfg: TrainConfig, step: int, info: D.DistInfo) -> None:
    tensors = state_tensors(opt, info)                    # collective: all ranks
    if info.is_main:
        def extra(tmp: Path):
            save_file(tensors, str(tmp / STATE_TENSORS))
            groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]
            (tmp / STATE_JSON).write_text(json.dumps({"step": step, "train": asdict(cfg), "world": info.world,
                                                      "param_groups": groups}, indent=2))
        keep, n = ckpt_dir.parent / f"{ckpt_dir.name}.before-step{step}", 1
        while keep.exists():
            n += 1
            keep = ckpt_dir.parent / f"{ckpt_dir.name}.before-step{step}-{n}"
        save_pretrained(ckpt_dir, unwrap(model), tokenizer, {**(meta or {}), "step": step}, extra, keep_others=keep)
        if keep.is_dir():                # calm.json, an exit classifier...: they describe the earlier weights
            print(f"[train] {', '.join(sorted(os.listdir(keep)))}: written for the earlier weights in {ckpt_dir}, "
                  f"moved to {keep}", file=sys.stderr)
    D.barrier(info)


def _check_same_run(model, ckpt_dir: Path, meta: Optional[dict]) -> list[str]:
    """Refuse to resume a run made by another recipe, corpus or model shape, naming what differs.
    Returns the data settings (``meta["data"]``) that changed, for a warning."""
    saved = read_config(ckpt_dir)
    was, now = saved.get("meta", {}), meta or {}
    diff = [f"{k} {was[k]!r} -> {now[k]!r}" for k in ("recipe", "corpus") if k in was and k in now and was[k] != now[k]]
    if hasattr(model, "config") and hasattr(model.config, "to_dict") and isinstance(saved.get("model"), dict):
        cur = json.loads(json.dumps(model.config.to_dict()))
        diff += [f"model.{k} {saved['model'][k]!r} -> {cur[k]!r}" for k in cur
                 if k in saved["model"] and saved["model"][k] != cur[k]]
    if diff:
        raise CheckpointError(f"cannot resume {ckpt_dir}: it was trained with other settings ({', '.join(diff[:4])})")
    d0, d1 = was.get("data"), now.get("data")
    if not (isinstance(d0, dict) and isinstance(d1, dict)):
        return []
    return [f"data.{k}" for k in sorted(d1) if k in d0 and d0[k] != d1[k]]


def _resume(model, opt, ckpt_dir: Path, cfg: TrainConfig, info: D.DistInfo, meta: Optional[dict] = None) -> int:
    recover_folder(ckpt_dir)
    p = ckpt_dir / STATE_JSON
    if not p.exists():
        raise CheckpointError(f"nothing to resume: {p} does not exist")
    try:
        state = json.loads(p.read_text())
        tensors = load_file(str(ckpt_dir / STATE_TENSORS))
    except Exception as e:  # corrupt JSON or safetensors: one clear line
        raise CheckpointError(f"cannot resume from {ckpt_dir}: corrupt trainer state ({e})") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("train"), dict)
            and isinstance(state.get("param_groups"), list)):
        raise CheckpointError(f"cannot resume from {ckpt_dir}: corrupt trainer state ({STATE_JSON} lacks step, "
                              "train or param_groups)")
    data_changed = _check_same_run(unwrap(model), ckpt_dir, meta)
    load_weights(unwrap(model), ckpt_dir)
    try:
        restore_state(opt, tensors, state["param_groups"], info.rank)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"cannot resume from {ckpt_dir}: its optimizer state does not fit ({e})") from None
    changed = {f.name for f in fields(cfg) if f.name in state["train"] and state["train"][f.name] != getattr(cfg, f.name)}
    changed = sorted(changed - {"steps", "eval_every", "save_every", "log_every", "threads"}) + \
        [k for k in data_changed if k != "data.eval_windows"]
    if changed and info.is_main:
        print(f"warning: resuming with changed settings {changed}; the run will not match an uninterrupted one",
              file=sys.stderr)
    return int(state["step"])
