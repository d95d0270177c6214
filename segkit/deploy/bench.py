"""Measure inference (and training) speed against this machine's ceiling (``segkit bench``).

For the plain eval model, the fast path (:func:`segkit.optimize_for_inference`) and ONNX
Runtime it prints median and p90 latency after warm-up, images per second, GFLOPs per forward
pass (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs), the achieved GFLOP/s and that as
a fraction of the float32 matrix-multiply rate measured in the same run (the practical ceiling).
The opt-in reduced-precision paths follow: the fast path in bfloat16 (on CPUs with native
bf16, and on CUDA) and ONNX Runtime int8 (calibrated on random images here: a speed figure
only; ``segkit export --int8`` calibrates on real ones and reports the agreement).
``--compile`` adds the fast path under ``torch.compile``; ``--train`` adds a training step
(forward, backward, optimiser) in images per second.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def forward_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of ``model(x)`` (``torch.utils.flop_counter``: a multiply-add is 2 FLOPs); runs
    on the meta device too."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def timed(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved_medians(
    runners: dict[str, Callable[[], object]], count: int, warmup: int = 0
) -> dict[str, float]:
    """Median seconds per runner, timed round-robin (one call each per round), so a machine's
    drift during the measurement hits every runner alike."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(count):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """float32 matrix-multiply rate of this machine (GFLOP/s), the practical ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = statistics.median(timed(lambda: a @ b, repeats, 1))
    return 2 * size**3 / seconds / 1e9


def onnx_runner(
    model: torch.nn.Module, x: torch.Tensor, threads: int, *, int8: bool = False
) -> Callable[[], object]:
    """A closure that runs ``model`` exported to ONNX (fixed size, optionally int8) on ``x``."""
    from segkit.deploy.onnx import export

    path = Path(tempfile.mkdtemp(prefix="segkit-bench-")) / "model.onnx"
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(x[:1].shape, generator=generator) for _ in range(4)]
    export(
        model,
        path,
        static=tuple(x.shape[-2:]),
        int8=int8,
        calibration=calibration if int8 else (),
        min_agreement=0.0,  # random weights and images: speed only
    )
    return ort_runner(path, x, threads)


def ort_runner(
    path: str | Path, x: torch.Tensor, threads: int, *, optimise: bool = True
) -> Callable[[], object]:
    """A closure that runs the ONNX file ``path`` on ``x`` with ONNX Runtime on the CPU
    (``optimise=False``: without its graph optimisations)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # ONNX Runtime's idle threads spin for a while after each run by default, which would
    # steal the cores from whatever runs next in the same process (the next row here).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimise:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def eager_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A closure that runs ``model(x)`` under ``torch.inference_mode``."""

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run
