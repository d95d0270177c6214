"""Export a checkpoint to ONNX or TorchScript and verify it (``segkit export``).

The file maps a normalised image to logits (``--argmax``: to class indices), with dynamic batch
and size unless ``--static HxW``. The written file is run on a random input and compared with
PyTorch; above 1e-3 relative difference the command fails and removes the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segkit.checkpoint import load_model
from segkit.export import FORMATS, ExportError, export


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


def run(args: argparse.Namespace) -> int:
    """Export and verify; exit status 1 (and no file) when the check fails."""
    model = load_model(args.checkpoint)
    try:
        report = export(
            model,
            args.out,
            format=args.format,
            argmax=args.argmax,
            static=args.static,
            tolerance=args.tolerance,
        )
    except ExportError as err:
        print(f"segkit export: failed: {err}")
        return 1
    print(report)
    return 0
