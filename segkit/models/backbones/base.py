"""The backbone contract: four feature maps and their description."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

DILATABLE_STRIDES = (8, 16, 32)


class Backbone(nn.Module):
    """Base class: ``forward(x: N x 3 x H x W) -> [c1, c2, c3, c4]``.

    Attributes:
        channels: channel count of each returned map.
        reductions: effective stride of each returned map relative to the input.
        output_stride: stride of ``c4``, the map the decode head reads.
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    output_stride: int


def check_stride(name: str, output_stride: int, valid: Sequence[int], hint: str = "") -> None:
    if output_stride not in valid:
        reason = f" ({hint})" if hint else ""
        raise ValueError(
            f"output_stride={output_stride!r} is not supported by backbone {name!r}{reason}; "
            f"choose one of {list(valid)}."
        )
