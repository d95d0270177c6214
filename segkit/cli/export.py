"""Export a checkpoint to ONNX or TorchScript and verify it (``segkit export``).

The format follows ``--out``'s suffix: ``.onnx`` is ONNX; ``.pt``, ``.pth`` and ``.torchscript``
are TorchScript (``--format`` chooses for another suffix, and may not contradict a known one).
The file maps a normalised image to logits (``--argmax``: to class indices), with dynamic batch
and size unless ``--static 512`` (or ``--static 512x1024``, height x width). The written file
is run on a random input and compared with PyTorch; above ``--tolerance`` relative difference
the command fails and removes the file.

``--int8`` quantises the checked file (ONNX Runtime static quantisation), calibrated on
``--calibration-images`` images drawn from the checkpoint's dataset (``--data-root`` and
``--calibration-split`` choose where); measure its mIoU with ``segkit eval --runtime
onnxruntime --onnx FILE``.

The file records the checkpoint's weights fingerprint and metadata (classes, palette,
normalisation, and the inference protocol its run was validated with): ``segkit
eval/predict --runtime onnxruntime`` refuse a file exported from another checkpoint than their
``--checkpoint``, and ``segkit.Predictor("model.onnx")`` needs nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from segkit.cli.common import CHECKPOINT_HELP, open_model
from segkit.config import Config
from segkit.deploy.onnx import (
    FORMATS,
    SUFFIXES,
    ExportError,
    check_output_path,
    export,
    resolve_format,
)
from segkit.deploy.quantize import CALIBRATION_METHODS
from segkit.engine.data import build_val_dataset
from segkit.predictor import checkpoint_protocol


def static_size(text: str) -> tuple[int, int]:
    """``--static``'s value: ``512`` (square) or ``HxW`` such as ``512x1024``, as ``(H, W)``.

    Raises:
        argparse.ArgumentTypeError: not one or two positive integers.
    """
    try:
        sides = [int(side) for side in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides, default=0) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a side such as 512 or HxW such as 512x1024 (positive integers), got {text!r}"
        )
    return (sides[0], sides[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit export``'s flags."""
    suffixes = "; ".join(
        f"{', '.join(s for s, f in SUFFIXES.items() if f == name)} -> {name}" for name in FORMATS
    )
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="file to write; its suffix gives the format (see --format)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help=f"the format, for an --out whose suffix names none (default: {suffixes})",
    )
    parser.add_argument(
        "--argmax", action="store_true", help="output class indices instead of logits"
    )
    parser.add_argument(
        "--static",
        type=static_size,
        metavar="SIZE",
        help="fixed input size: 512 for 512x512, or HxW such as 512x1024 (default: any size)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="fail when the file's outputs differ from PyTorch's by more than this (relative)",
    )
    group = parser.add_argument_group("int8 quantisation (ONNX)")
    group.add_argument("--int8", action="store_true", help="quantise weights and activations")
    group.add_argument(
        "--calibration-images",
        type=int,
        default=32,
        metavar="N",
        help="dataset images to calibrate on; a quarter of them is held out to check",
    )
    group.add_argument(
        "--calibration-split",
        default="train",
        metavar="SPLIT",
        help="dataset split they are drawn from",
    )
    group.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default="minmax",
        help="how activation ranges are estimated",
    )
    group.add_argument("--data-root", help="dataset root (default: the checkpoint's)")
    group.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="fail when int8 gives PyTorch's class on fewer pixels than this share",
    )


def calibration_images(args: argparse.Namespace, checkpoint: dict) -> list[torch.Tensor]:
    """``--calibration-images`` normalised images of the checkpoint's dataset, seeded draw."""
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    config = Config.from_dict(checkpoint.get("config", {}))
    if args.data_root:
        config.update({"data.root": args.data_root})
    dataset = build_val_dataset(config, args.calibration_split)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return [dataset[int(i)][0].unsqueeze(0) for i in order[: args.calibration_images]]


def run(args: argparse.Namespace) -> int:
    """Export and verify; exit status 1 (and no file) when the check fails."""
    # Mistakes in --out and --format are reported before the model is loaded, not after.
    check_output_path(args.out, args.format or "onnx")
    format = resolve_format(args.out, args.format)
    checkpoint, model = open_model(args)
    try:
        report = export(
            model,
            args.out,
            format=format,
            argmax=args.argmax,
            static=args.static,
            tolerance=args.tolerance,
            int8=args.int8,
            calibration=calibration_images(args, checkpoint) if args.int8 else (),
            calibration_method=args.calibration_method,
            min_agreement=args.min_agreement,
            inference=checkpoint_protocol(checkpoint),
        )
    except ExportError as err:
        print(f"segkit export: failed: {err}")
        return 1
    print(report)
    return 0
