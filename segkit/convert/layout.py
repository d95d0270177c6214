"""What the source modules share: the :class:`Found` result and renaming helpers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


class ConversionError(ValueError):
    """The file matches no known layout, or its tensors do not fill the model exactly."""


@dataclass
class Found:
    """What a source module found in a file.

    Attributes:
        source: the key of :data:`SOURCES`.
        model: :func:`segkit.create_model` arguments that compute the source model's function
            (``name``, ``backbone``, ``num_classes``, ``output_stride`` and options).
        details: what was detected, for the report (``{"depth": 101, "aux": True, ...}``).
    """

    source: str
    model: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


def regex_mapping(keys: list[str], rules: list[tuple[str, str]]) -> dict[str, str]:
    """``{key: new name}`` for every key that one of ``rules`` (``(pattern, replacement)``,
    tried in order, the first full match wins) renames; other keys are left out."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    mapping = {}
    for key in keys:
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                mapping[key] = pattern.sub(replacement, key)
                break
    return mapping


def resnet_depth(state: Mapping[str, Tensor], layer3: str) -> int | None:
    """50 or 101 from the number of blocks under ``layer3`` (``"backbone.layer3."``): 6 or 23;
    ``None`` for another count."""
    blocks = {int(k[len(layer3) :].split(".", 1)[0]) for k in state if k.startswith(layer3)}
    return {6: 50, 23: 101}.get(len(blocks))


def out_channels(state: Mapping[str, Tensor], key: str) -> int:
    """Output channels (rows) of a convolution or linear weight."""
    return int(state[key].shape[0])
