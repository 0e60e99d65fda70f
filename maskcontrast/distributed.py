"""Joining the process group of a ``torchrun`` job (gloo on CPU, nccl on GPU), or running alone.

Example::

    env = setup_distributed("auto")
    if env.is_main:
        ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maskcontrast.utils import get_device

__all__ = ["DistEnv", "setup_distributed"]


@dataclass
class DistEnv:
    """This process's place in the job: rank, number of processes, local rank and device.

    Attributes:
        initialised_here: this process initialised the process group (and destroys it at the end).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    nccl on CUDA, gloo on CPU. Without it: one process, nothing initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = get_device(device)
    if world <= 1:
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)  # else CUDA also opens a context (and allocates) on cuda:0
        return DistEnv(0, 1, 0, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        here = True
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, here)
