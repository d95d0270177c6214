"""A run folder belongs to one run: refusal, --overwrite, the lock, and what a crash leaves."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runkit import read_jsonl, train

from segkit.checkpoint import load_checkpoint
from segkit.engine import run_folder as runtime
from segkit.engine.run_folder import RunLock, reconcile_metrics


def _snapshot(work: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(work)): p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts and p.name != ".segkit.lock"
    }


def test_a_second_run_into_a_run_folder_is_refused_and_changes_nothing(
    tmp_path, capsys, one_error_line
) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "2", "--val-interval", "2") == 0
    before = _snapshot(work)
    capsys.readouterr()  # the first run's progress output

    assert train(work, "--iters", "2", "--lr", "0.5") == 2
    line = one_error_line()
    assert str(work) in line and "--resume" in line and "--overwrite" in line
    assert "best mIoU" in line  # says what would have been lost
    assert _snapshot(work) == before


def test_overwrite_replaces_the_previous_run(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "4", "--val-interval", "2") == 0
    (work / "notes.txt").write_text("mine")  # not segkit's: kept
    assert train(work, "--iters", "2", "--val-interval", "2", "--overwrite") == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2]
    assert load_checkpoint(work / "checkpoints" / "last.pt")["iteration"] == 2
    assert (work / "notes.txt").read_text() == "mine"
    assert "--overwrite: removed the previous run's files" in capsys.readouterr().out


def test_resume_and_overwrite_together_are_refused(tmp_path, one_error_line) -> None:
    assert train(tmp_path / "run", "--resume", "--overwrite") == 2
    assert "give one of them" in one_error_line()


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, one_error_line) -> None:
    work = tmp_path / "run"
    work.mkdir()
    lock = RunLock(work).acquire()
    try:
        assert train(work, "--iters", "1") == 2
        line = one_error_line()
        assert f"PID {os.getpid()}" in line and "in use" in line
        assert not (work / "config.yaml").exists()
    finally:
        lock.release()
    assert train(work, "--iters", "1", "--val-interval", "1") == 0


def test_the_lock_of_a_killed_process_is_free(tmp_path, capsys, one_error_line) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "2", "--val-interval", "2", "--stop-after", "1") == 0
    capsys.readouterr()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from segkit.engine.run_folder import "
         "RunLock; RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); "
         "time.sleep(60)", str(work)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(work, "--iters", "1") == 2
        assert f"PID {holder.pid}" in one_error_line()
        # A resume is refused the same way: one writer at a time.
        assert train(work, "--resume") == 2
        assert f"PID {holder.pid}" in one_error_line()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train(work, "--resume") == 0


def test_two_runs_started_at_once_one_wins_and_the_folder_is_whole(tmp_path) -> None:
    work = tmp_path / "run"
    argv = [sys.executable, "-m", "segkit", "train", "--model", "deeplabv3plus",
            "--backbone", "mobilenet_v2", "--set", "data.length=8", "--set",
            "data.val_length=4", "--set", "data.image_size=32", "--crop-size", "32",
            "--batch-size", "4", "--workers", "0", "--iters", "2", "--val-interval", "2",
            "--work-dir", str(work)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen([*argv, "--seed", str(seed)], stderr=subprocess.PIPE, text=True, env=env)
        for seed in (1, 2)
    ]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    if codes == [0, 0]:  # the first finished before the second started: it was refused later
        pytest.fail(f"both runs wrote {work}: {results}")
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another segkit process" in loser or "already holds a run" in loser
    winner_seed = next(s for (code, _), s in zip(results, (1, 2), strict=True) if code == 0)
    # Everything in the folder is the winner's.
    assert load_checkpoint(work / "checkpoints" / "last.pt")["config"]["train"]["seed"] == (
        winner_seed
    )
    assert f"seed: {winner_seed}" in (work / "config.yaml").read_text()


def test_resume_tidies_what_a_crash_left(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "6", "--val-interval", "2", "--stop-after", "4") == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2, 4]
    # A kill during a save leaves its temporary file; a crash while appending tears a line;
    # a crash after the log line but before the checkpoint leaves a record from the future.
    leftover = work / "checkpoints" / ".last.pt.abc12345.tmp"
    leftover.write_bytes(b"\0" * 1000)
    with (work / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"iter": 6, "mIoU": 0.9}) + "\n")
        handle.write('{"iter": 8, "mI')
    capsys.readouterr()

    assert train(work, "--resume", "--work-dir", str(work)) == 0
    captured = capsys.readouterr()
    assert not leftover.exists()
    assert "removed 1 temporary file(s)" in captured.out
    assert "metrics.jsonl:4: dropped a torn line" in captured.err
    records = read_jsonl(work / "metrics.jsonl")
    assert [r["iter"] for r in records] == [2, 4, 6]
    assert records[-1]["mIoU"] != 0.9  # the resumed run's own validation


def test_a_record_lost_between_checkpoint_and_log_is_restored(tmp_path) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "6", "--val-interval", "2", "--stop-after", "4") == 0
    path = work / "metrics.jsonl"
    records = read_jsonl(path)
    path.write_text(json.dumps(records[0]) + "\n")  # the crash came before the line for 4
    checkpoint = load_checkpoint(work / "checkpoints" / "last.pt")
    reconcile_metrics(path, checkpoint["iteration"], checkpoint["record"])
    assert read_jsonl(path) == records


def test_default_run_folders_never_collide(tmp_path, monkeypatch) -> None:
    from segkit.config import Config

    monkeypatch.chdir(tmp_path)
    frozen = time.localtime()

    class Clock:
        @staticmethod
        def now():
            import datetime

            return datetime.datetime(*frozen[:6])

    monkeypatch.setattr(runtime, "datetime", Clock)
    first = runtime.default_work_dir(Config())
    first.mkdir(parents=True)
    second = runtime.default_work_dir(Config())
    assert second != first and second.name == first.name + "_2"


def test_a_full_disk_during_training_stops_in_one_line_and_keeps_last(tmp_path) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "6", "--val-interval", "2", "--stop-after", "2") == 0
    before = (work / "checkpoints" / "last.pt").read_bytes()

    def small_files() -> None:  # writes past 1 MB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    process = subprocess.run(
        [sys.executable, "-m", "segkit", "train", "--resume", "--work-dir", str(work)],
        capture_output=True, text=True, preexec_fn=small_files, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert process.returncode == 2, process.stderr
    last_line = process.stderr.strip().splitlines()[-1]
    assert last_line.startswith("segkit train: error: could not write checkpoint")
    assert "Training stopped at iteration 4" in last_line and "--resume" in last_line
    assert "Traceback" not in process.stderr and "inline_container" not in process.stderr
    assert (work / "checkpoints" / "last.pt").read_bytes() == before
    assert not list((work / "checkpoints").glob(".*.tmp"))
    # Once there is room again, the run continues from where it was saved.
    assert train(work, "--resume") == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2, 4, 6]
