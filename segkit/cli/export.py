"""Export a checkpoint to ONNX or TorchScript and verify it (``segkit export``).

The file maps a normalised image to logits (``--argmax``: to class indices), with dynamic batch
and size unless ``--static HxW``. The written file is run on a random input and compared with
PyTorch; above 1e-3 relative difference the command fails and removes the file.

``--int8`` quantises the checked file (ONNX Runtime static quantisation), calibrated on
``--calibration-images`` images drawn from the checkpoint's dataset (``--data-root`` and
``--calibration-split`` choose where); measure its mIoU with ``segkit eval --runtime
onnxruntime --onnx FILE``.

The file records the checkpoint's weights fingerprint and metadata (classes, palette,
normalisation): ``segkit eval/predict --runtime onnxruntime`` refuse a file exported from
another checkpoint than their ``--checkpoint``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from segkit.checkpoint import load_checkpoint, load_model
from segkit.config import Config
from segkit.deploy.onnx import FORMATS, ExportError, check_output_path, export
from segkit.deploy.quantize import CALIBRATION_METHODS
from segkit.engine.data import build_val_dataset


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x1024, got {text!r}") from err
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit export``'s flags."""
    parser.add_argument("--checkpoint", required=True, help="a segkit checkpoint")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--argmax", action="store_true", help="output class indices")
    parser.add_argument("--static", type=_size, metavar="HxW", help="fixed input size")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max relative difference")
    group = parser.add_argument_group("int8 quantisation (ONNX)")
    group.add_argument("--int8", action="store_true", help="quantise weights and activations")
    group.add_argument("--calibration-images", type=int, default=32, metavar="N")
    group.add_argument("--calibration-split", default="train", metavar="SPLIT")
    group.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax")
    group.add_argument("--data-root", help="dataset root (default: the checkpoint's)")
    group.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="fail when int8 gives PyTorch's class on fewer pixels than this share",
    )


def calibration_images(args: argparse.Namespace) -> list[torch.Tensor]:
    """``--calibration-images`` normalised images of the checkpoint's dataset, seeded draw."""
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    config = Config.from_dict(load_checkpoint(args.checkpoint).get("config", {}))
    if args.data_root:
        config.update({"data.root": args.data_root})
    dataset = build_val_dataset(config, args.calibration_split)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return [dataset[int(i)][0].unsqueeze(0) for i in order[: args.calibration_images]]


def run(args: argparse.Namespace) -> int:
    """Export and verify; exit status 1 (and no file) when the check fails."""
    check_output_path(args.out, args.format)  # before minutes of export, not after
    model = load_model(args.checkpoint)
    try:
        report = export(
            model,
            args.out,
            format=args.format,
            argmax=args.argmax,
            static=args.static,
            tolerance=args.tolerance,
            int8=args.int8,
            calibration=calibration_images(args) if args.int8 else (),
            calibration_method=args.calibration_method,
            min_agreement=args.min_agreement,
        )
    except ExportError as err:
        print(f"segkit export: failed: {err}")
        return 1
    print(report)
    return 0
