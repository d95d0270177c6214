"""Convert another project's checkpoint into a segkit checkpoint (``segkit convert``).

Reads a checkpoint written by VainF/DeepLabV3Plus-Pytorch, jfzhang95/pytorch-deeplab-xception,
PyTorch-Encoding, FastFCN or torchvision, finds from its key names and tensor shapes which
model it holds, and writes the segkit checkpoint that computes the same function: the kind
``segkit train`` writes, which ``segkit eval/predict/export --checkpoint``, ``--init-from`` and
``segkit.load_model`` use as it is. It prints what it detected, the build options it chose and
the load report. It fails (exit 2, nothing written) when a tensor of the model stays unfilled or
a tensor of the file is left unused, except tensors known to be irrelevant (an ImageNet ``fc``
kept beside the backbone), which it lists.

What no weight records comes from the source project's defaults: the output stride (VainF and
pytorch-deeplab-xception 16, PyTorch-Encoding 8, FastFCN 32 with JPU), the ImageNet
normalisation, and the class names (``--dataset`` names them; 21 classes are taken to be VOC's
and 19 Cityscapes' unless ``--dataset`` says otherwise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segkit.convert import SOURCES, convert, write_checkpoint
from segkit.datasets import fixed_classes, list_datasets
from segkit.files import check_writable_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit convert``'s flags."""
    parser.add_argument("src", type=Path, help="the other project's checkpoint file")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="segkit checkpoint to write"
    )
    parser.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=["auto", *SOURCES],
        help="the project that wrote SRC; auto finds it from the key names and shapes",
    )
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16, 32),
        help="the output stride the source model ran at (none: the source project's default)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        help="expected class count, checked against the weights (none: read from them)",
    )
    parser.add_argument(
        "--dataset",
        choices=[name for name in list_datasets() if fixed_classes(name) is not None],
        help="dataset whose class names and palette the model carries (none: voc for 21 "
        "classes, cityscapes for 19, else class_0...)",
    )


def run(args: argparse.Namespace) -> int:
    """Convert, print the report, write ``--out``."""
    if args.out.resolve() == args.src.resolve():
        raise ValueError(f"--out {args.out} is the source file; choose another name")
    check_writable_file(args.out)
    conversion = convert(
        args.src,
        source=args.source,
        dataset=args.dataset,
        output_stride=args.output_stride,
        num_classes=args.num_classes,
    )
    print(conversion.report())
    write_checkpoint(conversion, args.out)
    print(f"wrote {args.out}: use it with segkit eval/predict/export --checkpoint {args.out}")
    return 0
