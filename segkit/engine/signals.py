"""Stop signals: SIGINT, SIGTERM and SIGHUP end a run cleanly, after a save.

Slurm, ``timeout``, a closed terminal and Ctrl-C send one of these, often to the whole process
group. :class:`StopRequest` lets the iteration under way finish, the run saves last.pt and exits
with status 128 + signal; DataLoader workers leave the signals to the main process (see
:func:`segkit.engine.data.ignore_stop_signals`), and :func:`stop_signals_blocked` covers the
moment the workers are forked.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from segkit.engine.run_log import logger

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """SIGINT/SIGTERM/SIGHUP handler: the run finishes its iteration, saves last.pt and exits
    with status 128 + signal. A second signal stops at once, without saving (the checkpoint
    on disk is intact: saves are atomic)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                return

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            self.restore()
            logger.info(f"{signal.Signals(signum).name} again: stopping now, not saving")
            raise SystemExit(128 + signum)
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while DataLoader workers are forked, so a worker
    is never killed by a group-wide signal before its ``worker_init_fn`` ignores them; signals
    that arrive meanwhile are delivered (to :class:`StopRequest`) on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
