"""The typed run configuration: defaults <- YAML recipe <- CLI flags <- ``--set key=value``.

Every option is declared once. The ``train`` and ``eval`` fields and the shared model and data
fields are declared here with :func:`option` (default, help text, flag, choices, limits); the
options of each head and each dataset are declared by the builder or class that takes them
(:mod:`segkit.options`) and added to the ``model`` and ``data`` sections from there. The
command line (:mod:`segkit.cli.train`) is generated from these declarations.

Fields whose best value depends on the run's situation (optimiser, learning rate, weight
decay, warm-up, backbone LR multiplier, auxiliary head) or on its data (crop size, validation
interval) default to ``None``: :mod:`segkit.engine.recipe` chooses them when the run starts and
the start-up summary says what it chose and why; a value given by a recipe, a flag or ``--set``
always wins. ``configs/shapes.yaml`` is the built-in recipe ``segkit train`` runs with no
``--config`` on the synthetic ``shapes`` set. An unknown key, a value of the wrong type or out
of its limits is an error that names it and lists what is valid. Elsewhere ``None`` means "the
component's own default".
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segkit.options import component_options, merge_options
from segkit.values import check_choices, check_limits, choices_of, coerce


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Any = dataclasses.MISSING,
    flag: str | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    **limits: Any,
) -> Any:
    """A configuration field declared once: its default, help text, command-line ``flag``
    (default ``--field-name``), valid ``choices`` (a sequence, or a function returning one) and
    the limits :meth:`Config.update` checks: ``min``/``max`` (inclusive), ``above`` (exclusive
    lower bound), ``length`` (of a list), ``items_above``."""
    component = limits.pop("component", False)  # added from a head or dataset (segkit.options)
    metadata = {"help": help, "flag": flag, "choices": choices, "limits": limits}
    metadata["component"] = component
    return field(default=default, default_factory=factory, metadata=metadata)


def _model_names() -> list[str]:
    from segkit.models import list_models

    return list_models()


def _dataset_names() -> list[str]:
    from segkit.datasets import list_datasets

    return list_datasets()


def _loss_names() -> tuple[str, ...]:
    from segkit.losses import LOSSES

    return LOSSES


def _inference_modes() -> tuple[str, ...]:
    from segkit.engine.inference import MODES

    return MODES


OPTIMIZERS = ("sgd", "adamw")
LR_POLICIES = ("poly", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class _ModelSection:
    """The model every architecture shares; the head options are added from the builders."""

    name: str = option("deeplabv3plus", help="architecture", flag="--model", choices=_model_names)
    backbone: str = option(
        "mobilenet_v2", help="feature extractor: a name of `segkit models`, or timm:<name>"
    )
    output_stride: int | None = option(
        None, help="stride of the deepest map: 8, 16 or 32 (none: 16; FCN-8s and JPU 32)"
    )
    aux: bool | None = option(
        None,
        help="auxiliary FCN head on the stage before the last, for deep supervision in training "
        "(none: chosen from the situation, on from scratch)",
    )
    jpu: bool | None = option(
        None, help="FastFCN joint pyramid upsampling neck (fcn, deeplabv3, encnet; none: off)"
    )
    pretrained_backbone: str | None = option(
        None, help="ImageNet weights file for the backbone (none: random initialisation)"
    )
    multi_grid: list[int] | None = option(
        None, help="ResNet layer4 dilation factors, e.g. 1,2,4 (none: 1,1,1)"
    )
    align_corners: bool = option(
        False,
        help="upsample with align_corners=True (decoder, JPU, final resize), as the models of "
        "pytorch-deeplab-xception, PyTorch-Encoding and FastFCN were trained",
    )
    zero_init_residual: bool | None = option(
        None,
        help="start the last BatchNorm of each residual block of the backbone at zero, so the "
        "block begins as the identity (none: chosen from the situation, on from scratch; off "
        "keeps the network's own initialisation)",
    )


@dataclass
class _DataSection:
    """Where the data is and how it is augmented; each dataset's own options are added from
    its class."""

    dataset: str = option("shapes", help="dataset layout", choices=_dataset_names)
    root: str | None = option(
        None, help="dataset folder (none: only for shapes)", flag="--data-root"
    )
    train_split: str = option("train", help="split to train on")
    val_split: str = option("val", help="split to validate on")
    val_length: int | None = option(
        None, help="samples of the validation split (shapes; none: the dataset's)", min=1
    )
    skip_bad_samples: bool = option(
        False, help="leave unreadable or invalid samples out (listed in bad_samples.txt)"
    )
    crop_size: int | None = option(
        None,
        help="side of the square training crop (none: from the training images' sizes, the "
        "median short side rounded down to a multiple of 8, at most 512)",
        min=1,
    )
    scale_range: list[float] | None = option(
        help="random rescale range before cropping, e.g. 0.5,2.0 (none: no rescaling)",
        factory=lambda: [0.5, 2.0],
        length=2,
        items_above=0,
    )
    hflip: float = option(0.5, help="probability of a horizontal flip", min=0, max=1)
    color_jitter: list[float] | None = option(
        None,
        help="brightness, contrast, saturation, hue jitter, e.g. 0.25,0.25,0.25,0 (none: off, as "
        "in the popular recipes)",
        length=4,
    )
    crop_val: bool = option(False, help="resize and centre-crop validation images to crop_size")
    mean: list[float] = option(
        help="per-channel mean for normalisation (RGB, 0-1)",
        factory=lambda: [0.485, 0.456, 0.406],
        length=3,
    )
    std: list[float] = option(
        help="per-channel standard deviation for normalisation (RGB, 0-1)",
        factory=lambda: [0.229, 0.224, 0.225],
        length=3,
        items_above=0,
    )
    workers: int = option(
        2, help="DataLoader worker processes (0: load in the main process)", min=0
    )


@dataclass
class TrainConfig:
    """Optimisation, schedule, loss and the run's bookkeeping."""

    iters: int | None = option(
        None,
        help="optimiser steps of the whole run; --iters given beats a recipe's epochs (none: "
        "200 epochs, at least 1000 and at most 30000 iterations)",
        min=1,
    )
    epochs: int | None = option(
        None,
        help="train for this many passes over the data instead of --iters (--epochs given "
        "beats a recipe's iters; giving both is an error)",
        min=1,
    )
    batch_size: int = option(16, help="images per step and process", min=1)
    optimizer: str | None = option(
        None, help="optimiser (none: chosen from the situation)", choices=OPTIMIZERS
    )
    lr: float | None = option(
        None,
        help="peak learning rate of the head (none: chosen from the situation and scaled with "
        "the batch)",
        above=0,
    )
    momentum: float = option(0.9, help="SGD momentum", min=0, max=1)
    weight_decay: float | None = option(
        None, help="weight decay (none: chosen from the situation)", min=0
    )
    lr_policy: str = option("poly", help="learning-rate schedule", choices=LR_POLICIES)
    poly_power: float = option(0.9, help="exponent of the poly schedule", min=0)
    step_size: int | None = option(
        None, help="step schedule: iterations per step (none: a third of the run)", min=1
    )
    step_gamma: float = option(0.1, help="step schedule: factor applied at each step")
    warmup_iters: int | None = option(
        None, help="linear warm-up iterations (none: chosen from the situation)", min=0
    )
    backbone_lr_mult: float | None = option(
        None,
        help="backbone LR = lr x this (none: chosen from the situation, 0.1 for a pretrained "
        "backbone)",
        min=0,
    )
    loss: str | None = option(
        None,
        help="segmentation loss (none: chosen from the situation, ce+dice from scratch, else ce)",
        choices=_loss_names,
    )
    class_weights: list[float] | str | None = option(
        None, help="per-class loss weights: a list, or auto (ENet weights from the masks)"
    )
    focal_gamma: float = option(2.0, help="focal loss exponent", min=0)
    dice_weight: float = option(1.0, help="weight of the dice term in ce+dice", min=0)
    label_smoothing: float = option(
        0.0,
        help="share of each pixel's target spread over all classes, in the cross-entropy of "
        "ce and ce+dice (0: off)",
        min=0,
        max=1,
    )
    ohem_thresh: float | None = option(
        None,
        help="online hard example mining for the cross-entropy of ce and ce+dice: only pixels "
        "whose probability of their class is below this count (none: every pixel counts)",
        min=0,
        max=1,
    )
    ohem_min_kept: int = option(
        100_000,
        help="with ohem_thresh: the hardest pixels of each process's batch that always count",
        min=0,
    )
    ignore_index: int = option(
        255, help="mask value excluded from loss and metrics", min=0, max=255
    )  # masks are 8-bit
    aux_weight: float = option(0.4, help="weight of the auxiliary head's loss", min=0)
    se_weight: float = option(0.2, help="weight of EncNet's semantic-encoding loss", min=0)
    init_from: str | None = option(
        None, help="start from the weights of this checkpoint (matched by name and shape)"
    )
    freeze_backbone_iters: int = option(
        0, help="keep the backbone frozen (BN included) for the first N iterations", min=0
    )
    freeze_bn: bool = option(False, help="keep every BatchNorm's statistics fixed")
    amp: bool = option(False, help="mixed precision: fp16 on CUDA, bf16 on the CPU")
    channels_last: bool = option(True, help="NHWC activations: faster convolutions (oneDNN, cuDNN)")
    device: str = option("auto", help="auto: CUDA when available, else the CPU", choices=DEVICES)
    val_interval: int | None = option(
        None,
        help="validate and save checkpoints every N iterations (none: a tenth of the run)",
        min=1,
    )
    log_interval: int = option(10, help="log the loss every N iterations", min=1)
    seed: int = option(0, help="seed of weights, sampling and augmentation")
    sync_bn: bool = option(False, help="synchronise BatchNorm across processes (CUDA)")
    resume: bool = option(False, help="continue the run in --work-dir from its last.pt")
    overwrite: bool = option(False, help="replace the run already in --work-dir")
    stop_after: int | None = option(
        None, help="stop (saving last.pt) after N iterations of this invocation", min=1
    )


