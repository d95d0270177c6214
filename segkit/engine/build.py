"""Setting up a run: the resolved configuration, then the parts the training loop drives.

:func:`resolve_config` fills in what a recipe leaves to the run (the situational values of
:mod:`segkit.engine.recipe`, the work folder, the number of iterations of an ``epochs``
recipe, ``auto`` class weights) in one step, on a copy: the resolved configuration is what
config.yaml and the checkpoints record. :func:`build_run` makes the model, loaders, optimiser,
schedule, gradient scaler and loss from it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from segkit.config import Config, component_values
from segkit.convert import foreign_weights
from segkit.datasets import SampleError, SegmentationDataset
from segkit.datasets.preflight import preflight, problem_lines
from segkit.engine import distributed as dist
from segkit.engine.data import make_loader
from segkit.engine.optim import build_optimizer, build_scheduler, require_resolved
from segkit.engine.recipe import Recipe, choose_recipe, recipe_and_datasets
from segkit.engine.run_log import logger
from segkit.losses import build_criterion, compute_class_weights
from segkit.models import Segmenter, create_model
from segkit.weights import load_weights


def resolve_config(
    config: Config,
    *,
    work_dir: Path,
    train_size: int,
    class_weights: list[float] | None,
    world: int = 1,
) -> Config:
    """A copy of ``config`` with what the run decides filled in; ``config`` is left as it is.

    Args:
        config: the run's configuration as given (recipe, flags, ``--set``), or as
            :func:`~segkit.engine.recipe.choose_recipe` resolved it; what is still unset is
            chosen by it now (without the images: an unset crop stays unset).
        work_dir: the run folder (``config.work_dir`` or a new default one).
        train_size: samples in the training split, after the pre-flight check; with ``epochs``
            set, ``iters`` becomes ``epochs`` times the batches per epoch.
        class_weights: the loss's class weights as :func:`class_weights_for` resolves them
            (``auto``: computed from the training masks).
        world: number of processes (each draws its own share of an epoch).

    Raises:
        ValueError: ``config`` asks for class weights and ``class_weights`` is None.
    """
    if class_weights is None and config.train.class_weights is not None:
        raise ValueError(
            f"class_weights={config.train.class_weights!r} needs the resolved weights: pass "
            "class_weights=class_weights_for(config, train_set)"
        )
    resolved = choose_recipe(config, train_size=train_size, world=world).config
    resolved.work_dir = str(work_dir)
    resolved.train.class_weights = class_weights
    return resolved


def class_weights_for(config: Config, dataset: SegmentationDataset) -> list[float] | None:
    """``train.class_weights``: a list, ``auto`` (ENet weights from the training masks), None."""
    weights = config.train.class_weights
    if weights is None or isinstance(weights, list):
        return weights
    if weights != "auto":
        raise ValueError(f"class_weights must be a list of floats or 'auto', got {weights!r}")
    return compute_class_weights(
        _good_masks(dataset), dataset.num_classes, config.train.ignore_index
    ).tolist()


def _good_masks(dataset: SegmentationDataset) -> Iterator[np.ndarray]:
    """Every sample's mask; bad samples raise unless the dataset skips them."""
    for index in range(len(dataset)):
        try:
            yield dataset.load_raw(index).mask
        except SampleError:
            if not dataset.skip_bad_samples:
                raise


def run_preflight(
    datasets: tuple[SegmentationDataset, ...], config: Config, work_dir: Path, *, main: bool
) -> None:
    """Check every label file of ``datasets`` before the first iteration (verdicts cached
    per file): a bad file fails now, naming it, not hours in. With --skip-bad-samples the
    bad samples are left out and listed in ``bad_samples.txt`` in ``work_dir``."""
    skip = config.data.skip_bad_samples
    if not main:
        dist.barrier()  # rank 0 checks first and fills the cache; the others read it
    skipped = []
    for dataset in datasets:
        started = time.perf_counter()
        report = preflight(dataset, skip_bad=skip, workers=max(1, config.data.workers))
        if main:
            seconds = time.perf_counter() - started
            logger.info(f"{dataset.split}: {report.summary()} in {seconds:.1f} s")
        if report.skipped:
            skipped += problem_lines(report.bad)
    if not main:
        return
    dist.barrier()
    listing = work_dir / "bad_samples.txt"
    if skipped:
        listing.write_text("".join(line + "\n" for line in skipped))
        logger.info(f"skipping {len(skipped)} bad sample(s), listed in {listing}")
    else:
        listing.unlink(missing_ok=True)


