"""Signals to the process or its whole group save last.pt and exit 128 + signal."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from runkit import read_jsonl, segkit_process, train

from segkit.checkpoint import load_checkpoint
from segkit.datasets.shapes import ShapesDataset
from segkit.engine.train import Trainer


def _wait_for(path: Path, process, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"segkit exited early ({process.returncode}): {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} never appeared")
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["TERM-group", "INT-group"],
)
def test_a_signal_saves_last_and_exits_128_plus_signal(tmp_path, signum, to_group) -> None:
    work = tmp_path / "run"
    # DataLoader workers (2) are in the group too: a group signal reaches them first.
    process = segkit_process(
        "train", "--model", "deeplabv3plus", "--backbone", "mobilenet_v2",
        "--set", "data.length=64", "--set", "data.val_length=4", "--set", "data.image_size=32",
        "--crop-size", "32", "--batch-size", "4", "--workers", "2", "--iters", "100000",
        "--val-interval", "2", "--work-dir", str(work),
    )  # fmt: skip
    _wait_for(work / "metrics.jsonl", process)  # training and validation are under way
    if to_group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "killed by signal" not in err
    assert "continue with --resume" in out + err
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    assert state["iteration"] >= 2 and "optimizer" in state


def test_sighup_saves_last_and_exits_129(tmp_path, monkeypatch) -> None:
    original = Trainer.step

    def step_then_hang_up(self, images, masks, it):
        result = original(self, images, masks, it)
        if it == 1:
            os.kill(os.getpid(), signal.SIGHUP)  # a closed terminal, systemd's reload
        return result

    monkeypatch.setattr(Trainer, "step", step_then_hang_up)
    assert train(tmp_path / "run", "--iters", "10", "--val-interval", "5") == 128 + signal.SIGHUP
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 2


def test_a_signal_during_validation_saves_and_the_resume_validates_first(
    tmp_path, monkeypatch
) -> None:
    work = tmp_path / "run"
    original = ShapesDataset.__getitem__
    sent = []

    def getitem(self, index):
        if self.split == "val" and index == 1 and not sent:  # mid-way through validation
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, index)

    monkeypatch.setattr(ShapesDataset, "__getitem__", getitem)
    assert train(work, "--iters", "4", "--val-interval", "2") == 128 + signal.SIGTERM
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["pending_validation"] is True
    assert not (work / "metrics.jsonl").exists()  # validation 2 never finished

    assert train(work, "--resume") == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2, 4]


def test_a_second_signal_stops_at_once_without_saving(tmp_path, monkeypatch) -> None:
    original = Trainer.step
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background by sh

    def step(self, images, masks, it):
        if it == 0:
            os.kill(os.getpid(), signal.SIGINT)  # the first asks for a save at the step's end
        result = original(self, images, masks, it)
        if it == 0:
            os.kill(os.getpid(), signal.SIGINT)  # the second, before that: stop now
        return result

    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(SystemExit) as stopped:
        train(tmp_path / "run", "--iters", "4", "--val-interval", "2")
    assert stopped.value.code == 128 + signal.SIGINT
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    # The handlers are back as they were, and the folder is free again.
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.undo()
    assert train(tmp_path / "run", "--iters", "1", "--val-interval", "1", "--overwrite") == 0


def test_a_validation_that_fails_keeps_the_training_and_the_resume_validates_first(
    tmp_path, monkeypatch, capsys
) -> None:
    import segkit.engine.train as train_module

    work = tmp_path / "run"
    original = train_module.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(True)
        if len(calls) == 1:
            raise RuntimeError("planted: validation failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    with pytest.raises(RuntimeError, match="planted"):
        train(work, "--iters", "4", "--val-interval", "2")
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["pending_validation"] is True
    assert "validation failed: " in (work / "train.log").read_text()

    assert train(work, "--resume") == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2, 4]
