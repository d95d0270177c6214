"""The typed run configuration: defaults <- YAML recipe <- CLI flags <- ``--set key=value``.

The dataclass defaults are the standard DeepLabV3+ recipe of the popular repositories (SGD,
lr 0.01, poly, crop 513, batch 16, 30k iterations). :data:`SHAPES_RECIPE` is the built-in
recipe ``segkit train`` runs with no ``--config`` on the synthetic ``shapes`` set, sized to
learn in minutes on a laptop CPU. Every field can be set in a YAML recipe (sections ``model``,
``data``, ``train``, ``eval``), by a flag, or by ``--set section.field=value``; an unknown key
or a value of the wrong type is an error that lists what is valid. ``None`` means "the
component's own default".
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def limited(
    default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **limits: Any
) -> Any:
    """A dataclass field with the limits :meth:`Config.update` checks: ``min``/``max``
    (inclusive), ``above`` (exclusive lower bound), ``length`` (of a list), ``items_above``."""
    return field(default=default, default_factory=factory, metadata={"limits": limits})


@dataclass
class ModelConfig:
    """Arguments of :func:`segkit.create_model` (``None``: the model's default)."""

    name: str = "deeplabv3plus"
    backbone: str = "mobilenet_v2"
    output_stride: int | None = None
    aux: bool = False
    pretrained_backbone: str | None = None
    multi_grid: list[int] | None = None
    separable: bool | None = None
    aspp_rates: list[int] | None = None
    aspp_channels: int | None = limited(None, min=1)
    decoder_channels: int | None = limited(None, min=1)
    attention: str | None = None
    jpu: bool | None = None
    lateral: bool | None = None
    se_loss: bool | None = None


@dataclass
class DataConfig:
    """Dataset, its options, and the joint transforms."""

    dataset: str = "shapes"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    year: int | None = None
    num_classes: int | None = limited(None, min=1)
    class_names: list[str] | None = None
    palette_file: str | None = None
    binary_255: bool | None = None
    nodata_ignore: bool | None = None
    seed: int | None = None
    length: int | None = limited(None, min=1)
    val_length: int | None = limited(None, min=1)
    image_size: int | None = limited(None, min=1)
    skip_bad_samples: bool = False
    crop_size: int = limited(513, min=1)
    scale_range: list[float] | None = limited(factory=lambda: [0.5, 2.0], length=2, items_above=0)
    hflip: float = limited(0.5, min=0, max=1)
    color_jitter: list[float] | None = limited(factory=lambda: [0.25, 0.25, 0.25, 0.0], length=4)
    crop_val: bool = False
    mean: list[float] = limited(factory=lambda: [0.485, 0.456, 0.406], length=3)
    std: list[float] = limited(factory=lambda: [0.229, 0.224, 0.225], length=3, items_above=0)
    workers: int = limited(2, min=0)


@dataclass
class TrainConfig:
    """Optimisation, schedule, loss and the run's bookkeeping."""

    iters: int = limited(30000, min=1)
    epochs: int | None = limited(None, min=1)
    batch_size: int = limited(16, min=1)
    optimizer: str = "sgd"
    lr: float = limited(0.01, above=0)
    momentum: float = limited(0.9, min=0, max=1)
    weight_decay: float = limited(1e-4, min=0)
    lr_policy: str = "poly"
    poly_power: float = limited(0.9, min=0)
    step_size: int | None = limited(None, min=1)
    step_gamma: float = 0.1
    warmup_iters: int = limited(0, min=0)
    backbone_lr_mult: float | None = limited(None, min=0)
    loss: str = "ce"
    class_weights: list[float] | str | None = None
    focal_gamma: float = limited(2.0, min=0)
    dice_weight: float = limited(1.0, min=0)
    ignore_index: int = limited(255, min=0, max=255)  # masks are 8-bit
    aux_weight: float = limited(0.4, min=0)
    se_weight: float = limited(0.2, min=0)
    init_from: str | None = None
    freeze_backbone_iters: int = limited(0, min=0)
    freeze_bn: bool = False
    amp: bool = False
    channels_last: bool = True  # NHWC activations: faster convolutions (oneDNN, cuDNN)
    device: str = "auto"
    val_interval: int = limited(1000, min=1)
    log_interval: int = limited(10, min=1)
    seed: int = 0
    sync_bn: bool = False
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = limited(None, min=1)


@dataclass
class EvalConfig:
    """Inference protocol for validation, ``segkit eval`` and ``segkit predict``."""

    mode: str = "whole"
    window: int | None = limited(None, min=1)
    stride: int | None = limited(None, min=1)
    scales: list[float] = limited(factory=lambda: [1.0], items_above=0)
    flip: bool = False
    batch_size: int = limited(1, min=1)


@dataclass
class Config:
    """A whole run: ``model``, ``data``, ``train``, ``eval`` and the output folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    work_dir: str | None = None

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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
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
            _check_limits(value, _limits(section, name), key)
            setattr(section, name, value)

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


# The built-in recipe: DeepLabV3+ MobileNetV2 (128-channel ASPP and decoder, auxiliary head for
# deep supervision) trained from scratch with AdamW on 64x64 shapes. On a 2-core CPU it reaches
# val mIoU > 0.80 in under 10 minutes (benchmarks/default_train.py).
SHAPES_RECIPE: dict[str, Any] = {
    "model": {
        "name": "deeplabv3plus",
        "backbone": "mobilenet_v2",
        "aux": True,
        "aspp_channels": 128,
        "decoder_channels": 128,
    },
    "data": {
        "dataset": "shapes",
        "image_size": 64,
        "length": 4000,
        "crop_size": 64,
        "scale_range": [0.75, 1.25],
        "workers": 1,
    },
    "train": {
        "iters": 1500,
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 0.004,
        "weight_decay": 0.0001,
        "warmup_iters": 100,
        "val_interval": 250,
    },
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


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``hint`` or raise ValueError naming ``key``.

    Text (from a flag or ``--set``) is taken as is for string fields and read as YAML
    otherwise, so ``0.01``, ``[1, 2, 4]``, ``1,2,4``, ``true`` and ``null`` all work.
    """
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if isinstance(value, str) and value.strip() in ("null", "~", ""):
        value = None
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{key} cannot be null; expected {_describe(hint)}")
    candidates = [value]
    if isinstance(value, str):
        with contextlib.suppress(yaml.YAMLError):
            candidates.append(yaml.safe_load(value))
    for candidate in candidates:
        for option in options:
            converted = _try(candidate, option)
            if converted is not _FAIL:
                return converted
    raise ValueError(f"{key}: {value!r} is not a valid {_describe(hint)}")


_FAIL = object()


def _try(value: Any, option: Any) -> Any:
    origin = typing.get_origin(option)
    if origin is list:
        (item_type,) = typing.get_args(option)
        if isinstance(value, str) and "," in value and not value.lstrip().startswith("["):
            value = value.split(",")  # "1,2,4"; each item is converted below
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            return _FAIL
        items = [_try(v.strip() if isinstance(v, str) else v, item_type) for v in value]
        return _FAIL if any(i is _FAIL for i in items) else items
    if option is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        return _FAIL
    if option is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool):
            return _FAIL
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        return _FAIL
    if option is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as text
            try:
                return float(value)
            except ValueError:
                return _FAIL
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _FAIL
        return float(value)
    if option is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. a folder named 2012
        return value if isinstance(value, str) else _FAIL
    return _FAIL


def _limits(section: Any, name: str) -> dict[str, Any]:
    return next(f.metadata.get("limits", {}) for f in dataclasses.fields(section) if f.name == name)


def _check_limits(value: Any, limits: dict[str, Any], key: str) -> None:
    """Raise ValueError naming ``key`` when ``value`` breaks one of its field's limits."""
    if value is None or not limits:
        return
    problems = []
    if "length" in limits and len(value) != limits["length"]:
        problems.append(f"needs {limits['length']} values, got {len(value)}")
    if "items_above" in limits and any(v <= limits["items_above"] for v in value):
        problems.append(f"every value must be > {limits['items_above']}")
    if "min" in limits and value < limits["min"]:
        problems.append(f"must be >= {limits['min']}")
    if "max" in limits and value > limits["max"]:
        problems.append(f"must be <= {limits['max']}")
    if "above" in limits and value <= limits["above"]:
        problems.append(f"must be > {limits['above']}")
    if problems:
        raise ValueError(f"{key}={value!r}: {'; '.join(problems)}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (one level of sections)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat
