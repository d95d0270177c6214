"""Backbones: torchvision and timm bodies wired for dense prediction.

Every backbone returns four feature maps ``[c1, c2, c3, c4]`` (nominal strides 4, 8, 16 and 32)
and describes them without a forward pass through ``channels`` and ``reductions`` (the effective
stride of each map once dilation has replaced striding). Heads read ``c4`` (``features[-1]``),
DeepLabV3+ reads the stride-4 ``c1`` as its low-level input, the auxiliary head and FCN-8s read
``c3``/``c2``. The bodies come from torchvision and timm; segkit writes only the wiring: dilation
instead of stride for output stride 8/16, multi-grid rates, and which maps to return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

RESNETS = {"resnet50": torchvision.models.resnet50, "resnet101": torchvision.models.resnet101}
HRNETS = {"hrnetv2_w18": "hrnet_w18", "hrnetv2_w32": "hrnet_w32", "hrnetv2_w48": "hrnet_w48"}
TIMM_PREFIX = "timm:"
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
        _check_stride(depth, output_stride, DILATABLE_STRIDES)
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


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features[0:18]`` (the final 1x1 conv to 1280 is dropped).

    Parameter names equal torchvision's (``features.N...``). Output stride 8/16 turns the later
    stride-2 depthwise convolutions into dilated ones.
    """

    TAPS = (3, 6, 13, 17)  # index of the last block at strides 4, 8, 16, 32

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        _check_stride("mobilenet_v2", output_stride, DILATABLE_STRIDES)
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


