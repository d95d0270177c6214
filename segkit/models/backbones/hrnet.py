"""HRNetV2 (timm body) as a backbone."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from segkit.models.backbones.base import Backbone, check_stride

HRNETS = {"hrnetv2_w18": "hrnet_w18", "hrnetv2_w32": "hrnet_w32", "hrnetv2_w48": "hrnet_w48"}


class HRNetV2Backbone(Backbone):
    """HRNetV2 (timm body): the four branches, and their stride-4 concatenation as ``c4``.

    Returns ``[b1, b2, b3, concat]``: the stride-4/8/16 branches, then all four branches
    upsampled to stride 4 and concatenated (HRNetV2's representation, what heads read). The
    stride is fixed by design at 4. Inputs whose sides are not multiples of 32 are zero-padded
    for the body (its fuse layers need exact factor-2 sizes) and the maps cropped back.
    """

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__()
        check_stride(name, output_stride, (4,), hint="HRNetV2 keeps a stride-4 branch by design")
        self.body = timm.create_model(
            HRNETS[name], features_only=True, pretrained=False, feature_location=""
        )
        branches = tuple(self.body.feature_info.channels())[1:]
        self.channels = (*branches[:3], sum(branches))
        self.reductions = (4, 8, 16, 4)
        self.output_stride = 4

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, _ceil_div(width, 32) * 32 - width, 0, _ceil_div(height, 32) * 32 - height))
        branches = self.body(x)[1:]  # drop the stride-2 stem
        branches = [
            b[..., : _ceil_div(height, 4 << i), : _ceil_div(width, 4 << i)]
            for i, b in enumerate(branches)
        ]
        size = branches[0].shape[-2:]
        upsampled = [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[1:]
        ]
        return [*branches[:3], torch.cat([branches[0], *upsampled], dim=1)]


def _ceil_div(size: int, factor: int) -> int:
    """``ceil(size / factor)`` for a size (a symbolic int under torch.export) and a constant.

    Written with non-negative operands only: torch.export keeps ``//`` on a symbolic size in
    the graph and the ONNX exporter turns it into an integer ``Div``, which truncates toward
    zero where Python floors. The usual ``-(-size // factor)`` thus exports as
    ``floor(size / factor)``, and a dynamic-size HRNetV2 graph cropped its branches one row or
    column short at sizes that are not multiples of ``factor``.
    """
    return (size + factor - 1) // factor
