"""Pre-flight check of a dataset's label files, run on the train and val splits before training.

Without it a bad sample shows only when the loader draws it: training crashes mid-run, or at the
first validation before any checkpoint exists. :func:`preflight` checks every sample, in threads
(the decoders release the GIL):

- the mask is decoded and validated exactly as training reads it: the dataset's own
  :meth:`~SegmentationDataset.read_label` (colour-mask rule, label mapping such as Cityscapes'
  ids) and :meth:`~SegmentationDataset.check_label` (size, value range);
- the image is not decoded: its header must open and give the mask's size.

Not checked: the image's pixel data (a file damaged past its header passes; the loader then
raises one clean ``SampleError`` naming it), and rules that need the decoded image
(Massachusetts Roads' ``nodata_ignore`` only turns pixels into 255 = ignore, which never makes a
sample bad, so its 255s are missing from :attr:`PreflightReport.values`).

Verdicts are cached in ``<cache>/preflight/`` (:func:`default_cache_dir`), one JSON file per
dataset class, root, split and label settings, with one entry per sample keyed by the mask and
image paths, sizes and ``mtime_ns``: a second check of an unchanged dataset reads no mask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segkit.datasets import DATASETS, FolderDataset
from segkit.datasets.base import SampleFiles, SegmentationDataset
from segkit.datasets.io import Problem, SampleError, read_image_size
from segkit.files import default_file_mode

CACHE_VERSION = 1  # bump when a rule changes the verdict of unchanged files
MAX_LISTED = 20  # problem lines in an error message; doctor lists them all


@dataclass
class PreflightReport:
    """What :func:`preflight` found.

    Attributes:
        samples: Samples in the dataset before the check.
        checked: Samples checked (read or taken from the cache); 0 for generated datasets.
        from_cache: Of the checked samples, those whose verdict came from the cache.
        bad: One problem per bad sample, in sample order (the first problem found).
        skipped: Bad samples removed from the dataset (``skip_bad=True``).
        values: Mask values, after label mapping, met in the good samples.
        notes: Non-fatal problems: per-file warnings (unknown colours...) and split checks.
        cache_file: The cache file read and written, or None.
    """

    samples: int = 0
    checked: int = 0
    from_cache: int = 0
    bad: list[Problem] = field(default_factory=list)
    skipped: int = 0
    values: set[int] = field(default_factory=set)
    notes: list[Problem] = field(default_factory=list)
    cache_file: Path | None = None

    def summary(self) -> str:
        """One line, e.g. ``pre-flight: 120 samples checked (118 from cache), 2 bad skipped``."""
        if not self.checked:
            return f"pre-flight: {self.samples} generated samples, no files to check"
        cached = f" ({self.from_cache} from cache)" if self.from_cache else ""
        skipped = f", {self.skipped} bad skipped" if self.skipped else ""
        return f"pre-flight: {self.checked} samples checked{cached}{skipped}"


class PreflightError(ValueError):
    """The dataset cannot be trained on; the message lists why and the fix."""

    def __init__(self, message: str, report: PreflightReport):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class _Verdict:
    bad: Problem | None
    notes: tuple[Problem, ...] = ()
    values: tuple[int, ...] = ()

    def to_json(self, stat: list[int]) -> dict[str, object]:
        return {
            "stat": stat,
            "bad": _problem_to_json(self.bad) if self.bad else None,
            "notes": [_problem_to_json(note) for note in self.notes],
            "values": list(self.values),
        }

    @staticmethod
    def from_json(entry: dict) -> _Verdict:
        bad = _problem_from_json(entry["bad"]) if entry["bad"] is not None else None
        notes = tuple(_problem_from_json(note) for note in entry["notes"])
        return _Verdict(bad, notes, tuple(int(v) for v in entry["values"]))


def default_cache_dir() -> Path:
    """``$SEGKIT_CACHE``, else ``$XDG_CACHE_HOME/segkit``, else ``~/.cache/segkit``."""
    if os.environ.get("SEGKIT_CACHE"):
        return Path(os.environ["SEGKIT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "segkit"
    return Path.home() / ".cache" / "segkit"


def preflight(
    dataset: SegmentationDataset,
    *,
    skip_bad: bool,
    cache_dir: Path | None = None,
    workers: int = 2,
) -> PreflightReport:
    """Check every sample's mask (and its image's header) before training.

    Args:
        dataset: The dataset; with ``skip_bad`` its bad samples are removed from it.
        skip_bad: Remove bad samples (counted in the report) instead of raising.
        cache_dir: Cache folder; None = :func:`default_cache_dir`.
        workers: Reader threads.

    Returns:
        The report; a dataset without files (``shapes``) is not checked (``checked == 0``).

    Raises:
        PreflightError: A ``ValueError``: bad samples (without ``skip_bad``), every sample bad,
            or a split-wide problem such as 0/255 masks without ``binary_255``. The message
            lists them as ``segkit doctor`` does, each hint once, then the fix.
    """
    report = PreflightReport(samples=len(dataset))
    if not dataset.files:  # generated samples: nothing on disk
        return report
    cache = _Cache(Path(cache_dir) if cache_dir is not None else default_cache_dir(), dataset)
    report.cache_file = cache.path
    verdicts = _verdicts(dataset, cache, workers, report)
    bad_indices = [i for i, verdict in enumerate(verdicts) if verdict.bad is not None]
    report.bad = [verdicts[i].bad for i in bad_indices]
    for verdict in verdicts:
        if verdict.bad is None:
            report.values.update(verdict.values)
            report.notes += verdict.notes
    report.notes += dataset.split_checks()
    where = f"{type(dataset).__name__} split '{dataset.split}'"
    if bad_indices and len(bad_indices) == len(dataset):
        lines = [f"pre-flight: all {len(dataset)} samples of {where} are bad:"]
        lines += _listing(report.bad, f"Fix: fix the files; `{doctor_command(dataset)}` lists them")
        raise PreflightError("\n".join(lines), report)
    if bad_indices and skip_bad:
        dataset.remove_samples(bad_indices)
        report.skipped = len(bad_indices)
    split_problems = dataset.value_checks(report.values)
    if bad_indices and not skip_bad:
        lines = [f"pre-flight: {len(bad_indices)} of {len(dataset)} samples of {where} are bad:"]
        fix = (
            "Fix: pass --skip-bad-samples to train without them (they are counted and listed), "
            f"or fix the files; `{doctor_command(dataset)}` lists them all"
        )
        raise PreflightError("\n".join(lines + _listing(split_problems + report.bad, fix)), report)
    if split_problems:
        lines = [f"pre-flight: {where} cannot be trained on:", *_listing(split_problems)]
        raise PreflightError("\n".join(lines), report)
    return report


def problem_lines(problems: Sequence[Problem], limit: int | None = None) -> list[str]:
    """``kind: message`` per problem as ``segkit doctor`` prints them; past ``limit`` one
    ``... and N more`` line."""
    shown = problems if limit is None else problems[:limit]
    lines = [f"{problem.kind}: {problem.message}" for problem in shown]
    if len(problems) > len(shown):
        lines.append(f"... and {len(problems) - len(shown)} more")
    return lines


def hint_lines(problems: Sequence[Problem]) -> list[str]:
    """``hint: ...`` once per distinct hint, in order of first appearance."""
    hints = dict.fromkeys(problem.hint for problem in problems if problem.hint)
    return [f"hint: {hint.removeprefix('Fix: ')}" for hint in hints]


def doctor_command(dataset: SegmentationDataset) -> str:
    """The ``segkit doctor`` command line that checks ``dataset`` and lists every problem."""
    name = next((n for n, cls in DATASETS.items() if isinstance(dataset, cls)), None)
    args = ["segkit", "doctor", "--dataset", name or type(dataset).__name__]
    if getattr(dataset, "root", None) is not None:
        args += ["--data-root", str(dataset.root)]
    args += ["--split", dataset.split]
    if getattr(dataset, "year", 2012) != 2012:
        args += ["--year", str(dataset.year)]
    if isinstance(dataset, FolderDataset):
        if dataset.palette_file is not None:
            args += ["--palette-file", str(dataset.palette_file)]
        else:
            args += ["--num-classes", str(dataset.num_classes)]
        if dataset.binary_255:
            args.append("--binary-255")
    if getattr(dataset, "nodata_ignore", False):
        args.append("--nodata-ignore")
    return shlex.join(args)


def _listing(problems: list[Problem], fix: str = "") -> list[str]:
    return problem_lines(problems, MAX_LISTED) + hint_lines(problems) + ([fix] if fix else [])


def _verdicts(
    dataset: SegmentationDataset, cache: _Cache, workers: int, report: PreflightReport
) -> list[_Verdict]:
    """One verdict per sample: from the cache when the files are unchanged, else checked."""
    keys = [f"{files.mask}\n{files.image}" for files in dataset.files]
    stats = [_stat(files.mask) + _stat(files.image) for files in dataset.files]  # before reading
    verdicts = [cache.get(key, stat) for key, stat in zip(keys, stats, strict=True)]
    todo = [i for i, verdict in enumerate(verdicts) if verdict is None]
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:  # on Ctrl-C, drop the queued files instead of reading them all first
        checks = pool.map(lambda i: _check(dataset, dataset.files[i]), todo)
        for index, verdict in zip(todo, checks, strict=True):
            verdicts[index] = verdict
    finally:
        pool.shutdown(cancel_futures=True)
    report.checked, report.from_cache = len(verdicts), len(verdicts) - len(todo)
    entries = {key: v.to_json(stat) for key, v, stat in zip(keys, verdicts, stats, strict=True)}
    if todo or entries.keys() != cache.entries.keys():
        cache.save(entries)
    return verdicts


def _check(dataset: SegmentationDataset, files: SampleFiles) -> _Verdict:
    notes: list[Problem] = []
    try:
        size = read_image_size(files.image)
        mask = dataset.read_label(files, None, notes)
        dataset.check_label(files, size, mask)
    except SampleError as err:
        return _Verdict(err.problem)
    values = np.flatnonzero(np.bincount(mask.ravel()))  # valid masks hold 0..255 only
    return _Verdict(None, tuple(notes), tuple(values.tolist()))


def _stat(path: Path) -> list[int]:
    try:
        stat = path.stat()
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


class _Cache:
    """The verdicts of one dataset split under one set of label settings, in one JSON file."""

    def __init__(self, folder: Path, dataset: SegmentationDataset):
        self.header = json.loads(  # through JSON, so tuples compare equal to what is read back
            json.dumps(
                {
                    "version": CACHE_VERSION,
                    "settings": dataset.label_settings(),
                    "root": str(getattr(dataset, "root", "")),
                    "split": dataset.split,
                }
            )
        )
        digest = hashlib.sha256(json.dumps(self.header, sort_keys=True).encode()).hexdigest()
        stem = re.sub(r"[^\w.-]+", "_", f"{type(dataset).__name__}-{dataset.split}").lower()
        self.path = folder / "preflight" / f"{stem}-{digest[:16]}.json"
        self.entries = self._load()

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, unreadable or torn: rebuilt
            return {}
        valid = isinstance(data, dict) and data.get("header") == self.header
        return data["entries"] if valid and isinstance(data.get("entries"), dict) else {}

    def get(self, key: str, stat: list[int]) -> _Verdict | None:
        entry = self.entries.get(key)
        if not isinstance(entry, dict) or entry.get("stat") != stat:
            return None
        try:
            return _Verdict.from_json(entry)
        except (KeyError, TypeError, ValueError):  # a damaged entry: check the files again
            return None

    def save(self, entries: dict) -> None:
        """Write atomically: concurrent runs read the old file or the new one, never a torn one."""
        text = json.dumps({"header": self.header, "entries": entries}, separators=(",", ":"))
        temp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                os.fchmod(file.fileno(), default_file_mode())  # mkstemp's 0600 ignores the umask
            os.replace(temp, self.path)  # no fsync: a file torn by a crash is ignored when read
        except OSError as err:
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            warnings.warn(
                f"pre-flight results not cached ({err}); set SEGKIT_CACHE to a writable folder",
                stacklevel=4,
            )
            return
        self.entries = entries


def _problem_to_json(problem: Problem) -> list[object]:
    return [problem.kind, problem.path, problem.message, list(problem.values), problem.hint]


def _problem_from_json(item: list) -> Problem:
    kind, path, message, values, hint = item
    return Problem(str(kind), str(path), str(message), tuple(int(v) for v in values), str(hint))
