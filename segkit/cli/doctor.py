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
from typing import Any

from segkit.cli.common import Flag, add_config_flag, config_flags, given_values
from segkit.config import Config, component_values
from segkit.datasets import build_dataset, dataset_options, list_datasets
from segkit.datasets.base import SegmentationDataset
from segkit.datasets.doctor import ScanReport, scan_dataset
from segkit.datasets.preflight import hint_lines, problem_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``segkit doctor`` flags: the dataset, its folder and split, and each
    dataset's own options under the same names as in ``segkit train``."""
    group = parser.add_argument_group("dataset (the same flags as segkit train)")
    for flag in _dataset_flags():
        add_config_flag(group, flag)
    group.add_argument("--split", default="train", help="split to check")
    parser.add_argument("--max-samples", type=int, default=None, help="check only the first N")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="reader threads"
    )


def _dataset_flags() -> list[Flag]:
    """``--dataset``, ``--data-root`` and every dataset option's flag."""
    keys = ("data.dataset", "data.root")
    return [f for f in config_flags() if f.key in keys or _is_dataset_option(f)]


def _is_dataset_option(flag: Flag) -> bool:
    return flag.key.startswith("data.") and bool(flag.field.metadata.get("component"))


def _options(args: argparse.Namespace) -> tuple[Config, dict[str, Any]]:
    """The dataset part of a run configuration from the flags, and the dataset's options;
    an option the dataset does not take is an error naming its flag."""
    flags = _dataset_flags()
    given = given_values(args, flags)
    if "data.dataset" not in given:
        raise ValueError(f"--dataset is required; choose one of {list_datasets()}")
    config = Config()
    config.update(given)
    options = component_values(config.data)
    valid = dataset_options(config.data.dataset)
    names = {f.key.removeprefix("data."): f.flag for f in flags if _is_dataset_option(f)}
    unused = [names[name] for name in options if name not in valid]
    if unused:
        raise ValueError(
            f"{', '.join(unused)} do(es) not apply to dataset {config.data.dataset!r} (its "
            f"options: {valid})"
        )
    return config, options


def run(args: argparse.Namespace) -> int:
    """Check the dataset; print problems and class frequencies; return the exit status."""
    try:
        config, options = _options(args)
        with warnings.catch_warnings():  # problems are printed below, one per line
            warnings.simplefilter("ignore")
            dataset = build_dataset(
                config.data.dataset,
                root=config.data.root,
                split=args.split,
                skip_bad_samples=True,
                **options,
            )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"dataset {config.data.dataset!r} split {args.split!r}: {dataset!r}")
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