@dataclass
class EvalConfig:
    """Inference protocol for validation, ``segkit eval`` and ``segkit predict``."""

    mode: str = option(
        "whole", help="whole image, or slide a window over it", choices=_inference_modes
    )
    window: int | None = option(
        None, help="slide: window side in pixels (none: the training crop size)", min=1
    )
    stride: int | None = option(
        None, help="slide: step between windows (none: two thirds of the window)", min=1
    )
    scales: list[float] = option(
        help="image scales whose logits are averaged, e.g. 0.75,1.0,1.25",
        factory=lambda: [1.0],
        items_above=0,
    )
    flip: bool = option(False, help="also average the horizontally flipped prediction")
    batch_size: int = option(1, help="images per validation step", flag="--eval-batch-size", min=1)


def _extend(base: type, name: str, options: dict[str, Any], doc: str) -> type:
    """``base`` plus one field per component option (default ``None``: the component's own)."""
    fields = [
        (opt.name, opt.hint, option(None, help=opt.describe(), component=True))
        for opt in options.values()
        if opt.name not in {f.name for f in dataclasses.fields(base)}
    ]
    cls = dataclasses.make_dataclass(name, fields, bases=(base,))
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


def _head_options() -> dict[str, Any]:
    """The options of every head builder and of every named backbone."""
    from segkit.models import MODELS
    from segkit.models.backbones import BACKBONES

    heads = [component_options(build, name) for name, build in MODELS.items()]
    bodies = [component_options(entry.cls, name) for name, entry in BACKBONES.items()]
    return merge_options([*heads, *bodies])


