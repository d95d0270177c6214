"""Write a run's report: one HTML page with its recipe, curves, scores and samples.

``segkit report RUN`` reads the run folder ``RUN`` (what ``segkit train`` wrote) and writes
``RUN/report.html``, or ``--out FILE``. The page needs nothing else: its pictures are inside
it and it loads nothing from the network, so it can be mailed or archived as one file.
``segkit train`` writes the same page at each validation and at the end of the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segkit.engine.report_html import write_report
from segkit.engine.run_report import REPORT_FILE
from segkit.files import check_writable_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit report``'s arguments: the run folder and ``--out``."""
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN", help="the run folder (train's --work-dir)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=f"the HTML file to write (none: RUN/{REPORT_FILE})",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report; print where."""
    if not args.run_dir.is_dir():
        raise FileNotFoundError(
            f"{args.run_dir} is not a folder; give a run folder (train's --work-dir)"
        )
    if args.out is not None:
        check_writable_file(args.out, REPORT_FILE)
    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0
