"""The device a run uses, and the random number generator state that follows it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from segkit.engine import distributed as dist

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"Unknown device {name!r}; valid choices: {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def process_device(name: str) -> tuple[torch.device, int, int]:
    """This process's device, rank and number of processes (joining torchrun's group, if
    launched by it: process ``LOCAL_RANK`` of a node takes GPU ``LOCAL_RANK``)."""
    device = resolve_device(name)
    rank, world, local_rank = dist.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device, rank, world


def autocast(device: torch.device, *, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision (``--amp``): float16 on CUDA, bfloat16 on the CPU; else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global CPU generator's state, and the device's on CUDA."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Undo to a :func:`rng_state` (a CPU-only state leaves a CUDA generator as it is)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng(device: torch.device) -> list[dict[str, Any]]:
    """Every rank's RNG state (index = rank), so that each resumes its own stream."""
    state = rng_state(device)
    if not dist.is_distributed():
        return [state]
    gathered: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, state)
    return gathered
