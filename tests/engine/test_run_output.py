"""What a run says: start-up summary, progress without a terminal, warnings, and train.log."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

from runkit import TINY

from segkit.cli import main
from segkit.engine.progress import TrainProgress, format_duration, is_terminal, progress_line
from segkit.engine.run_log import FILE_ONLY, RunLogFile, console_output, logger
from segkit.engine.train import Trainer


def _train(work: Path, *extra: str) -> int:
    return main(["train", *TINY, "--work-dir", str(work), *extra])


def test_train_log_keeps_what_the_run_says_and_a_resume_appends(
    tmp_path, capsys, monkeypatch
) -> None:
    original = Trainer.step

    def step_with_a_warning(self, images, masks, it):
        if it == 0:
            warnings.warn("planted warning\n  with a second line", stacklevel=1)
        return original(self, images, masks, it)

    monkeypatch.setattr(Trainer, "step", step_with_a_warning)
    work = tmp_path / "run"
    argv = ["--iters", "4", "--val-interval", "2", "--set", "train.log_interval=1"]
    assert _train(work, *argv, "--stop-after", "2") == 0
    out, err = capsys.readouterr()
    log = (work / "train.log").read_text()
    for text in (out, log):  # the console (not a terminal here) and the file say the same
        assert "model:    deeplabv3plus, backbone mobilenet_v2" in text and "parameters" in text
        assert "16 training samples" in text and "8 validation samples" in text
        assert "recipe:   4 iterations" in text and "batch 4" in text
        assert "device:   cpu" in text
        assert f"tensorboard --logdir {work.resolve()}" in text
        assert "iter 1/4 (25%) loss " in text and "iter 2/4 (50%)" in text
        assert "validating at iteration 2 (8 batches)" in text
        assert "validation at iteration 2: mIoU " in text
        assert "stopping at iteration 2 (--stop-after 2)" in text
        assert "\r" not in text
    # A warning is one line, on standard error and in the file, without its source line.
    (warned,) = [line for line in err.splitlines() if line.strip()]
    assert warned == "warning: planted warning with a second line"
    (logged,) = [line for line in log.splitlines() if "second line" in line]
    assert logged.endswith(warned)
    assert "UserWarning" not in err + log and "warnings.warn" not in err + log

    monkeypatch.undo()
    assert main(["train", "--resume", "--work-dir", str(work)]) == 0
    resumed = (work / "train.log").read_text()
    assert resumed.startswith(log)  # appended, never truncated
    added = resumed[len(log) :]
    assert f"resumed {work} at iteration 2" in added and "iter 4/4 (100%)" in added
    assert "results of the validation at iteration 4:" in added
    assert "fw_iou" in added and "background" in added  # the per-class table
    assert f"run written to {work}" in added
    assert "\r" not in resumed


def test_a_failed_run_notes_its_error_in_train_log(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert _train(work, "--iters", "1", "--sync-bn", "--device", "cpu") == 2
    assert "SyncBatchNorm has no CPU kernel" in capsys.readouterr().err
    log = (work / "train.log").read_text()
    assert "error: --sync-bn needs CUDA" in log


def test_without_a_terminal_progress_is_plain_lines(capsys) -> None:
    now = [0.0]  # 5 s per iteration

    with console_output():
        progress = TrainProgress(total=5, start=0, every=2, tty=False, clock=lambda: now[0])
        for done in range(1, 6):
            now[0] = 5.0 * done
            progress.update(done, loss=0.5 * done, lr=0.004, miou="-" if done < 4 else "0.612")
        progress.close()
    lines = capsys.readouterr().out.splitlines()
    # Lines every 2 iterations and at the last; the loss is the mean since the previous line.
    assert lines == [
        "iter 2/5 (40%) loss 0.7500 lr 4.0e-03 mIoU - | 0.2 it/s, eta 0:15",
        "iter 4/5 (80%) loss 1.7500 lr 4.0e-03 mIoU 0.612 | 0.2 it/s, eta 0:05",
        "iter 5/5 (100%) loss 2.5000 lr 4.0e-03 mIoU 0.612 | 0.2 it/s, eta 0:00",
    ]


def test_the_pace_line_leaves_the_first_iteration_and_validations_out(capsys) -> None:
    now = [0.0]
    with console_output():
        progress = TrainProgress(total=100, start=0, every=50, tty=False, clock=lambda: now[0])
        for done in range(1, 8):
            now[0] += 30.0 if done == 1 else 2.0  # the first iteration starts the loaders
            progress.update(done, loss=1.0, lr=0.004, miou="-")
            if done == 3:
                now[0] += 60.0  # a validation
                progress.exclude(60.0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "pace: 2 s per iteration; the remaining 94 iterations take about 3:08, until "
    )


def test_on_a_terminal_the_plain_lines_go_to_the_file_only(tmp_path, capsys) -> None:
    with console_output():
        log = RunLogFile(tmp_path / "train.log", append=False)
        progress = TrainProgress(total=2, start=0, every=1, tty=True)
        progress.update(1, loss=1.0, lr=0.1, miou="-")
        progress.update(2, loss=1.0, lr=0.1, miou="-")
        progress.close()
        log.close()
    assert "iter 2/2 (100%)" not in capsys.readouterr().out  # the bar shows it there
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 2 and " iter 2/2 (100%) loss 1.0000 lr 1.0e-01 mIoU - | " in lines[1]


def test_console_output_is_restored_and_routes_by_level(capsys) -> None:
    show, level = warnings.showwarning, logger.level
    with console_output():
        logger.info("information")
        logger.info("only in the file", extra=FILE_ONLY)
        logger.warning("careful")
    assert warnings.showwarning is show and logger.level == level and logger.propagate
    out, err = capsys.readouterr()
    assert out == "information\n" and err == "warning: careful\n"
    assert not [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]


def test_terminal_detection_and_formats() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert is_terminal(Terminal()) and not is_terminal(io.StringIO())
    assert format_duration(657) == "10:57" and format_duration(3723) == "1:02:03"
    line = progress_line(120, 1500, loss=0.43214, lr=3.9e-3, miou="0.612", rate=2.1)
    assert line == "iter 120/1500 (8%) loss 0.4321 lr 3.9e-03 mIoU 0.612 | 2.1 it/s, eta 10:57"
    assert progress_line(1, 2, loss=1, lr=1, miou="-", rate=None).endswith("mIoU -")
