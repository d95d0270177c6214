"""HRNetV2 (timm body) as a backbone."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.models.backbones.base import Backbone, check_stride

HRNETS = {"hrnetv2_w18": "hrnet_w18", "hrnetv2_w32": "hrnet_w32", "hrnetv2_w48": "hrnet_w48"}
LAYER1_CHANNELS = 256  # the stem's bottleneck stage, for every width


class HRNetV2Backbone(Backbone):
    """HRNetV2 (timm body): the four branches, and their stride-4 concatenation as ``c4``.

    Returns ``[b1, b2, b3, concat]``: the stride-4/8/16 branches, then all four branches
    upsampled to stride 4 (bilinear) and concatenated (HRNetV2's representation, what heads
    read). The stride is fixed by design at 4. Inputs whose sides are not multiples of 32 are
    zero-padded for the body (its fuse layers need exact factor-2 sizes) and the maps cropped
    back. Parameter names are timm's (``body.*``) whatever the options.

    Args:
        name: ``hrnetv2_w18``, ``hrnetv2_w32`` or ``hrnetv2_w48``.
        output_stride: 4.
        stem_mid_relu: a ReLU between the stem's first conv-BN and its second conv (HRNet);
            false: none, the first BN feeds the second conv directly (as
            VainF/DeepLabV3Plus-Pytorch's models run, whose layer getter calls the network's
            modules in registration order and so applies its one stem ReLU only once).
        c1_from_layer1: return the output of ``layer1`` (the stem's bottleneck stage, 256
            channels at stride 4, before the branches split) as ``c1``, the map DeepLabV3+
            reads as low-level features, instead of the stride-4 branch (as
            VainF/DeepLabV3Plus-Pytorch).
    """

    def __init__(
        self,
        name: str,
        output_stride: int,
        *,
        stem_mid_relu: bool = True,
        c1_from_layer1: bool = False,
    ) -> None:
        super().__init__()
        check_stride(name, output_stride, (4,), hint="HRNetV2 keeps a stride-4 branch by design")
        self.body = timm.create_model(
            HRNETS[name], features_only=True, pretrained=False, feature_location=""
        )
        if not stem_mid_relu:
            self.body.act1 = nn.Identity()
        self.c1_from_layer1 = c1_from_layer1
        branches = tuple(self.body.feature_info.channels())[1:]
        first = LAYER1_CHANNELS if c1_from_layer1 else branches[0]
        self.channels = (first, *branches[1:3], sum(branches))
        self.reductions = (4, 8, 16, 4)
        self.output_stride = 4

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, _ceil_div(width, 32) * 32 - width, 0, _ceil_div(height, 32) * 32 - height))
        layer1, branches = self._body(x)
        branches = [
            b[..., : _ceil_div(height, 4 << i), : _ceil_div(width, 4 << i)]
            for i, b in enumerate(branches)
        ]
        size = branches[0].shape[-2:]
        upsampled = [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[1:]
        ]
        first = layer1[..., : size[0], : size[1]] if self.c1_from_layer1 else branches[0]
        return [first, *branches[1:3], torch.cat([branches[0], *upsampled], dim=1)]

    def _body(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output of ``layer1`` and the four branches of the last stage.

        timm's feature forward does not return ``layer1``, so the stages are chained here
        from timm's modules: each transition opens a branch from the lowest-resolution one
        and passes the others through (``Identity``).
        """
        body = self.body
        x = body.act1(body.bn1(body.conv1(x)))
        x = body.act2(body.bn2(body.conv2(x)))
        layer1 = body.layer1(x)
        branches = [transition(layer1) for transition in body.transition1]
        branches = body.stage2(branches)
        for transition, stage in ((body.transition2, body.stage3), (body.transition3, body.stage4)):
            branches = stage(
                [
                    branches[i] if isinstance(t, nn.Identity) else t(branches[-1])
                    for i, t in enumerate(transition)
                ]
            )
        return layer1, branches


def _ceil_div(size: int, factor: int) -> int:
    """``ceil(size / factor)`` for a size (a symbolic int under torch.export) and a constant.

    Written with non-negative operands only: torch.export keeps ``//`` on a symbolic size in
    the graph and the ONNX exporter turns it into an integer ``Div``, which truncates toward
    zero where Python floors. The usual ``-(-size // factor)`` thus exports as
    ``floor(size / factor)``, and a dynamic-size HRNetV2 graph cropped its branches one row or
    column short at sizes that are not multiples of ``factor``.
    """
    return (size + factor - 1) // factor