class TimmBackbone(Backbone):
    """Any timm model with ``features_only``: its last four feature levels.

    ``output_stride`` is passed to timm, which dilates the models that support it; 32 means the
    model as designed. Parameter names are timm's feature-extractor names (top-level ``.`` of
    flattened sequentials become ``_``); :func:`segkit.load_weights` matches both spellings.
    """

    def __init__(self, name: str, output_stride: int, **timm_kwargs: object) -> None:
        super().__init__()
        if name not in timm.list_models():
            close = timm.list_models(f"*{name}*")[:10]
            raise ValueError(
                f"Unknown timm model {name!r}. Similar timm models: {close or 'none'}; "
                "see timm.list_models() for all."
            )
        kwargs = dict(timm_kwargs, features_only=True, pretrained=False)
        kwargs["out_indices"] = (-4, -3, -2, -1)  # the last four levels, strides 4..32
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.body = timm.create_model(name, **kwargs)
        except (TypeError, AssertionError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"timm model {name!r} cannot be built as a 4-level feature extractor with "
                f"output_stride={output_stride} ({err}). Try output_stride=32 (no dilation) or "
                "another timm model."
            ) from err
        self.channels = tuple(self.body.feature_info.channels())
        self.reductions = tuple(self.body.feature_info.reduction())
        self.output_stride = self.reductions[-1]
        if self.output_stride != output_stride:
            raise ValueError(
                f"timm model {name!r} gives output stride {self.output_stride}, not the "
                f"{output_stride} asked for: it does not support dilation. Use "
                f"output_stride={self.output_stride}."
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


class HRNetV2Backbone(Backbone):
    """HRNetV2 (timm body): the four branches, and their stride-4 concatenation as ``c4``.

    Returns ``[b1, b2, b3, concat]``: the stride-4/8/16 branches, then all four branches
    upsampled to stride 4 and concatenated (HRNetV2's representation, what heads read). The
    stride is fixed by design at 4. Inputs whose sides are not multiples of 32 are zero-padded
    for the body (its fuse layers need exact factor-2 sizes) and the maps cropped back.
    """

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__()
        _check_stride(name, output_stride, (4,), hint="HRNetV2 keeps a stride-4 branch by design")
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


@dataclass(frozen=True)
class BackboneEntry:
    """One row of :data:`BACKBONES`.

    Attributes:
        build: ``build(output_stride, multi_grid) -> Backbone``.
        strides: the output strides the backbone supports.
        default_stride: the stride used when none is given.
        weights: file name of the ImageNet weights it loads as is (torchvision's name, or the
            timm model whose checkpoint fits), for messages and ``pretrained_backbone=True``.
        source: ``"torchvision:<weights enum>"`` or ``"timm:<model>"``: where those weights come
            from when downloading is asked for.
        multi_grid: whether it takes ``multi_grid`` (ResNet layer4).
    """

    build: Callable[[int, Sequence[int] | None], Backbone]
    strides: tuple[int, ...]
    default_stride: int
    weights: str
    source: str
    multi_grid: bool = False


def _resnet(depth: str) -> Callable[[int, Sequence[int] | None], Backbone]:
    return partial(ResNetBackbone, depth)


def _no_grid(
    build: Callable[[int], Backbone],
) -> Callable[[int, Sequence[int] | None], Backbone]:
    return lambda output_stride, multi_grid=None: build(output_stride)


# One hop from a name to the code: every named backbone, what it supports and its weights.
BACKBONES: dict[str, BackboneEntry] = {
    "resnet50": BackboneEntry(
        _resnet("resnet50"), DILATABLE_STRIDES, 16, "resnet50-0676ba61.pth",
        "torchvision:ResNet50_Weights", multi_grid=True,
    ),
    "resnet101": BackboneEntry(
        _resnet("resnet101"), DILATABLE_STRIDES, 16, "resnet101-63fe2227.pth",
        "torchvision:ResNet101_Weights", multi_grid=True,
    ),
    "mobilenet_v2": BackboneEntry(
        _no_grid(MobileNetV2Backbone), DILATABLE_STRIDES, 16, "mobilenet_v2-b0353104.pth",
        "torchvision:MobileNet_V2_Weights",
    ),
    "xception65": BackboneEntry(
        _no_grid(partial(TimmBackbone, "xception65")), DILATABLE_STRIDES, 16,
        "timm xception65 (aligned Xception)", "timm:xception65",
    ),
    **{
        name: BackboneEntry(
            _no_grid(partial(HRNetV2Backbone, name)), (4,), 4, f"timm {timm_name}",
            f"timm:{timm_name}",
        )
        for name, timm_name in HRNETS.items()
    },
}  # fmt: skip


def backbone_entry(name: str) -> BackboneEntry:
    """The table row of ``name``; ``timm:<model>`` gets a row made for that timm model.

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        return BackboneEntry(
            _no_grid(partial(TimmBackbone, timm_name)), DILATABLE_STRIDES, 16,
            f"timm {timm_name}", name,
        )  # fmt: skip
    raise ValueError(
        f"Unknown backbone {name!r}. Supported backbones: {list(BACKBONES)}, or "
        f"'{TIMM_PREFIX}<name>' for any timm model with features_only (e.g. 'timm:resnet18')."
    )


def build_backbone(
    name: str, *, output_stride: int | None = None, multi_grid: Sequence[int] | None = None
) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of :func:`list_backbones`, or ``"timm:<model>"`` for any timm model.
        output_stride: stride of the deepest map (default: the backbone's, see
            :data:`BACKBONES`: 16, HRNetV2 4).
        multi_grid: ResNet only: layer4 dilation factors, e.g. ``(1, 2, 4)``.

    Raises:
        ValueError: unknown name, unsupported output stride or option.
    """
    entry = backbone_entry(name)
    if output_stride is None:
        output_stride = entry.default_stride
    if multi_grid is not None and not entry.multi_grid:
        grid = [n for n, e in BACKBONES.items() if e.multi_grid]
        raise ValueError(f"multi_grid is a ResNet option (backbones {grid}); got backbone {name!r}")
    hint = "HRNetV2 keeps a stride-4 branch by design" if entry.strides == (4,) else ""
    _check_stride(name, output_stride, entry.strides, hint)
    return entry.build(output_stride, multi_grid)


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone` (plus ``timm:<name>`` for any timm model)."""
    return list(BACKBONES)


def _check_stride(name: str, output_stride: int, valid: Sequence[int], hint: str = "") -> None:
    if output_stride not in valid:
        reason = f" ({hint})" if hint else ""
        raise ValueError(
            f"output_stride={output_stride!r} is not supported by backbone {name!r}{reason}; "
            f"choose one of {list(valid)}."
        )
