"""Check a dataset before training: unpaired, undecodable, mismatched and out-of-range files.

``segkit doctor --dataset NAME --data-root DIR [--split S]`` reads every sample the way training
does and prints each problem on its own line, naming the file, then the pixel frequency of each
class. Exit status: 0 when clean, 1 when it found problems.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter

from segkit.datasets import build_dataset, dataset_options, list_datasets
from segkit.datasets.base import SegmentationDataset
from segkit.datasets.doctor import ScanReport, scan_dataset
from segkit.datasets.preflight import hint_lines, problem_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``segkit doctor`` flags."""
    parser.add_argument("--dataset", required=True, choices=list_datasets(), help="dataset name")
    parser.add_argument("--data-root", default=None, help="dataset folder (not for shapes)")
    parser.add_argument("--split", default="train", help="split to check (default: train)")
    parser.add_argument("--year", type=int, default=None, help="voc: 2007 or 2012 (default 2012)")
    parser.add_argument("--num-classes", type=int, default=None, help="folder: class count")
    parser.add_argument("--class-names", default=None, help="folder: comma-separated names")
    parser.add_argument("--palette", default=None, metavar="FILE", help="folder: class -> RGB file")
    parser.add_argument(
        "--binary-255", action="store_true", help="folder: read mask value 255 as class 1"
    )
    parser.add_argument(
        "--nodata-ignore", action="store_true", help="massroads: white no-data pixels -> ignore"
    )
    parser.add_argument("--seed", type=int, default=None, help="shapes: base seed")
    parser.add_argument("--length", type=int, default=None, help="shapes: samples in the split")
    parser.add_argument("--max-samples", type=int, default=None, help="check only the first N")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="reader threads"
    )


def _options(args: argparse.Namespace) -> dict[str, object]:
    flags = {
        "year": args.year,
        "num_classes": args.num_classes,
        "class_names": args.class_names,
        "palette_file": args.palette,
        "binary_255": args.binary_255 or None,
        "nodata_ignore": args.nodata_ignore or None,
        "seed": args.seed,
        "length": args.length,
    }
    given = {key: value for key, value in flags.items() if value is not None}
    valid = dataset_options(args.dataset)
    unused = [key for key in given if key not in valid]
    if unused:
        flags_text = ", ".join("--" + key.replace("_", "-").replace("-file", "") for key in unused)
        raise ValueError(f"{flags_text} do(es) not apply to dataset '{args.dataset}'")
    return given


def run(args: argparse.Namespace) -> int:
    """Check the dataset; print problems and class frequencies; return the exit status."""
    try:
        options = _options(args)
        with warnings.catch_warnings():  # problems are printed below, one per line
            warnings.simplefilter("ignore")
            dataset = build_dataset(
                args.dataset,
                root=args.data_root,
                split=args.split,
                skip_bad_samples=True,
                **options,
            )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"dataset {args.dataset!r} split {args.split!r}: {dataset!r}")
    print(f"files: {dataset.image_count} images, {dataset.mask_count} masks, {len(dataset)} pairs")
    report = scan_dataset(dataset, max_samples=args.max_samples, workers=args.workers)
    if args.max_samples is not None and args.max_samples < len(dataset):
        print(f"checked the first {args.max_samples} of {len(dataset)} samples")
    for line in problem_lines(report.problems):
        print(line)
    _print_frequencies(dataset, report)
    return _summary(report)


def _print_frequencies(dataset: SegmentationDataset, report: ScanReport) -> None:
    total = int(report.pixel_counts.sum())
    print(f"class pixel frequency over {report.samples} valid samples ({total} pixels):")
    width = max(len(name) for name in dataset.class_names)
    rows = [(i, name) for i, name in enumerate(dataset.class_names)]
    rows.append((dataset.ignore_index, "(ignore)"))
    for index, name in rows:
        pixels = int(report.pixel_counts[index])
        share = 100.0 * pixels / total if total else 0.0
        images = int(report.image_counts[index])
        print(f"  {index:>3}  {name:<{width}}  {pixels:>12}  {share:6.2f}%  in {images} images")
    absent = [name for i, name in enumerate(dataset.class_names) if report.pixel_counts[i] == 0]
    if absent and report.samples:
        print(f"note: classes absent from this split: {', '.join(absent)}")


def _summary(report: ScanReport) -> int:
    if not report.problems:
        print("ok: no problems found")
        return 0
    kinds = Counter(problem.kind for problem in report.problems)
    files = len({problem.path for problem in report.problems})
    out_of_range = Counter(v for p in report.problems for v in p.values)
    if out_of_range:
        values = ", ".join(f"{v} ({n} files)" for v, n in sorted(out_of_range.items())[:20])
        print(f"out-of-range values: {values}")
    for line in hint_lines(report.problems):  # once each, not once per file
        print(line)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    print(f"found {len(report.problems)} problem(s) in {files} file(s): {summary}")
    return 1
