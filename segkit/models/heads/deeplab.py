"""DeepLabV3 (ASPP head) and DeepLabV3+ (ASPP + decoder) heads."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segkit.models.attention import attention_or_identity, build_attention
from segkit.models.layers import ConvBNReLU, PooledBatchNorm2d, conv_bn_relu, resize

BASE_RATES = (6, 12, 18)  # the paper's rates at output stride 16


def default_aspp_rates(output_stride: int) -> tuple[int, ...]:
    """ASPP rates that keep the same field of view in input pixels: (6, 12, 18) at output
    stride 16, (12, 24, 36) at 8, (3, 6, 9) at 32 (and (24, 48, 72) for stride-4 HRNetV2)."""
    return tuple(max(1, rate * 16 // output_stride) for rate in BASE_RATES)


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv-BN-ReLU, broadcast back.

    The BN sees one value per channel per image, so it is a :class:`PooledBatchNorm2d`: at
    training batch size 1 it normalises with its running statistics instead of failing.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            PooledBatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return resize(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3), torchvision's layout and parameter names.

    Branches: 1x1 conv, one 3x3 atrous conv per rate, image pooling; all ``out_channels`` wide,
    concatenated and projected by a 1x1 conv-BN-ReLU with dropout.

    Args:
        in_channels: channels of the input map.
        rates: dilation of each 3x3 branch.
        out_channels: width of every branch and of the output.
        dropout: dropout after the projection.
        separable: atrous separable convolutions in the 3x3 branches (DeepLabV3+ paper).
    """

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int],
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: bool = False,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, kernel_size=1)]
        branches += [
            conv_bn_relu(in_channels, out_channels, dilation=rate, separable=separable)
            for rate in rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """N x in_channels x h x w -> N x out_channels x h x w."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3Head(nn.Sequential):
    """ASPP, 3x3 conv-BN-ReLU, (attention), 1x1 classifier.

    Without attention this is torchvision's ``DeepLabHead`` layout, so its ``classifier.*``
    parameters load unchanged. An attention block goes after the 3x3 conv-BN-ReLU (index 4,
    as in :class:`~segkit.models.heads.fcn.FCNHead`: on the features the classifier reads),
    which shifts the classifier's name to ``5``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        aspp_rates: Sequence[int],
        aspp_channels: int = 256,
        aspp_dropout: float = 0.5,
        separable: bool = False,
        attention: str | None = None,
    ) -> None:
        layers = [
            ASPP(in_channels, aspp_rates, aspp_channels, aspp_dropout, separable),
            nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(aspp_channels),
            nn.ReLU(inplace=True),
        ]
        block = build_attention(attention, aspp_channels)
        if block is not None:
            layers.append(block)
        layers.append(nn.Conv2d(aspp_channels, num_classes, 1))
        super().__init__(*layers)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """Reads ``features[-1]``; returns ``{"out": N x num_classes x h x w}``."""
        return {"out": super().forward(features[-1])}


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ (Chen et al. 2018): ASPP on the deepest map plus a decoder.

    The stride-4 low-level map is projected by a 1x1 conv to ``low_level_channels`` (48), the
    ASPP output is upsampled to its size and concatenated (ASPP first), ``decoder_convs`` 3x3
    convs of ``decoder_channels`` (two in the paper) refine the result and a 1x1 conv
    classifies (logits at stride 4).

    ``attention`` (the road-extraction variant, e.g. for Massachusetts Roads) adds one attention
    block after ASPP and one on the projected low-level features, both before the concatenation.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        aspp_rates: Sequence[int],
        aspp_channels: int = 256,
        aspp_dropout: float = 0.5,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        decoder_convs: int = 2,
        separable: bool = False,
        attention: str | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be 1 or more, got {decoder_convs!r}")
        self.align_corners = align_corners
        self.aspp = ASPP(in_channels[-1], aspp_rates, aspp_channels, aspp_dropout, separable)
        self.low_level = ConvBNReLU(in_channels[0], low_level_channels, kernel_size=1)
        # Identity (no parameters) when attention is None: the state dict is unchanged.
        self.aspp_attention = attention_or_identity(attention, aspp_channels)
        self.low_level_attention = attention_or_identity(attention, low_level_channels)
        widths = [aspp_channels + low_level_channels] + [decoder_channels] * decoder_convs
        self.decoder = nn.Sequential(
            *(
                conv_bn_relu(width_in, width_out, separable=separable)
                for width_in, width_out in itertools.pairwise(widths)
            )
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """Reads ``features[0]`` (stride 4) and ``features[-1]``; logits at stride 4."""
        low = self.low_level_attention(self.low_level(features[0]))
        high = self.aspp_attention(self.aspp(features[-1]))
        high = resize(high, low.shape[-2:], self.align_corners)
        return {"out": self.classifier(self.decoder(torch.cat([high, low], dim=1)))}
