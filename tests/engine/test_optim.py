"""LR schedule and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from segkit.config import TrainConfig
from segkit.engine.optim import build_optimizer, build_scheduler, lr_factor
from segkit.models import create_model


def test_policies_and_warmup() -> None:
    poly = TrainConfig(lr_policy="poly", poly_power=0.9, warmup_iters=0)
    assert lr_factor(0, train=poly, total=100) == 1.0
    assert lr_factor(50, train=poly, total=100) == pytest.approx(0.5**0.9)
    assert lr_factor(100, train=poly, total=100) == 0.0
    cosine = TrainConfig(lr_policy="cosine", warmup_iters=0)
    assert lr_factor(50, train=cosine, total=100) == pytest.approx(0.5)
    step = TrainConfig(lr_policy="step", step_size=10, step_gamma=0.1, warmup_iters=0)
    assert lr_factor(25, train=step, total=100) == pytest.approx(0.01)
    plain_step = TrainConfig(lr_policy="step", warmup_iters=0)
    assert lr_factor(0, train=plain_step, total=90) == 1.0  # default size
    warm = TrainConfig(lr_policy="poly", warmup_iters=10)
    assert lr_factor(0, train=warm, total=100) == pytest.approx(0.1)
    assert lr_factor(9, train=warm, total=100) == pytest.approx((1 - 0.09) ** 0.9)
    with pytest.raises(ValueError, match="Unknown lr_policy 'linear'"):
        lr_factor(0, train=TrainConfig(lr_policy="linear"), total=10)


def test_backbone_group_lr_and_scheduler_steps() -> None:
    model = create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    train = TrainConfig(lr=0.01, warmup_iters=0, optimizer="sgd", weight_decay=1e-4)
    optimizer = build_optimizer(model, train, backbone_lr_mult=0.1)
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == pytest.approx(0.001) and head["lr"] == pytest.approx(0.01)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in backbone["params"]) == n_backbone
    scheduler = build_scheduler(optimizer, train, total=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert head["lr"] == pytest.approx(0.01 * 0.5**0.9)
    assert backbone["lr"] == pytest.approx(0.001 * 0.5**0.9)
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'"):
        build_optimizer(model, TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.0), 1.0)
    assert math.isfinite(head["lr"]) and isinstance(optimizer, torch.optim.SGD)


def test_unset_values_are_named_not_guessed() -> None:
    model = create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    with pytest.raises(ValueError, match=r"train.lr, train.weight_decay unset: .*resolve_config"):
        build_optimizer(model, TrainConfig(optimizer="sgd"), 1.0)
    with pytest.raises(ValueError, match=r"train.warmup_iters unset"):
        lr_factor(0, train=TrainConfig(), total=10)
