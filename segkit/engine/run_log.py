"""What a run says: the ``segkit`` logger, its console output and the run folder's train.log.

Library code logs to the ``segkit`` logger (``segkit.models`` and other children included) and
never prints. :func:`console_output` is what ``segkit train`` wraps a run in: information goes
to standard output, warnings and errors to standard error, and Python warnings become one line
each, ``warning: <message>``. :class:`RunLogFile` writes the same records as plain text into
the run folder's ``train.log``; a record logged with ``extra=FILE_ONLY`` goes to the file alone
(the plain progress lines while the terminal shows a progress bar).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

logger = logging.getLogger("segkit")

# ``extra=`` of a record meant for train.log only (the console shows the same as a bar).
FILE_ONLY: dict[str, Any] = {"console": False}
_PREFIXES = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class _PlainFormatter(logging.Formatter):
    """The message, prefixed ``warning:`` or ``error:`` by level; ``stamp`` adds the time."""

    def __init__(self, *, stamp: bool) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.stamp = stamp

    def format(self, record: logging.LogRecord) -> str:
        text = _PREFIXES.get(record.levelno, "") + record.getMessage()
        if self.stamp:  # the file is read later: when something happened matters there
            return f"{self.formatTime(record, self.datefmt)} {text}"
        return text


class ConsoleHandler(logging.Handler):
    """Information to ``sys.stdout``, warnings and errors to ``sys.stderr``.

    The streams are looked up at each record, so a redirection made after the handler was
    installed (pytest's capture, ``contextlib.redirect_stdout``) is followed. Lines go through
    ``tqdm.write``, which lifts a progress bar off the terminal line before writing.
    """

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.setFormatter(_PlainFormatter(stamp=False))
        self.addFilter(lambda record: getattr(record, "console", True))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream: TextIO = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # logging must never break the run; the standard reporting applies
            self.handleError(record)


def one_line(text: object) -> str:
    """``text`` with its lines joined by spaces (a warning with a file listing stays one line)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextlib.contextmanager
def warnings_shown_by(show: Callable[[str], None]) -> Iterator[None]:
    """Python warnings go to ``show`` as one line each (their message only, no source file and
    line); ``warnings.showwarning`` is restored on exit."""

    def show_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        show(one_line(message))

    previous = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        yield
    finally:
        warnings.showwarning = previous


@contextlib.contextmanager
def console_output() -> Iterator[None]:
    """Show the ``segkit`` logger's records on the console for the duration of a run.

    Python warnings are shown as one ``warning: <message>`` line each (and reach train.log
    through the same logger). The logger's level, propagation and ``warnings.showwarning`` are
    restored on exit; records stop propagating to the root logger meanwhile, so an application
    that configured logging does not print them twice.
    """
    # Under torchrun every process prints; rank 0 tells the story, the others only warn.
    handler = ConsoleHandler(
        logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    )
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with warnings_shown_by(logger.warning):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class RunLogFile:
    """``train.log``: every record of the ``segkit`` logger as plain, time-stamped text.

    Args:
        path: the file; its folder must exist.
        append: keep what the file holds (a resumed run); else it starts empty.
    """

    def __init__(self, path: Path, *, append: bool) -> None:
        if not append:
            path.write_text("")
        # Always opened for appending: DataLoader workers forked meanwhile share the file and
        # must not write over the main process's lines.
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(_PlainFormatter(stamp=True))
        self.path = path
        self._level = logger.level
        logger.addHandler(self.handler)
        if logger.getEffectiveLevel() > logging.INFO:  # the file keeps information too
            logger.setLevel(logging.INFO)

    def close(self, error: BaseException | None = None) -> None:
        """Detach and close the file; ``error``, the exception that ends the run, is noted in
        the file only (the command line reports it on the console itself)."""
        if error is not None and not isinstance(error, SystemExit | KeyboardInterrupt):
            record = logger.makeRecord(
                logger.name, logging.ERROR, __file__, 0, one_line(error) or repr(error), None, None
            )
            self.handler.handle(record)
        logger.removeHandler(self.handler)
        self.handler.close()
        logger.setLevel(self._level)
