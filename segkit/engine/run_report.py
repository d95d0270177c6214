"""A run folder as one self-contained HTML page, ``RUN/report.html`` (``segkit report RUN``).

What it reads, all from the run folder: ``config.yaml`` (the recipe), ``metrics.jsonl`` (every
validation; the last record's ``confusion`` and ``per_class_acc``), ``train.log`` (when the run
started and stopped, how many sessions, its start-up summary and how it ended), the TensorBoard
events (training loss and learning rate), ``val_samples.npz`` (the best and worst validation
images, :mod:`segkit.engine.val_samples`), ``.segkit.lock`` (host and command) and the
checkpoint's metadata (class colours). Anything missing leaves its part of the page out with a
note, so a report of an old or damaged run still opens. During training the
:class:`~segkit.engine.report.RunReporter` passes what it holds in memory instead of reading
it back. :mod:`segkit.engine.report_html` draws the page.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from segkit.datasets.palettes import voc_palette
from segkit.engine.run_folder import LOCK_NAME, read_metrics
from segkit.engine.val_samples import SAMPLES_FILE, Picks, load_picks

REPORT_FILE = "report.html"
#: train.log's start-up summary lines (:func:`segkit.engine.summary.describe_run`).
SUMMARY_KEYS = ("model", "data", "recipe", "device")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")


@dataclass
class TrainCurves:
    """Training scalars by iteration: ``loss`` and ``lr`` as ``(iteration, value)`` pairs."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class LogFacts:
    """What train.log says: first and last time stamp, sessions (a resume starts one), the
    last session's start-up summary (``model``, ``data``, ``recipe``, ``device``) and how
    the run ended (``status``: ``finished``, ``stopped at iteration N``, ``failed: ...`` or
    ``running or interrupted``)."""

    started: datetime | None = None
    ended: datetime | None = None
    sessions: int = 0
    summary: dict[str, str] = field(default_factory=dict)
    status: str = "unknown (no train.log)"


@dataclass
class ReportData:
    """Everything the page shows (see the module docstring for the sources)."""

    folder: Path
    config: dict[str, Any]
    config_text: str
    records: list[dict[str, Any]]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int
    curves: TrainCurves
    picks: Picks | None
    log: LogFacts
    host: str | None
    command: str | None
    version: str
    written: datetime

    @property
    def total_iters(self) -> int | None:
        """The run's planned iterations (config.yaml's ``train.iters``)."""
        iters = self.config.get("train", {}).get("iters")
        return iters if isinstance(iters, int) else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The validation record of highest mIoU (the earliest of equals), if any."""
        scored = [r for r in self.records if _finite(r.get("mIoU"))]
        return max(scored, key=lambda r: r["mIoU"]) if scored else None

    @property
    def last(self) -> dict[str, Any] | None:
        """The latest validation record, if any."""
        return self.records[-1] if self.records else None


def _finite(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def read_train_curves(run_dir: Path, *, up_to: int | None = None) -> TrainCurves:
    """Training loss and learning rate from the run's TensorBoard events (steps up to
    ``up_to``); empty when there are none. Events a resumed run purged are left out."""
    folder = run_dir / "tensorboard"
    if not folder.is_dir() or not any(folder.iterdir()):
        return TrainCurves()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 1})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))

    def series(tag: str) -> list[tuple[int, float]]:
        if tag not in tags:
            return []
        points = {e.step: e.value for e in events.Scalars(tag)}  # a later write of a step wins
        return sorted((s, v) for s, v in points.items() if up_to is None or s <= up_to)

    return TrainCurves(series("train/loss"), series("train/lr"))


def read_log(path: Path) -> LogFacts:
    """:class:`LogFacts` from a train.log (:class:`~segkit.engine.run_log.RunLogFile`)."""
    if not path.is_file():
        return LogFacts()
    facts = LogFacts(sessions=1, status="running or interrupted")
    for line in path.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if not match:
            continue  # the further lines of a multi-line record (a table)
        stamp, text = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S"), match[2]
        facts.started = facts.started or stamp
        facts.ended = stamp
        key, _, value = text.partition(":")
        if key in SUMMARY_KEYS and value.startswith(" "):
            facts.summary[key] = value.strip()
        elif text.startswith("resumed "):
            facts.sessions += 1
            facts.status = "running or interrupted"
        elif text.startswith("error:"):
            facts.status = "failed: " + text.removeprefix("error:").strip()
        elif text.startswith("stopping at iteration"):
            facts.status = text.split(" (")[0].replace("stopping at", "stopped at")
        elif text.startswith("run written to") and facts.status == "running or interrupted":
            facts.status = "finished"
    return facts


def collect(
    run_dir: Path,
    *,
    curves: TrainCurves | None = None,
    picks: Picks | None = None,
    class_names: list[str] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
    ignore_index: int | None = None,
) -> ReportData:
    """Read a run folder into :class:`ReportData`; the keyword arguments replace what would
    be read (the training loop knows them already).

    Raises:
        FileNotFoundError: ``run_dir`` holds neither config.yaml nor metrics.jsonl.
    """
    from segkit import __version__

    config_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not config_file.is_file() and not metrics_file.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a segkit run folder (no config.yaml, no metrics.jsonl); give the "
            "folder `segkit train` wrote (its --work-dir)"
        )
    config_text = config_file.read_text(errors="replace") if config_file.is_file() else ""
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        config = {}
    records = read_metrics(metrics_file, warn=False)
    known = None not in (class_names, palette, ignore_index)
    meta = {} if known else _checkpoint_meta(run_dir)
    if class_names is None:
        class_names = list(
            meta.get("class_names") or (records[-1]["per_class_iou"] if records else [])
        )
    if palette is None:
        palette = [tuple(c) for c in meta.get("palette") or voc_palette(max(1, len(class_names)))]
    if ignore_index is None:
        ignore_index = int(
            meta.get("ignore_index", config.get("train", {}).get("ignore_index", 255))
        )
    if picks is None:
        picks = load_picks(run_dir / SAMPLES_FILE)
    if picks is not None and not any(r["iter"] == picks.iteration for r in records):
        picks = None  # from a validation the run no longer records (dropped on --resume)
    log = read_log(run_dir / "train.log")
    host, command = _lock_record(run_dir / LOCK_NAME)
    return ReportData(
        folder=run_dir.resolve(),
        config=config,
        config_text=config_text,
        records=records,
        class_names=list(class_names),
        palette=[tuple(int(v) for v in c) for c in palette],
        ignore_index=ignore_index,
        curves=curves if curves is not None else read_train_curves(run_dir),
        picks=picks,
        log=log,
        host=host,
        command=command,
        version=__version__,
        written=datetime.now().replace(microsecond=0),
    )


def _checkpoint_meta(run_dir: Path) -> dict[str, Any]:
    """The ``meta`` of best.pt or last.pt, read without loading the weights (memory-mapped);
    empty when neither is readable."""
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # missing, partial or foreign: the report says less, never fails
            continue
        if isinstance(data, dict) and isinstance(data.get("meta"), dict):
            return data["meta"]
    return {}


def _lock_record(path: Path) -> tuple[str | None, str | None]:
    """Host and command of the run's last session (the lock file keeps them)."""
    try:
        record = json.loads(path.read_text())
        return record.get("host"), record.get("command")
    except (OSError, ValueError, AttributeError):
        return None, None
