"""VMD recipes (brief vmd.md) and their MDM baselines: the same backbone, data, steps and
objective (vmd/objective.py), the baseline with ``latent_dim = 0``.

    adaptive-lm train vmd-sudoku --out runs/vmd-sudoku     # the shipped builtin:vmd-sudoku
    adaptive-lm train mdm-sudoku --out runs/mdm-sudoku     # its baseline, builtin:mdm-sudoku
    adaptive-lm train vmd-toy data.dataset=D2 data.block_size=2 --out runs/vmd-toy-d2-b2

Tasks (``data.task``):
- toy: the synthetic joints of tasks/toys.py, sampled fresh every step;
- sudoku: (puzzle, solution) pairs of generator A (tasks/sudoku.py), a pool generated once (and
  cached under ``$XDG_CACHE_HOME/adaptive_lm``), each row a random validity-preserving transform of
  a pool pair; the givens are never masked, the blanks are masked at level t (the SFT form of the
  objective), so the model learns to complete puzzles of the class;
- text: char-level windows of a corpus (tinyshakespeare by default).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import from_pretrained
from ..data import TokenStream, read_text, shard, step_generator
from ..diffusion.objective import draw_noise
from ..errors import UsageError
from ..model import ModelConfig
from ..tasks import sudoku as S
from ..tasks import toys
from ..tokenizer import CharTokenizer
from ..train import TrainConfig
from ..vmd.model import VMD, VMDConfig, warm_start
from ..vmd.objective import vmd_loss
from ..vmd.sample import sample
from ..vmd.sudoku import encode_grids, sudoku_accuracy
from . import Built, Recipe, register


@dataclass
class VMDSpec:
    task: str = "toy"             # toy | sudoku | text
    dataset: str = "D1"           # toy: pair | pair-skewed | D1 | D2
    latent_dim: int = 8           # z width per block; 0 = the MDM baseline
    enc_layers: int = 2           # recognition encoder layers
    block_size: int = 0           # tokens per block; 0 = one block
    free_bits: float = 0.0        # KL free bits per latent dimension (nats)
    beta_warmup: int = 1000       # steps over which beta rises linearly 0 -> 1
    weighting: str = "elbo"       # data term per masked token: elbo (1/t, MDLM) | step (1: the per-step bound, vmd/objective.py)
    stratified: bool = True       # low-discrepancy noise levels across the batch
    pool: int = 600               # sudoku: distinct training puzzles (each augmented on the fly)
    blanks: int = 54              # sudoku: blanks per generated puzzle
    level: str = "easy"           # sudoku: easy (singles solve it) | hard (unique) | search (unique, singles do not solve it)
    eval_puzzles: int = 64        # sudoku: held-out puzzles at each evaluation
    corpus: str = "tinyshakespeare"   # text: corpus name or path
    seq_len: int = 64             # text: window length in characters
    eval_samples: int = 2000      # toy: samples at each evaluation
    init_from: str = ""           # a checkpoint whose denoiser starts this one (vmd.model.warm_start)
    readout: str = "mean"         # VMD encoder readout: mean | mean+first (vmd/model.py)


def vmd_tokenizer(spec: VMDSpec, data_dir: Optional[str] = None) -> CharTokenizer:
    if spec.task == "toy":
        return CharTokenizer(toys.ALPHABET)
    if spec.task == "sudoku":
        return CharTokenizer(S.DIGITS)
    if spec.task == "text":
        return CharTokenizer.from_text("".join(_text(spec, data_dir)))
    raise UsageError(f"data.task must be toy, sudoku or text, not {spec.task!r}")


def noised_batch(x0: torch.Tensor, *, cfg: VMDConfig, spec: VMDSpec, step: int, generator: torch.Generator,
                 fixed: Optional[torch.Tensor] = None) -> dict:
    """The training batch of vmd_loss for clean rows x0 (B, L): noise t, u (positions in ``fixed``
    (B, L) bool never masked), a block per row, beta of this step and the z noise eps."""
    B, L = x0.shape
    t, u = draw_noise(B, L, generator, stratified=spec.stratified)
    if fixed is not None:
        u = u.masked_fill(fixed, 2.0)
    block = torch.randint(0, cfg.n_blocks(L), (B,), generator=generator)
    beta = min(1.0, step / spec.beta_warmup) if spec.beta_warmup else 1.0
    out = {"input_ids": x0, "t": t, "u": u, "block": block, "beta": torch.full((B,), beta)}
    if spec.weighting == "step":
        out["weight_t"] = torch.ones(B)
    elif spec.weighting != "elbo":
        raise UsageError(f"data.weighting must be elbo or step, not {spec.weighting!r}")
    if cfg.latent_dim:
        out["eps"] = torch.randn(B, cfg.latent_dim, generator=generator)
    return out


def sudoku_pool(n: int, blanks: int, seed: int, level: str = "easy") -> list[tuple[str, str]]:
    """n training pairs of generator A, cached on disk (generation takes ~0.1–0.25 s per pair)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adaptive_lm"
    path = root / f"sudoku-train-A-n{n}-b{blanks}-s{seed}{'' if level == 'easy' else '-' + level}.json"
    if path.exists():
        try:
            pool = [tuple(p) for p in json.loads(path.read_text())]
            if len(pool) == n and all(S.is_solution(s, p) for p, s in pool):
                return pool
        except (ValueError, TypeError):
            pass
    pool = S.puzzles(n, split="train", seed=seed, blanks=blanks, level=level)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pool))
        tmp.replace(path)
    except OSError:
        pass                                            # a read-only home only costs the regeneration
    return pool


