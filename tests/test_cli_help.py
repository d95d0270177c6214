"""The command line explains itself, and every option has one source.

Every flag of every command names its default; ``segkit`` alone lists the commands; each head
and dataset option declared by its component is reachable from YAML, ``--set`` and a flag.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
import yaml

import segkit
from segkit.cli import HelpFormatter, build_parser, main, one_line, one_line_warnings
from segkit.cli import train as train_cli
from segkit.cli.common import config_flags
from segkit.config import Config, DataConfig, ModelConfig
from segkit.datasets import DATASETS, dataset_options
from segkit.models import MODELS, head_options
from segkit.models.heads.encnet import Encoding
from segkit.options import component_options


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", list(_commands()))
def test_every_option_names_its_default(command: str) -> None:
    parser = _commands()[command]
    formatter = parser._get_formatter()
    silent = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.dest == "help" or action.required:
            continue
        text = formatter._expand_help(action) if action.help else ""
        if not action.help or ("default" not in text and "(none:" not in text):
            silent.append(action.option_strings[0])
    assert not silent, f"segkit {command}: options whose help names no default: {silent}"


def test_train_help_says_what_each_flag_does_and_lists_the_choices(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "sets train." not in text  # the old help said only which key a flag set
    assert "--lr X" in text and "peak learning rate" in text and "shapes recipe: 0.004" in text
    assert "--num-codes N" in text and "encnet: codewords" in text and "(default: 32)" in text
    for name in ("deeplabv3plus", "resnet101", "timm:<any timm model>", "ce+dice", "cosine"):
        assert name in text


def test_formatter_appends_a_default_the_help_does_not_name() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--width", type=int, default=3, help="how wide")
    parser.add_argument("--fast", action="store_true", help="go fast")
    parser.add_argument("--out", help="where to (none: the current folder)")
    text = parser.format_help()
    assert "how wide (default: 3)" in text.replace("\n", " ").replace("  ", " ")
    assert "go fast (default: off)" in text
    assert "(none: the current folder)" in text and "(default: none)" not in text


def test_segkit_alone_lists_the_commands_and_version(capsys) -> None:
    assert main([]) == 0
    text = capsys.readouterr().out
    for command in ("train", "eval", "predict", "export", "bench", "models", "doctor"):
        assert f"    {command}" in text
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and segkit.__version__ in capsys.readouterr().out


def test_flags_are_unique_and_one_per_config_field() -> None:
    flags = config_flags()
    names = [flag.flag for flag in flags]
    assert len(names) == len(set(names))
    keys = {flag.key for flag in flags}
    for section in ("model", "data", "train", "eval"):
        for item in dataclasses.fields(getattr(Config(), section)):
            assert f"{section}.{item.name}" in keys
    assert {"--data-seed", "--seed", "--eval-batch-size", "--batch-size"} <= set(names)


def test_every_component_option_is_in_the_config() -> None:
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for name in MODELS:
        assert set(head_options(name)) <= model_fields, name
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    for name in DATASETS:
        assert set(dataset_options(name)) <= data_fields, name


def _resolve(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return train_cli.config_from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "key", "value"),
    [
        (["--num-codes", "16"], "num_codes", 16),
        (["--set", "model.channels=64"], "channels", 64),
        (["--dropout", "0.3"], "dropout", 0.3),
        (["--low-level-channels", "24"], "low_level_channels", 24),
        (["--set", "model.aspp_dropout=0.2"], "aspp_dropout", 0.2),
    ],
)
def test_head_options_that_had_drifted_are_reachable(argv, key, value, tmp_path) -> None:
    config = _resolve("--dataset", "shapes", *argv)
    assert getattr(config.model, key) == value
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {key: value}}))
    assert getattr(Config.load(recipe).model, key) == value


def test_head_options_reach_the_built_model() -> None:
    from segkit.engine.build import build_model

    config = _resolve("--model", "encnet", "--backbone", "resnet50", "--num-codes", "16",
                      "--channels", "64", "--dropout", "0.3")  # fmt: skip
    with torch.device("meta"):
        model = build_model(config, 3)
    assert model.config["num_codes"] == 16 and model.config["channels"] == 64
    (encoding,) = [m for m in model.modules() if isinstance(m, Encoding)]
    assert encoding.codewords.shape[0] == 16
    dropouts = [m.p for m in model.classifier.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert dropouts == [0.3]


def test_a_new_component_option_is_read_from_its_signature() -> None:
    def head(backbone: object, num_classes: int, *, widen: int = 3) -> None:
        """A head.

        Args:
            widen: how much wider the head is
                than the backbone.
        """

    (option,) = component_options(head, "toy").values()
    assert option.name == "widen" and option.hint == int | None
    assert option.describe() == "toy: how much wider the head is than the backbone (default: 3)"

    def undocumented(backbone: object, num_classes: int, *, widen: int = 3) -> None:
        """No Args section."""

    with pytest.raises(TypeError, match="widen"):
        component_options(undocumented, "toy")


def test_switching_the_recipes_model_leaves_out_its_head_options(capsys) -> None:
    config = _resolve("--model", "fcn")  # the shapes recipe sets DeepLabV3+ head widths
    assert config.model.aspp_channels is None and config.model.decoder_channels is None
    note = "aspp_channels, separable, decoder_channels, decoder_convs (for deeplabv3plus) do "
    assert note + "not apply to fcn" in capsys.readouterr().err
    kept = _resolve("--model", "fcn", "--aspp-channels", "64")  # given: kept, and refused later
    assert kept.model.aspp_channels == 64


def test_print_config_prints_the_resolved_configuration(capsys) -> None:
    assert main(["train", "--print-config", "--lr", "0.05", "--mode", "slide"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = Config.from_dict(printed)
    assert config.train.lr == 0.05 and config.data.dataset == "shapes"
    assert config.eval.window == config.data.crop_size  # slide's default window
    assert config.train.backbone_lr_mult == 1.0  # no pretrained weights: full rate


def test_a_system_error_is_its_file_and_reason_whether_the_name_is_str_or_bytes() -> None:
    for name in ("runs/a/x.tfevents", b"runs/a/x.tfevents"):  # TensorBoard's writer: bytes
        err = FileNotFoundError(2, "No such file or directory", name)
        assert one_line(err) == "runs/a/x.tfevents: no such file or directory"


def test_warnings_are_one_line_without_source_location(capsys) -> None:
    import warnings

    before = warnings.showwarning
    with one_line_warnings("eval"):
        warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "segkit eval: warning: first line second line\n"
    assert warnings.showwarning is before
