"""Train a model (``segkit train``; no arguments: the built-in recipe on ``shapes``).

Precedence: defaults < ``--config FILE.yaml`` < flags < ``--set section.key=value``. Without
``--config``, the defaults are the built-in ``shapes`` recipe when the dataset is ``shapes``,
else the standard DeepLabV3+ recipe (see :mod:`segkit.config`).
Under ``torchrun --nproc_per_node N -m segkit train ...`` it runs DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from segkit.checkpoint import load_checkpoint
from segkit.cli.common import add_config_flag, config_flags, given_values
from segkit.config import (
    LR_POLICIES,
    OPTIMIZERS,
    SHAPES_RECIPE,
    Config,
    component_values,
    parse_set,
    with_eval_defaults,
)

GROUP_TITLES = {
    "model": "model (head options name the models that take them)",
    "data": "data (dataset options name the datasets that take them)",
    "train": "training",
    "eval": "validation protocol",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit train``'s flags: one per config field, with its help, default and
    choices as the field declares them."""
    parser.epilog = _catalogue()
    run = parser.add_argument_group("recipe and run")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="YAML recipe, or the name of one in configs/ (none: configs/shapes.yaml on the "
        "shapes set, else the standard DeepLabV3+ recipe)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set train.lr=0.01 (repeatable; applied last)",
    )
    run.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="build the datasets and the model, load one batch, print sizes and shapes, exit",
    )
    recipe = Config.load(SHAPES_RECIPE).to_dict()
    groups = {name: parser.add_argument_group(title) for name, title in GROUP_TITLES.items()}
    for flag in config_flags():
        add_config_flag(groups.get(flag.key.split(".")[0], run), flag, recipe)


def _catalogue() -> str:
    """What the choices are, listed under the options in ``segkit train --help``."""
    from segkit.datasets import list_datasets
    from segkit.losses import LOSSES
    from segkit.models import list_backbones, list_models
    from segkit.models.attention import ATTENTIONS

    rows = {
        "models": list_models(),
        "backbones": [*list_backbones(), "timm:<any timm model>"],
        "attention": list(ATTENTIONS),
        "datasets": list_datasets(),
        "losses": list(LOSSES),
        "optimizers": list(OPTIMIZERS),
        "LR policies": list(LR_POLICIES),
    }
    lines = ["choices:"] + [
        f"  {name + ':':<12} {', '.join(values)}" for name, values in rows.items()
    ]
    lines += [
        "",
        "precedence: defaults < --config < flags < --set; --print-config shows the result.",
        "`segkit models` lists parameters and GFLOPs of every model and backbone.",
    ]
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the configuration (recipe, flags, --set); on --resume start from the run's own."""
    resume = bool(getattr(args, "train.resume"))
    overwrite = bool(getattr(args, "train.overwrite"))
    if resume and overwrite:
        raise ValueError(
            "--resume continues the run in --work-dir, --overwrite replaces it: give one of them"
        )
    if resume:
        config = _run_config(args.work_dir)
        config.train.stop_after = None  # a limit of the interrupted invocation, not of the run
    elif args.config:
        config = Config.load(args.config)
    elif getattr(args, "data.dataset") in (None, "shapes"):
        config = Config.load(SHAPES_RECIPE)  # `segkit train` with no recipe
    else:
        config = Config()
    recipe_model = config.model.name
    given = given_values(args, config_flags()) | parse_set(args.set)
    config.update(given)
    _budget_precedence(config, set(given))
    if config.model.name != recipe_model:
        _drop_foreign_head_options(config, recipe_model, set(given))
    if config.train.init_from and not args.config and "model.name" not in given:
        _adopt_architecture(config, config.train.init_from, set(given))
    config.train.resume, config.train.overwrite = resume, overwrite
    return config


def _budget_precedence(config: Config, given: set[str]) -> None:
    """The length given on the command line beats the recipe's: ``--iters`` over a recipe's
    ``epochs`` and ``--epochs`` over its ``iters``; giving both is an error."""
    if {"train.iters", "train.epochs"} <= given:
        raise ValueError(
            f"--iters {config.train.iters} and --epochs {config.train.epochs} both set the "
            "length of the run: give one of them"
        )
    if "train.iters" in given:
        config.train.epochs = None
    elif "train.epochs" in given:
        config.train.iters = None


