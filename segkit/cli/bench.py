"""Measure inference (and training) speed against this machine's ceiling (``segkit bench``).

For the plain eval model, the fast path (:func:`segkit.optimize_for_inference`) and ONNX
Runtime it prints median and p90 latency after warm-up, images per second, GFLOPs per forward
pass (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs), the achieved GFLOP/s and that as
a fraction of the float32 ceiling: the better of a matrix multiply and a channels-last
convolution, both measured in the same run and printed. The opt-in reduced-precision paths
follow: the fast path in bfloat16 (on CPUs with native bf16, and on CUDA) and ONNX Runtime int8
(calibrated on random images here: a speed figure only; ``segkit export --int8`` calibrates on
real ones and reports the agreement). ``--compile`` adds the fast path under
``torch.compile``; ``--train`` adds a training step (forward, backward, optimiser) in images
per second.

The runtimes are timed in ``--rounds`` interleaved rounds; a row whose per-round medians differ
by more than ``--max-spread`` of their median gets a ``warning:`` line after the table.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence

import torch

from segkit.deploy.bench import (
    MAX_SPREAD,
    Ceiling,
    eager_runner,
    forward_gflops,
    fp32_ceiling,
    interleaved_rounds,
    onnx_runner,
    pooled,
    spread_warnings,
    timed,
)
from segkit.deploy.optimize import fast_bf16_cpu, optimize_for_inference
from segkit.models import create_model, list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit bench``'s flags."""
    parser.add_argument(
        "--model", default="deeplabv3plus", choices=list_models(), help="model to time"
    )
    parser.add_argument("--backbone", default="resnet50", help="its backbone, with random weights")
    parser.add_argument(
        "--output-stride", type=int, default=None, help="output stride (default: the model's)"
    )
    parser.add_argument("--num-classes", type=int, default=21, help="classes the head predicts")
    parser.add_argument("--size", type=int, default=512, help="side of the square input")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed calls per runtime, over all rounds"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds the timed calls are split into"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per runtime before timing"
    )
    parser.add_argument(
        "--max-spread",
        type=float,
        default=MAX_SPREAD,
        metavar="FRACTION",
        help="warn when a runtime's per-round medians differ by more than this share of their "
        "median",
    )
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile'd fast path")


def run(args: argparse.Namespace) -> int:
    """Print the ceiling, one row per runtime, then a warning per unsteady row."""
    if args.repeats < 1 or args.rounds < 1:
        raise ValueError(
            f"--repeats and --rounds must be >= 1, got {args.repeats} and {args.rounds}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model = create_model(
        args.model,
        backbone=args.backbone,
        num_classes=args.num_classes,
        output_stride=args.output_stride,
    ).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    gflops = forward_gflops(model, x)
    ceiling = fp32_ceiling()
    runners = _runners(model, x, args, threads)
    print(
        f"{args.model} {args.backbone} OS{model.config['output_stride']} "
        f"{args.size}x{args.size} batch {args.batch}, {threads} threads; "
        f"{gflops:.1f} GFLOPs per forward"
    )
    print(ceiling)
    times = interleaved_rounds(runners, args.rounds, args.repeats, args.warmup)
    print(f"{'runtime':<13}{'median ms':>10}{'p90 ms':>9}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for name, rounds in times.items():
        print(_row(name, rounds, args.batch, gflops, ceiling))
    for line in spread_warnings(times, args.max_spread):
        print(line)
    if args.train:
        print(f"train step   {args.batch / _train_step_seconds(model, x, args):>8.2f} img/s")
    return 0


def _runners(
    model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace, threads: int
) -> dict[str, Callable[[], object]]:
    """The runtimes to time, in the order of the table."""
    fast = optimize_for_inference(model)
    runners: dict[str, Callable[[], object]] = {
        "eval model": eager_runner(model, x),
        "fast path": lambda: fast(x),
    }
    if args.compile:
        compiled = optimize_for_inference(model, compile=True)
        runners["fast compiled"] = lambda: compiled(x)
    if not args.no_onnx:
        runners["onnxruntime"] = onnx_runner(model, x, threads)
    if fast_bf16_cpu():
        fast_bf16 = optimize_for_inference(model, precision="bf16")
        runners["fast bf16"] = lambda: fast_bf16(x)
    if not args.no_onnx:
        runners["ort int8"] = onnx_runner(model, x, threads, int8=True)
    return runners


def _row(
    name: str, rounds: Sequence[Sequence[float]], batch: int, gflops: float, ceiling: Ceiling
) -> str:
    """One line of the table from the seconds of every call of every round."""
    times = pooled(rounds)
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    rate = gflops / median
    return (
        f"{name:<13}{median * 1e3:>10.1f}{p90 * 1e3:>9.1f}{batch / median:>8.2f}"
        f"{rate:>9.1f}{rate / ceiling.rate:>9.0%}"
    )


def _train_step_seconds(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> float:
    """A step as ``segkit train`` takes it by default: channels_last weights and inputs."""
    model.train().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.randint(0, args.num_classes, (x.shape[0], *x.shape[-2:]))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x)["out"], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return statistics.median(timed(step, args.repeats, args.warmup))
