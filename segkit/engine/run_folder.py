"""A run folder belongs to one run.

- A lock (``flock`` on ``.segkit.lock``) is held by the process that writes the folder, for the
  whole run; a second ``segkit train`` into the folder (a new run or a resume) is refused with
  the holder's PID. The kernel drops the lock when its process dies, even by ``kill -9``, so a
  crashed run never leaves a stale lock.
- A folder that already holds a run is refused unless the run is resumed (``--resume``) or
  replaced on purpose (``--overwrite``).
- What a killed run left is tidied on the next start: temporary checkpoint files, and
  ``metrics.jsonl`` lines that the checkpoint does not know about (they are dropped, and a
  torn last line is dropped with a warning), so the metrics log and ``last.pt`` agree.
- A resume may change how the run goes on (learning rate, length, intervals, device, data
  location, evaluation protocol), never what the checkpoint's weights and optimiser state were
  made with (model, data, loss, optimiser, batch size, seed): :func:`check_resume_changes`.
- Without ``--work-dir`` a run gets a new folder, ``runs/<dataset>_<model>_<backbone>_<time>``:
  :func:`default_work_dir`.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from segkit.checkpoint import remove_stale_temporaries
from segkit.config import Config, flatten
from segkit.engine.run_log import logger
from segkit.files import default_file_mode

LOCK_NAME = ".segkit.lock"
# What `segkit train` writes into a run folder; their presence means "a run lives here".
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "checkpoints", "tensorboard", "plots")
# train.log is not a sign of a run: a run that failed its checks before training leaves one.
# report.html and val_samples.npz: engine/run_report.py and engine/val_samples.py.
RUN_OUTPUTS = (*RUN_ENTRIES, "bad_samples.txt", "train.log", "report.html", "val_samples.npz")
# Settings a resume may change (fnmatch patterns over dotted config keys).
RESUME_MAY_CHANGE = (
    "work_dir",
    "train.lr",
    "train.iters",
    "train.epochs",
    "train.val_interval",
    "train.log_interval",
    "train.stop_after",
    "train.device",
    "train.amp",
    "train.channels_last",
    "train.resume",
    "train.overwrite",
    "data.root",
    "data.workers",
    "data.skip_bad_samples",
    "eval.*",
)


class RunFolderError(ValueError):
    """The run folder is in use, holds another run, or cannot be resumed as asked."""


def default_work_dir(config: Config) -> Path:
    """``runs/<dataset>_<model>_<backbone>_<time>``, suffixed ``_2``, ``_3``... if it exists."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    name = f"{config.data.dataset}_{config.model.name}_{config.model.backbone}_{stamp}"
    base = Path("runs") / name.replace(":", "-").replace("/", "-")
    folder, number = base, 1
    while folder.exists():
        number += 1
        folder = base.with_name(f"{base.name}_{number}")
    return folder


def work_dir_for(config: Config) -> Path:
    """The folder a run of ``config`` writes: ``work_dir``, else a new default one."""
    return Path(config.work_dir) if config.work_dir else default_work_dir(config)


class RunLock:
    """An exclusive lock on a run folder, with the holder's PID, host and command recorded."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunFolderError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(self.path)
            os.close(fd)
            raise RunFolderError(
                f"{self.path.parent} is in use by another segkit process ({holder}); two "
                "processes writing one run folder would mix their files. Wait for it to end "
                "or stop it (it saves last.pt on SIGTERM), or choose another --work-dir"
            ) from None
        os.ftruncate(fd, 0)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.write(fd, json.dumps(record).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _describe_holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text())
        return (
            f"PID {record['pid']} on {record['host']}, started {record['started']}: "
            f"{record['command']}"
        )
    except (OSError, ValueError, KeyError):  # the holder has not written its record yet
        return "PID unknown: it is starting"


def claim(folder: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Lock ``folder`` for this run (created if needed) and make it ready to write.

    Raises:
        RunFolderError: the folder is locked by another process, or holds a run and neither
            ``resume`` nor ``overwrite`` is set.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder).acquire()
    try:
        existing = [name for name in RUN_ENTRIES if (folder / name).exists()]
        if existing and not resume:
            if not overwrite:
                raise RunFolderError(
                    f"{folder} already holds a run ({_describe_run(folder, existing)}). "
                    f"Continue it with --resume, replace it with --overwrite, or choose "
                    "another --work-dir"
                )
            for name in RUN_OUTPUTS:
                _remove(folder / name)
            logger.info(f"--overwrite: removed the previous run's files from {folder}")
        removed = remove_stale_temporaries(folder / "checkpoints")
        if removed:
            logger.info(
                f"removed {len(removed)} temporary file(s) of an interrupted save in "
                f"{folder / 'checkpoints'}"
            )
    except BaseException:
        lock.release()
        raise
    return lock


def _describe_run(folder: Path, existing: list[str]) -> str:
    parts = []
    records = read_metrics(folder / "metrics.jsonl", warn=False)
    if records:
        best = max(r.get("mIoU", 0.0) for r in records)
        parts.append(f"{len(records)} validations up to iteration {records[-1]['iter']}, "
                     f"best mIoU {best:.4f}")  # fmt: skip
    last = folder / "checkpoints" / "last.pt"
    if last.is_file():
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.stat().st_mtime))
        parts.append(f"checkpoints/{last.name} written {written}")
    return "; ".join(parts) or ", ".join(existing)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_metrics(path: Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn or corrupt line (a crash or a full disk
    while appending) is dropped, with a warning naming the file and line."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "iter" not in record:
                raise ValueError("not a metrics record")
        except ValueError:
            if warn:
                logger.warning(f"{path}:{number}: dropped a torn line")
            continue
        records.append(record)
    return records


def reconcile_metrics(path: Path, iteration: int, record: dict[str, Any] | None) -> None:
    """Make ``metrics.jsonl`` agree with a checkpoint of ``iteration``: drop records after it
    (and torn lines), and append the checkpoint's own validation ``record`` if the run died
    between writing the checkpoint and the log line. Rewritten atomically."""
    records = [r for r in read_metrics(path) if r["iter"] <= iteration]
    if record is not None and not any(r["iter"] == record["iter"] for r in records):
        records.append(record)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.is_file() and path.read_text(errors="replace") == text:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_resume_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between the checkpoint's config and the resumed
    one; raise :class:`RunFolderError` if any of them is not a setting a resume may change."""
    before, after = flatten(saved), flatten(now)
    changed = sorted(k for k in after if k in before and before[k] != after[k])
    refused = [k for k in changed if not any(fnmatch.fnmatch(k, p) for p in RESUME_MAY_CHANGE)]
    if refused:
        listing = ", ".join(f"{k} (run: {before[k]!r}, now: {after[k]!r})" for k in refused)
        hidden = ("work_dir", "train.resume", "train.overwrite")
        allowed = ", ".join(p for p in RESUME_MAY_CHANGE if p not in hidden)
        raise RunFolderError(
            f"--resume cannot change {listing}: the checkpoint's weights and optimiser state "
            "were made with the run's values. Drop that option to resume, or start a new run "
            "from these weights with --work-dir NEW --init-from "
            f"{Path(now.get('work_dir') or '.') / 'checkpoints' / 'last.pt'}. A resume may "
            f"change: {allowed}"
        )
    return changed
