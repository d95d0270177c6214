"""Flags and helpers shared by several commands.

Config flags: ``segkit train`` (and ``segkit doctor``, for the dataset options) generate one flag
per configuration field from the field's declaration (:func:`segkit.config.option`, and the
head and dataset options of :mod:`segkit.options`), so a flag's name, help, default and choices
are written once. Inference flags: ``segkit eval`` and ``segkit predict`` share them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segkit.config import Config, with_eval_defaults
from segkit.convert import open_model as open_model_file
from segkit.deploy.optimize import PRECISIONS, optimize_for_inference
from segkit.options import show_value
from segkit.values import choices_of, type_options
from segkit.weights import weights_fingerprint

# Config sections in the order their flags are listed.
SECTIONS = ("model", "data", "train", "eval")


@dataclass(frozen=True)
class Flag:
    """A command-line flag generated from a config field."""

    flag: str
    key: str  # "train.lr", or "work_dir"
    field: dataclasses.Field
    hint: Any


@functools.cache
def config_flags() -> tuple[Flag, ...]:
    """One flag per config field: the field's declared ``flag`` or ``--field-name``; a head or
    dataset option whose name another section already uses is prefixed (``--data-seed``).
    The fields are fixed at import, so the flags are made once."""
    section_types = typing.get_type_hints(Config)
    sections = [("", Config, None)] + [(name, section_types[name], name) for name in SECTIONS]
    declared, derived = [], []
    for prefix, cls, section in sections:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if "help" not in item.metadata:
                continue  # a section, not an option
            key = f"{section}.{item.name}" if section else item.name
            entry = (key, item, hints[item.name], prefix)
            (derived if item.metadata.get("component") else declared).append(entry)
    flags: list[Flag] = []
    used: set[str] = set()
    for key, item, hint, prefix in declared + derived:
        flag = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
        if flag in used:
            flag = f"--{prefix}-{item.name.replace('_', '-')}"
        used.add(flag)
        flags.append(Flag(flag, key, item, hint))
    return tuple(flags)


def add_config_flag(
    group: argparse._ActionsContainer,
    flag: Flag,
    recipe: dict[str, Any] | None = None,
    *,
    default: str | None = None,
) -> None:
    """Add ``flag`` to ``group``: default ``None`` (not given, so it never hides a recipe's
    value), help text with the field's default and, if other, the ``recipe``'s value; or with
    ``default`` as the text of the default (``"the run's"``)."""
    shown = _ABSENT if recipe is None else _recipe_value(recipe, flag.key)
    help_text = _help(flag, shown)
    if default is not None:
        help_text = f"{flag.field.metadata['help']} (default: {default})"
    if _is_bool(flag.hint):
        group.add_argument(
            flag.flag,
            dest=flag.key,
            default=None,
            action=argparse.BooleanOptionalAction,
            help=help_text,
        )
    else:
        group.add_argument(
            flag.flag, dest=flag.key, default=None, metavar=_metavar(flag), help=help_text
        )


def given_values(args: argparse.Namespace, flags: list[Flag]) -> dict[str, Any]:
    """``{config key: value}`` of the flags that were given."""
    values = {flag.key: getattr(args, flag.key, None) for flag in flags}
    return {key: value for key, value in values.items() if value is not None}


def _help(flag: Flag, recipe_value: Any) -> str:
    """The field's help with its default, and the built-in shapes recipe's value if other."""
    item = flag.field
    text = item.metadata["help"]
    if item.metadata.get("component"):
        default = None  # the text names each model's or dataset's own default
    elif item.default_factory is not dataclasses.MISSING:
        default = item.default_factory()
    else:
        default = item.default
    if not item.metadata.get("component") and not (default is None and "(none:" in text):
        text = f"{text} (default: {show_value(default)})"
    if recipe_value is not _ABSENT and recipe_value != default:
        text = f"{text.rstrip('.')}; shapes recipe: {show_value(recipe_value)}"
    return text.replace("%", "%%")


_ABSENT = object()


def _recipe_value(recipe: dict[str, Any], key: str) -> Any:
    section, _, name = key.rpartition(".")
    values = recipe.get(section, {}) if section else recipe
    return values.get(name, _ABSENT)


def _is_bool(hint: Any) -> bool:
    args = type_options(hint)
    return bool in args and all(a in (bool, type(None)) for a in args)


def _metavar(flag: Flag) -> str:
    choices = choices_of(flag.field.metadata)
    if choices:
        return "{" + ",".join(choices) + "}"
    args = type_options(flag.hint)
    if any(typing.get_origin(a) is list for a in args):
        return "A,B,..."
    for kind, name in ((int, "N"), (float, "X")):
        if kind in args:
            return name
    return "PATH" if flag.key in _PATH_KEYS else "TEXT"


_PATH_KEYS = (
    "work_dir",
    "data.root",
    "data.palette_file",
    "model.pretrained_backbone",
    "train.init_from",
)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, the inference protocol (the ``eval`` config flags: ``--mode``,
    ``--window``, ``--stride``, ``--scales``, ``--flip``) and the runtime, shared by ``segkit
    eval`` and ``segkit predict``."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help=CHECKPOINT_HELP,
    )
    group = parser.add_argument_group("inference protocol (default: the run's validation protocol)")
    for flag in inference_flags():
        add_config_flag(group, flag, default="the run's")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when available",
    )
    runtime.add_argument(
        "--runtime",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: run the --onnx file exported from this checkpoint instead",
    )
    runtime.add_argument(
        "--onnx", type=Path, metavar="FILE", help="exported ONNX file (with --runtime onnxruntime)"
    )
    runtime.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="torch runtime: bf16 is much faster on CPUs with AMX/AVX512-BF16, at some accuracy",
    )
    runtime.add_argument(
        "--compile",
        action="store_true",
        help="torch runtime: torch.compile the model (slow first call; faster after)",
    )


def inference_flags() -> list[Flag]:
    """The ``eval`` section's flags but the validation batch size."""
    return [f for f in config_flags() if f.key.startswith("eval.") and f.key != "eval.batch_size"]


