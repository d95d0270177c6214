"""The recipe chosen from the run's situation and data: values, precedence, crop, budget, banner."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.cli import main
from segkit.cli import train as train_cli
from segkit.config import Config
from segkit.datasets import build_dataset
from segkit.engine.build import build_model, resolve_config
from segkit.engine.data import build_datasets, crop_from_sizes, train_transforms
from segkit.engine.progress import pace_line
from segkit.engine.recipe import (
    CONTINUING,
    PRETRAINED,
    SCRATCH,
    SITUATIONS,
    choose_recipe,
    situation_of,
)
from segkit.models import list_backbones
from segkit.models.layers import SeparableConvBNReLU


def _cli(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return train_cli.config_from_args(parser.parse_args(list(argv)))


def _choices(recipe) -> dict[str, tuple[object, str]]:
    return {c.key: (c.value, c.reason) for c in recipe.choices}


def _voc_like(**values: object) -> Config:
    config = Config()
    config.update({"data.dataset": "voc", "data.root": "unused", **values})
    return config


def test_situation_follows_the_weights_the_run_starts_from() -> None:
    assert situation_of(_voc_like())[0] == SCRATCH
    assert situation_of(_voc_like(**{"model.pretrained_backbone": "r50.pth"}))[0] == PRETRAINED
    both = {"model.pretrained_backbone": "r50.pth", "train.init_from": "run/best.pt"}
    situation, why = situation_of(_voc_like(**both))
    assert situation == CONTINUING and why == "--init-from run/best.pt"


def test_each_situation_gets_its_recipe_scaled_with_the_total_batch() -> None:
    scratch = choose_recipe(_voc_like(**{"train.batch_size": 8, "train.iters": 600}))
    train, chosen = scratch.config.train, _choices(scratch)
    assert (train.optimizer, train.weight_decay, train.backbone_lr_mult) == ("adamw", 0.01, 1.0)
    assert scratch.config.model.aux is True and train.loss == "ce+dice"
    assert train.lr == pytest.approx(0.004 * (8 / 16) ** 0.5, rel=1e-3)  # AdamW: square root
    assert chosen["train.optimizer"] == ("adamw", "from scratch")
    assert chosen["train.lr"][1] == "from scratch: 0.004 at batch 16 x sqrt(8/16)"
    assert train.warmup_iters == 30 and train.val_interval == 60  # 5% of 600; ten validations

    pretrained = choose_recipe(
        _voc_like(**{"model.pretrained_backbone": "r50.pth", "train.batch_size": 4}), world=8
    )  # 32 images per step in all
    train = pretrained.config.train
    assert (train.optimizer, train.backbone_lr_mult, train.warmup_iters) == ("sgd", 0.1, None)
    assert train.lr == pytest.approx(0.01 * 32 / 16)  # SGD: linear
    assert pretrained.config.model.aux is False and train.loss == "ce"

    continuing = choose_recipe(_voc_like(**{"train.init_from": "x.pt", "train.batch_size": 16}))
    train = continuing.config.train
    assert (train.optimizer, train.lr, train.backbone_lr_mult) == ("sgd", 0.001, 1.0)
    assert train.loss == "ce"


def test_from_scratch_the_bottleneck_resnets_get_their_own_adamw_rate() -> None:
    def lr(*values: tuple[str, object], world: int = 1) -> tuple[float, str]:
        recipe = choose_recipe(_voc_like(**dict(values), **{"train.batch_size": 8}), world=world)
        return _choices(recipe)["train.lr"]

    rate, reason = lr(("model.backbone", "resnet50"))
    assert rate == pytest.approx(0.002 * (8 / 16) ** 0.5, rel=1e-2)  # 0.00141 at batch 8 (3 digits)
    assert reason == "from scratch, resnet50: 0.002 at batch 16 x sqrt(8/16)"
    assert lr(("model.backbone", "resnet101s"), world=2) == (
        0.002, "from scratch, resnet101s: 0.002 at batch 16")  # fmt: skip
    assert (
        lr(("model.backbone", "mobilenet_v2"))[1] == "from scratch: 0.004 at batch 16 x sqrt(8/16)"
    )
    assert lr(("model.backbone", "xception65"))[0] == pytest.approx(0.004 * 0.5**0.5, rel=1e-3)
    # the backbone's rate is AdamW's: SGD from scratch, fine-tuning and --lr keep theirs
    assert lr(("model.backbone", "resnet50"), ("train.optimizer", "sgd")) == (
        0.005, "from scratch, sgd: 0.01 at batch 16 x 8/16")  # fmt: skip
    pretrained = lr(("model.backbone", "resnet50"), ("model.pretrained_backbone", "r50.pth"))
    assert pretrained == (0.005, "pretrained backbone: 0.01 at batch 16 x 8/16")
    assert lr(("model.backbone", "resnet50"), ("train.lr", 0.01)) == (0.01, "given")
    # every backbone with its own rate is one segkit builds (a misspelt name would never match)
    for situation in SITUATIONS.values():
        assert set(situation.get("backbone_lr", {})) <= set(list_backbones())


def test_from_scratch_deeplabv3plus_gets_the_lighter_head_and_builds_it() -> None:
    scratch = choose_recipe(_voc_like(**{"train.iters": 60}))
    model, chosen = scratch.config.model, _choices(scratch)
    assert (model.separable, model.decoder_convs) == (True, 1)
    assert chosen["model.separable"] == (True, "from scratch: the lighter head")
    assert chosen["model.decoder_convs"] == (1, "from scratch: the lighter head")
    built = build_model(scratch.config, num_classes=3)
    assert built.config["separable"] is True and built.config["decoder_convs"] == 1
    assert [type(m) for m in built.classifier.decoder] == [SeparableConvBNReLU]
    assert isinstance(built.classifier.aspp.convs[1], SeparableConvBNReLU)  # a dilated branch
    # fine-tuning and continuing keep the model's own head; other models get no head values
    for values in ({"model.pretrained_backbone": "r50.pth"}, {"train.init_from": "x.pt"}):
        other = choose_recipe(_voc_like(**values))
        assert (other.config.model.separable, other.config.model.decoder_convs) == (None, None)
        assert "model.separable" not in _choices(other)
    assert "model.separable" not in _choices(choose_recipe(_voc_like(**{"model.name": "fcn"})))
    # a head option given wins, the other one is still chosen
    given = _choices(choose_recipe(_cli("--dataset", "voc", "--decoder-convs", "2")))
    assert given["model.decoder_convs"] == (2, "given")
    assert given["model.separable"] == (True, "from scratch: the lighter head")


def test_from_scratch_residual_blocks_start_as_the_identity() -> None:
    scratch = choose_recipe(_voc_like(**{"train.iters": 60, "model.backbone": "resnet50"}))
    assert _choices(scratch)["model.zero_init_residual"] == (
        True, "from scratch: blocks start as the identity")  # fmt: skip
    built = build_model(scratch.config, num_classes=3)
    assert all(float(b.bn3.weight.detach().abs().max()) == 0 for b in built.backbone.layer1)
    pretrained = choose_recipe(_voc_like(**{"model.pretrained_backbone": "r50.pth"}))
    assert _choices(pretrained)["model.zero_init_residual"] == (False, "pretrained backbone")
    given = choose_recipe(
        _cli("--dataset", "voc", "--backbone", "resnet50", "--no-zero-init-residual")
    )
    assert _choices(given)["model.zero_init_residual"] == (False, "given")
    built = build_model(given.config, num_classes=3)
    assert all(float(b.bn3.weight.detach().min()) == 1 for b in built.backbone.layer1)


def test_values_the_user_gives_win_and_are_said_to_be_given() -> None:
    config = _cli(
        "--dataset", "voc", "--data-root", "x", "--optimizer", "sgd", "--lr", "0.05",
        "--no-aux", "--iters", "100", "--val-interval", "7", "--warmup-iters", "0",
        "--loss", "focal",
    )  # fmt: skip
    recipe = choose_recipe(config)
    train, chosen = recipe.config.train, _choices(recipe)
    assert (train.optimizer, train.lr, train.val_interval, train.warmup_iters) == (
        "sgd", 0.05, 7, 0)  # fmt: skip
    assert recipe.config.model.aux is False and train.loss == "focal"
    given = ("train.optimizer", "train.lr", "model.aux", "train.loss", "train.val_interval")
    for key in (*given, "train.iters"):
        assert chosen[key][1] == "given", key
    assert chosen["train.weight_decay"] == (0.01, "from scratch")  # the rest is still chosen
    sgd = _choices(choose_recipe(_cli("--dataset", "voc", "--optimizer", "sgd")))
    assert sgd["train.lr"] == (0.01, "from scratch, sgd: 0.01 at batch 16")  # SGD's own rate
    assert config.train.optimizer == "sgd" and config.train.weight_decay is None  # input kept
    # a shipped recipe file sets its values: nothing of it is replaced
    shipped = choose_recipe(_cli("--config", "voc2012aug_deeplabv3plus_mobilenet_os16_513"))
    assert all(
        reason == "given" for key, (_, reason) in _choices(shipped).items()
        if key not in ("train.backbone_lr_mult", "model.zero_init_residual")
    )  # fmt: skip


def test_the_banner_block_names_situation_values_and_reasons() -> None:
    recipe = choose_recipe(_voc_like(**{"train.iters": 600, "train.batch_size": 8}))
    head, *rows = recipe.lines()
    assert head == "recipe from scratch (no --pretrained-backbone, no --init-from):"
    assert any(r.split() == ["optimizer", "adamw", "(from", "scratch)"] for r in rows)
    assert any(r.split()[:4] == ["validation", "every", "60", "iterations"] for r in rows)
    assert any(r.split()[:3] == ["budget", "600", "iterations"] and "(given)" in r for r in rows)
    assert any(r.split()[:4] == ["separable", "3x3", "on", "(from"] for r in rows)
    assert any(r.split()[:3] == ["decoder", "convs", "1"] for r in rows)


def test_iters_and_epochs_on_the_command_line_beat_the_recipe(tmp_path) -> None:
    by_epochs = tmp_path / "epochs.yaml"
    by_epochs.write_text("data:\n  dataset: shapes\ntrain:\n  epochs: 30\n  iters: 5000\n")
    assert _cli("--config", str(by_epochs)).train.epochs == 30  # the recipe alone: epochs win
    flagged = _cli("--config", str(by_epochs), "--iters", "50")
    assert (flagged.train.iters, flagged.train.epochs) == (50, None)
    assert resolve_config(flagged, work_dir=Path("w"), train_size=64, class_weights=None) \
        .train.iters == 50  # fmt: skip
    by_iters = tmp_path / "iters.yaml"
    by_iters.write_text("data:\n  dataset: shapes\ntrain:\n  iters: 5000\n")
    flagged = _cli("--config", str(by_iters), "--epochs", "3", "--batch-size", "4")
    resolved = resolve_config(flagged, work_dir=Path("w"), train_size=64, class_weights=None)
    assert (resolved.train.iters, resolved.train.val_interval) == (3 * 16, 5)
    with pytest.raises(ValueError, match="--iters 10 and --epochs 3 both set the length"):
        _cli("--config", str(by_iters), "--iters", "10", "--epochs", "3")
    with pytest.raises(ValueError, match="both set the length"):
        _cli("--iters", "10", "--set", "train.epochs=3")


@pytest.mark.parametrize(
    ("size", "batch", "iters"),
    [(400, 8, 200 * 50), (19, 4, 1000), (100_000, 16, 30000)],
)
def test_default_budget_is_epochs_within_bounds(size: int, batch: int, iters: int) -> None:
    resolved = resolve_config(
        _voc_like(**{"train.batch_size": batch}), work_dir=Path("w"), train_size=size,
        class_weights=None,
    )  # fmt: skip
    assert resolved.train.iters == iters
    assert resolved.train.val_interval == round(iters / 10)


def test_validation_interval_never_skips_validation_before_the_end() -> None:
    tiny = resolve_config(
        _voc_like(**{"train.iters": 4}), work_dir=Path("w"), train_size=8, class_weights=None
    )
    assert tiny.train.val_interval == 1


@pytest.mark.parametrize(
    ("sizes", "crop"),
    [
        ([(96, 80)] * 5, 80),  # small images: their short side, not 513
        ([(500, 375), (500, 333), (375, 500)], 368),  # Pascal VOC-like: 375 -> 368
        ([(2048, 1024)] * 3, 512),  # at most 512
        ([(30, 20), (40, 25), (24, 30)], 24),  # exact below 32
        ([(160, 120), (280, 220), (200, 170)], 168),  # the median: 170 -> 168
    ],
)
def test_crop_follows_the_image_sizes(sizes: list[tuple[int, int]], crop: int) -> None:
    assert crop_from_sizes(sizes)[0] == crop


def _folder_set(root: Path, size: tuple[int, int], count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            mask = rng.integers(0, 2, (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


def test_unset_crop_is_read_from_the_training_images(tmp_path) -> None:
    root = _folder_set(tmp_path / "data", (96, 80))
    config = Config()
    config.update({"data.dataset": "folder", "data.root": str(root), "data.num_classes": 2})
    train_set, _ = build_datasets(config)
    image, mask = train_set[0]
    assert image.shape == (3, 80, 80) and mask.shape == (80, 80)  # not 513 of padding
    raw = build_dataset("folder", root=root, num_classes=2)
    recipe = choose_recipe(config, raw)
    assert recipe.config.data.crop_size == 80
    reason = _choices(recipe)["data.crop_size"][1]
    assert reason == "training images 96-96 x 80-80 px, median short side 80"
    assert config.data.crop_size is None  # the input is left as it is
    (root / "images" / "train" / "0.png").write_bytes(b"not an image")  # pre-flight names it
    assert choose_recipe(config, build_dataset("folder", root=root, num_classes=2)) \
        .config.data.crop_size == 80  # fmt: skip


def test_pace_line_estimates_the_rest_of_the_run() -> None:
    line = pace_line(6.0, 5, 590)
    assert line.startswith(
        "pace: 1.2 s per iteration; the remaining 590 iterations take about 11:48"
    )
    assert line.endswith("(validations not included)")


def test_a_run_prints_its_recipe_and_pace_and_validates_about_ten_times(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  dataset: shapes\n  length: 8\n  val_length: 2\n  image_size: 36\n"
        "  workers: 0\ntrain:\n  batch_size: 4\n  iters: 10\n"
    )
    assert main(["train", "--config", str(recipe), "--work-dir", str(tmp_path / "run")]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "recipe from scratch (no --pretrained-backbone, no --init-from):" in log
    assert "(from scratch: 0.004 at batch 16 x sqrt(4/16))" in log
    assert re.search(r"  loss +ce\+dice +\(from scratch\)$", log, re.MULTILINE)
    assert re.search(r"  crop +32 px +\(training images 36-36 x 36-36 px", log)
    assert "pace: " in log and "the remaining 4 iterations take about" in log
    validations = [line for line in log.splitlines() if "validation at iteration" in line]
    validations = [line for line in validations if ": mIoU" in line]  # not the results title
    assert len(validations) == 10  # every iteration of 10
    saved = Config.load(tmp_path / "run" / "config.yaml")
    assert (saved.train.optimizer, saved.data.crop_size, saved.train.val_interval) == (
        "adamw", 32, 1)  # fmt: skip


def test_colour_jitter_is_off_unless_a_recipe_or_flag_asks_for_it() -> None:
    """Off by default, as in the popular recipes (real_photos.py measured it no better from
    scratch); the shapes recipe keeps the jitter it was measured with; a flag turns it on."""
    plain = _voc_like(**{"data.crop_size": 32})
    assert plain.data.color_jitter is None
    assert "ColorJitter" not in repr(train_transforms(plain))
    shapes = Config.load("shapes")
    assert "ColorJitter" in repr(train_transforms(shapes))
    flagged = _cli("--dataset", "voc", "--crop-size", "32", "--color-jitter", "0.2,0.2,0.2,0")
    assert "ColorJitter(brightness=(0.8, 1.2)" in repr(train_transforms(flagged))
