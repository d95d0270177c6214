"""Segment images with a checkpoint (``segkit predict CKPT-FLAGS INPUT... --out DIR``).

Inputs are files, folders (searched recursively) or glob patterns. For each image it writes
``<stem>.png``: the class-index mask as a palette PNG, which opens as colours and reads back
(e.g. with PIL) as class indices; ``--overlay`` adds ``<stem>_overlay.png``. An unreadable
input is reported by name and the rest still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segkit.checkpoint import load_model
from segkit.config import EvalConfig
from segkit.datasets import colorize, read_image
from segkit.datasets.io import IMAGE_SUFFIXES
from segkit.engine.eval_cli import add_inference_arguments, runtime_model
from segkit.engine.evaluate import inference_options
from segkit.engine.inference import predict_mask
from segkit.engine.runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit predict``'s flags."""
    add_inference_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    parser.add_argument(
        "--overlay",
        type=float,
        nargs="?",
        const=0.5,
        metavar="ALPHA",
        help="also write <stem>_overlay.png blending colours over the image (default 0.5)",
    )


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(file, output stem relative to --out)`` pairs, and the inputs that matched nothing."""
    found: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(path).with_suffix("")) for f in files]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [(p, Path(p.stem)) for p in matches if p.is_file()]
            if not matches:
                missing.append(f"{item}: no file matches this pattern")
        else:
            missing.append(f"{item}: no such file or folder")
    return found, missing


def run(args: argparse.Namespace) -> int:
    """Predict every input; exit status 1 if any input was missing or unreadable."""
    from tqdm import tqdm

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device=device)
    meta = model.meta
    runner = runtime_model(args, model)
    eval_config = EvalConfig(mode=args.mode or "whole", window=args.window, stride=args.stride)
    if args.scales:
        eval_config.scales = [float(s) for s in args.scales.split(",")]
    eval_config.flip = bool(args.flip)
    options = inference_options(eval_config)
    mean = torch.tensor(meta["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], device=device).view(1, 3, 1, 1)
    palette = [tuple(c) for c in meta["palette"]]

    files, failures = collect_inputs(args.inputs)
    written = 0
    for image_path, stem in tqdm(files, desc="predict", unit="img"):
        try:
            image = read_image(image_path)
        except ValueError as err:
            failures.append(f"{image_path}: {err}")
            continue
        x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255
        mask = predict_mask(runner, (x - mean) / std, **options)[0].to(torch.uint8).cpu()
        target = args.out / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        coloured = colorize(mask, palette)
        coloured.save(target.with_suffix(".png"))
        if args.overlay is not None:
            rgb = np.asarray(coloured.convert("RGB"), dtype=np.float32)
            blended = (1 - args.overlay) * image + args.overlay * rgb
            overlay_path = target.parent / f"{target.name}_overlay.png"
            Image.fromarray(blended.round().astype(np.uint8)).save(overlay_path)
        written += 1
    print(f"wrote {written} prediction(s) to {args.out}")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0
