"""The recipe of a run, chosen from its situation and its data, and said at the start.

A run is in one of three situations:

* **from scratch**: no ``--pretrained-backbone`` and no ``--init-from``. The whole network
  learns from random weights: AdamW with a linear warm-up (a lower rate for the bottleneck
  ResNets), the backbone at the full rate, an auxiliary head for deep supervision, residual
  blocks that start as the identity (the last BatchNorm of each at zero), cross-entropy plus
  dice loss, and DeepLabV3+ with its lighter head (atrous separable 3x3 convolutions, one in
  the decoder: what ``benchmarks/real_photos.py`` measured best; see ``benchmarks/README.md``).
* **pretrained backbone**: ImageNet weights under a new head: the popular repositories' SGD
  recipe, the backbone at a tenth of the rate.
* **continuing**: ``--init-from`` a segkit checkpoint or another project's: the whole network
  is already trained, so SGD at a tenth of the pretrained recipe's rate, the backbone at the
  full rate.

Each situation's learning rate is given for a total batch of 16 (the popular recipes' batch)
and scaled with the run's total batch: linearly for SGD, by the square root for AdamW. The crop
follows the training images' sizes and the validation interval the length of the run. Every
value a recipe file, a flag or ``--set`` gives wins; :attr:`Recipe.choices` records, for each
value, where it came from, and :meth:`Recipe.lines` is the block the run prints.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from segkit.config import Config, with_eval_defaults
from segkit.datasets import SegmentationDataset
from segkit.engine.data import (
    batches_per_epoch,
    build_train_split,
    build_val_dataset,
    crop_from_sizes,
    image_sizes,
    train_transforms,
)
from segkit.models.backbones.resnet import RESNETS

SCRATCH, PRETRAINED, CONTINUING = "from scratch", "pretrained backbone", "continuing"
REFERENCE_BATCH = 16  # the batch the situations' learning rates are given for

#: Per situation: optimiser, learning rate at batch 16 for each optimiser (the situation's
#: own, and the other one's when a flag asks for it) and per backbone where one has its own,
#: weight decay, warm-up as a share of the run, backbone LR multiplier, auxiliary head,
#: zero-initialised residual branches, loss, and head options per model (each unless given; a
#: model or backbone not named keeps the general value).
SITUATIONS: dict[str, dict[str, Any]] = {
    SCRATCH: {
        "optimizer": "adamw",
        "lr": {"adamw": 0.004, "sgd": 0.01},
        # AdamW at 0.004 (batch 16) was measured best with MobileNetV2; ResNet-50 learned
        # better at half of it (benchmarks/README.md), and segkit's other ResNets (RESNETS:
        # ResNet-101, the deep-stem kin) share its bottleneck blocks.
        "backbone_lr": {name: {"adamw": 0.002} for name in RESNETS},
        "weight_decay": 0.01,
        "warmup": 0.05,
        "backbone_lr_mult": 1.0,
        "aux": True,
        "zero_init_residual": True,
        "loss": "ce+dice",
        "head": {"deeplabv3plus": {"separable": True, "decoder_convs": 1}},
    },
    PRETRAINED: {
        "optimizer": "sgd",
        "lr": {"sgd": 0.01, "adamw": 1e-4},
        "weight_decay": 1e-4,
        "warmup": 0.0,
        "backbone_lr_mult": 0.1,
        "aux": False,
        "zero_init_residual": False,
        "loss": "ce",
        "head": {},
    },
    CONTINUING: {
        "optimizer": "sgd",
        "lr": {"sgd": 0.001, "adamw": 5e-5},
        "weight_decay": 1e-4,
        "warmup": 0.0,
        "backbone_lr_mult": 1.0,
        "aux": False,
        "zero_init_residual": False,
        "loss": "ce",
        "head": {},
    },
}
MAX_WARMUP = 1500  # iterations
DEFAULT_EPOCHS = 200  # the budget when neither iters nor epochs is given...
MIN_DEFAULT_ITERS, MAX_DEFAULT_ITERS = 1000, 30000  # ...within these (30k: the popular recipes)
VALIDATIONS = 10  # a run validates about this many times when val_interval is not given


@dataclass(frozen=True)
class Choice:
    """One value of the recipe: its dotted config key, the value, and why it is that value."""

    key: str
    value: Any
    reason: str


@dataclass
class Recipe:
    """The configuration with every situational value decided, and how each was decided."""

    config: Config
    situation: str
    why: str
    choices: list[Choice]

    def lines(self) -> list[str]:
        """The block the run prints at its start: the situation, then one line per value."""
        shown = [(LABELS[c.key], _shown(c.key, c.value), c.reason) for c in self.choices]
        label_width = max(len(label) for label, _, _ in shown)
        value_width = max(len(value) for _, value, _ in shown)
        rows = [
            f"  {label:<{label_width}}  {value:<{value_width}}  ({reason})"
            for label, value, reason in shown
        ]
        return [f"recipe {self.situation} ({self.why}):", *rows]


def recipe_and_datasets(
    config: Config, *, world: int = 1
) -> tuple[Recipe, SegmentationDataset, SegmentationDataset]:
    """The recipe chosen for ``config`` and the run's training (with the recipe's augmentation)
    and validation splits; the training images' sizes are read once."""
    train_set = build_train_split(config)
    recipe = choose_recipe(config, train_set, world=world)
    train_set.transform = train_transforms(recipe.config)
    return recipe, train_set, build_val_dataset(recipe.config)