def prepare_run(
    config: Config,
    work_dir: Path,
    *,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    init_weights: bool = True,
) -> tuple[Config, Recipe, tuple[SegmentationDataset, SegmentationDataset], RunParts]:
    """Datasets, checked; the configuration, resolved; the run's parts, built from it.

    Returns:
        The resolved configuration, the recipe chosen for it (what was decided and why), the
        training and validation datasets, and the parts (see :func:`build_run` for the
        arguments).
    """
    recipe, train_set, val_set = recipe_and_datasets(config, world=world)
    config = recipe.config
    run_preflight((train_set, val_set), config, work_dir, main=rank == 0)
    resolved = resolve_config(
        config,
        work_dir=work_dir,
        train_size=len(train_set),
        class_weights=class_weights_for(config, train_set),
        world=world,
    )
    parts = build_run(
        resolved, train_set, val_set, device=device, rank=rank, world=world,
        init_weights=init_weights,
    )  # fmt: skip
    return resolved, recipe, (train_set, val_set), parts


def build_model(config: Config, num_classes: int, meta: dict[str, Any] | None = None) -> Segmenter:
    """``create_model`` from the ``model`` section: its shared fields and the head options that
    are set (unset ones keep the model's own defaults); ``meta`` is what the outputs mean."""
    m = config.model
    return create_model(
        m.name,
        backbone=m.backbone,
        num_classes=num_classes,
        output_stride=m.output_stride,
        aux=m.aux,
        jpu=m.jpu,
        pretrained_backbone=m.pretrained_backbone,
        multi_grid=m.multi_grid,
        align_corners=m.align_corners,
        zero_init_residual=bool(m.zero_init_residual),
        meta=meta,
        **component_values(m),
    )


def run_meta(config: Config, train_set: SegmentationDataset) -> dict[str, Any]:
    """What the model's outputs mean: classes, colours, normalisation, ignore index."""
    data = config.data
    return {
        "class_names": list(train_set.class_names),
        "palette": [list(c) for c in train_set.palette],
        "mean": list(data.mean),
        "std": list(data.std),
        "ignore_index": config.train.ignore_index,
        "dataset": data.dataset,
    }


@dataclass
class RunParts:
    """What the training loop drives, built from a resolved configuration."""

    model: Segmenter
    memory_format: torch.memory_format
    loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module


def build_run(
    config: Config,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    *,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    init_weights: bool = True,
) -> RunParts:
    """The model (on ``device``), loaders, optimiser, schedule, scaler and loss of a run.

    Args:
        config: the resolved configuration (see :func:`resolve_config`).
        train_set: the training split.
        val_set: the validation split.
        device: where the model and loss live.
        rank: this process's rank (it draws its share of each batch).
        world: number of processes.
        init_weights: load ``train.init_from`` (False when a checkpoint's weights follow).
    """
    train = config.train
    model = _model(config, train_set, device, init_weights=init_weights, rank=rank)
    memory_format = torch.channels_last if train.channels_last else torch.preserve_format
    if train.channels_last:
        model.to(memory_format=memory_format)
    draws = {"seed": train.seed, "rank": rank, "world": world}
    loader = make_loader(
        train_set, batch_size=train.batch_size, workers=config.data.workers, train=True, **draws
    )
    val_loader = make_loader(
        val_set,
        batch_size=config.eval.batch_size,
        workers=min(config.data.workers, 1),
        train=False,
        **draws,
    )
    optimizer = build_optimizer(model, train, train.backbone_lr_mult)
    require_resolved(train, "loss")
    criterion = build_criterion(
        train.loss,
        num_classes=train_set.num_classes,
        ignore_index=train.ignore_index,
        class_weights=train.class_weights,
        focal_gamma=train.focal_gamma,
        aux_weight=train.aux_weight,
        se_weight=train.se_weight,
        dice_weight=train.dice_weight,
        label_smoothing=train.label_smoothing,
        ohem_thresh=train.ohem_thresh,
        ohem_min_kept=train.ohem_min_kept,
    ).to(device)
    return RunParts(
        model=model,
        memory_format=memory_format,
        loader=loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, train, train.iters),
        scaler=torch.amp.GradScaler("cuda", enabled=train.amp and device.type == "cuda"),
        criterion=criterion,
    )


def _model(
    config: Config,
    train_set: SegmentationDataset,
    device: torch.device,
    *,
    init_weights: bool,
    rank: int,
) -> Segmenter:
    """The seeded model, with ``init_from`` weights loaded and reported, on ``device``."""
    torch.manual_seed(config.train.seed)  # same initial weights on every rank
    model = build_model(config, train_set.num_classes, run_meta(config, train_set))
    if config.train.init_from and init_weights:
        note = logger.info if rank == 0 else None
        weights = foreign_weights(config.train.init_from, note=note)
        report = load_weights(model, config.train.init_from if weights is None else weights)
        if rank == 0:
            logger.info(str(report))
    if config.train.sync_bn:
        if device.type != "cuda":
            raise ValueError(
                "--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel. On the CPU "
                "drop --sync-bn (each process then normalises its own batch), or use --freeze-bn."
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def set_train_mode(model: nn.Module, *, backbone_frozen: bool, freeze_bn: bool) -> None:
    """Train mode, except BatchNorm statistics that are frozen (frozen backbone, --freeze-bn)."""
    model.train()
    if backbone_frozen:
        model.backbone.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
