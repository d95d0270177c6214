"""The start-up summary of a run: what it trains, on what, how long, where, and where to look."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from segkit.config import Config
from segkit.datasets import SegmentationDataset
from segkit.engine.data import batches_per_epoch
from segkit.engine.recipe import Recipe


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` numbers of parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def describe_run(
    config: Config,
    model: nn.Module,
    datasets: tuple[SegmentationDataset, SegmentationDataset],
    device: torch.device,
    *,
    world: int = 1,
    work_dir: Path | None = None,
    recipe: Recipe | None = None,
) -> list[str]:
    """The summary of a run of a resolved ``config``: lines ``model``, ``data``, ``recipe``,
    then, given the :class:`~segkit.engine.recipe.Recipe` it was chosen by, its block (each
    situational value and why), ``device`` and, given ``work_dir``, where it writes and how to
    follow it in TensorBoard."""
    train_set, val_set = datasets
    lines = [
        f"model:    {_model(config, model)}",
        f"data:     {_data(config, train_set, val_set)}",
        f"recipe:   {_recipe(config, len(train_set), world)}",
        *(recipe.lines() if recipe is not None else []),
        f"device:   {_device(config, device, world)}",
    ]
    if work_dir is not None:
        lines.append(work_dir_line(work_dir))
    return lines


def work_dir_line(work_dir: Path) -> str:
    """Where the run writes, and the command that follows it live in TensorBoard."""
    folder = work_dir.resolve()
    return f"work dir: {folder} (watch it: tensorboard --logdir {folder})"


def _model(config: Config, model: nn.Module) -> str:
    spec = getattr(model, "config", {})  # what create_model made (defaults filled in)
    stride = spec.get("output_stride", config.model.output_stride)
    parts = [config.model.name, f"backbone {config.model.backbone}"]
    if stride is not None:
        parts.append(f"output stride {stride}")
    if spec.get("aux", config.model.aux):
        parts.append("auxiliary head")
    total, trainable = parameter_counts(model)
    return f"{', '.join(parts)}; {total:,} parameters ({trainable:,} trainable)"


def _data(config: Config, train_set: SegmentationDataset, val_set: SegmentationDataset) -> str:
    data = config.data
    root = f" in {data.root}" if data.root else ""
    return (
        f"{data.dataset}{root}, {train_set.num_classes} classes: {len(train_set)} training "
        f"samples (split '{data.train_split}'), {len(val_set)} validation samples (split "
        f"'{data.val_split}'), crop {data.crop_size}"
    )


def _recipe(config: Config, train_size: int, world: int) -> str:
    train = config.train
    per_epoch = batches_per_epoch(train_size, batch_size=train.batch_size, world=world)
    count = train.iters / per_epoch if per_epoch else 0.0
    epochs = f"{count:.3g} epoch{'' if count == 1 else 's'} of {per_epoch}"
    batch = f"batch {train.batch_size}"
    if world > 1:
        batch += f" per process ({train.batch_size * world} in all)"
    warmup = f", warm-up {train.warmup_iters}" if train.warmup_iters else ""
    return (
        f"{train.iters} iterations ({epochs}), {batch}, {train.optimizer} lr {train.lr:g} "
        f"(backbone x{train.backbone_lr_mult:g}), {train.lr_policy} schedule{warmup}, "
        f"loss {train.loss}, validation every {train.val_interval}"
    )


def _device(config: Config, device: torch.device, world: int) -> str:
    train = config.train
    parts = [
        str(device),
        f"AMP {'on' if train.amp else 'off'}",
        f"channels_last {'on' if train.channels_last else 'off'}",
        f"{world} process{'es' if world > 1 else ''}",
    ]
    if train.sync_bn:
        parts.append("SyncBatchNorm")
    return ", ".join(parts)
