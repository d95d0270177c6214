"""Bad label files stop a run before its first iteration; one that breaks later costs nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runkit import read_jsonl

from segkit.checkpoint import load_checkpoint
from segkit.cli import main
from segkit.engine import build as train_module


def _folder(root: Path, *, count: int = 6, foreground: int = 1) -> Path:
    """``images/{train,val}`` and ``masks/{train,val}``: 40x40 pictures, two-class masks."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            rng = np.random.default_rng(i)
            mask = np.zeros((40, 40), np.uint8)
            mask[10 + i : 30, 5 : 25 + i] = foreground
            image = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8) + 120 * (mask > 0)[..., None]
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


def _train(root: Path, work: Path, *extra: str) -> int:
    return main(["train", "--dataset", "folder", "--data-root", str(root), "--num-classes", "2",
                 "--crop-size", "32", "--batch-size", "2", "--iters", "4", "--val-interval", "2",
                 "--workers", "0", "--work-dir", str(work), *extra])  # fmt: skip


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "worker" not in err.lower()
    return err[err.index("segkit train: error: ") :]


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_bad_mask_fails_before_the_first_iteration(tmp_path, capsys, split) -> None:
    root = _folder(tmp_path / "data")
    bad = root / "masks" / split / "3.png"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(bad)
    work = tmp_path / "run"
    assert _train(root, work) == 2
    error = _error(capsys)
    assert f"mask '{bad}' has values [7]" in error
    assert "--skip-bad-samples" in error and "segkit doctor --dataset folder" in error
    assert not (work / "checkpoints").exists()  # it stopped before training


def test_skip_bad_samples_leaves_them_out_and_lists_them(tmp_path, capsys) -> None:
    root = _folder(tmp_path / "data")
    bad = root / "masks" / "train" / "2.png"
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(bad)  # size mismatch
    work = tmp_path / "run"
    assert _train(root, work, "--skip-bad-samples") == 0
    out = capsys.readouterr().out
    assert "train: pre-flight: 6 samples checked, 1 bad skipped" in out
    assert f"skipping 1 bad sample(s), listed in {work / 'bad_samples.txt'}" in out
    listed = (work / "bad_samples.txt").read_text()
    assert listed.startswith("size-mismatch:") and str(bad) in listed


def test_binary_0_255_masks_need_the_flag(tmp_path, capsys) -> None:
    root = _folder(tmp_path / "data", foreground=255)
    assert _train(root, tmp_path / "refused") == 2
    error = _error(capsys)
    assert "--binary-255" in error and "--set" not in error
    assert _train(root, tmp_path / "run", "--binary-255") == 0
    # Foreground is learnt, not ignored: the per-class IoU has a real value for it.
    record = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert record["per_class_iou"]["class_1"] is not None


def _break_after_preflight(monkeypatch, path: Path) -> None:
    """``path`` passes the pre-flight check, then its pixel data breaks (header intact)."""
    original = train_module.preflight

    def preflight_then_break(dataset, **kwargs):
        report = original(dataset, **kwargs)
        if dataset.split == path.parent.name:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        return report

    monkeypatch.setattr(train_module, "preflight", preflight_then_break)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_file_that_breaks_later_saves_last_and_is_named(
    tmp_path, capsys, monkeypatch, split
) -> None:
    root = _folder(tmp_path / "data", count=4)
    image = root / "images" / split / "1.png"
    good = image.read_bytes()
    _break_after_preflight(monkeypatch, image)
    work = tmp_path / "run"
    assert _train(root, work) == 2
    error = _error(capsys)
    assert error.count("\n") == 1, error  # one line
    assert f"cannot decode image '{image}'" in error and "--resume" in error
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    if split == "train":  # drawn in the first epoch: saved where it stopped
        assert state["iteration"] < 4 and state["pending_validation"] is False
    else:  # at the first validation: saved, and the resume validates first
        assert state["iteration"] == 2 and state["pending_validation"] is True
    monkeypatch.undo()
    image.write_bytes(good)
    assert main(["train", "--resume", "--work-dir", str(work)]) == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [2, 4]
