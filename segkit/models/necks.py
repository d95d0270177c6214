"""Necks: modules between the backbone and the decode head (``features -> features``).

A neck keeps the backbone's list contract (``[c1, c2, c3, c4]``) and describes its output the
way a :class:`~segkit.models.backbones.Backbone` does (``channels``, ``reductions``,
``output_stride``), so head builders size themselves from either without a forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from segkit.models.layers import ConvBNReLU, resize

JPU_STRIDES = (8, 16, 32)  # strides JPU needs for c2, c3, c4


class FeatureSpec(Protocol):
    """What a head builder may read about the feature list it will receive.

    Satisfied by every :class:`~segkit.models.backbones.Backbone` and by every neck.

    Attributes:
        channels: channel count of each map in the list.
        reductions: stride of each map relative to the input.
        output_stride: stride of the last map, the one decode heads read.
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    output_stride: int


def _separable_branch(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    """FastFCN's separable conv: dilated depthwise 3x3 -> BN -> pointwise 1x1 -> BN -> ReLU.

    Unlike :class:`~segkit.models.layers.SeparableConvBNReLU` there is no ReLU between the
    depthwise and the pointwise convolution, as in the FastFCN paper's JPU.
    """
    return nn.Sequential(
        Conv2dNormActivation(
            in_channels,
            in_channels,
            3,
            groups=in_channels,
            dilation=dilation,
            activation_layer=None,
        ),
        Conv2dNormActivation(in_channels, out_channels, 1),
    )


class JPU(nn.Module):
    """Joint Pyramid Upsampling (FastFCN, Wu et al. 2019): stride-8 features without dilation.

    ``c2``, ``c3`` and ``c4`` (strides 8, 16, 32) each go through a 3x3 conv-BN-ReLU to
    ``width`` channels, ``c3`` and ``c4`` are upsampled to ``c2``'s size and the three are
    concatenated; four parallel separable 3x3 convolutions with dilations 1, 2, 4, 8 read the
    concatenation and their outputs are concatenated again: ``len(dilations) * width`` channels
    at stride 8. This replaces the dilated last two stages of a "DilatedFCN" backbone at a
    fraction of the cost.

    ``forward`` returns the input list with ``c4`` replaced by the JPU output; ``c1``..``c3``
    pass through unchanged (the auxiliary head and EncNet's lateral branch read ``c2``/``c3``).

    Args:
        in_channels: channels of the backbone maps (``backbone.channels``).
        reductions: strides of the backbone maps (``backbone.reductions``); the last three
            must be 8, 16 and 32, i.e. a backbone at output stride 32 (no dilation).
        width: channels of each projection and of each dilated branch.
        dilations: rates of the parallel separable convolutions.
        align_corners: upsample ``c3`` and ``c4`` with ``align_corners=True`` (FastFCN).

    Attributes:
        channels, reductions, output_stride: description of the output list, as a Backbone's.

    Raises:
        ValueError: the backbone's last three maps are not at strides 8, 16, 32.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        *,
        width: int = 512,
        dilations: Sequence[int] = (1, 2, 4, 8),
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        if len(in_channels) < 3 or tuple(reductions[-3:]) != JPU_STRIDES:
            raise ValueError(
                f"JPU needs backbone maps c2, c3, c4 at strides {list(JPU_STRIDES)}, got "
                f"strides {list(reductions)}. Build the backbone at output_stride=32 (JPU "
                "replaces dilation); backbones with a fixed stride (HRNetV2) cannot use JPU."
            )
        self.convs = nn.ModuleList(ConvBNReLU(c, width, kernel_size=3) for c in in_channels[-3:])
        self.dilations = nn.ModuleList(
            _separable_branch(len(self.convs) * width, width, rate) for rate in dilations
        )
        self.channels = (*in_channels[:-1], len(dilations) * width)
        self.reductions = (*reductions[:-1], JPU_STRIDES[0])
        self.output_stride = JPU_STRIDES[0]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[c1, c2, c3, c4]`` -> ``[c1, c2, c3, N x 4*width x h8 x w8]`` (``c2``'s size)."""
        size = features[-3].shape[-2:]
        projected = [
            resize(conv(feature), size, self.align_corners)
            for conv, feature in zip(self.convs, features[-3:], strict=True)
        ]
        joint = torch.cat(projected, dim=1)
        out = torch.cat([branch(joint) for branch in self.dilations], dim=1)
        return [*features[:-1], out]
