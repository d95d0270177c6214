"""Flags and helpers shared by several commands (``eval`` and ``predict`` run inference)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from segkit.deploy.optimize import PRECISIONS, optimize_for_inference
from segkit.weights import weights_fingerprint


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
    from segkit.deploy.onnx import OnnxRuntimeModel

    runner = OnnxRuntimeModel(args.onnx)
    check_onnx_origin(runner.metadata, model, args)
    return runner


def check_onnx_origin(metadata: dict[str, str], model: torch.nn.Module, args: Any) -> None:
    """Refuse an ``--onnx`` file exported from other weights than ``--checkpoint``'s, or one
    that outputs class indices; warn (one line on stderr) when the file records no fingerprint.

    Args:
        metadata: the ONNX file's ``metadata_props`` (:func:`~segkit.deploy.onnx.export_metadata`).
        model: the checkpoint's model as loaded.
        args: the command's flags (``onnx``, ``checkpoint``, ``command``).
    """
    from segkit.deploy.onnx import FINGERPRINT_KEY, META_KEY

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
