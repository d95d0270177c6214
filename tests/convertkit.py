"""Shared pieces of the checkpoint-conversion tests (``tests/convert``).

The tests use facts, not other projects' code: each source's key names and tensor shapes,
recorded from files its own code wrote, are in ``tests/convert/layouts/<source>.json``
(``{model id: {key: shape}}``). A round trip renames a segkit model's state dict into a
source layout (the inverse of the converter's mapping) and converts it back.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segkit.convert import SOURCES, convert, detect

LAYOUTS = Path(__file__).parent / "convert" / "layouts"


@cache
def layouts(source: str) -> dict[str, dict[str, list[int]]]:
    """The recorded layouts of ``source``: ``{model id: {key: shape}}``."""
    return json.loads((LAYOUTS / f"{source}.json").read_text())


def fake_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, Tensor]:
    """Random tensors of the recorded shapes (positive where a BatchNorm variance goes)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


def to_source(model: nn.Module, shapes: dict[str, list[int]], source: str) -> dict[str, Tensor]:
    """``model``'s weights under the source layout's names (the converter's mapping inverted,
    its ``adjust`` undone)."""
    template = fake_state(shapes)
    found = detect(template, source)
    found.model.update({k: v for k, v in model.config.items() if k in found.model})
    mapping = SOURCES[source].to_segkit(template, found)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    adjust = getattr(SOURCES[source], "adjust", None)
    if adjust is not None:
        adjust(tensors, found, inverse=True)
    state = {key: tensors[target] for key, target in mapping.items()}
    for key in set(shapes) - set(state):  # ignored tensors (an ImageNet fc): any values
        state[key] = template[key]
    return state


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics away from their defaults, eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(
                    torch.rand(module.running_mean.shape, generator=generator) - 0.5
                )
                module.running_var.copy_(
                    torch.rand(module.running_var.shape, generator=generator) + 0.5
                )
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
    return model.eval()


def relative_difference(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||a||``."""
    return float((a - b).norm() / a.norm())


def round_trip(
    model: nn.Module, shapes: dict[str, list[int]], source: str, **overrides: Any
) -> tuple[nn.Module, float]:
    """Convert ``model``'s weights, written in ``source``'s layout, back; returns the converted
    model and the largest relative difference of the outputs at two odd sizes."""
    state = to_source(model, shapes, source)
    converted = convert({"state_dict": state}, source=source, **overrides).model
    worst = 0.0
    with torch.no_grad():
        for size in ((65, 65), (49, 71)):
            x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[1]))
            worst = max(worst, relative_difference(model(x)["out"], converted(x)["out"]))
    return converted, worst