def situation_of(config: Config) -> tuple[str, str]:
    """The run's situation and the reason, from ``--init-from`` and ``--pretrained-backbone``."""
    if config.train.init_from:
        return CONTINUING, f"--init-from {config.train.init_from}"
    if config.model.pretrained_backbone:
        return PRETRAINED, f"--pretrained-backbone {config.model.pretrained_backbone}"
    return SCRATCH, "no --pretrained-backbone, no --init-from"


def choose_recipe(
    config: Config,
    train_set: SegmentationDataset | None = None,
    *,
    train_size: int | None = None,
    world: int = 1,
) -> Recipe:
    """A copy of ``config`` with every unset situational value decided; ``config`` is left as
    it is.

    Args:
        config: the run's configuration as given (recipe file, flags, ``--set``).
        train_set: the training split: its images' sizes decide an unset crop (its transforms
            are not used), its length the budget.
        train_size: the split's length when ``train_set`` is not given. With neither
            (``--print-config``) the crop stays unset, and so do the budget, the warm-up and
            the validation interval when they depend on the split's size.
        world: number of processes (the total batch scales the learning rate).
    """
    resolved = copy.deepcopy(config)
    train, model, data = resolved.train, resolved.model, resolved.data
    situation, why = situation_of(config)
    values = SITUATIONS[situation]
    choices: list[Choice] = []

    def decide(section: Any, key: str, value: Any, reason: str) -> None:
        name = key.split(".")[1]
        given = getattr(section, name)
        if given is None:
            setattr(section, name, value)
        choices.append(
            Choice(key, getattr(section, name), "given" if given is not None else reason)
        )

    decide(train, "train.optimizer", values["optimizer"], situation)
    total_batch = train.batch_size * world
    rate, source = _base_lr(situation, values, train.optimizer, model.backbone)
    decide(train, "train.lr", *_scaled_lr(rate, source, train.optimizer, total_batch))
    decide(train, "train.weight_decay", values["weight_decay"], situation)
    decide(train, "train.backbone_lr_mult", values["backbone_lr_mult"], situation)
    decide(
        model,
        "model.aux",
        values["aux"],
        situation + (", deep supervision" if values["aux"] else ""),
    )
    decide(
        model,
        "model.zero_init_residual",
        values["zero_init_residual"],
        situation + (": blocks start as the identity" if values["zero_init_residual"] else ""),
    )
    decide(train, "train.loss", values["loss"], situation)
    for name, value in values["head"].get(model.name, {}).items():
        decide(model, f"model.{name}", value, f"{situation}: the lighter head")
    if train_set is not None:
        crop, reason = crop_from_sizes(image_sizes(train_set))
        decide(data, "data.crop_size", crop, reason)
    if train_set is not None:
        train_size = len(train_set)
    budget = run_length(resolved, train_size, world)
    if budget is not None:  # else (no split given) what follows from the budget stays unset
        train.iters, reason = budget
        choices.append(Choice("train.iters", train.iters, reason))
        warmup = min(MAX_WARMUP, round(values["warmup"] * train.iters))
        share = f"{values['warmup']:.0%} of the run" if warmup else "none"
        decide(train, "train.warmup_iters", warmup, f"{situation}: {share}")
        interval = max(1, round(train.iters / VALIDATIONS))
        decide(train, "train.val_interval", interval, f"about {VALIDATIONS} validations")
    return Recipe(with_eval_defaults(resolved), situation, why, choices)


