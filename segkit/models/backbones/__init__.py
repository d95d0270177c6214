"""Backbones: torchvision and timm bodies wired for dense prediction.

Every backbone returns four feature maps ``[c1, c2, c3, c4]`` (nominal strides 4, 8, 16 and 32)
and describes them without a forward pass through ``channels`` and ``reductions`` (the effective
stride of each map once dilation has replaced striding). Heads read ``c4`` (``features[-1]``),
DeepLabV3+ reads the stride-4 ``c1`` as its low-level input, the auxiliary head and FCN-8s read
``c3``/``c2``. The bodies come from torchvision and timm; segkit writes only the wiring: dilation
instead of stride for output stride 8/16, multi-grid rates, and which maps to return.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from segkit.models.backbones.base import DILATABLE_STRIDES, Backbone, check_stride
from segkit.models.backbones.hrnet import HRNETS, HRNetV2Backbone
from segkit.models.backbones.mobilenet import MobileNetV2Backbone
from segkit.models.backbones.resnet import RESNETS, ResNetBackbone
from segkit.models.backbones.timm_body import TimmBackbone
from segkit.models.backbones.xception import XceptionBackbone

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneEntry:
    """One row of :data:`BACKBONES`.

    Attributes:
        cls: the :class:`Backbone` class; its keyword-only parameters are the backbone's
            options (declared once there: type hint, default and ``Args:`` text).
        args: its leading arguments (the depth, the timm model name), before output stride.
        strides: the output strides the backbone supports.
        default_stride: the stride used when none is given.
        weights: file name of the ImageNet weights it loads as is (torchvision's name, or the
            timm model whose checkpoint fits), for messages and ``pretrained_backbone=True``.
        source: ``"torchvision:<weights enum>"`` or ``"timm:<model>"``: where those weights come
            from when downloading is asked for.
        multi_grid: whether it takes ``multi_grid`` (ResNet layer4).
    """

    cls: type[Backbone]
    args: tuple[Any, ...]
    strides: tuple[int, ...]
    default_stride: int
    weights: str
    source: str
    multi_grid: bool = False

    def build(
        self, output_stride: int, multi_grid: Sequence[int] | None = None, **options: Any
    ) -> Backbone:
        """``cls(*args, output_stride, [multi_grid], **options)``."""
        if self.multi_grid:
            options["multi_grid"] = multi_grid
        return self.cls(*self.args, output_stride, **options)

    def options(self) -> dict[str, Any]:
        """The backbone's options with their defaults (keyword-only parameters of ``cls``)."""
        params = inspect.signature(self.cls).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


# One hop from a name to the code: every named backbone, what it supports and its weights.
BACKBONES: dict[str, BackboneEntry] = {
    "resnet50": BackboneEntry(
        ResNetBackbone, ("resnet50",), DILATABLE_STRIDES, 16, "resnet50-0676ba61.pth",
        "torchvision:ResNet50_Weights", multi_grid=True,
    ),
    "resnet101": BackboneEntry(
        ResNetBackbone, ("resnet101",), DILATABLE_STRIDES, 16, "resnet101-63fe2227.pth",
        "torchvision:ResNet101_Weights", multi_grid=True,
    ),
    # Deep stem (three 3x3 convs), as PSPNet, PyTorch-Encoding and FastFCN.
    "resnet50s": BackboneEntry(
        ResNetBackbone, ("resnet50s",), DILATABLE_STRIDES, 16, "timm resnet50s.gluon_in1k",
        "timm:resnet50s", multi_grid=True,
    ),
    "resnet101s": BackboneEntry(
        ResNetBackbone, ("resnet101s",), DILATABLE_STRIDES, 16, "timm resnet101s.gluon_in1k",
        "timm:resnet101s", multi_grid=True,
    ),
    "mobilenet_v2": BackboneEntry(
        MobileNetV2Backbone, (), DILATABLE_STRIDES, 16, "mobilenet_v2-b0353104.pth",
        "torchvision:MobileNet_V2_Weights",
    ),
    "xception65": BackboneEntry(
        XceptionBackbone, ("xception65",), DILATABLE_STRIDES, 16,
        "timm xception65 (aligned Xception)", "timm:xception65",
    ),
    **{
        name: BackboneEntry(
            HRNetV2Backbone, (name,), (4,), 4, f"timm {timm_name}", f"timm:{timm_name}"
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
            TimmBackbone, (timm_name,), DILATABLE_STRIDES, 16, f"timm {timm_name}", name
        )
    raise ValueError(
        f"Unknown backbone {name!r}. Supported backbones: {list(BACKBONES)}, or "
        f"'{TIMM_PREFIX}<name>' for any timm model with features_only (e.g. 'timm:resnet18')."
    )


def build_backbone(
    name: str,
    *,
    output_stride: int | None = None,
    multi_grid: Sequence[int] | None = None,
    **options: Any,
) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of :func:`list_backbones`, or ``"timm:<model>"`` for any timm model.
        output_stride: stride of the deepest map (default: the backbone's, see
            :data:`BACKBONES`: 16, HRNetV2 4).
        multi_grid: ResNet only: layer4 dilation factors, e.g. ``(1, 2, 4)``.
        **options: the backbone's own options (:func:`backbone_options`).

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
    check_stride(name, output_stride, entry.strides, hint)
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for backbone {name!r}. Valid options: "
            f"{sorted(entry.options()) or 'none'}."
        )
    return entry.build(output_stride, multi_grid, **options)


def backbone_options(name: str) -> dict[str, Any]:
    """The options (with defaults) that backbone ``name`` accepts as ``**options``."""
    return backbone_entry(name).options()


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone` (plus ``timm:<name>`` for any timm model)."""
    return list(BACKBONES)


__all__ = [
    "BACKBONES",
    "HRNETS",
    "RESNETS",
    "TIMM_PREFIX",
    "Backbone",
    "BackboneEntry",
    "backbone_entry",
    "backbone_options",
    "build_backbone",
    "list_backbones",
]
