"""`adaptive-lm bench vmd-toy | vmd-sudoku | vmd-text`: VMD against the same-budget MDM, measured
in the same run (brief vmd.md, "Experiments to reproduce").

- vmd-toy trains an MDM and a VMD (recipes mdm-toy / vmd-toy, same steps and seed) per dataset and
  block count, then samples ``samples`` sequences at each NFE of the brief's table: accuracy and
  KL(data || model) (tasks/toys.py).
- vmd-sudoku evaluates two trained checkpoints (default: the shipped builtin:mdm-sudoku and
  builtin:vmd-sudoku, trained by the same recipe but for the latent) on held-out generator-A
  puzzles, puzzles of the independent generator B, or a CSV of your own (``puzzles=FILE``): whole-
  grid accuracy and the share of outputs breaking a rule, per policy and NFE.
- vmd-text trains AR, MDM, VMD and their block variants on the same characters and reports the
  bits-per-character upper bound of each on the same test windows.
"""
from __future__ import annotations

import sys
import tempfile
import dataclasses
from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..lm import evaluate_lm
from ..recipes import apply_overrides, get_recipe
from ..recipes.vmd import toy_metrics
from ..vmd.model import READOUTS
from ..vmd.sample import POLICIES
from ..vmd.sudoku import load_sudoku_model, sudoku_accuracy
from ..tasks import sudoku as S
from ..tasks import toys
from ..train import train
from . import at_least, bench_device, name_list, number_list, register

# the brief's table: (dataset, blocks) -> NFE settings; the 2-token sets at one and two steps
TOY_SETTINGS = {("pair", 1): (1, 2), ("pair-skewed", 1): (1, 2),
                ("D1", 2): (4, 2), ("D1", 1): (4, 1), ("D2", 2): (4, 2), ("D2", 1): (4, 1)}


@dataclass
class VMDToyOptions:
    datasets: str = "pair,pair-skewed,D1,D2"   # toy datasets (tasks/toys.py)
    blocks: str = "1,2"                        # block counts B (the 2-token sets use B = 1 only)
    samples: int = 10000                       # samples per (model, setting)
    steps: int = 6000                          # training steps per model (recipes mdm-toy / vmd-toy)
    latent_dim: int = 1                        # VMD's z width (the vmd-toy recipe's; 16 before 2026-12-03)
    redraw: bool = False                       # VMD: a fresh z before every step (default: once per block)
    temperature: float = 1.0                   # sampling temperature (1: draws from the model's conditionals)
    cond_mode: str = "add"                     # how z enters the denoiser: add (embedding addition) | adaln
    readout: str = ""                          # VMD encoder readout: mean | mean+first ("" = the recipe's)


