"""Evaluate a checkpoint on its dataset's validation split (``segkit eval``).

The model, classes and normalisation come from the checkpoint; ``--dataset``/``--data-root``/
``--split`` evaluate elsewhere. ``--mode slide``, ``--scales`` and ``--flip`` select the
protocol (whole image by default), the same code that validation during training runs.

``--json FILE`` writes the metrics (``mIoU``, ``pixel_acc``, ``mean_acc``, ``fw_iou``,
``per_class_iou``, ``per_class_acc``) with what produced them: ``checkpoint``, its
``iteration`` when it records one, ``dataset``, ``split``, ``images`` and ``inference`` (mode,
window, stride, scales, flip, runtime, precision, compile, onnx).

``--save-dir DIR`` writes each image's predicted mask (``DIR/<image>.png``, a palette PNG) and
``DIR/per_image.csv``: one row per image with its ``mIoU``, ``pixel_acc`` and ``iou_<class>``
per class, each image scored alone (:mod:`segkit.engine.image_scores`); the ten images of
lowest mIoU are printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
from segkit.engine.evaluate import evaluate, inference_options
from segkit.engine.image_scores import ImageScorer, format_worst, unique_names, write_csv
from segkit.files import prepare_folder

#: How many of the lowest-mIoU images ``--save-dir`` prints.
WORST = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit eval``'s flags."""
    add_inference_arguments(parser)
    data = parser.add_argument_group("data (default: the checkpoint's run)")
    for flag in _data_flags():
        add_config_flag(data, flag, default="the run's")
    data.add_argument("--split", help="split to evaluate (none: the run's validation split)")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the metrics, the checkpoint and the inference settings here",
    )
    parser.add_argument(
        "--save-dir",
        type=Path,
        metavar="DIR",
        help="write each image's predicted mask (palette PNG) and per_image.csv (IoU per "
        "class, pixel accuracy) here, and print the ten worst images (none: nothing is saved)",
    )


def run_config(args: argparse.Namespace, checkpoint: dict) -> Config:
    """The checkpoint's run configuration with the given inference and data flags applied."""
    return inference_config(args, checkpoint, _data_flags())


def _data_flags() -> list[Flag]:
    return [config_flag(key) for key in ("data.dataset", "data.root", "data.workers")]


def run(args: argparse.Namespace) -> int:
    """Print the per-class table and summary; write ``--json`` and ``--save-dir``."""
    if args.save_dir is not None:
        prepare_folder(args.save_dir, "--save-dir")
    device = resolve_device(args.device)
    checkpoint, model = open_model(args, device)
    config = run_config(args, checkpoint)
    runner = runtime_model(args, model)
    dataset = build_val_dataset(config, args.split)
    loader = make_loader(dataset, batch_size=1, workers=config.data.workers, seed=0, train=False)
    class_names = model.meta.get("class_names", dataset.class_names)
    ignore_index = model.meta.get("ignore_index", 255)
    scorer = None
    if args.save_dir is not None:
        scorer = ImageScorer(
            unique_names([dataset.sample_name(i) for i in range(len(dataset))]),
            args.save_dir,
            class_names=class_names,
            palette=model.meta.get("palette", dataset.palette),
            ignore_index=ignore_index,
        )
    metrics, _ = evaluate(
        runner,
        loader,
        num_classes=model.config["num_classes"],
        class_names=class_names,
        ignore_index=ignore_index,
        device=device,
        config=config.eval,
        progress=True,
        on_image=scorer,
    )
    print(f"{args.checkpoint} on {config.data.dataset}/{dataset.split} ({len(dataset)} images)")
    print(metrics.format_table())
    if scorer is not None:
        csv_file = args.save_dir / "per_image.csv"
        write_csv(csv_file, scorer.scores, class_names)
        print(format_worst(scorer.scores, WORST))
        print(f"wrote {len(scorer.scores)} mask(s) and {csv_file} to {args.save_dir}")
    if args.json:
        report = {
            **metrics.compute(),
            "per_class_acc": metrics.per_class_acc(),
            **run_facts(args, checkpoint, config),
            "dataset": config.data.dataset,
            "split": dataset.split,
            "images": len(dataset),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_facts(args: argparse.Namespace, checkpoint: dict, config: Config) -> dict[str, Any]:
    """What produced the numbers: ``checkpoint`` (its path), ``iteration`` (when the checkpoint
    records one) and ``inference``: the protocol and the runtime that ran it."""
    protocol = inference_options(config.eval)
    facts: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    if isinstance(checkpoint.get("iteration"), int):
        facts["iteration"] = checkpoint["iteration"]
    facts["inference"] = {
        **protocol,
        "scales": list(protocol["scales"]),
        "runtime": args.runtime,
        "precision": args.precision,
        "compile": args.compile,
        "onnx": str(args.onnx) if args.runtime == "onnxruntime" else None,
    }
    return facts
