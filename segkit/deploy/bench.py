"""Measure inference (and training) speed against this machine's ceiling (``segkit bench``).

For the plain eval model, the fast path (:func:`segkit.optimize_for_inference`) and ONNX
Runtime it prints median and p90 latency after warm-up, images per second, GFLOPs per forward
pass (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs), the achieved GFLOP/s and that as
a fraction of the float32 ceiling measured in the same run (:func:`fp32_ceiling`: the better
of a large matrix multiply and a large channels-last convolution, since on some CPUs, AMD's
among them, the convolution outruns the matrix multiply: ``benchmarks/README.md``). The opt-in
reduced-precision paths follow: the fast path in bfloat16 (on CPUs with native bf16, and on
CUDA) and ONNX Runtime int8 (calibrated on random images here: a speed figure only; ``segkit
export --int8`` calibrates on real ones and reports the agreement). ``--compile`` adds the
fast path under ``torch.compile``; ``--train`` adds a training step (forward, backward,
optimiser) in images per second.

The runtimes are timed in interleaved rounds (:func:`interleaved_rounds`), so a machine's drift
hits them alike, and a runtime whose per-round medians spread by more than
:data:`MAX_SPREAD` (:func:`round_spread`) gets a warning (:func:`spread_warnings`): its figures
are not to be trusted.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

#: Largest spread of a runtime's per-round medians, ``(max - min) / median``, without a warning.
MAX_SPREAD = 0.10


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


def interleaved_rounds(
    runners: dict[str, Callable[[], object]], rounds: int, repeats: int, warmup: int = 0
) -> dict[str, list[list[float]]]:
    """Seconds of every timed call, per runner and round.

    Each runner first gets ``warmup`` untimed calls; then, ``rounds`` times, each runner in turn
    gets its share of ``repeats`` timed calls (``repeats`` in all, split as evenly as the
    rounds allow), so a machine's drift during the measurement hits every runner alike.

    Returns:
        ``{name: [[seconds of each call of round 1], [... round 2], ...]}``; with ``repeats <
        rounds``, ``repeats`` rounds of one call.

    Raises:
        ValueError: ``rounds`` or ``repeats`` is below 1.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds} and {repeats}")
    rounds = min(rounds, repeats)
    calls = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[list[float]]] = {name: [] for name in runners}
    for count in calls:
        for name, fn in runners.items():
            times[name].append(timed(fn, count, 0))
    return times


def interleaved_medians(
    runners: dict[str, Callable[[], object]], count: int, warmup: int = 0
) -> dict[str, float]:
    """Median seconds per runner over ``count`` rounds of one call each
    (:func:`interleaved_rounds`)."""
    rounds = interleaved_rounds(runners, count, count, warmup)
    return {name: statistics.median(pooled(values)) for name, values in rounds.items()}


def pooled(rounds: Sequence[Sequence[float]]) -> list[float]:
    """All the timings of all the rounds, sorted."""
    return sorted(seconds for values in rounds for seconds in values)


def round_spread(rounds: Sequence[Sequence[float]]) -> float:
    """How far a runner's rounds disagree: ``(max - min) / median`` of the per-round medians
    (0 with fewer than two rounds).

    Raises:
        ValueError: a round has no timings.
    """
    if any(not values for values in rounds):
        raise ValueError("every round needs at least one timing; got an empty round")
    medians = [statistics.median(values) for values in rounds]
    if len(medians) < 2:
        return 0.0
    return (max(medians) - min(medians)) / statistics.median(medians)


def spread_warnings(
    times: dict[str, Sequence[Sequence[float]]],
    max_spread: float = MAX_SPREAD,
    *,
    flag: str = "--repeats",
) -> list[str]:
    """One ``warning: ...`` line per runner whose :func:`round_spread` exceeds ``max_spread``.

    Args:
        times: per runner, the seconds of each call of each round (:func:`interleaved_rounds`).
        max_spread: largest spread accepted silently, a fraction of the median.
        flag: the option that adds timed calls, which the warning advises to raise.
    """
    lines = []
    for name, rounds in times.items():
        spread = round_spread(rounds)
        if spread > max_spread:
            lines.append(
                f"warning: {name}: the medians of its {len(rounds)} rounds differ by "
                f"{spread:.0%} (more than {max_spread:.0%}): unreliable; time again with more "
                f"{flag} on a quiet machine"
            )
    return lines


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """float32 rate (GFLOP/s) of a ``size x size`` matrix multiply (BLAS sgemm: MKL on x86)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = statistics.median(timed(lambda: a @ b, repeats, 1))
    return 2 * size**3 / seconds / 1e9


def conv_gflops(channels: int = 256, size: int = 64, batch: int = 4, repeats: int = 5) -> float:
    """float32 rate (GFLOP/s) of a 3x3 ``channels -> channels`` convolution over a ``batch x
    channels x size x size`` channels-last input (oneDNN on the CPU). The defaults do about the
    work of :func:`matmul_gflops`' (19 vs 17 GFLOPs), in the layout the fast path runs."""
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)

    def run() -> object:
        with torch.inference_mode():
            return torch.nn.functional.conv2d(x, weight, padding=1)

    seconds = statistics.median(timed(run, repeats, 1))
    return 2 * batch * channels * channels * 9 * size * size / seconds / 1e9


@dataclass(frozen=True)
class Ceiling:
    """The float32 rates measured in one run; the ceiling is the better of the two."""

    matmul: float
    conv: float

    @property
    def rate(self) -> float:
        """GFLOP/s of the faster of the two measurements."""
        return max(self.matmul, self.conv)

    @property
    def source(self) -> str:
        """Which measurement the ceiling is: ``"conv"`` or ``"matmul"``."""
        return "conv" if self.conv >= self.matmul else "matmul"

    def __str__(self) -> str:
        return (
            f"fp32 ceiling {self.rate:.0f} GFLOP/s ({self.source}; "
            f"matmul {self.matmul:.0f}, channels-last conv {self.conv:.0f})"
        )


def fp32_ceiling(repeats: int = 5) -> Ceiling:
    """This machine's practical float32 ceiling: :func:`matmul_gflops` and
    :func:`conv_gflops`, measured one after the other."""
    return Ceiling(matmul=matmul_gflops(repeats=repeats), conv=conv_gflops(repeats=repeats))


def onnx_runner(
    model: torch.nn.Module, x: torch.Tensor, threads: int | None = None, *, int8: bool = False
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
    path: str | Path, x: torch.Tensor, threads: int | None = None, *, optimise: bool = True
) -> Callable[[], object]:
    """A closure that runs the ONNX file ``path`` on ``x`` with ONNX Runtime on the CPU
    (:func:`segkit.deploy.onnx.ort_session`; ``optimise=False``: without its graph
    optimisations)."""
    from segkit.deploy.ort import input_name, ort_session

    session = ort_session(path, threads=threads, optimise=optimise)
    feed = {input_name(session): x.numpy()}
    return lambda: session.run(None, feed)


def eager_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A closure that runs ``model(x)`` under ``torch.inference_mode``."""

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run