def toy_metrics(model, tok, dataset: str, *, n: int, nfe: int, policy: str = "top_prob", generator=None,
                redraw: bool = False, temperature: float = 1.0) -> dict:
    """Accuracy and KL(data || model) of n unconditional samples. Temperature 1: each committed token
    is a draw from the model's p(x_i | x_t, z) (Gumbel-max), as the paper's joints are measured;
    greedy decoding would make an MDM's samples all identical."""
    L = toys.length(dataset)
    out, _ = sample(model, torch.full((n, L), tok.mask_id), nfe=nfe, policy=policy, mask_id=tok.mask_id,
                    eos_id=tok.eos_id, pad_id=tok.pad_id, generator=generator, redraw=redraw, temperature=temperature)
    digits = out - tok.stoi["0"]
    return {"acc": toys.accuracy(digits, dataset), "kl": toys.kl_data_model(digits, dataset)}


def _text(spec: VMDSpec, data_dir: Optional[str]) -> tuple[str, str]:
    """(train, test) text of the corpus (single files: the last tenth is the test split, as for the
    causal LM recipes, so AR / MDM / VMD are scored on the same characters)."""
    return read_text(spec.corpus, "train", data_dir_flag=data_dir), read_text(spec.corpus, "test", data_dir_flag=data_dir)


def text_windows(tok: CharTokenizer, text: str, seq_len: int, max_windows: int = 0) -> torch.Tensor:
    """Consecutive non-overlapping windows (N, seq_len) of a text."""
    ids = torch.tensor(tok.encode(text))
    n = len(ids) // seq_len
    n = min(n, max_windows) if max_windows else n
    return ids[:n * seq_len].view(n, seq_len)


def build_vmd(recipe: Recipe, data_dir: Optional[str] = None) -> Built:
    spec, tc = recipe.data, recipe.train
    tok = vmd_tokenizer(spec, data_dir)
    mcfg = dataclasses.replace(recipe.model, vocab_size=tok.vocab_size, causal=False)
    try:
        cfg = VMDConfig(denoiser=mcfg, latent_dim=spec.latent_dim, enc_layers=spec.enc_layers,
                        block_size=spec.block_size, features="sudoku" if spec.task == "sudoku" else "",
                        free_bits=spec.free_bits, readout=spec.readout)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if spec.level not in S.LEVELS:
        raise UsageError(f"data.level must be one of {', '.join(S.LEVELS)}, not {spec.level!r}")
    torch.manual_seed(tc.seed)
    model = VMD(cfg)
    meta = {"recipe": recipe.name, "family": "vmd", "task": spec.task}
    if spec.init_from:
        source, _ = from_pretrained(spec.init_from)
        if not isinstance(source, VMD):
            raise UsageError(f"data.init_from={spec.init_from} is not a VMD / MDM checkpoint")
        try:
            warm_start(model, source)
        except ValueError as e:
            raise UsageError(f"data.init_from={spec.init_from}: {e}") from None
        meta["init_from"] = spec.init_from

    def objective(m, batch):
        return vmd_loss(m, batch, mask_id=tok.mask_id)

    if spec.task == "toy":
        L = toys.length(spec.dataset)
        meta["dataset"] = spec.dataset

        def rows(g):
            return toys.sample(spec.dataset, tc.batch_size, g) + tok.stoi["0"], None

        def eval_fn(m):
            g = torch.Generator().manual_seed(4321)
            nfe = cfg.n_blocks(L)                       # the hardest setting: one step per block
            return toy_metrics(m, tok, spec.dataset, n=spec.eval_samples, nfe=nfe, generator=g)
    elif spec.task == "sudoku":
        if mcfg.max_seq_len < 81:
            raise UsageError("the Sudoku denoiser needs model.max_seq_len >= 81")
        pool = sudoku_pool(spec.pool, spec.blanks, tc.seed, spec.level)
        held = S.puzzles(spec.eval_puzzles, split="test", seed=tc.seed + 1, blanks=spec.blanks, level=spec.level)
        meta.update(blanks=spec.blanks, pool=spec.pool, level=spec.level)

        def rows(g):
            rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=g)))
            pairs = [S.augment(*pool[rng.randrange(len(pool))], rng) for _ in range(tc.batch_size)]
            x0 = encode_grids(tok, [s for _, s in pairs])
            return x0, encode_grids(tok, [p for p, _ in pairs]) != tok.mask_id

        def eval_fn(m):
            g = torch.Generator().manual_seed(4321)
            return {f"{k}_nfe10": v for k, v in sudoku_accuracy(m, tok, held, nfe=10, policy="top_prob", generator=g).items()}
    else:
        train_text, test_text = _text(spec, data_dir)
        stream = TokenStream(torch.tensor(tok.encode(train_text)), spec.seq_len - 1)
        meta.update(corpus=spec.corpus, seq_len=spec.seq_len)
        vx = text_windows(tok, test_text, spec.seq_len, 64)

        def rows(g):
            x, y = stream.batch(tc.batch_size, g)[:2]
            return torch.cat([x, y[:, -1:]], 1), None

        def eval_fn(m):
            from ..vmd.objective import elbo
            g = torch.Generator().manual_seed(4321)
            return {"bpc": float(elbo(m, vx, mask_id=tok.mask_id, n_samples=2, generator=g).mean()) / spec.seq_len / 0.6931471805599453}

    def batches(step, micro, rank, world):
        g = step_generator(tc.seed, step)
        x0, fixed = rows(g)
        b = noised_batch(x0, cfg=cfg, spec=spec, step=step, generator=g, fixed=fixed)
        return shard(b, tc.batch_size, micro=micro, n_micro=tc.grad_accum, rank=rank, world=world)

    def eval_wrapped(m):
        with torch.no_grad():
            m.eval()
            try:
                return eval_fn(m)
            finally:
                m.train()

    return Built(model, tok, objective, batches, eval_wrapped, meta)


