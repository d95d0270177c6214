"""Read a whole split the way training does and collect every problem and the class counts.

:func:`scan_dataset` is what ``segkit doctor`` (:mod:`segkit.cli.doctor`) prints."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segkit.datasets.base import SegmentationDataset
from segkit.datasets.io import Problem, SampleError


@dataclass
class ScanReport:
    """What :func:`scan_dataset` found.

    Attributes:
        samples: Samples read (pairs).
        pixel_counts: ``(256,)`` int64 pixel count of each mask value (0..num_classes-1, 255).
        image_counts: ``(256,)`` int64 number of masks containing each value.
        problems: Every problem, one per file (construction-time file problems first).
    """

    samples: int = 0
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    image_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    problems: list[Problem] = field(default_factory=list)


def scan_dataset(
    dataset: SegmentationDataset, *, max_samples: int | None = None, workers: int = 1
) -> ScanReport:
    """Read every sample (or the first ``max_samples``) and collect problems and class counts.

    Class counts cover the valid samples only; the training engine can use them for class
    weights. Reading runs in ``workers`` threads (the decoders release the GIL). Problems of the
    whole split's mask values (:meth:`~SegmentationDataset.value_checks`, shared with the
    pre-flight check) come last.
    """
    report = ScanReport(problems=list(dataset.file_problems) + dataset.split_checks())
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)

    def load(index: int) -> tuple[np.ndarray | None, list[Problem]]:
        try:
            raw = dataset.load_raw(index)
        except SampleError as err:
            return None, [err.problem]
        return raw.mask, raw.warnings

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for mask, problems in pool.map(load, range(count)):
            report.problems += problems
            if mask is None:
                continue
            report.samples += 1
            counts = np.bincount(mask.ravel(), minlength=256)
            report.pixel_counts += counts
            report.image_counts += counts > 0
    report.problems += dataset.value_checks(set(np.flatnonzero(report.pixel_counts).tolist()))
    return report
