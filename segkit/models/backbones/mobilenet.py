"""torchvision MobileNetV2 as a dilatable backbone, with the padding and dilation variants that
other DeepLab implementations of MobileNetV2 use."""

from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from segkit.models.backbones.base import DILATABLE_STRIDES, Backbone, check_stride


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features[0:18]`` (the final 1x1 conv to 1280 is dropped).

    Parameter names equal torchvision's (``features.N...``) whatever the options, so its
    ImageNet weights load. Output stride 8/16 turns the later stride-2 depthwise convolutions
    into dilated ones. The defaults are torchvision's network; the options change only where
    zeros are padded and which blocks are dilated, never the parameters.

    Args:
        output_stride: 8, 16 or 32.
        pad_block_input: each inverted-residual block zero-pads its input by its depthwise
            conv's reach (the dilation) before the 1x1 expansion, whose BN and ReLU6 thus see
            the padding, and its depthwise conv is unpadded (as VainF/DeepLabV3Plus-Pytorch
            and jfzhang95/pytorch-deeplab-xception); false: the depthwise conv pads its own
            input (torchvision).
        pad_stem: the stem's 3x3 stride-2 conv pads its input by 1 (torchvision); false:
            unpadded, so every map is about one stem pixel smaller (as
            VainF/DeepLabV3Plus-Pytorch).
        dilate_from_next_stage: once the output stride is reached, the whole stage that would
            have strided runs at the current dilation and the dilation doubles from the next
            stage on (as jfzhang95/pytorch-deeplab-xception); false: the stage's first block
            keeps the current dilation and its later blocks get the doubled one (torchvision's
            ResNet rule, as VainF/DeepLabV3Plus-Pytorch).
    """

    TAPS = (3, 6, 13, 17)  # index of the last block at strides 4, 8, 16, 32

    def __init__(
        self,
        output_stride: int,
        *,
        pad_block_input: bool = False,
        pad_stem: bool = True,
        dilate_from_next_stage: bool = False,
    ) -> None:
        super().__init__()
        check_stride("mobilenet_v2", output_stride, DILATABLE_STRIDES)
        self.features = torchvision.models.mobilenet_v2(weights=None).features[:18]
        dilate_blocks(self.features[1:], output_stride, from_next_stage=dilate_from_next_stage)
        if pad_block_input:
            for index in range(1, len(self.features)):
                self.features[index] = InputPaddedBlock(self.features[index])
        if not pad_stem:
            self.features[0][0].padding = (0, 0)
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


class InputPaddedBlock(nn.Module):
    """An inverted-residual block that zero-pads its input instead of its depthwise conv.

    Takes over ``block.conv`` under the same name (parameter names stay torchvision's) and
    moves the depthwise conv's padding in front of the whole block, so the 1x1 expansion (and
    its BN and ReLU6) runs on the padded map; the residual adds the unpadded input. Output
    sizes are unchanged.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv = block.conv
        self.use_res_connect = block.use_res_connect
        depthwise = _depthwise(block)
        pad_h, pad_w = depthwise.padding
        self.padding = (pad_w, pad_w, pad_h, pad_h)
        depthwise.padding = (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.pad(x, self.padding))
        return x + out if self.use_res_connect else out


def dilate_blocks(blocks: nn.Sequential, output_stride: int, *, from_next_stage: bool) -> None:
    """Replace striding by dilation in MobileNetV2's inverted-residual blocks.

    ``blocks`` follow the stride-2 stem. A stride-2 depthwise conv met once the running stride
    equals ``output_stride`` becomes stride 1 at the current dilation; the dilation then
    doubles for the blocks after it (``from_next_stage=False``) or only from the next stage on
    (``True``). A stage starts at each block without a residual connection (every stage of
    MobileNetV2 changes the width or strides in its first block). Depthwise padding follows
    the dilation, keeping sizes.
    """
    stride, dilation, deferred = 2, 1, 1
    for block in blocks:
        if not block.use_res_connect:  # a new stage
            dilation, deferred = dilation * deferred, 1
        conv = _depthwise(block)
        block_dilation = dilation
        if conv.stride[0] == 2:
            if stride >= output_stride:
                conv.stride = (1, 1)
                if from_next_stage:
                    deferred = 2
                else:
                    dilation *= 2
            else:
                stride *= 2
        conv.dilation = (block_dilation, block_dilation)
        conv.padding = (block_dilation, block_dilation)


def _depthwise(block: nn.Module) -> nn.Conv2d:
    """The 3x3 depthwise conv of an inverted-residual block."""
    return next(m for m in block.conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
