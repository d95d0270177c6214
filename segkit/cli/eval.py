"""Evaluate a checkpoint on its dataset's validation split (``segkit eval``).

The model, classes and normalisation come from the checkpoint; ``--dataset``/``--data-root``/
``--split`` evaluate elsewhere. ``--mode slide``, ``--scales`` and ``--flip`` select the
protocol (whole image by default), the same code that validation during training runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segkit.cli.common import (
    Flag,
    add_config_flag,
    add_inference_arguments,
    config_flag,
    inference_config,
    open_model,
    runtime_model,
)
from segkit.config import Config
from segkit.engine.data import build_val_dataset, make_loader
from segkit.engine.device import resolve_device
from segkit.engine.evaluate import evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit eval``'s flags."""
    add_inference_arguments(parser)
    data = parser.add_argument_group("data (default: the checkpoint's run)")
    for flag in _data_flags():
        add_config_flag(data, flag, default="the run's")
    data.add_argument("--split", help="split to evaluate (none: the run's validation split)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics here")


def run_config(args: argparse.Namespace, checkpoint: dict) -> Config:
    """The checkpoint's run configuration with the given inference and data flags applied."""
    return inference_config(args, checkpoint, _data_flags())


def _data_flags() -> list[Flag]:
    return [config_flag(key) for key in ("data.dataset", "data.root", "data.workers")]


def run(args: argparse.Namespace) -> int:
    """Print the per-class table and summary; write ``--json``."""
    device = resolve_device(args.device)
    checkpoint, model = open_model(args, device)
    config = run_config(args, checkpoint)
    runner = runtime_model(args, model)
    dataset = build_val_dataset(config, args.split)
    loader = make_loader(dataset, batch_size=1, workers=config.data.workers, seed=0, train=False)
    metrics, _ = evaluate(
        runner,
        loader,
        num_classes=model.config["num_classes"],
        class_names=model.meta.get("class_names", dataset.class_names),
        ignore_index=model.meta.get("ignore_index", 255),
        device=device,
        config=config.eval,
        progress=True,
    )
    print(f"{args.checkpoint} on {config.data.dataset}/{dataset.split} ({len(dataset)} images)")
    print(metrics.format_table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics.compute(), indent=2) + "\n")
    return 0
