"""Data-parallel set-up for `torchrun`: one process per CPU group or GPU, PyTorch DDP, gloo on
CPU and nccl on GPU. A plain `python` run is world size 1 and never touches torch.distributed.

    torchrun --nproc_per_node 2 -m adaptive_lm train char-shakespeare
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0          # global rank of this process
    world: int = 1         # number of processes
    local_rank: int = 0    # rank on this machine (selects the GPU)
    device: str = "cpu"    # where this process computes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Read torchrun's environment, start the process group, pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, world, local, device)


def unwrap(model):
    """The model inside a DistributedDataParallel / compiled wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def gather_rows(x: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every process's copy of a same-shaped tensor, in rank order (only [x] for one process)."""
    if info.world == 1:
        return [x]
    out = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(out, x)
    return out


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_across(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over all processes (identity for one process)."""
    if info.world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / info.world


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()
