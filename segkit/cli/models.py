"""List the model zoo with parameters and GFLOPs (``segkit models``).

FLOPs come from ``torch.utils.flop_counter`` (a multiply-add counts as 2 FLOPs) on the meta
device, so the table costs no real computation; ``--smoke`` instead runs every listed model once
on the CPU with random weights and checks its output.
"""

from __future__ import annotations

import argparse
import time

import torch

from segkit.deploy.bench import forward_gflops
from segkit.models import JPU_MODELS, create_model, list_backbones, list_models
from segkit.models.backbones import RESNETS, backbone_entry

Row = tuple[str, str, int, bool]  # model, backbone, output stride, JPU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the flags of ``segkit models``."""
    parser.add_argument(
        "--model",
        action="append",
        choices=list_models(),
        help="a model to list, repeatable (none: every model)",
    )
    parser.add_argument(
        "--backbone",
        action="append",
        help=f"a backbone to list, repeatable: {', '.join(list_backbones())} or timm:<name> "
        "(none: every named backbone)",
    )
    parser.add_argument(
        "--output-stride",
        type=int,
        action="append",
        help="an output stride to list, repeatable (none: 16 and 8; HRNetV2 is always 4)",
    )
    parser.add_argument("--size", type=int, default=512, help="square input side for GFLOPs")
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the classifier")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run each model once on the CPU (random weights, 2x3x97x131) and check the output",
    )


def model_cost(row: Row, num_classes: int, size: int) -> tuple[int, float]:
    """Parameters and GFLOPs of one forward pass at ``size x size`` (batch 1, eval mode)."""
    name, backbone, stride, jpu = row
    with torch.device("meta"):
        model = create_model(
            name, backbone=backbone, num_classes=num_classes, output_stride=stride, jpu=jpu
        ).eval()
        params = sum(p.numel() for p in model.parameters())
        return params, forward_gflops(model, torch.empty(1, 3, size, size))


def _rows(args: argparse.Namespace) -> list[Row]:
    """Every model x backbone x stride asked for; with ResNets also the JPU variant (OS 32),
    so its cost can be compared with the dilated OS-8 model it replaces."""
    models = args.model or list_models()
    backbones = args.backbone or list_backbones()
    strides = args.output_stride or [16, 8]
    rows: list[Row] = []
    for backbone in backbones:
        entry = backbone_entry(backbone)
        for stride in [entry.default_stride] if len(entry.strides) == 1 else strides:
            rows += [(model, backbone, stride, False) for model in models]
        if backbone in RESNETS:
            rows += [(model, backbone, 32, True) for model in models if model in JPU_MODELS]
    return rows


def _smoke(row: Row, num_classes: int) -> str:
    name, backbone, stride, jpu = row
    model = create_model(
        name, backbone=backbone, num_classes=num_classes, output_stride=stride, jpu=jpu
    )
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        out = model.eval()(x)["out"]
    expected = (2, num_classes, 97, 131)
    if tuple(out.shape) != expected or not torch.isfinite(out).all():
        return f"FAILED: output {tuple(out.shape)}, expected {expected} and finite values"
    return "ok"


def run(args: argparse.Namespace) -> int:
    """Print the table (or smoke-test each row); exit status 1 if any row failed."""
    failed = 0
    if args.smoke:
        print(f"{'model':<15}{'backbone':<22}{'OS':>4}  result")
    else:
        header = f"{'model':<15}{'backbone':<22}{'OS':>4}{'params (M)':>12}"
        print(f"{header}{f'GFLOPs@{args.size}':>14}")
    for row in _rows(args):
        name, backbone, stride, jpu = row
        start = time.perf_counter()
        try:
            if args.smoke:
                result = _smoke(row, args.num_classes)
                result += f" ({time.perf_counter() - start:.1f} s)"
            else:
                params, gflops = model_cost(row, args.num_classes, args.size)
                result = f"{params / 1e6:>12.2f}{gflops:>14.1f}"
        except ValueError as err:
            result = f"  not available: {err}"
        failed += result.startswith("FAILED")
        label = f"{name}+jpu" if jpu else name
        print(f"{label:<15}{backbone:<22}{stride:>4}{'  ' if args.smoke else ''}{result}")
    return 1 if failed else 0
