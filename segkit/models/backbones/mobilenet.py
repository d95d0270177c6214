"""torchvision MobileNetV2 as a dilatable backbone."""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from segkit.models.backbones.base import DILATABLE_STRIDES, Backbone, check_stride


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features[0:18]`` (the final 1x1 conv to 1280 is dropped).

    Parameter names equal torchvision's (``features.N...``). Output stride 8/16 turns the later
    stride-2 depthwise convolutions into dilated ones.
    """

    TAPS = (3, 6, 13, 17)  # index of the last block at strides 4, 8, 16, 32

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        check_stride("mobilenet_v2", output_stride, DILATABLE_STRIDES)
        self.features = torchvision.models.mobilenet_v2(weights=None).features[:18]
        dilate_after_stride(self.features, output_stride)
        self.channels = (24, 32, 96, 320)
        self.reductions = (4, 8, min(16, output_stride), output_stride)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self.TAPS:
                outs.append(x)
        return outs


def dilate_after_stride(module: nn.Module, output_stride: int) -> None:
    """Replace striding by dilation once ``output_stride`` is reached (in module order).

    Walks the convolutions in registration order, which equals execution order for sequential
    bodies. A stride-2 convolution met when the running stride already equals ``output_stride``
    becomes stride 1; it keeps the current dilation and every later spatial convolution gets
    twice as much (torchvision's ResNet rule), with padding adjusted to keep sizes.
    """
    stride, dilation = 1, 1
    for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
        next_dilation = dilation
        if conv.stride[0] == 2:
            if stride >= output_stride:
                conv.stride = (1, 1)
                next_dilation = dilation * 2
            else:
                stride *= 2
        if conv.kernel_size[0] > 1:
            conv.dilation = (dilation, dilation)
            conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)
        dilation = next_dilation