_TOY_MODEL = ModelConfig(n_layer=2, n_head=4, d_model=64, max_seq_len=8, positions="learned")
_TOY_TRAIN = TrainConfig(steps=6000, batch_size=128, lr=2e-3, warmup_steps=100, eval_every=1000, save_every=1000,
                         log_every=50, weight_decay=0.0, min_lr_ratio=0.1)
_SUDOKU_MODEL = ModelConfig(n_layer=5, n_head=4, d_model=128, max_seq_len=81, positions="learned")
_SUDOKU_TRAIN = TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=200, eval_every=500, save_every=250,
                            log_every=20, weight_decay=0.1, min_lr_ratio=0.1)
# VMD Sudoku: started from the MDM's denoiser (from scratch, its posterior collapsed and the denoiser
# learned more slowly than the MDM's: docs/benchmarks.md); a lower lr keeps the warm start intact
_VMD_SUDOKU_TRAIN = dataclasses.replace(_SUDOKU_TRAIN, steps=1500, lr=3e-4, warmup_steps=100)
_TEXT_MODEL = ModelConfig(n_layer=4, n_head=4, d_model=128, max_seq_len=64)
_TEXT_TRAIN = TrainConfig(steps=3000, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=1000, save_every=500,
                          log_every=20, weight_decay=0.1, min_lr_ratio=0.1)

# a one-dimensional z for the toys: the ten modes of a block lie on a line that tiles the prior
# (a wider z lays them on a ring and leaves the prior's centre to no mode; docs/benchmarks.md,
# "A one-dimensional z meets the D1 one-step target")
_TOY_LATENT = 1
for _name, _lat in (("vmd", 8), ("mdm", 0)):
    register(Recipe(
        build=build_vmd, name=f"{_name}-toy",
        description=f"{_name.upper()} on a synthetic joint (data.dataset=pair|pair-skewed|D1|D2, data.block_size=0|2)",
        model=_TOY_MODEL, train=_TOY_TRAIN, data=VMDSpec(task="toy", dataset="D1", latent_dim=_TOY_LATENT if _lat else 0),
        budget="~4 minutes on 2 CPU cores"))
    register(Recipe(
        build=build_vmd, name=f"{_name}-sudoku",
        description=f"{_name.upper()} Sudoku solver (5 layers, d=128, row/column/box features), generator-A puzzles"
                    + ("; warm-started from builtin:mdm-sudoku" if _lat else ""),
        model=_SUDOKU_MODEL, train=_VMD_SUDOKU_TRAIN if _lat else _SUDOKU_TRAIN,
        data=VMDSpec(task="sudoku", latent_dim=2 * _lat, beta_warmup=500 if _lat else 1000, weighting="step",
                     init_from="builtin:mdm-sudoku" if _lat else "", free_bits=0.1 if _lat else 0.0),
        budget="<= 60 minutes on 2 CPU cores" + (" (with mdm-sudoku, which it starts from)" if _lat else "")))
    register(Recipe(
        build=build_vmd, name=f"{_name}-text",
        description=f"{_name.upper()} on tinyshakespeare characters (data.block_size=0|4|8 for the block variants)",
        model=_TEXT_MODEL, train=_TEXT_TRAIN, data=VMDSpec(task="text", latent_dim=2 * _lat, seq_len=64),
        budget="<= 30 minutes on 2 CPU cores"))

register(Recipe(
    build=build_vmd, name="tiny-vmd-test", description="a few-second VMD run for tests",
    model=ModelConfig(n_layer=1, n_head=2, d_model=32, max_seq_len=8, positions="learned"),
    train=TrainConfig(steps=10, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=5, save_every=5, log_every=5),
    data=VMDSpec(task="toy", dataset="D1", latent_dim=4, enc_layers=1, eval_samples=64),
    budget="seconds"))
