"""Every YAML recipe in configs/ loads, validates, and builds its model."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from segkit.cli import train as train_cli
from segkit.config import Config
from segkit.engine.build import build_model
from segkit.engine.device import resolve_device

# The dataset recipes; configs/shapes.yaml is the built-in one (tests/engine/test_config.py).
RECIPES = sorted(
    path for path in (Path(__file__).parents[2] / "configs").glob("*.yaml") if path.stem != "shapes"
)
NUM_CLASSES = {"voc": 21, "cityscapes": 19, "massroads": 2}


def test_there_are_recipes() -> None:
    names = {p.stem for p in RECIPES}
    assert {
        "voc2012aug_deeplabv3plus_mobilenet_os16_513",
        "voc2012aug_deeplabv3plus_r101_os16_513",
        "cityscapes_deeplabv3plus_mobilenet_os16_768",
        "massroads_deeplabv3plus_r50_os16_twostage",
        "massroads_deeplabv3plus_r50_psa",
        "voc2007_fcn_r50_os8",
        "voc2007_encnet_jpu_r50_se_lateral",
        "voc2007_deeplabv3_jpu_r50_aux",
        "voc2007_fcn_jpu_r50",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_builds(path: Path) -> None:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    config = train_cli.config_from_args(parser.parse_args(["--config", str(path)]))
    assert config.data.dataset in NUM_CLASSES
    assert config.model.pretrained_backbone.startswith("weights/")
    config.model.pretrained_backbone = None  # the test has no weight files and needs none
    resolve_device(config.train.device)
    with torch.device("meta"):
        model = build_model(config, NUM_CLASSES[config.data.dataset])
        out = model.eval()(torch.empty(1, 3, 65, 97))
    assert out["out"].shape == (1, NUM_CLASSES[config.data.dataset], 65, 97)
    assert model.config["name"] == config.model.name


def test_seed_recipes_carry_their_options() -> None:
    encnet = Config.load(Path(RECIPES[0]).parent / "voc2007_encnet_jpu_r50_se_lateral.yaml")
    assert (encnet.model.jpu, encnet.model.lateral, encnet.model.se_loss) == (True, True, True)
    psa = Config.load(Path(RECIPES[0]).parent / "massroads_deeplabv3plus_r50_psa.yaml")
    assert psa.model.attention == "psa" and psa.eval.scales == [0.75, 1.0, 1.25]
    assert psa.train.freeze_backbone_iters > 0
