"""Check a dataset before training: unpaired, undecodable, mismatched and out-of-range files.

``segkit doctor --dataset NAME --data-root DIR [--split S]`` reads every sample the way training
does and prints each problem on its own line, naming the file, then the pixel frequency of each
class. Exit status: 0 when clean, 1 when it found problems.

``segkit doctor --show N [--show-dir DIR] [--config RECIPE]`` draws instead what the model
sees: the run's first N training samples after augmentation, each as the image beside the
image with its mask over it (ignored pixels striped black and white) and a legend, one PNG
each. Exit status 1 when a sample could not be drawn.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from segkit.cli.common import Flag, add_config_flag, config_flags, given_values
from segkit.config import SHAPES_RECIPE, Config, component_values, parse_set
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
    group.add_argument(
        "--split", help="split to check (none: train; with --show, the recipe's training split)"
    )
    parser.add_argument("--max-samples", type=int, default=None, help="check only the first N")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="reader threads"
    )
    show = parser.add_argument_group("what the model sees")
    show.add_argument(
        "--show",
        type=int,
        metavar="N",
        help="instead of checking, draw the run's first N training samples after augmentation "
        "into --show-dir (none: check the files)",
    )
    show.add_argument(
        "--show-dir", type=Path, default=Path("doctor_show"), help="where --show writes its PNGs"
    )
    show.add_argument(
        "--config",
        metavar="FILE",
        help="with --show: the recipe (a file or a name in configs/) whose augmentation, "
        "normalisation and seed to use (none: shapes.yaml on shapes, else the defaults)",
    )
    show.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --show: set a config key, e.g. --set data.crop_size=256 (repeatable)",
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
    if args.show is not None:
        return _show(args)
    if args.config or args.set:
        raise ValueError("--config and --set apply to --show only (the check reads the files)")
    args.split = args.split or "train"
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


def _show(args: argparse.Namespace) -> int:
    """Draw ``--show N`` augmented training samples; print one line per picture."""
    from segkit.engine.show_samples import show_training_samples

    given = given_values(args, _dataset_flags()) | parse_set(args.set)
    if args.config:
        config = Config.load(args.config)
    elif given.get("data.dataset") in (None, "shapes"):
        config = Config.load(SHAPES_RECIPE)  # as `segkit train` without a recipe
    else:
        config = Config()
    config.update(given)
    data = config.data
    split = args.split or data.train_split
    print(
        f"the first {args.show} training draws of {data.dataset!r} split {split!r} after "
        f"augmentation (crop {data.crop_size}, seed {config.train.seed}), into {args.show_dir}"
    )
    failed = 0
    for sample in show_training_samples(config, args.show, args.show_dir, split=split):
        if sample.error is not None:
            failed += 1
            print(f"{sample.name}: could not draw it: {sample.error}")
            continue
        classes = ", ".join(sample.classes) or "no class"
        print(f"{sample.path}: {classes}; {100 * sample.ignored:.1f}% ignored")
    return 1 if failed else 0


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