def _base_lr(
    situation: str, values: dict[str, Any], optimizer: str, backbone: str
) -> tuple[float, str]:
    """The situation's rate for ``optimizer`` at batch 16 (the backbone's own when it has
    one), and where it comes from, for the banner."""
    source = situation if optimizer == values["optimizer"] else f"{situation}, {optimizer}"
    own = values.get("backbone_lr", {}).get(backbone, {})
    if optimizer in own:
        return own[optimizer], f"{source}, {backbone}"
    return values["lr"][optimizer], source


def _scaled_lr(rate: float, source: str, optimizer: str, batch: int) -> tuple[float, str]:
    """``rate`` (at batch 16) scaled to ``batch``, linearly for SGD and by the square root for
    AdamW, and the reason the banner gives."""
    ratio = batch / REFERENCE_BATCH
    scaled = rate * (math.sqrt(ratio) if optimizer == "adamw" else ratio)
    reason = f"{source}: {rate:g} at batch {REFERENCE_BATCH}"
    if batch != REFERENCE_BATCH:
        rule = f"{batch}/{REFERENCE_BATCH}"
        reason += f" x sqrt({rule})" if optimizer == "adamw" else f" x {rule}"
    return float(f"{scaled:.3g}"), reason


def run_length(config: Config, train_size: int | None, world: int) -> tuple[int, str] | None:
    """Iterations of the run and where the number comes from: ``epochs`` when set, else
    ``iters`` when set, else :data:`DEFAULT_EPOCHS` epochs within :data:`MIN_DEFAULT_ITERS` and
    the popular recipes' :data:`MAX_DEFAULT_ITERS`; None when that needs the split's size and
    ``train_size`` is None."""
    train = config.train
    if train.iters is not None and train.epochs is None:
        return train.iters, "given"
    if train_size is None:
        return None
    per_epoch = max(1, batches_per_epoch(train_size, batch_size=train.batch_size, world=world))
    if train.epochs is not None:
        return train.epochs * per_epoch, f"--epochs {train.epochs} of {per_epoch} batches"
    iters = min(MAX_DEFAULT_ITERS, max(MIN_DEFAULT_ITERS, DEFAULT_EPOCHS * per_epoch))
    return iters, (
        f"{iters / per_epoch:.3g} epochs of {per_epoch} batches: {DEFAULT_EPOCHS} epochs within "
        f"{MIN_DEFAULT_ITERS}-{MAX_DEFAULT_ITERS} iterations"
    )


LABELS = {  # key -> (label, format of the value)
    "train.optimizer": "optimizer",
    "train.lr": "lr",
    "train.weight_decay": "weight decay",
    "train.backbone_lr_mult": "backbone lr",
    "model.aux": "aux head",
    "model.zero_init_residual": "zero-init residual",
    "train.loss": "loss",
    "model.separable": "separable 3x3",
    "model.decoder_convs": "decoder convs",
    "data.crop_size": "crop",
    "train.iters": "budget",
    "train.warmup_iters": "warm-up",
    "train.val_interval": "validation",
}
UNITS = {
    "train.backbone_lr_mult": "x{}",
    "data.crop_size": "{} px",
    "train.iters": "{} iterations",
    "train.warmup_iters": "{} iterations",
    "train.val_interval": "every {} iterations",
}


def _shown(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return UNITS.get(key, "{}").format(text)
