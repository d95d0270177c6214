"""Train a model (``segkit train``; no arguments: the built-in recipe on ``shapes``).

Precedence: defaults < ``--config FILE.yaml`` < flags < ``--set section.key=value``. Without
``--config``, the defaults are the built-in ``shapes`` recipe when the dataset is ``shapes``,
else the standard DeepLabV3+ recipe (see :mod:`segkit.config`).
Under ``torchrun --nproc_per_node N -m segkit train ...`` it runs DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from segkit.checkpoint import load_checkpoint
from segkit.config import SHAPES_RECIPE, Config, parse_set

# flag -> config key. Every flag defaults to None ("not given") so it never hides a recipe value.
FLAGS: dict[str, str] = {
    "--model": "model.name",
    "--backbone": "model.backbone",
    "--output-stride": "model.output_stride",
    "--pretrained-backbone": "model.pretrained_backbone",
    "--multi-grid": "model.multi_grid",
    "--attention": "model.attention",
    "--dataset": "data.dataset",
    "--data-root": "data.root",
    "--year": "data.year",
    "--num-classes": "data.num_classes",
    "--palette-file": "data.palette_file",
    "--crop-size": "data.crop_size",
    "--workers": "data.workers",
    "--iters": "train.iters",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--optimizer": "train.optimizer",
    "--lr": "train.lr",
    "--momentum": "train.momentum",
    "--weight-decay": "train.weight_decay",
    "--lr-policy": "train.lr_policy",
    "--warmup-iters": "train.warmup_iters",
    "--backbone-lr-mult": "train.backbone_lr_mult",
    "--loss": "train.loss",
    "--class-weights": "train.class_weights",
    "--focal-gamma": "train.focal_gamma",
    "--ignore-index": "train.ignore_index",
    "--aux-weight": "train.aux_weight",
    "--se-weight": "train.se_weight",
    "--init-from": "train.init_from",
    "--freeze-backbone-iters": "train.freeze_backbone_iters",
    "--device": "train.device",
    "--val-interval": "train.val_interval",
    "--seed": "train.seed",
    "--stop-after": "train.stop_after",
    "--work-dir": "work_dir",
}
SWITCHES: dict[str, str] = {
    "--aux": "model.aux",
    "--separable": "model.separable",
    "--jpu": "model.jpu",
    "--lateral": "model.lateral",
    "--se-loss": "model.se_loss",
    "--binary-255": "data.binary_255",
    "--crop-val": "data.crop_val",
    "--skip-bad-samples": "data.skip_bad_samples",
    "--freeze-bn": "train.freeze_bn",
    "--amp": "train.amp",
    "--channels-last": "train.channels_last",
    "--sync-bn": "train.sync_bn",
    "--flip": "eval.flip",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit train``'s flags (each maps onto a config key, shown in its help)."""
    parser.add_argument("--config", help="YAML recipe (sections model/data/train/eval)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.01 (repeatable)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --work-dir from last.pt"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --work-dir (without it an existing run is refused)",
    )
    for flag, key in FLAGS.items():
        metavar = key.rsplit(".", 1)[-1].upper()
        parser.add_argument(flag, dest=key, default=None, metavar=metavar, help=f"sets {key}")
    for flag, key in SWITCHES.items():
        parser.add_argument(
            flag, dest=key, default=None, action=argparse.BooleanOptionalAction, help=f"sets {key}"
        )


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the configuration (recipe, flags, --set); on --resume start from the run's own."""
    if args.resume and args.overwrite:
        raise ValueError(
            "--resume continues the run in --work-dir, --overwrite replaces it: give one of them"
        )
    if args.resume:
        config = _run_config(args.work_dir)
        config.train.stop_after = None  # a limit of the interrupted invocation, not of the run
    elif args.config:
        config = Config.load(args.config)
    elif getattr(args, "data.dataset") in (None, "shapes"):
        config = Config.from_dict(SHAPES_RECIPE)  # `segkit train` with no recipe
    else:
        config = Config()
    given: dict[str, Any] = {}
    for key in (*FLAGS.values(), *SWITCHES.values()):
        value = getattr(args, key)
        if value is not None:
            given[key] = value
    config.update(given)
    config.update(parse_set(args.set))
    config.train.resume = bool(args.resume)
    config.train.overwrite = bool(args.overwrite)
    return config


def _run_config(work_dir: str | None) -> Config:
    """The configuration of the run to resume: its config.yaml or, when that file is gone,
    the copy inside checkpoints/last.pt."""
    if not work_dir:
        raise ValueError("--resume needs --work-dir DIR (the run to continue)")
    saved = Path(work_dir) / "config.yaml"
    if saved.is_file():
        try:
            return Config.load(saved)
        except ValueError as err:
            raise ValueError(
                f"{err}. Or delete {saved} to resume with the configuration stored in "
                "checkpoints/last.pt"
            ) from None
    last = Path(work_dir) / "checkpoints" / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(
            f"--resume: {work_dir} holds no run (neither config.yaml nor checkpoints/last.pt)"
        )
    stored = load_checkpoint(last).get("config")
    if not isinstance(stored, dict):
        raise ValueError(
            f"--resume: {work_dir} has no config.yaml and {last} holds no configuration; "
            f"start a new run from its weights with --work-dir NEW --init-from {last}"
        )
    return Config.from_dict(stored)


def run(args: argparse.Namespace) -> int:
    """Train; exit status 0 when done or stopped on purpose, 128+signal after SIGINT/SIGTERM."""
    from segkit.engine.train import TrainingDivergedError, train

    config = config_from_args(args)
    try:
        record = train(config)
    except TrainingDivergedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if record.get("signal"):
        return 128 + int(record["signal"])
    return 0
