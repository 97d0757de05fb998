"""Checkpoints: one folder, Hugging Face conventions, no pickle.

    NAME/
      config.json          {"model_type": "adaptive_lm", "architecture": ..., "model": ModelConfig,
                            "meta": {recipe, step, ...}}
      model.safetensors    the weights (tied tensors stored once)
      tokenizer_config.json (+ tokenizer.json for BPE/HF)  the tokenizer
      trainer_state.json + trainer_state.safetensors       (training runs only: see train.py)

``save_pretrained`` writes the whole folder atomically (build in a temp folder, then swap), so a
kill never leaves half a checkpoint. ``from_pretrained`` accepts a path or ``builtin:NAME`` (a
checkpoint shipped inside the package, see ``builtin_names``), reads JSON and safetensors only,
and raises CheckpointError with one clear sentence for a missing or corrupt folder.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, UsageError
from .model import ModelConfig, TransformerLM
from .tokenizer import TokenizerError, load_tokenizer
from .io import atomic_folder, read_json, recover_folder

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
BUILTIN_DIR = Path(__file__).parent / "checkpoints"
BUILTIN_PREFIX = "builtin:"

# architecture name -> (config class, model class); method modules register theirs on import.
ARCHITECTURES: dict[str, tuple[type, type]] = {"TransformerLM": (ModelConfig, TransformerLM)}
# where a method's architecture registers itself: imported on first use, so a checkpoint loads
# without the caller importing the method first (names only: core imports nothing above it)
REGISTERED_BY = {"EEM": "adaptive_lm.entropy.eem", "VMD": "adaptive_lm.vmd.model"}


def builtin_names() -> list[str]:
    """Checkpoints shipped inside the package, loadable as ``builtin:NAME``."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / CONFIG).exists())


def resolve(path_or_name) -> Path:
    """``builtin:NAME`` -> the packaged folder; anything else -> that path (checked to exist)."""
    s = str(path_or_name)
    if s.startswith(BUILTIN_PREFIX):
        name = s[len(BUILTIN_PREFIX):]
        p = BUILTIN_DIR / name
        if not (p / CONFIG).exists():
            raise CheckpointError(f"no built-in checkpoint {name!r}; available: {', '.join(builtin_names()) or 'none'}")
        return p
    p = Path(s)
    recover_folder(p)
    if not p.exists():
        raise CheckpointError(f"checkpoint {s} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {s} is not a folder (expected {CONFIG} + {WEIGHTS} inside)")
    return p


def weights_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor once (safetensors refuses aliases), contiguous, on CPU."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.numel():
            key = (t.data_ptr(), t.shape)
            if key in seen:
                continue
            seen.add(key)
        out[name] = t.detach().cpu().contiguous()
    return out


def write_model_files(folder: Path, model, tokenizer=None, meta: Optional[dict] = None) -> None:
    """Write config.json, model.safetensors and the tokenizer into an (already temp) folder."""
    cfg = {"model_type": "adaptive_lm", "architecture": type(model).__name__,
           "model": model.config.to_dict(), "torch_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
           "meta": meta or {}}
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2))
    save_file(weights_dict(model), str(folder / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)


def save_pretrained(folder, model, tokenizer=None, meta: Optional[dict] = None,
                    extra: Optional[Callable[[Path], None]] = None, keep_others=None) -> Path:
    """Write a complete checkpoint folder atomically. ``extra(tmp)`` may add files (trainer state).
    Files of a previous checkpoint there that this one does not write (a calibration, an exit
    classifier, notes) are deleted, or with ``keep_others`` (a folder) moved there."""
    with atomic_folder(folder, keep_others=keep_others) as tmp:
        write_model_files(tmp, model, tokenizer, meta)
        if extra is not None:
            extra(tmp)
    return Path(folder)


def read_config(folder) -> dict:
    folder = resolve(folder)
    p = folder / CONFIG
    if not p.exists():
        hint = f" (a training run's model is {folder / 'checkpoint'})" if (folder / "checkpoint" / CONFIG).exists() else ""
        raise CheckpointError(f"{folder}: missing {CONFIG}{hint}")
    cfg = read_json(p, CheckpointError, bad="is corrupt")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise CheckpointError(f"{p}: not an adaptive_lm config (no 'model' section)")
    return cfg


def load_weights(model, folder: Path, strict: bool = True) -> None:
    p = folder / WEIGHTS
    if not p.exists():
        raise CheckpointError(f"{folder}: missing {WEIGHTS}")
    try:
        sd = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: corrupt weights file ({e})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not _is_alias(model, k, sd)]
    unexpected = [k for k in sd if k not in expected]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{p}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, t in sd.items():
        if k in expected and expected[k].shape != t.shape:
            raise CheckpointError(f"{p}: {k} has shape {tuple(t.shape)}, config says {tuple(expected[k].shape)}")
    model.load_state_dict(sd, strict=False)


def _is_alias(model, key, sd) -> bool:
    """A tied weight stored under its first name (e.g. head.weight tied to tok_emb.weight)."""
    t = model.state_dict()[key]
    return any(t.data_ptr() == model.state_dict()[k].data_ptr() for k in sd if k in model.state_dict())


def load_lm(path_or_name, *, device="cpu"):
    """``from_pretrained`` for commands that need a language model of the backbone (causal or
    masked diffusion): a VMD, an EEM or another architecture is one clear error."""
    arch = read_config(resolve(path_or_name)).get("architecture", "TransformerLM")
    if arch != "TransformerLM":
        use = {"VMD": "a VMD-family denoiser (its MDM baseline too): use `sudoku solve` or the vmd benches",
               "EEM": "an entropy estimation model: use `adaptive-lm entropy`"}.get(arch, f"a {arch}")
        raise UsageError(f"{path_or_name} is {use}, not a causal or masked diffusion LM of the backbone")
    return from_pretrained(path_or_name, device=device)


def from_pretrained(path_or_name, *, device="cpu", with_tokenizer: bool = True):
    """Load (model, tokenizer) from a folder or ``builtin:NAME``. Model in eval mode on ``device``."""
    folder = resolve(path_or_name)
    cfg = read_config(folder)
    arch = cfg.get("architecture", "TransformerLM")
    if arch not in ARCHITECTURES and arch in REGISTERED_BY:
        importlib.import_module(REGISTERED_BY[arch])
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{folder}: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    config_cls, model_cls = ARCHITECTURES[arch]
    try:
        mcfg = config_cls.from_dict(cfg["model"])
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"{folder}/{CONFIG}: bad model config ({e})") from None
    model = model_cls(mcfg)
    load_weights(model, folder)
    model.to(device).eval()
    tok = None
    if with_tokenizer:
        try:
            tok = load_tokenizer(folder)
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None
        if tok.vocab_size > getattr(mcfg, "vocab_size", tok.vocab_size):
            raise CheckpointError(f"{folder}: tokenizer has {tok.vocab_size} tokens but the model only "
                                  f"{mcfg.vocab_size}: they do not belong together")
    return model, tok