def train_recipe(name: str, overrides: list[str], seed: int, label: str, data_dir=None):
    """Train a registered recipe with overrides in a temporary folder; the trained model and tokenizer."""
    r = apply_overrides(get_recipe(name), overrides + [f"train.seed={seed}"])
    built = r.build(r, data_dir)
    print(f"[bench] training {label} ({r.train.steps} steps)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        train(built.model, built.objective, built.batches, cfg=r.train, out_dir=tmp, eval_fn=None, progress=True)
    return built.model.eval(), built.tokenizer


@register("vmd-toy", VMDToyOptions)
def bench_vmd_toy(seed: int, o: VMDToyOptions) -> dict:
    """MDM vs VMD on the synthetic joints: accuracy and KL(data || model) per blocks and NFE."""
    datasets = [d.strip() for d in o.datasets.split(",") if d.strip()]
    for d in datasets:
        toys.support(d)                                   # clear error for an unknown name
    blocks = number_list("blocks", o.blocks, lo=1)
    at_least(1, samples=o.samples, steps=o.steps)
    if o.readout and o.readout not in READOUTS:
        raise UsageError(f"readout={o.readout}: expected one of {', '.join(READOUTS)}")
    if not any((d, B) in TOY_SETTINGS for d in datasets for B in blocks):
        known = ", ".join(f"{d} B={B}" for d, B in TOY_SETTINGS)
        raise UsageError(f"no setting of the brief's table in datasets={o.datasets} x blocks={o.blocks}: "
                         f"it has {known}")
    rows = []
    for d in datasets:
        L = toys.length(d)
        for B in blocks:
            if (d, B) not in TOY_SETTINGS:
                continue
            bs = 0 if B == 1 else L // B
            common = [f"data.dataset={d}", f"data.block_size={bs}", f"train.steps={o.steps}",
                      f"model.cond_mode={o.cond_mode}"]
            for model_name, lat in (("mdm", 0), ("vmd", o.latent_dim)):
                extra = [f"data.latent_dim={lat}"] + ([f"data.readout={o.readout}"] if o.readout and lat else [])
                model, tok = train_recipe(f"{model_name}-toy", common + extra, seed, f"{model_name} {d} B={B}")
                for nfe in TOY_SETTINGS[(d, B)]:
                    g = torch.Generator().manual_seed(seed + nfe)
                    m = toy_metrics(model, tok, d, n=o.samples, nfe=nfe, generator=g, redraw=o.redraw,
                                   temperature=o.temperature)
                    rows.append({"model": model_name.upper(), "dataset": d, "blocks": B, "nfe": nfe, **m})
                    print(f"[bench] {rows[-1]}", file=sys.stderr)
    return {"rows": rows, "samples": o.samples, "steps": o.steps, "cond_mode": o.cond_mode,
            "latent_dim": o.latent_dim, "readout": o.readout or get_recipe("vmd-toy").data.readout}


@dataclass
class VMDSudokuOptions:
    mdm: str = "builtin:mdm-sudoku"            # the MDM baseline checkpoint
    vmd: str = "builtin:vmd-sudoku"            # the VMD checkpoint
    puzzles: str = ""                          # a CSV (puzzle,solution); default: generated held-out puzzles
    generator: str = "A"                       # A (the training generator, test split) | B (independent)
    n: int = 500                               # generated puzzles
    blanks: int = 54                           # blanks of generated puzzles
    level: str = "easy"                        # generated puzzles: easy (singles solve them, the training class) | hard | search
    policies: str = "top_prob,margin"          # mask predictor scores
    nfes: str = "5,10,20"                      # unmasking steps
    device: str = "cpu"                        # where the models run: cpu, cuda, cuda:N, or auto (cuda when available)
    redraw: bool = False                       # VMD: a fresh z before every step
    temperature: float = 0.0                   # 0: each committed cell is the argmax; 1: drawn from the model's p


@register("vmd-sudoku", VMDSudokuOptions)
def bench_vmd_sudoku(seed: int, o: VMDSudokuOptions) -> dict:
    """Whole-grid Sudoku accuracy and rule violations: MDM vs VMD x policy x NFE."""
    policies = name_list("policies", o.policies, POLICIES)
    nfes = number_list("nfes", o.nfes, lo=1)
    device = bench_device(o.device)
    if not o.puzzles and o.level not in S.LEVELS:
        raise UsageError(f"level must be one of {', '.join(S.LEVELS)}, not {o.level!r}")
    if not o.puzzles and o.generator not in ("A", "B"):
        raise UsageError(f"generator must be A or B, not {o.generator!r}")
    if not o.temperature >= 0:
        raise UsageError(f"temperature must be >= 0, not {o.temperature}")
    nets = {label: load_sudoku_model(path, what=f"{label.lower()}={path}")            # bad models fail first
            for label, path in (("MDM", o.mdm), ("VMD", o.vmd))}
    for model, _ in nets.values():
        model.to(device)
    if o.puzzles:
        pairs, source = S.read_csv(o.puzzles), o.puzzles
    else:
        print(f"[bench] generating {o.n} generator-{o.generator} puzzles", file=sys.stderr)
        pairs = S.puzzles(o.n, split="test", seed=10_000 + seed, blanks=o.blanks, generator=o.generator, level=o.level)
        source = f"generator {o.generator}, {o.level}" + (" (test split)" if o.generator == "A" else "")
    rows = []
    for label, (model, tok) in nets.items():
        for pol in policies:
            for nfe in nfes:
                g = torch.Generator().manual_seed(seed)
                m = sudoku_accuracy(model, tok, pairs, nfe=nfe, policy=pol, generator=g, redraw=o.redraw,
                                    temperature=o.temperature)
                rows.append({"model": label, "policy": pol, "nfe": nfe, **m})
                print(f"[bench] {rows[-1]}", file=sys.stderr)
    blanks = sum(p.count(".") for p, _ in pairs) / len(pairs)
    return {"rows": rows, "puzzles": len(pairs), "source": source, "mean_blanks": blanks, "device": device}


@dataclass
class VMDTextOptions:
    corpus: str = "tinyshakespeare"            # char-level corpus (single files: the last tenth is the test split)
    seq_len: int = 64                          # characters per sequence (every model scores all of them)
    blocks: str = "0,4,8"                      # block sizes of the diffusion models (0 = no blocks)
    steps: int = 1500                          # training steps per model (same budget for all)
    batch_size: int = 32                       # sequences per step
    latent_dim: int = 16                       # VMD's z width per block
    test_windows: int = 256                    # test sequences scored
    mc_samples: int = 4                        # Monte-Carlo draws per block for the diffusion bounds
    data_dir: str = ""                         # data folder (default $ADAPTIVE_LM_DATA or ../shared/data)


def _ar_text(tok, stream, o: VMDTextOptions, seed: int, test: torch.Tensor) -> float:
    """A causal LM of the same backbone size scoring every character of each test sequence from a
    [BOS] start (exact NLL, nats per character)."""
    from ..lm import lm_objective
    from ..model import TransformerLM
    from ..recipes.vmd import _TEXT_MODEL
    from ..train import TrainConfig
    cfg = dataclasses.replace(_TEXT_MODEL, vocab_size=tok.vocab_size, causal=True, max_seq_len=o.seq_len)
    torch.manual_seed(seed)
    model = TransformerLM(cfg)

    def with_bos(w):                                                        # (B, T) -> inputs [BOS] + w[:-1]
        return torch.cat([torch.full((w.shape[0], 1), tok.bos_id), w[:, :-1]], 1), w

    def batches(step, micro, rank, world):
        from ..data import step_generator
        x, y = stream.batch(o.batch_size, step_generator(seed, step))
        return with_bos(torch.cat([x, y[:, -1:]], 1))

    tcfg = TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=1e-3, warmup_steps=100, eval_every=0,
                       save_every=0, log_every=20, seed=seed)
    print(f"[bench] training AR ({o.steps} steps)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, lm_objective, batches, cfg=tcfg, out_dir=tmp, progress=True)
    x, y = with_bos(test)
    return evaluate_lm(model, x, y, batch_size=64)["loss"]         # rows of one length: the mean over rows


@register("vmd-text", VMDTextOptions)
def bench_vmd_text(seed: int, o: VMDTextOptions) -> dict:
    """Bits-per-character upper bounds of AR, MDM, VMD and their block variants on one test split."""
    import math
    from ..data import TokenStream
    from ..recipes.vmd import VMDSpec, text_windows, vmd_tokenizer
    from ..vmd.objective import elbo
    at_least(2, seq_len=o.seq_len)
    at_least(1, steps=o.steps, batch_size=o.batch_size, test_windows=o.test_windows, mc_samples=o.mc_samples)
    at_least(0, latent_dim=o.latent_dim)
    sizes = number_list("blocks", o.blocks, lo=0)
    bad = [b for b in sizes if b and o.seq_len % b]
    if bad:
        raise UsageError(f"block sizes {bad} must divide seq_len {o.seq_len} (0 = no blocks)")
    spec = VMDSpec(task="text", corpus=o.corpus, seq_len=o.seq_len)
    dd = o.data_dir or None
    tok = vmd_tokenizer(spec, dd)
    from ..data import read_text
    train_text, test_text = read_text(o.corpus, "train", data_dir_flag=dd), read_text(o.corpus, "test", data_dir_flag=dd)
    test = text_windows(tok, test_text, o.seq_len, o.test_windows)
    rows = []
    ar = _ar_text(tok, TokenStream(torch.tensor(tok.encode(train_text)), o.seq_len - 1), o, seed, test)
    rows.append({"model": "AR", "blocks": "-", "bpc": ar / math.log(2), "bound": "exact"})
    print(f"[bench] {rows[-1]}", file=sys.stderr)
    for bs in sizes:
        for name, lat in (("mdm", 0), ("vmd", o.latent_dim)):
            over = [f"data.block_size={bs}", f"data.latent_dim={lat}", f"data.seq_len={o.seq_len}",
                    f"data.corpus={o.corpus}", f"train.steps={o.steps}", f"train.batch_size={o.batch_size}",
                    f"model.max_seq_len={o.seq_len}"]
            model, _ = train_recipe(f"{name}-text", over, seed, f"{name} block {bs or '-'}", dd)
            g = torch.Generator().manual_seed(seed)
            nll = torch.cat([elbo(model, test[i:i + 64], mask_id=tok.mask_id, n_samples=o.mc_samples, generator=g)
                             for i in range(0, len(test), 64)])
            label = name.upper() if not bs else f"block {name.upper()}"
            rows.append({"model": label, "blocks": bs or "-", "bpc": float(nll.mean()) / o.seq_len / math.log(2),
                         "bound": "upper"})
            print(f"[bench] {rows[-1]}", file=sys.stderr)
    return {"rows": rows, "test_windows": len(test), "seq_len": o.seq_len, "steps": o.steps}
