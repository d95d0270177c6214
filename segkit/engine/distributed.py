"""Distributed training under ``torchrun``: process group, rank helpers, reductions.

``torchrun --nproc_per_node N -m segkit train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
segkit then runs DistributedDataParallel with NCCL on GPUs and Gloo on the CPU. Without those
variables everything here is a no-op for a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Join the process group if launched by torchrun; returns ``(rank, world, local_rank)``."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, 0
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all ranks (identity in a single process)."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
