"""Small building blocks shared by heads and necks."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of ``N x C x h x w`` to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, with 'same' padding for the given dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Atrous separable convolution of DeepLabV3+: depthwise 3x3 (dilated) -> BN -> ReLU ->
    pointwise 1x1 -> BN -> ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, kernel_size, dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, kernel_size=1),
        )


def conv_bn_relu(
    in_channels: int, out_channels: int, *, dilation: int = 1, separable: bool = False
) -> nn.Sequential:
    """A 3x3 conv-BN-ReLU, plain or atrous separable."""
    block = SeparableConvBNReLU if separable else ConvBNReLU
    return block(in_channels, out_channels, 3, dilation)
