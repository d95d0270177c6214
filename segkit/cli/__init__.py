"""The ``segkit`` command line: one thin module per command in this package.

Each command module has a docstring (its first line is the command's summary in ``segkit
--help``), ``add_arguments(parser)`` and ``run(args) -> exit status``. The work itself lives in
the library (``segkit.engine``, ``segkit.deploy``, ``segkit.datasets``); a command only turns
flags into calls and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from tqdm import tqdm

from segkit.engine.run_log import warnings_shown_by
from segkit.options import show_value

# name -> module in this package, in the order ``segkit --help`` lists them.
COMMANDS = (
    "train", "report", "eval", "predict", "export", "convert", "bench", "models", "doctor",
)  # fmt: skip


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; every option's help names its default.

    ``(default: X)`` is appended unless the help text already says it (``default``, or
    ``(none: ...)`` for what happens when the option is not given); ``None`` and an empty list
    show as ``none``, switches as ``on``/``off``.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.required
            or action.default is argparse.SUPPRESS
            or "default" in text
            or "(none:" in text
        ):
            return text
        return f"{text} (default: {show_value(action.default)})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command registered."""
    from segkit import __version__

    parser = argparse.ArgumentParser(
        prog="segkit",
        description="Semantic segmentation: train, evaluate, predict, export.",
        epilog="`segkit COMMAND --help` describes a command's options.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"segkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        module = importlib.import_module(f"segkit.cli.{name}")
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0].replace("``", "") if doc else name
        command = sub.add_parser(
            name, help=summary, description=doc.replace("``", "`"), formatter_class=HelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segkit`` console script; returns the process exit status.

    Bad input (a missing file, an unknown option or value, a corrupt sample) is reported as one
    line naming the problem and its fix, with exit status 2; ``SEGKIT_DEBUG=1`` shows the
    traceback instead. ``segkit`` alone lists the commands.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with one_line_warnings(args.command):
            return int(args.run(args) or 0)
    except (ValueError, OSError) as err:  # OSError: missing files, full disks, read-only folders
        if os.environ.get("SEGKIT_DEBUG"):
            raise
        print(f"segkit {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line_warnings(command: str) -> contextlib.AbstractContextManager[None]:
    """Show Python warnings as one ``segkit COMMAND: warning: <message>`` line on stderr each,
    without the source file and line Python adds (a training run shows its own, which also go
    to train.log)."""
    return warnings_shown_by(
        lambda text: tqdm.write(f"segkit {command}: warning: {text}", file=sys.stderr)
    )


def one_line(err: BaseException) -> str:
    """``err`` as text; an ``OSError`` from the system gets its file name and reason, not its
    errno tuple (``[Errno 28] No space left on device: 'x'`` -> ``x: no space left on device``)."""
    if isinstance(err, OSError) and err.strerror and type(err).__str__ is OSError.__str__:
        where = f"{os.fsdecode(err.filename)}: " if err.filename else ""  # bytes: TensorBoard
        return f"{where}{err.strerror[0].lower()}{err.strerror[1:]}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
