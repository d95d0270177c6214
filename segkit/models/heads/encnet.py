"""EncNet (Zhang et al., CVPR 2018): the Encoding layer, the Context Encoding Module, the head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segkit.models.attention import attention_or_identity
from segkit.models.layers import ConvBNReLU, resize

LATERAL_INDICES = (1, 2)  # c2 and c3 in the [c1, c2, c3, c4] feature list


class Encoding(nn.Module):
    """Encoding layer: a learnable residual encoder with ``K`` codewords (Deep TEN / EncNet).

    The ``H*W`` pixels ``x_i`` (D-dimensional) are softly assigned to the codewords ``d_k``
    with smoothing factors ``s_k``, and the weighted residuals are summed over the pixels::

        a_ik = softmax_k(s_k * ||x_i - d_k||^2)      (softmax over the K codewords)
        e_k  = sum_i a_ik * (x_i - d_k)

    The smoothing factors start negative (uniform in [-1, 0)), so nearer codewords get larger
    weights. The sums are computed with matrix products; the ``N x HW x K x D`` residual
    tensor is never materialised.

    Args:
        channels: D, channels of the input.
        num_codes: K, number of codewords.
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))
        self.scale = nn.Parameter(torch.empty(num_codes))
        bound = (num_codes * channels) ** -0.5
        nn.init.uniform_(self.codewords, -bound, bound)
        nn.init.uniform_(self.scale, -1.0, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        """``N x D x H x W`` -> encoded residuals ``N x K x D``."""
        pixels = x.flatten(2).transpose(1, 2)  # N x HW x D
        # ||x - d||^2 = ||x||^2 - 2 x.d + ||d||^2; clamped because rounding can go below zero.
        distances = (
            pixels.pow(2).sum(-1, keepdim=True)
            - 2 * pixels @ self.codewords.t()
            + self.codewords.pow(2).sum(-1)
        ).clamp_min(0)  # N x HW x K
        assignment = torch.softmax(distances * self.scale, dim=-1)
        # sum_i a_ik (x_i - d_k) = (A^T X)_k - (sum_i a_ik) d_k
        weighted = assignment.transpose(1, 2) @ pixels  # N x K x D
        return weighted - assignment.sum(1).unsqueeze(-1) * self.codewords


class ContextEncoding(nn.Module):
    """Context Encoding Module: a global context vector that gates the feature channels.

    1x1 conv-BN-ReLU, :class:`Encoding` (``K`` codes), BatchNorm1d over the K codes, ReLU, mean
    over the codes: the context ``e`` (``N x C``). A fully connected layer and a sigmoid give
    per-channel factors ``gamma`` and the features become ``x * (1 + gamma)``. (PyTorch-Encoding
    and FastFCN take a ReLU of this; in EncNetHead without attention ``x`` comes out of a ReLU,
    so that ReLU changes nothing.)

    BatchNorm1d(K) sees ``N x K x C`` and normalises each code over ``N * C`` values, so it
    trains at batch size 1.

    Args:
        channels: C, channels of the input and of the context.
        num_codes: K, codewords of the Encoding layer.
    """

    def __init__(self, channels: int, num_codes: int = 32) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            ConvBNReLU(channels, channels, kernel_size=1),
            Encoding(channels, num_codes),
            nn.BatchNorm1d(num_codes),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``N x C x H x W`` -> (gated features ``N x C x H x W``, context ``N x C``)."""
        context = self.encode(x).mean(dim=1)
        gamma = self.fc(context)[..., None, None]
        return x * (1 + gamma), context


class EncNetHead(nn.Module):
    """EncNet decode head.

    A conv-BN-ReLU (3x3, or ``input_kernel_size``) from the last map to ``channels`` (512);
    with ``lateral``, ``c2`` and ``c3`` are projected by 1x1 conv-BN-ReLU to ``channels``
    each, resized to the head's resolution and concatenated with the head features, and a
    3x3 conv-BN-ReLU fuses them (its input width is the sum of what is concatenated).
    PyTorch-Encoding and FastFCN concatenate without resizing, which runs only when the three
    maps have one size (a dilated backbone at output stride 8), where the resize is a no-op;
    here the lateral maps also work at other strides and with JPU. Optional attention block,
    then the :class:`ContextEncoding` module, dropout and a 1x1 classifier. With ``se_loss`` a
    linear layer on the context predicts which classes are present (the SE-loss target).

    Args:
        in_channels: channels of the feature list ``[c1, c2, c3, c4]`` the head receives.
        num_classes: output classes.
        channels: width of the head.
        input_kernel_size: kernel size of the first conv, which reduces the last map to
            ``channels``: 3, or 1 for a pointwise reduction (FastFCN's EncNet on JPU
            features); odd, so the map keeps its size.
        num_codes: codewords of the Encoding layer.
        lateral: fuse ``c2`` and ``c3`` into the head.
        se_loss: also return class-presence logits ``"se"``.
        dropout: dropout probability before the classifier.
        attention: attention block on the (fused) head features (see
            :func:`~segkit.models.attention.build_attention`).
        align_corners: resize the lateral maps with ``align_corners=True``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        input_kernel_size: int = 3,
        num_codes: int = 32,
        lateral: bool = False,
        se_loss: bool = False,
        dropout: float = 0.1,
        attention: str | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        if num_codes < 1:
            raise ValueError(f"num_codes must be a positive integer, got {num_codes!r}")
        if input_kernel_size < 1 or input_kernel_size % 2 == 0:
            raise ValueError(
                f"input_kernel_size must be a positive odd integer (1, 3, ...) so the map "
                f"keeps its size, got {input_kernel_size!r}"
            )
        self.conv = ConvBNReLU(in_channels[-1], channels, kernel_size=input_kernel_size)
        self.lateral = (
            nn.ModuleList(
                ConvBNReLU(in_channels[i], channels, kernel_size=1) for i in LATERAL_INDICES
            )
            if lateral
            else None
        )
        if self.lateral is not None:
            fused = channels * (1 + len(self.lateral))
            self.fusion = ConvBNReLU(fused, channels, kernel_size=3)
        self.attention = attention_or_identity(attention, channels)
        self.context = ContextEncoding(channels, num_codes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))
        self.se_classifier = nn.Linear(channels, num_classes) if se_loss else None

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """Reads ``features[-1]`` (and ``c2``, ``c3`` with ``lateral``).

        Returns:
            ``{"out": N x num_classes x h x w}`` at the last map's size, plus
            ``"se": N x num_classes`` presence logits with ``se_loss``.
        """
        x = self.conv(features[-1])
        if self.lateral is not None:
            size = x.shape[-2:]
            laterals = [
                resize(conv(features[i]), size, self.align_corners)
                for conv, i in zip(self.lateral, LATERAL_INDICES, strict=True)
            ]
            x = self.fusion(torch.cat([x, *laterals], dim=1))
        x, context = self.context(self.attention(x))
        result = {"out": self.classifier(x)}
        if self.se_classifier is not None:
            result["se"] = self.se_classifier(context)
        return result
