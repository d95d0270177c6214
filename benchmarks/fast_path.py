"""Latency of the plain eval model vs segkit.optimize_for_inference, measured in one run.

.venv/bin/python benchmarks/fast_path.py [--model deeplabv3plus] [--backbone resnet50]
    [--output-stride 16] [--size 512] [--batch 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import segkit


def _latencies(fn, x: torch.Tensor, repeats: int) -> list[float]:
    fn(x)  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv3plus")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    model = segkit.create_model(
        args.model, backbone=args.backbone, num_classes=21, output_stride=args.output_stride
    ).eval()
    fast = segkit.optimize_for_inference(model)
    x = torch.randn(args.batch, 3, args.size, args.size)

    def plain(inp: torch.Tensor) -> None:
        with torch.inference_mode():
            model(inp)

    rows = {"eval model": _latencies(plain, x, args.repeats)}
    rows["fast path"] = _latencies(fast, x, args.repeats)
    base = statistics.median(rows["eval model"])
    print(
        f"{args.model} {args.backbone} OS{args.output_stride} {args.size}px batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:<12} median {median * 1000:8.1f} ms   speed-up x{base / median:.2f}")


if __name__ == "__main__":
    main()