def _dataset_options() -> dict[str, Any]:
    from segkit.datasets import DATASETS

    skip = ("skip_bad_samples",)
    return merge_options(component_options(cls, n, skip=skip) for n, cls in DATASETS.items())


ModelConfig = _extend(
    _ModelSection,
    "ModelConfig",
    _head_options(),
    "Arguments of :func:`segkit.create_model`: the shared ones, then every head builder's "
    "and backbone's options (``None``: the model's default).",
)
DataConfig = _extend(
    _DataSection,
    "DataConfig",
    _dataset_options(),
    "Dataset, its options (from the dataset classes) and the joint transforms.",
)


@dataclass
class Config:
    """A whole run: ``model``, ``data``, ``train``, ``eval`` and the output folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    work_dir: str | None = option(
        None, help="run folder (none: runs/<dataset>_<model>_<backbone>_<time>)"
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved configuration as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Defaults updated by a nested dict; unknown keys and bad types raise ValueError."""
        config = cls()
        config.update(flatten(data))
        return config

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a YAML recipe (see :meth:`from_dict`)."""
        path = find_recipe(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(
                f"{path} is not valid YAML{where}: {reason}; fix the file (a recipe is a "
                "mapping of sections: model, data, train, eval)"
            ) from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe is a mapping of sections, got {type(data)}")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def update(self, values: dict[str, Any]) -> None:
        """Set dotted keys (``"train.lr"``) to values, converting and checking their types."""
        for key, value in values.items():
            section, name = self._locate(key)
            hint = typing.get_type_hints(type(section))[name]
            value = coerce(value, hint, key)
            meta = _metadata(section, name)
            check_limits(value, meta.get("limits", {}), key)
            check_choices(value, choices_of(meta), key)
            setattr(section, name, value)

    def value(self, key: str) -> Any:
        """The value at a dotted key (``"train.lr"``)."""
        section, name = self._locate(key)
        return getattr(section, name)

    def _locate(self, key: str) -> tuple[Any, str]:
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "work_dir":
            return self, "work_dir"
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        sections.pop("work_dir")
        if len(parts) != 2 or parts[0] not in sections:
            raise ValueError(
                f"Unknown config key: {key!r}. Keys are 'work_dir' or 'SECTION.FIELD' with "
                f"SECTION one of {list(sections)}."
            )
        section = sections[parts[0]]
        names = [f.name for f in dataclasses.fields(section)]
        if parts[1] not in names:
            close = difflib.get_close_matches(parts[1], names, n=3)
            suggestion = f" Did you mean {[f'{parts[0]}.{c}' for c in close]}?" if close else ""
            raise ValueError(
                f"Unknown config key: {key!r}.{suggestion} Valid keys in {parts[0]!r}: {names}."
            )
        return section, parts[1]


RECIPES = Path(__file__).parent / "configs"
# `segkit train` with no --config on the shapes set: DeepLabV3+ MobileNetV2 learning the
# synthetic shapes from scratch in minutes on a laptop CPU (benchmarks/default_train.py).
SHAPES_RECIPE = RECIPES / "shapes.yaml"


def find_recipe(name: str | Path) -> Path:
    """``name`` as a file, or as the name of a recipe shipped in ``configs/`` (with or without
    ``.yaml``), so ``--config voc2012aug_deeplabv3plus_mobilenet_os16_513`` works anywhere."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, known, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise FileNotFoundError(
        f"config file not found: {path}.{hint} Give a YAML file or a shipped recipe: {known}"
    )


def with_eval_defaults(config: Config) -> Config:
    """``config`` with ``eval.window`` defaulted for ``--mode slide``: the training crop size
    (mmsegmentation's choice; the stride then defaults to two thirds of it), once it is known
    (an unset crop is chosen when the run starts)."""
    if config.eval.mode == "slide" and config.eval.window is None and config.data.crop_size:
        config.eval.window = config.data.crop_size
    return config


def component_values(section: Any) -> dict[str, Any]:
    """The options of ``section`` that come from a head or a dataset (:mod:`segkit.options`)
    and are set (not ``None``), as keyword arguments for that component."""
    return {
        item.name: getattr(section, item.name)
        for item in dataclasses.fields(section)
        if item.metadata.get("component") and getattr(section, item.name) is not None
    }


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "model.aux=true"]`` -> ``{"train.lr": "0.01", "model.aux": "true"}``
    (text; :meth:`Config.update` converts it to each field's type)."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. train.lr=0.01), got {item!r}")
        values[key.strip()] = raw.strip()
    return values


def _metadata(section: Any, name: str) -> Any:
    return next(f.metadata for f in dataclasses.fields(section) if f.name == name)


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (one level of sections)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat
