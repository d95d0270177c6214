"""Progress of a training run, on a terminal and off it.

On a terminal the loop shows a tqdm bar, and validation a bar that disappears when it ends.
When standard output is not a terminal (``nohup``, Slurm, a pipe) carriage-return bars would
fill the output file with redrawn lines, so a plain line is printed every ``log_interval``
iterations instead, and validation prints a line when it starts and one when it ends. train.log
receives the plain lines in both cases.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from segkit.engine.run_log import FILE_ONLY, logger

PACE_ITERS = 5  # iterations after the first whose time gives the run's expected length


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stdout``) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def format_duration(seconds: float) -> str:
    """``657`` -> ``10:57``; ``3723`` -> ``1:02:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def pace_line(seconds: float, iterations: int, remaining: int) -> str:
    """What the first iterations say of the run's length: ``pace: 1.52 s per iteration; the
    remaining 590 iterations take about 14:57, until 20:31 (validations not included)``."""
    per_iter = seconds / iterations
    left = per_iter * remaining
    until = time.strftime("%H:%M", time.localtime(time.time() + left))
    return (
        f"pace: {per_iter:.3g} s per iteration; the remaining {remaining} iterations take about "
        f"{format_duration(left)}, until {until} (validations not included)"
    )


def progress_line(
    done: int, total: int, *, loss: float, lr: float, miou: str, rate: float | None
) -> str:
    """``iter 120/1500 (8%) loss 0.4321 lr 3.9e-03 mIoU 0.612 | 2.1 it/s, eta 10:57``."""
    line = f"iter {done}/{total} ({100 * done // total}%) loss {loss:.4f} lr {lr:.1e} mIoU {miou}"
    if rate:
        line += f" | {rate:.1f} it/s, eta {format_duration((total - done) / rate)}"
    return line


class TrainProgress:
    """Rank 0's training progress: a bar on a terminal, else plain lines; train.log always
    gets the plain lines.

    Args:
        total: the run's last iteration.
        start: the iteration it starts from (a resumed run's checkpoint).
        every: iterations between plain lines (``train.log_interval``); the last one always
            gets a line.
        tty: show a tqdm bar (see :func:`is_terminal`).
        clock: seconds, for the speed and the estimated time left.
    """

    def __init__(
        self,
        *,
        total: int,
        start: int,
        every: int,
        tty: bool,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total, self.start, self.every = total, start, every
        self.clock, self.started = clock, clock()
        self.losses: list[float] = []
        self.paced: float | None = None
        self.bar: Any = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                desc="train",
                unit="it",
                dynamic_ncols=True,
                file=sys.stdout,  # the stream whose being a terminal decided on the bar
            )

    def update(self, done: int, *, loss: float, lr: float, miou: str) -> None:
        """Iteration ``done`` (1-based) ended with ``loss`` at learning rate ``lr``; after the
        first :data:`PACE_ITERS` iterations that follow the first, the pace line says how long
        the run will take (the first iteration, which starts the loaders, is not counted)."""
        self.losses.append(loss)
        if done == self.start + 1:
            self.paced = self.clock()
        elif done == self.start + 1 + PACE_ITERS and self.paced is not None:
            seconds = self.clock() - self.paced
            logger.info(pace_line(seconds, PACE_ITERS, self.total - done), extra=self._extra)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", mIoU=miou)
        if done % self.every and done != self.total:
            return
        elapsed = self.clock() - self.started
        rate = (done - self.start) / elapsed if elapsed > 0 else None
        mean = sum(self.losses) / len(self.losses)  # over the interval: steadier than one step
        self.losses.clear()
        line = progress_line(done, self.total, loss=mean, lr=lr, miou=miou, rate=rate)
        logger.info(line, extra=self._extra)

    @property
    def _extra(self) -> dict[str, Any] | None:
        """Lines go to train.log only while the bar shows the progress."""
        return FILE_ONLY if self.bar is not None else None

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (a validation) out of the pace line's measure."""
        if self.paced is not None:
            self.paced += seconds

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def validation_batches(batches: Iterable[Any], *, tty: bool, iteration: int) -> Iterable[Any]:
    """``batches`` with a transient bar on a terminal; the start line is logged either way
    (to train.log only when the bar shows it)."""
    count = len(batches) if hasattr(batches, "__len__") else "?"
    logger.info(
        f"validating at iteration {iteration} ({count} batches)",
        extra=FILE_ONLY if tty else None,
    )
    if not tty:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc="val", unit="batch", leave=False, file=sys.stdout)


def validation_line(record: dict[str, Any], *, best: float, seconds: float) -> str:
    """The end line of a validation: its scores, the best mIoU so far and the time it took."""
    return (
        f"validation at iteration {record['iter']}: mIoU {record['mIoU']:.4f}, pixel accuracy "
        f"{record['pixel_acc']:.4f}, mean accuracy {record['mean_acc']:.4f} (best mIoU "
        f"{best:.4f}) in {seconds:.1f} s"
    )
