"""Bad settings are one line naming the key and the limit (exit 2), before any work."""

from __future__ import annotations

import pytest
from runkit import train


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--iters", "0"], "train.iters=0: must be >= 1"),
        (["--iters", "-5"], "train.iters=-5: must be >= 1"),
        (["--epochs", "0"], "train.epochs=0: must be >= 1"),
        (["--val-interval", "0"], "train.val_interval=0: must be >= 1"),
        (["--set", "train.log_interval=0"], "train.log_interval=0: must be >= 1"),
        (["--ignore-index", "300"], "train.ignore_index=300: must be <= 255"),
        (["--set", "data.mean=[0.5]"], "data.mean=[0.5]: needs 3 values, got 1"),
        (["--set", "data.std=[0.2,0,0.2]"], "every value must be > 0"),
        (["--lr", "0"], "train.lr=0.0: must be > 0"),
        (["--batch-size", "0"], "train.batch_size=0: must be >= 1"),
        (["--workers", "-1"], "data.workers=-1: must be >= 0"),
        (["--set", "eval.scales=[1.0,0]"], "every value must be > 0"),
    ],
)
def test_out_of_range_settings(tmp_path, one_error_line, argv, message) -> None:
    work = tmp_path / "run"
    assert train(work, *argv) == 2
    line = one_error_line()
    assert line.startswith("segkit train: error: ") and message in line
    assert not (work / "config.yaml").exists()


def test_a_malformed_recipe_names_the_file_and_line(tmp_path, one_error_line) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  lr: 0.01\n   iters: 5\n")
    assert train(tmp_path / "run", "--config", str(recipe)) == 2
    line = one_error_line()
    assert f"{recipe} is not valid YAML (line 3" in line


def test_a_recipe_value_out_of_range_names_the_file(tmp_path, one_error_line) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  iters: 0\n")
    assert train(tmp_path / "run", "--config", str(recipe)) == 2
    assert f"{recipe}: train.iters=0: must be >= 1" in one_error_line()


def test_batch_size_one_trains_deeplab(tmp_path) -> None:
    # The ASPP image-pooling BatchNorm sees one value per channel at batch 1.
    assert train(tmp_path / "run", "--batch-size", "1", "--iters", "2", "--val-interval", "2") == 0
