"""The backbone contract: four feature maps and their description."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

DILATABLE_STRIDES = (8, 16, 32)


class Backbone(nn.Module):
    """Base class: ``forward(x: N x 3 x H x W) -> [c1, c2, c3, c4]``.

    Attributes:
        channels: channel count of each returned map.
        reductions: effective stride of each returned map relative to the input.
        output_stride: stride of ``c4``, the map the decode head reads.
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    output_stride: int


def check_stride(name: str, output_stride: int, valid: Sequence[int], hint: str = "") -> None:
    if output_stride not in valid:
        reason = f" ({hint})" if hint else ""
        raise ValueError(
            f"output_stride={output_stride!r} is not supported by backbone {name!r}{reason}; "
            f"choose one of {list(valid)}."
        )


def zero_init_residual(module: nn.Module) -> int:
    """Set the scale of the last BatchNorm of every residual branch in ``module`` to zero, so
    each residual block starts as the identity (Goyal et al. 2017; timm's ResNets start so by
    default, torchvision's with ``zero_init_residual=True``). Returns the number of blocks set.

    Knows torchvision's ``Bottleneck``/``BasicBlock``, the inverted residuals that add their
    input (torchvision's ``use_res_connect``, timm's ``has_skip``), and every block with timm's
    ``zero_init_last()``.
    """
    count = 0
    for block in module.modules():
        if hasattr(block, "zero_init_last"):
            block.zero_init_last()
        elif isinstance(block, Bottleneck):
            nn.init.zeros_(block.bn3.weight)
        elif isinstance(block, BasicBlock):
            nn.init.zeros_(block.bn2.weight)
        elif getattr(block, "use_res_connect", False) and isinstance(block.conv[-1], _BN):
            nn.init.zeros_(block.conv[-1].weight)  # torchvision's MobileNetV2
        elif getattr(block, "has_skip", False) and isinstance(_last_norm(block), _BN):
            nn.init.zeros_(_last_norm(block).weight)  # timm's EfficientNet/MobileNet blocks
        else:
            continue
        count += 1
    return count


_BN = nn.modules.batchnorm._BatchNorm


def _last_norm(block: nn.Module) -> nn.Module | None:
    return getattr(block, "bn3", None) or getattr(block, "bn2", None)
