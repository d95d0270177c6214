"""Evaluate a checkpoint on its dataset's validation split (``segkit eval``).

The model, classes and normalisation come from the checkpoint; ``--dataset``/``--data-root``/
``--split`` evaluate elsewhere. ``--mode slide``, ``--scales`` and ``--flip`` select the
protocol (whole image by default), the same code that validation during training runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from segkit.checkpoint import load_checkpoint, load_model, weights_fingerprint
from segkit.config import Config
from segkit.engine.data import build_val_dataset, make_loader
from segkit.engine.evaluate import evaluate
from segkit.engine.runtime import resolve_device
from segkit.optimize import PRECISIONS, optimize_for_inference


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mode/--window/--stride/--scales/--flip/--device``, shared with ``segkit predict``."""
    parser.add_argument("--checkpoint", required=True, help="a segkit checkpoint (best.pt)")
    parser.add_argument("--mode", choices=["whole", "slide"], help="inference mode")
    parser.add_argument("--window", type=int, help="slide: window side in pixels")
    parser.add_argument("--stride", type=int, help="slide: step between windows")
    parser.add_argument("--scales", help="comma-separated, e.g. 0.75,1.0,1.25")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--runtime",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: run the --onnx file exported from this checkpoint instead",
    )
    parser.add_argument("--onnx", type=Path, help="exported ONNX file (with --runtime onnxruntime)")
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="torch runtime: bf16 is much faster on CPUs with AMX/AVX512-BF16, at some accuracy",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch runtime: torch.compile the model (slow first call; faster after)",
    )


def runtime_model(args: argparse.Namespace, model: torch.nn.Module) -> Any:
    """The checkpoint's model on the inference fast path, or the exported ONNX file run by ONNX
    Runtime (refused when it was exported from another checkpoint: :func:`check_onnx_origin`)."""
    if args.runtime == "torch":
        return optimize_for_inference(model, precision=args.precision, compile=args.compile)
    if args.onnx is None:
        raise ValueError("--runtime onnxruntime needs --onnx FILE (see `segkit export`)")
    if args.precision != "fp32" or args.compile:
        raise ValueError(
            "--precision and --compile apply to --runtime torch; an ONNX file runs as it was "
            "exported (see `segkit export --int8`)"
        )
    from segkit.export import OnnxRuntimeModel

    runner = OnnxRuntimeModel(args.onnx)
    check_onnx_origin(runner.metadata, model, args)
    return runner


def check_onnx_origin(metadata: dict[str, str], model: torch.nn.Module, args: Any) -> None:
    """Refuse an ``--onnx`` file exported from other weights than ``--checkpoint``'s, or one
    that outputs class indices; warn (one line on stderr) when the file records no fingerprint.

    Args:
        metadata: the ONNX file's ``metadata_props`` (see :func:`segkit.export.export_metadata`).
        model: the checkpoint's model as loaded.
        args: the command's flags (``onnx``, ``checkpoint``, ``command``).
    """
    from segkit.export import FINGERPRINT_KEY, META_KEY

    recorded = metadata.get(FINGERPRINT_KEY)
    if recorded is None:
        print(
            f"segkit {getattr(args, 'command', 'eval')}: warning: {args.onnx} records no weights "
            "fingerprint (exported by an older segkit or another tool), so it cannot be checked "
            f"against {args.checkpoint}",
            file=sys.stderr,
        )
    elif recorded != (actual := weights_fingerprint(model)):
        raise ValueError(
            f"{args.onnx} was exported from another checkpoint than {args.checkpoint} (weights "
            f"fingerprint {recorded[:12]} vs {actual[:12]}); export this one with `segkit export "
            f"--checkpoint {args.checkpoint} --out {args.onnx}`"
        )
    try:
        kind = json.loads(metadata.get(META_KEY, "{}"))["output"]["kind"]
    except (ValueError, KeyError, TypeError):
        return
    if kind != "logits":
        raise ValueError(
            f"{args.onnx} outputs class indices (exported with --argmax), not logits; export it "
            "without --argmax to evaluate or predict with it"
        )


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
