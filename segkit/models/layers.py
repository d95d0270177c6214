"""Small building blocks shared by heads and necks.

:class:`PooledBatchNorm2d` is the BatchNorm for maps that have been pooled to one pixel (ASPP's
image-level branch). Its rule, and why: a training batch of one image offers such a BatchNorm
a single value per channel (``1 x C x 1 x 1``), whose batch variance is undefined, and
``nn.BatchNorm2d`` stops training with "Expected more than 1 value per channel when training"
(``segkit train --batch-size 1``, or one image per process under DistributedDataParallel).
Whenever a training batch offers exactly one value per channel, :class:`PooledBatchNorm2d`
normalises with its running statistics, as in eval mode, and leaves them (and
``num_batches_tracked``) unchanged: one value carries no variance to learn from. Its weight
and bias, and everything before it, still receive gradients. With two or more values per
channel, and in eval mode, it is exactly ``nn.BatchNorm2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def resize(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``N x C x h x w`` to ``size`` (no-op when already that size);
    ``align_corners`` as in :func:`torch.nn.functional.interpolate`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class PooledBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that uses its running statistics when a training batch offers one
    value per channel (``N * H * W == 1``), instead of raising; see the module docstring.

    Same parameters, buffers and names as ``nn.BatchNorm2d`` (it is a subclass), so
    torchvision checkpoints load, BN folding and ``--freeze-bn`` find it, and eval-mode outputs
    are those of ``nn.BatchNorm2d``. Note that ``nn.SyncBatchNorm.convert_sync_batchnorm``
    replaces it by a plain ``SyncBatchNorm``, which normalises over all processes' values
    instead (enough with two or more processes).

    A model trained only at batch size 1 thus keeps this layer's initial (or pretrained)
    running statistics for good, and training and eval normalise it the same way. Without
    running statistics (``track_running_stats=False``) there is nothing to fall back on and it
    raises at one value per channel, as ``nn.BatchNorm2d`` does.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> same shape."""
        one_value = x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] == 1
        if self.training and one_value and self.running_mean is not None:
            # Eval-mode normalisation: no batch statistics, no running-statistics update.
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                training=False,
                momentum=0.0,
                eps=self.eps,
            )
        return super().forward(x)


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
