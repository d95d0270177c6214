"""Evaluate a checkpoint on its dataset's validation split (``segkit eval``).

The model, classes and normalisation come from the checkpoint; ``--dataset``/``--data-root``/
``--split`` evaluate elsewhere. ``--mode slide``, ``--scales`` and ``--flip`` select the
protocol (whole image by default), the same code that validation during training runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segkit.checkpoint import load_checkpoint, load_model
from segkit.cli.common import add_inference_arguments, runtime_model
from segkit.config import Config
from segkit.engine.data import build_val_dataset, make_loader
from segkit.engine.evaluate import evaluate
from segkit.engine.runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit eval``'s flags."""
    add_inference_arguments(parser)
    parser.add_argument("--dataset", help="evaluate on another dataset than the checkpoint's")
    parser.add_argument("--data-root")
    parser.add_argument("--split", help="split to evaluate (default: the run's val split)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the metrics as JSON to this file")


def run_config(args: argparse.Namespace, checkpoint: dict) -> Config:
    """The checkpoint's run configuration with the inference flags applied."""
    config = Config.from_dict(checkpoint.get("config", {}))
    overrides = {
        "eval.mode": args.mode,
        "eval.window": args.window,
        "eval.stride": args.stride,
        "eval.scales": args.scales,
        "eval.flip": args.flip,
    }
    for key in ("dataset", "data_root", "workers"):
        value = getattr(args, key, None)
        overrides[f"data.{'root' if key == 'data_root' else key}"] = value
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def run(args: argparse.Namespace) -> int:
    """Print the per-class table and summary; write ``--json``."""
    checkpoint = load_checkpoint(args.checkpoint)
    config = run_config(args, checkpoint)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device=device)
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
