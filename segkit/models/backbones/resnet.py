"""torchvision ResNet-50/101 as a dilatable backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn

from segkit.models.backbones.base import DILATABLE_STRIDES, Backbone, check_stride

RESNETS = {"resnet50": torchvision.models.resnet50, "resnet101": torchvision.models.resnet101}


class ResNetBackbone(Backbone):
    """torchvision ResNet-50/101 with the same parameter names, so ImageNet files load as is.

    Output stride 8 or 16 replaces the stride of layer3/layer4 by dilation (torchvision's
    ``replace_stride_with_dilation``). ``multi_grid`` (DeepLabV3, e.g. ``(1, 2, 4)``) multiplies the
    dilation of layer4's three blocks by these factors.
    """

    def __init__(
        self, depth: str, output_stride: int, multi_grid: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        check_stride(depth, output_stride, DILATABLE_STRIDES)
        dilate = [False, output_stride <= 8, output_stride <= 16]
        body = RESNETS[depth](weights=None, replace_stride_with_dilation=dilate)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(body, name))
        if multi_grid is not None:
            _apply_multi_grid(self.layer4, multi_grid, base=32 // output_stride)
        self.channels = (256, 512, 1024, 2048)
        self.reductions = (4, 8, min(16, output_stride), output_stride)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]


def _apply_multi_grid(layer: nn.Sequential, grid: Sequence[int], base: int) -> None:
    grid = tuple(int(g) for g in grid)
    if len(grid) != len(layer) or min(grid) < 1:
        raise ValueError(
            f"multi_grid={grid} must give one positive factor per layer4 block "
            f"({len(layer)} blocks), e.g. (1, 2, 4)"
        )
    for block, factor in zip(layer, grid, strict=True):
        rate = base * factor
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)
