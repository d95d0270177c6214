"""The model zoo: ``create_model(name, backbone=..., num_classes=...)``.

One hop from a name to the code: :data:`MODELS` maps each model name to the function that
builds its decode head from a backbone; its keyword-only parameters are the head options.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from segkit.models.attention import check_attention
from segkit.models.backbones import (
    backbone_entry,
    backbone_options,
    build_backbone,
    list_backbones,
)
from segkit.models.backbones.base import zero_init_residual as zero_init_residual_blocks
from segkit.models.heads.deeplab import DeepLabV3Head, DeepLabV3PlusHead, default_aspp_rates
from segkit.models.heads.encnet import EncNetHead
from segkit.models.heads.fcn import FCN8sHead, FCNHead
from segkit.models.necks import JPU, FeatureSpec
from segkit.models.pretrained import download_backbone_weights
from segkit.models.segmenter import Segmenter
from segkit.weights import load_weights

logger = logging.getLogger(__name__)


# Builders read ``backbone``: a FeatureSpec describing the maps the head receives (the
# backbone's, or the neck's when there is one, e.g. JPU's stride-8 map). A builder whose head
# upsamples inside takes the model-wide ``align_corners`` as its third argument.


def fcn(
    backbone: FeatureSpec,
    num_classes: int,
    *,
    dropout: float = 0.1,
    attention: str | None = None,
) -> nn.Module:
    """Dilated FCN: an :class:`FCNHead` on the deepest map.

    Args:
        dropout: dropout before the classifier.
        attention: attention block on the head's features: psa, se or cbam (none: without).
    """
    return FCNHead(backbone.channels[-1], num_classes, dropout=dropout, attention=attention)


def fcn8s(
    backbone: FeatureSpec, num_classes: int, align_corners: bool = False, *, dropout: float = 0.1
) -> nn.Module:
    """FCN-8s: scores of the last three maps fused by upsampling and addition.

    Args:
        dropout: dropout before the classifier.
    """
    return FCN8sHead(backbone.channels, num_classes, dropout=dropout, align_corners=align_corners)


def deeplabv3(
    backbone: FeatureSpec,
    num_classes: int,
    *,
    aspp_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    aspp_dropout: float = 0.5,
    separable: bool = False,
    attention: str | None = None,
) -> nn.Module:
    """DeepLabV3: an ASPP head on the deepest map.

    Args:
        aspp_rates: dilation of the ASPP 3x3 branches (none: 6,12,18 at output stride 16,
            12,24,36 at 8, also with JPU, whose map is at stride 8).
        aspp_channels: width of the ASPP branches and of the head.
        aspp_dropout: dropout after the ASPP projection.
        separable: atrous separable (depthwise + pointwise) 3x3 convolutions.
        attention: attention block on the head's features: psa, se or cbam (none: without).
    """
    rates = aspp_rates or default_aspp_rates(backbone.output_stride)
    return DeepLabV3Head(
        backbone.channels[-1],
        num_classes,
        aspp_rates=rates,
        aspp_channels=aspp_channels,
        aspp_dropout=aspp_dropout,
        separable=separable,
        attention=attention,
    )


def deeplabv3plus(
    backbone: FeatureSpec,
    num_classes: int,
    align_corners: bool = False,
    *,
    aspp_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    aspp_dropout: float = 0.5,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
    decoder_convs: int = 2,
    separable: bool = False,
    attention: str | None = None,
) -> nn.Module:
    """DeepLabV3+: ASPP on the deepest map and a decoder on the stride-4 map.

    Args:
        aspp_rates: dilation of the ASPP 3x3 branches (none: 6,12,18 at output stride 16,
            12,24,36 at 8).
        aspp_channels: width of the ASPP branches and of the head.
        aspp_dropout: dropout after the ASPP projection.
        low_level_channels: width the stride-4 map is projected to before the decoder.
        decoder_channels: width of the decoder's 3x3 convolutions.
        decoder_convs: number of 3x3 conv-BN-ReLU in the decoder: 2 as in the paper, 1 as
            in VainF/DeepLabV3Plus-Pytorch.
        separable: atrous separable (depthwise + pointwise) 3x3 convolutions.
        attention: attention block after ASPP and on the projected low-level map: psa, se or
            cbam (none: without).
    """
    return DeepLabV3PlusHead(
        backbone.channels,
        num_classes,
        aspp_rates=aspp_rates or default_aspp_rates(backbone.output_stride),
        aspp_channels=aspp_channels,
        aspp_dropout=aspp_dropout,
        low_level_channels=low_level_channels,
        decoder_channels=decoder_channels,
        decoder_convs=decoder_convs,
        separable=separable,
        attention=attention,
        align_corners=align_corners,
    )


def encnet(
    backbone: FeatureSpec,
    num_classes: int,
    align_corners: bool = False,
    *,
    lateral: bool = False,
    se_loss: bool = False,
    num_codes: int = 32,
    channels: int = 512,
    input_kernel_size: int = 3,
    dropout: float = 0.1,
    attention: str | None = None,
) -> nn.Module:
    """EncNet: the Context Encoding Module head.

    Args:
        lateral: fuse the c2 and c3 maps into the head's input.
        se_loss: predict which classes are present (the ``"se"`` output, training mode) for
            the semantic-encoding loss.
        num_codes: codewords of the Encoding layer.
        channels: width of the head.
        input_kernel_size: kernel size of the head's first conv, which reduces the last map
            to ``channels``: 3, or 1 (a pointwise reduction, as FastFCN's EncNet with JPU).
        dropout: dropout before the classifier.
        attention: attention block before the encoding: psa, se or cbam (none: without).
    """
    return EncNetHead(
        backbone.channels,
        num_classes,
        channels=channels,
        input_kernel_size=input_kernel_size,
        num_codes=num_codes,
        lateral=lateral,
        se_loss=se_loss,
        dropout=dropout,
        attention=attention,
        align_corners=align_corners,
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn": fcn,
    "fcn8s": fcn8s,
    "deeplabv3": deeplabv3,
    "deeplabv3plus": deeplabv3plus,
    "encnet": encnet,
}
# Output stride used when none is given: 16, except where the architecture implies another.
DEFAULT_OUTPUT_STRIDE = {"fcn8s": 32}
# Models that accept ``jpu=True`` (FastFCN): the head reads JPU's stride-8 map.
JPU_MODELS = ("fcn", "encnet", "deeplabv3")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(MODELS)


def head_options(name: str) -> dict[str, Any]:
    """The options (with defaults) that model ``name`` accepts as ``**head_options``."""
    params = inspect.signature(_builder(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Supported models: {list_models()}.")
    return MODELS[name]


def create_model(
    name: str,
    *,
    backbone: str,
    num_classes: int,
    output_stride: int | None = None,
    aux: bool = False,
    jpu: bool = False,
    pretrained_backbone: str | os.PathLike | bool | None = None,
    multi_grid: Sequence[int] | None = None,
    align_corners: bool = False,
    zero_init_residual: bool = False,
    meta: Mapping[str, Any] | None = None,
    **options: Any,
) -> Segmenter:
    """Build a segmentation model.

    Args:
        name: one of :func:`list_models`.
        backbone: one of :func:`list_backbones`, or ``"timm:<name>"``.
        num_classes: number of output classes.
        output_stride: 8, 16 or 32 (default 16; FCN-8s and JPU 32; HRNetV2 is fixed at 4).
        aux: add an auxiliary :class:`FCNHead` on the stage before the last (train mode only).
        jpu: FastFCN's Joint Pyramid Upsampling neck (models in :data:`JPU_MODELS`): the
            backbone runs at output stride 32 without dilation and :class:`JPU` turns c2/c3/c4
            into a stride-8 map for the head. Rule: JPU *replaces* dilation, so ``jpu=True``
            with ``output_stride`` 8 or 16 raises ``ValueError`` (PyTorch-Encoding's
            ``--jpu --dilated`` combination); leave ``output_stride`` unset or give 32. Any
            backbone whose c2, c3, c4 are at strides 8, 16, 32 works (ResNet, MobileNetV2,
            Xception, most timm models at output stride 32); HRNetV2 does not.
        pretrained_backbone: path of an ImageNet weights file for the backbone (loaded by name
            and shape; the report is logged to the ``segkit.models`` logger); ``True``
            downloads through torchvision/timm, which fails with a clear message offline.
        multi_grid: ResNet layer4 dilation factors, e.g. ``(1, 2, 4)``.
        align_corners: bilinear upsampling with ``align_corners=True`` everywhere the model
            upsamples (decoder, JPU, EncNet's lateral maps, the final resize), as the models of
            jfzhang95/pytorch-deeplab-xception, PyTorch-Encoding and FastFCN were trained.
        zero_init_residual: start the last BatchNorm of every residual block of the backbone
            at zero (:func:`~segkit.models.backbones.base.zero_init_residual`), before any
            pretrained weights load; false keeps the network's own initialisation. An
            initialisation, not part of the architecture: checkpoints do not record it.
        meta: what the outputs mean, carried as ``model.meta`` and in checkpoints (class
            names, palette, mean, std, ignore index); the forward pass does not read it.
        **options: head options of the model (:func:`head_options`) and options of the
            backbone (:func:`backbone_options`); ``None`` values are dropped so that unset CLI
            flags never override a model's defaults.

    Returns:
        A :class:`Segmenter`; ``forward(x)`` returns ``{"out": N x num_classes x H x W, ...}``.

    Raises:
        ValueError: unknown model, backbone or option, an unsupported output stride, or JPU
            asked for with a dilated backbone, a model without JPU support or a backbone whose
            maps are not at strides 8/16/32.
    """
    builder = _builder(name)
    options = {k: v for k, v in options.items() if v is not None}
    valid = head_options(name)
    body_valid = backbone_options(backbone)
    unknown = sorted(set(options) - set(valid) - set(body_valid))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for model {name!r} with backbone {backbone!r}. Valid "
            f"options: {sorted(valid)} (model), {sorted(body_valid) or 'none'} (backbone)."
        )
    body_options = {k: options.pop(k) for k in list(options) if k in body_valid}
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_attention(options.get("attention"))
    jpu = False if jpu is None else jpu  # an unset CLI flag means the default
    _check_jpu(name, jpu, output_stride)
    entry = backbone_entry(backbone)
    if output_stride is None and len(entry.strides) > 1:  # HRNetV2 has one stride
        output_stride = 32 if jpu else DEFAULT_OUTPUT_STRIDE.get(name, entry.default_stride)
    body = build_backbone(
        backbone, output_stride=output_stride, multi_grid=multi_grid, **body_options
    )
    if zero_init_residual and not zero_init_residual_blocks(body):
        logger.warning(
            "zero_init_residual: backbone %r has no residual block segkit knows how to start at "
            "zero; it keeps its own initialisation",
            backbone,
        )
    neck = JPU(body.channels, body.reductions, align_corners=align_corners) if jpu else None
    spec: FeatureSpec = body if neck is None else neck
    if pretrained_backbone:
        weights = pretrained_backbone
        if weights is True:
            weights = download_backbone_weights(backbone)
        logger.info("pretrained backbone: %s", load_weights(body, weights))
    aux_head = FCNHead(spec.channels[-2], num_classes, in_index=-2) if aux else None
    config = {
        "name": name,
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": body.output_stride,
        "aux": aux,
        "jpu": jpu,
        "multi_grid": list(multi_grid) if multi_grid is not None else None,
        "align_corners": align_corners,
        **body_options,
        **options,
    }
    if "align_corners" in inspect.signature(builder).parameters:
        head = builder(spec, num_classes, align_corners, **options)
    else:
        head = builder(spec, num_classes, **options)
    return Segmenter(
        body, head, aux_head, neck=neck, config=config, meta=meta, align_corners=align_corners
    )


def _check_jpu(name: str, jpu: bool, output_stride: int | None) -> None:
    """Validate the ``jpu`` request (see :func:`create_model`)."""
    if not isinstance(jpu, bool):
        raise ValueError(f"jpu must be True or False, got {jpu!r}")
    if not jpu:
        return
    if name not in JPU_MODELS:
        raise ValueError(
            f"jpu=True is not available for model {name!r}; models with JPU: {list(JPU_MODELS)}."
        )
    if output_stride is not None and output_stride != 32:
        raise ValueError(
            f"jpu=True with output_stride={output_stride}: JPU replaces the dilated backbone "
            "(FastFCN), it needs the backbone at output_stride=32 and itself gives stride-8 "
            "features. Use output_stride=32 (or leave it unset) with jpu=True, or drop jpu "
            f"to keep a dilated backbone at output_stride={output_stride}."
        )


__all__ = [
    "JPU_MODELS",
    "MODELS",
    "Segmenter",
    "backbone_options",
    "create_model",
    "head_options",
    "list_backbones",
    "list_models",
]
