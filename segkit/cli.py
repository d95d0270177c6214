"""The ``segkit`` command line: one sub-command per job, each implemented next to its code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    from segkit import bench, export_cli
    from segkit.datasets import doctor
    from segkit.engine import eval_cli, predict_cli, train_cli
    from segkit.models import zoo_cli

    parser = argparse.ArgumentParser(
        prog="segkit", description="Semantic segmentation: train, evaluate, predict, export."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        ("train", train_cli),
        ("eval", eval_cli),
        ("predict", predict_cli),
        ("export", export_cli),
        ("bench", bench),
        ("doctor", doctor),
        ("models", zoo_cli),
    )
    for name, module in commands:
        doc = (module.__doc__ or "").strip().splitlines()[0].replace("``", "")
        command = sub.add_parser(name, help=doc, description=doc)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segkit`` console script; returns the process exit status.

    Bad input (a missing file, an unknown option or value, a corrupt sample) is reported as one
    line naming the problem and its fix, with exit status 2; ``SEGKIT_DEBUG=1`` shows the
    traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as err:  # OSError: missing files, full disks, read-only folders
        if os.environ.get("SEGKIT_DEBUG"):
            raise
        print(f"segkit {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """``err`` as text; an ``OSError`` from the system gets its file name and reason, not its
    errno tuple (``[Errno 28] No space left on device: 'x'`` -> ``x: no space left on device``)."""
    if isinstance(err, OSError) and err.strerror and type(err).__str__ is OSError.__str__:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror[0].lower()}{err.strerror[1:]}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