def config_flag(key: str) -> Flag:
    """The flag of config key ``key`` (``"data.root"`` -> ``--data-root``)."""
    return next(flag for flag in config_flags() if flag.key == key)


def inference_config(
    args: argparse.Namespace, checkpoint: dict[str, Any], flags: list[Flag] | None = None
) -> Config:
    """The checkpoint's run configuration with the given inference flags (and ``flags``)
    applied, and the sliding window defaulted to the training crop size."""
    config = Config.from_dict(checkpoint.get("config", {}))
    config.update(given_values(args, inference_flags() + (flags or [])))
    return with_eval_defaults(config)


CHECKPOINT_HELP = (
    "a segkit checkpoint (RUN/checkpoints/best.pt), or another project's that segkit convert "
    "knows (converted in memory)"
)


def open_model(
    args: argparse.Namespace, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], torch.nn.Module]:
    """``--checkpoint``'s entries and its model (eval mode, on ``device``). Another project's
    checkpoint (:mod:`segkit.convert`) is converted in memory, with one note line saying so."""
    return open_model_file(
        args.checkpoint,
        device=device,
        note=lambda line: print(f"segkit {args.command}: note: {line}", file=sys.stderr),
    )


def runtime_model(args: argparse.Namespace, model: torch.nn.Module) -> Any:
    """The checkpoint's model on the inference fast path, or the exported ONNX file run by ONNX
    Runtime (refused when it was exported from another checkpoint: :func:`check_onnx_origin`)."""
    if args.runtime == "torch":
        return optimize_for_inference(model, precision=args.precision, compile=args.compile)
    if args.onnx is None:
        raise ValueError("--runtime onnxruntime needs --onnx FILE (see `segkit export`)")
    if args.precision != "fp32" or args.compile:
        raise ValueError(
            "--precision and --compile apply to --runtime torch; an ONNX file runs as it was "
            "exported (see `segkit export --int8`)"
        )
    from segkit.deploy.ort import OnnxRuntimeModel

    runner = OnnxRuntimeModel(args.onnx)
    check_onnx_origin(runner.metadata, model, args)
    return runner


def check_onnx_origin(metadata: dict[str, str], model: torch.nn.Module, args: Any) -> None:
    """Refuse an ``--onnx`` file exported from other weights than ``--checkpoint``'s, or one
    that outputs class indices; warn (one line on stderr) when the file records no fingerprint.

    Args:
        metadata: the ONNX file's ``metadata_props`` (:func:`~segkit.deploy.onnx.export_metadata`).
        model: the checkpoint's model as loaded.
        args: the command's flags (``onnx``, ``checkpoint``, ``command``).
    """
    from segkit.deploy.onnx import FINGERPRINT_KEY, META_KEY

    recorded = metadata.get(FINGERPRINT_KEY)
    if recorded is None:
        print(
            f"segkit {getattr(args, 'command', 'eval')}: warning: {args.onnx} records no weights "
            "fingerprint (exported by an older segkit or another tool), so it cannot be checked "
            f"against {args.checkpoint}",
            file=sys.stderr,
        )
    elif recorded != (actual := weights_fingerprint(model)):
        raise ValueError(
            f"{args.onnx} was exported from another checkpoint than {args.checkpoint} (weights "
            f"fingerprint {recorded[:12]} vs {actual[:12]}); export this one with `segkit export "
            f"--checkpoint {args.checkpoint} --out {args.onnx}`"
        )
    try:
        kind = json.loads(metadata.get(META_KEY, "{}"))["output"]["kind"]
    except (ValueError, KeyError, TypeError):
        return
    if kind != "logits":
        raise ValueError(
            f"{args.onnx} outputs class indices (exported with --argmax), not logits; export it "
            "without --argmax to evaluate or predict with it"
        )
