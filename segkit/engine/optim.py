"""Optimiser with a separate backbone learning rate, and the per-iteration LR schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from segkit.config import LR_POLICIES, OPTIMIZERS, TrainConfig


def require_resolved(train: TrainConfig, *names: str) -> None:
    """Raise ValueError naming the fields of ``train`` still unset (``None``: chosen when a run
    starts, by :func:`segkit.engine.build.resolve_config`)."""
    unset = [f"train.{name}" for name in names if getattr(train, name) is None]
    if unset:
        raise ValueError(
            f"{', '.join(unset)} unset: set them, or resolve the configuration first "
            "(segkit.engine.build.resolve_config chooses them from the run's situation)"
        )


def build_optimizer(
    model: nn.Module, train: TrainConfig, backbone_lr_mult: float
) -> torch.optim.Optimizer:
    """SGD (Nesterov off, as DeepLabV3Plus-Pytorch and PyTorch-Encoding) or AdamW over two
    groups: backbone and the rest (``train`` resolved: see :func:`require_resolved`)."""
    require_resolved(train, "optimizer", "lr", "weight_decay")
    backbone = [p for p in model.backbone.parameters()]
    backbone_ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [
        {"params": backbone, "lr": train.lr * backbone_lr_mult, "name": "backbone"},
        {"params": rest, "lr": train.lr, "name": "head"},
    ]
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    raise ValueError(f"Unknown optimizer {train.optimizer!r}; valid choices: {list(OPTIMIZERS)}")


def lr_factor(iteration: int, *, train: TrainConfig, total: int) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based): policy x linear warm-up.

    ``poly``: ``(1 - it / total) ** poly_power``; ``cosine``: half a cosine from 1 to 0;
    ``step``: ``step_gamma ** (it // step_size)`` (``step_size`` defaults to a third of the
    run). Warm-up ramps linearly from ``1 / warmup_iters`` to 1 over ``warmup_iters``.
    """
    progress = min(iteration, total) / total
    if train.lr_policy == "poly":
        factor = (1.0 - progress) ** train.poly_power
    elif train.lr_policy == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif train.lr_policy == "step":
        step_size = train.step_size or max(1, total // 3)
        factor = train.step_gamma ** (iteration // step_size)
    else:
        raise ValueError(f"Unknown lr_policy {train.lr_policy!r}; valid: {list(LR_POLICIES)}")
    require_resolved(train, "warmup_iters")
    if iteration < train.warmup_iters:
        factor *= (iteration + 1) / train.warmup_iters
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler (call ``step()`` after every optimiser step)."""
    lr_factor(0, train=train, total=total)  # validate the policy before training starts
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, train=train, total=total)
    )
