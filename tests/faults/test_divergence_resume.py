"""After a divergence the kept checkpoint is finite; a resume may change the LR, not the model."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch
from runkit import read_jsonl, train

from segkit.checkpoint import load_checkpoint
from segkit.cli import train as train_cli
from segkit.config import Config
from segkit.engine.optim import lr_factor
from segkit.engine.train import Trainer


def _poison_batchnorm_at(monkeypatch, iteration: int) -> None:
    """BatchNorm running statistics become infinite during step ``iteration`` while the loss
    stays finite (train-mode BN normalises with the batch's own statistics)."""
    original = Trainer.step

    def step(self, images, masks, it):
        result = original(self, images, masks, it)
        if it == iteration:
            for module in self.model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_var.fill_(float("inf"))
                    break
        return result

    monkeypatch.setattr(Trainer, "step", step)


def test_a_poisoned_state_is_never_saved(tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "run"
    _poison_batchnorm_at(monkeypatch, 2)  # after the save at 2, before the one at 4
    assert train(work, "--iters", "6", "--val-interval", "2") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NaN or infinite values at iteration 4" in err
    assert "running_var" in err
    assert f"--resume --work-dir {work} --lr 0.002" in err  # the recipe's 0.004, halved
    last = load_checkpoint(work / "checkpoints" / "last.pt")
    assert last["iteration"] == 2
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2]


def _resolve(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return train_cli.config_from_args(parser.parse_args(list(argv)))


def test_resume_uses_a_new_learning_rate(tmp_path) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "8", "--val-interval", "2", "--stop-after", "4") == 0
    saved = load_checkpoint(work / "checkpoints" / "last.pt")
    old_lrs = [g["lr"] for g in saved["optimizer"]["param_groups"]]

    # Unchanged: exactly the saved learning rates.
    same = Trainer(_resolve("--resume", "--work-dir", str(work)))
    assert [g["lr"] for g in same.optimizer.param_groups] == old_lrs
    same.close()

    config = _resolve("--resume", "--work-dir", str(work), "--lr", "0.001")
    trainer = Trainer(config)
    factor = lr_factor(4, train=config.train, total=8)
    assert trainer.optimizer.param_groups[-1]["lr"] == pytest.approx(0.001 * factor)
    assert trainer.optimizer.param_groups[-1]["lr"] != pytest.approx(old_lrs[-1])
    record = trainer.run()
    assert record["iter"] == 8
    final = load_checkpoint(work / "checkpoints" / "last.pt")
    assert final["config"]["train"]["lr"] == 0.001
    assert "lr: 0.001" in (work / "config.yaml").read_text()
    # The schedule ends where the new LR's poly curve ends.
    expected = 0.001 * lr_factor(8, train=config.train, total=8)
    assert final["optimizer"]["param_groups"][-1]["lr"] == pytest.approx(expected, abs=1e-12)


def test_resume_refuses_a_changed_model_option(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "4", "--val-interval", "2", "--stop-after", "2") == 0
    capsys.readouterr()
    before = (work / "checkpoints" / "last.pt").read_bytes()
    assert train(work, "--resume", "--set", "model.aspp_channels=64", "--batch-size", "2") == 2
    line = capsys.readouterr().err.strip()
    assert "--resume cannot change model.aspp_channels (run: 128, now: 64)" in line
    assert "train.batch_size (run: 4, now: 2)" in line
    assert "--init-from" in line and "train.lr" in line  # the way out and what may change
    assert (work / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_from_weights_only_names_init_from(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "4", "--val-interval", "2", "--stop-after", "2") == 0
    checkpoints = work / "checkpoints"
    shutil.copy(checkpoints / "best.pt", checkpoints / "last.pt")
    capsys.readouterr()
    assert train(work, "--resume") == 2
    line = capsys.readouterr().err.strip()
    assert "holds weights only" in line and f"--init-from {checkpoints / 'last.pt'}" in line

    (checkpoints / "last.pt").unlink()
    assert train(work, "--resume") == 2
    line = capsys.readouterr().err.strip()
    assert "best.pt, which holds weights only" in line and "--init-from" in line


def test_resume_with_a_malformed_or_missing_run_config(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert train(work, "--iters", "4", "--val-interval", "2", "--stop-after", "2") == 0
    (work / "config.yaml").write_text("model:\n  name: [unclosed\ntrain:\n  lr: 0.1\n")
    capsys.readouterr()
    assert train(work, "--resume") == 2
    line = capsys.readouterr().err.strip()
    assert str(work / "config.yaml") in line and "not valid YAML (line 3" in line
    assert "delete" in line
    # Without config.yaml, the configuration stored in last.pt is used.
    (work / "config.yaml").unlink()
    assert train(work, "--resume") == 0
    assert load_checkpoint(work / "checkpoints" / "last.pt")["iteration"] == 4