def _drop_foreign_head_options(config: Config, recipe_model: str, given: set[str]) -> None:
    """Switching the recipe's model (``--model fcn`` over the shapes recipe's DeepLabV3+) leaves
    out the recipe's head options the new model does not take, saying so; options given on the
    command line are kept, and ``create_model`` names them if they do not apply."""
    from segkit.models import backbone_options, head_options

    valid = head_options(config.model.name) | backbone_options(config.model.backbone)
    dropped = [
        name
        for name in component_values(config.model)
        if name not in valid and f"model.{name}" not in given
    ]
    for name in dropped:
        setattr(config.model, name, None)
    if dropped:
        print(
            f"note: the recipe's {', '.join(dropped)} (for {recipe_model}) do not apply to "
            f"{config.model.name}; left out",
            file=sys.stderr,
        )


#: The build arguments of a checkpoint's model that the run does not take from it: the classes
#: follow the dataset, the auxiliary head the situation.
NOT_ADOPTED = ("num_classes", "aux")


def _adopt_architecture(config: Config, path: str, given: set[str]) -> None:
    """``--init-from`` a segkit checkpoint or another project's (converted in memory) without
    ``--model`` or ``--config``: the run builds the model the file describes (head, backbone,
    output stride, head options), each value unless a flag or ``--set`` gives it, so that every
    weight of the file fits. A file of weights only (no model description) changes nothing: its
    tensors load by name and shape into the configured model."""
    from segkit.convert.checkpoints import open_checkpoint

    try:
        spec = open_checkpoint(path)["model"]
    except ValueError:
        return
    for name in component_values(config.model):  # the built-in recipe's head options
        if f"model.{name}" not in given:
            setattr(config.model, name, None)
    adopted = {
        f"model.{key}": value
        for key, value in spec.items()
        if key not in NOT_ADOPTED and f"model.{key}" not in given and value is not None
    }
    config.update(adopted)
    options = [f"{key}={value}" for key, value in component_values(config.model).items()]
    print(
        f"note: --init-from {path}: the model is the one the file describes, {config.model.name} "
        f"with backbone {config.model.backbone} at output stride {config.model.output_stride}"
        + (f" ({', '.join(options)})" if options else "")
        + "; give --model (or --config) to train another model from the weights that fit it",
        file=sys.stderr,
    )


def _run_config(work_dir: str | None) -> Config:
    """The configuration of the run to resume: its config.yaml or, when that file is gone,
    the copy inside checkpoints/last.pt."""
    if not work_dir:
        raise ValueError("--resume needs --work-dir DIR (the run to continue)")
    saved = Path(work_dir) / "config.yaml"
    if saved.is_file():
        try:
            return Config.load(saved)
        except ValueError as err:
            raise ValueError(
                f"{err}. Or delete {saved} to resume with the configuration stored in "
                "checkpoints/last.pt"
            ) from None
    last = Path(work_dir) / "checkpoints" / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(
            f"--resume: {work_dir} holds no run (neither config.yaml nor checkpoints/last.pt)"
        )
    stored = load_checkpoint(last).get("config")
    if not isinstance(stored, dict):
        raise ValueError(
            f"--resume: {work_dir} has no config.yaml and {last} holds no configuration; "
            f"start a new run from its weights with --work-dir NEW --init-from {last}"
        )
    return Config.from_dict(stored)


def printed_config(config: Config) -> str:
    """The configuration as YAML, with what can be decided without reading data decided (the
    situational values of :mod:`segkit.engine.recipe`, the sliding window); a comment names the
    situation and what the run decides from its data when it starts (written to its
    config.yaml, with the work dir's name and ``auto`` class weights)."""
    from segkit.engine.recipe import choose_recipe

    recipe = choose_recipe(config)
    later = [
        key
        for key in ("data.crop_size", "train.iters", "train.warmup_iters", "train.val_interval")
        if recipe.config.value(key) is None
    ]
    header = f"# {recipe.lines()[0]}\n"
    if later:
        header += f"# decided from the data when the run starts: {', '.join(later)}\n"
    return header + yaml.safe_dump(recipe.config.to_dict(), sort_keys=False)


def run(args: argparse.Namespace) -> int:
    """Train; exit status 0 when done or stopped on purpose, 128+signal after SIGINT/SIGTERM."""
    from segkit.engine.train import TrainingDivergedError, train

    config = with_eval_defaults(config_from_args(args))
    if args.print_config:
        print(printed_config(config), end="")
        return 0
    if args.dry_run:
        from segkit.engine.dry_run import dry_run

        print("\n".join(dry_run(config)))
        return 0
    try:
        record = train(config)
    except TrainingDivergedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if record.get("signal"):
        return 128 + int(record["signal"])
    return 0
