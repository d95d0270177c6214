"""ResNet-50/101 as dilatable backbones: torchvision's, and timm's deep-stem ("S") variants.

``resnet50``/``resnet101`` are torchvision's networks (7x7 stem). ``resnet50s``/``resnet101s``
replace the 7x7 stem conv by three 3x3 convs (64, 64, 128 channels, the first with stride 2;
BN-ReLU between them, then the usual BN-ReLU-maxpool), as PSPNet, Gluon's ResNet-v1s,
PyTorch-Encoding and FastFCN do; layer1 then reads 128 channels. They are timm's
``resnet50s``/``resnet101s`` modules, so timm's ImageNet weights (``gluon_in1k``) load as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import timm
import torchvision
from torch import Tensor, nn

from segkit.models.backbones.base import DILATABLE_STRIDES, Backbone, check_stride


def _torchvision_body(name: str, output_stride: int) -> nn.Module:
    dilate = [False, output_stride <= 8, output_stride <= 16]
    return getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=dilate)


def _timm_body(name: str, output_stride: int) -> nn.Module:
    # timm dilates with the same rule as torchvision: the first block of a dilated stage keeps
    # the previous dilation, its later blocks get the doubled one.
    return timm.create_model(name, pretrained=False, num_classes=0, output_stride=output_stride)


# Backbone name -> function(output_stride) returning the classification network whose stem,
# layer1..layer4 the backbone takes over (with their parameter names).
RESNETS: dict[str, Callable[[int], nn.Module]] = {
    "resnet50": partial(_torchvision_body, "resnet50"),
    "resnet101": partial(_torchvision_body, "resnet101"),
    "resnet50s": partial(_timm_body, "resnet50s"),
    "resnet101s": partial(_timm_body, "resnet101s"),
}


class ResNetBackbone(Backbone):
    """A ResNet-50/101 (:data:`RESNETS`) with its classification network's parameter names
    (``conv1``, ``bn1``, ``layer1``...; a deep stem's convs are ``conv1.0``, ``conv1.3``,
    ``conv1.6``), so ImageNet files load as is.

    Output stride 8 or 16 replaces the stride of layer3/layer4 by dilation (torchvision's
    ``replace_stride_with_dilation``, timm's ``output_stride``: the same rule). ``multi_grid``
    (DeepLabV3, e.g. ``(1, 2, 4)``) multiplies the dilation of layer4's three blocks by these
    factors.
    """

    def __init__(
        self, depth: str, output_stride: int, multi_grid: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        check_stride(depth, output_stride, DILATABLE_STRIDES)
        body = RESNETS[depth](output_stride)
        self.conv1, self.bn1 = body.conv1, body.bn1
        self.relu = body.relu if hasattr(body, "relu") else body.act1  # torchvision / timm
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
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
