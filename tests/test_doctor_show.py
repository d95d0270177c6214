"""`segkit doctor --show N`: the run's first training draws after augmentation, each drawn as
image | mask over the image (ignored pixels striped) | legend, checked pixel by pixel against
the batch a real run's first step trained on and a blend computed here."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runkit import train

from segkit.cli import main
from segkit.config import Config
from segkit.datasets import SHAPE_PALETTE, denormalize
from segkit.engine.train import Trainer

GAP = 6  # white columns between the image and the overlay


def _pictures(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A tiny run (one iteration) that keeps the batch its first step trained on, and
    `segkit doctor --show 4 --config RUN/config.yaml`."""
    work = tmp_path_factory.mktemp("show") / "run"
    first: dict[str, torch.Tensor] = {}
    original = Trainer.step

    def step(self, images, masks, it):
        first.setdefault("images", images.clone())
        first.setdefault("masks", masks.clone())
        return original(self, images, masks, it)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "step", step)
        assert train(work, "--iters", "1", "--val-interval", "1") == 0
    folder, printed = work.parent / "shown", io.StringIO()
    argv = ["doctor", "--show", "4", "--show-dir", str(folder), "--config",
            str(work / "config.yaml")]  # fmt: skip
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return {"work": work, "folder": folder, "printed": printed.getvalue(), **first}


def test_show_draws_the_batch_the_run_first_trained_on(run) -> None:
    config = Config.load(run["work"] / "config.yaml")
    pictures = _pictures(run["folder"])
    assert len(pictures) == len(run["images"]) == 4
    factor = 7  # 40 px crops grow to 280 px, the first whole factor reaching 256
    size = 40 * factor
    ignored_pixels = 0
    for picture, image, mask in zip(pictures, run["images"], run["masks"], strict=True):
        rgb = denormalize(image, config.data.mean, config.data.std).permute(1, 2, 0).numpy()
        rgb = rgb.repeat(factor, 0).repeat(factor, 1).astype(np.int64)
        mask = mask.numpy().repeat(factor, 0).repeat(factor, 1)
        assert picture.shape[0] == size
        assert np.array_equal(picture[:, :size], rgb)  # the augmented image itself
        assert (picture[:, size : size + GAP] == 255).all()
        drawn = picture[:, size + GAP : 2 * size + GAP].astype(np.int64)
        background, ignored = mask == 0, mask == 255
        assert np.array_equal(drawn[background], rgb[background])  # left as it is
        classes = ~background & ~ignored
        colours = np.asarray(SHAPE_PALETTE)[mask[classes]]
        blend = np.floor(0.5 * rgb[classes] + 0.5 * colours + 0.5)
        assert np.abs(drawn[classes] - blend).max() <= 1
        stripes = drawn[ignored]  # only black and white, whatever the palette
        assert np.isin(stripes, (0, 255)).all() and (stripes.min(1) == stripes.max(1)).all()
        if ignored.any():
            assert {0, 255} <= set(np.unique(stripes))
        ignored_pixels += int(ignored.sum())
        legend = picture[:, 2 * size + GAP :]
        for c in np.unique(mask[classes]):
            assert (legend == SHAPE_PALETTE[c]).all(axis=2).any(), f"class {c} not in the legend"
    assert ignored_pixels > 0  # scales below 1 pad: the stripes were checked for real
    printed = run["printed"]
    assert "the first 4 training draws of 'shapes' split 'train'" in printed
    assert "(crop 40, seed 0)" in printed
    assert sum("% ignored" in line for line in printed.splitlines()) == 4


def test_show_without_a_recipe_uses_the_built_in_one(tmp_path, capsys) -> None:
    folder = tmp_path / "out"
    assert main(["doctor", "--show", "1", "--show-dir", str(folder)]) == 0
    assert "(crop 64, seed 0)" in capsys.readouterr().out  # configs/shapes.yaml
    (picture,) = _pictures(folder)
    assert picture.shape[0] == 256  # 64 px x 4


def test_show_takes_a_recipe_and_set(tmp_path, capsys) -> None:
    recipe = tmp_path / "small.yaml"
    recipe.write_text("data:\n  dataset: shapes\n  image_size: 40\n  crop_size: 40\n")
    folder = tmp_path / "out"
    argv = ["doctor", "--show", "2", "--show-dir", str(folder), "--config", str(recipe),
            "--set", "data.crop_size=32", "--set", "train.seed=3"]  # fmt: skip
    assert main(argv) == 0
    assert "(crop 32, seed 3)" in capsys.readouterr().out
    pictures = _pictures(folder)
    assert len(pictures) == 2 and all(p.shape[0] == 256 for p in pictures)  # 32 px x 8


def test_show_names_a_sample_it_cannot_draw(tmp_path, capsys) -> None:
    for part in ("images", "masks"):
        (tmp_path / part / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:15, 5:20] = 1
    for name in ("good", "broken"):
        Image.fromarray(mask).save(tmp_path / "masks" / "train" / f"{name}.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
        tmp_path / "images" / "train" / "good.png"
    )
    (tmp_path / "images" / "train" / "broken.png").write_bytes(b"not a png at all")
    folder = tmp_path / "out"
    argv = ["doctor", "--dataset", "folder", "--data-root", str(tmp_path), "--num-classes", "2",
            "--show", "2", "--show-dir", str(folder), "--set", "data.crop_size=16"]  # fmt: skip
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "broken: could not draw it:" in out and "broken.png" in out
    (written,) = folder.iterdir()
    assert written.name.endswith("_good.png") and f"{written}: class_0, class_1;" in out


def test_recipe_flags_without_show_are_refused(capsys) -> None:
    assert main(["doctor", "--dataset", "shapes", "--set", "data.crop_size=32"]) == 2
    assert "--config and --set apply to --show only" in capsys.readouterr().err
