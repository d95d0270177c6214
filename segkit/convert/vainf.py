"""VainF/DeepLabV3Plus-Pytorch: DeepLabV3 and DeepLabV3+ on ResNet-50/101, MobileNetV2, HRNetV2.

Layout (``network/``; ``main.py`` saves ``{"cur_itrs", "model_state", "optimizer_state",
"scheduler_state", "best_score"}``, ``model_state`` the unwrapped model's state dict):

- ``backbone.*`` is an ``IntermediateLayerGetter`` over the backbone's children, so it keeps
  their names: torchvision's ResNet without ``avgpool``/``fc``; MobileNetV2 split into
  ``low_level_features`` (torchvision's ``features.0-3``) and ``high_level_features``
  (``features.4-17``, slices of a Sequential keep their indices; the final 1x1 conv to 1280
  is gone); VainF's own
  HRNetV2 (``conv1/bn1``, ``conv2/bn2``, ``layer1``, ``transition1``, ``stage2..4``) whose
  names are timm's ``hrnet_w*`` except ``transition2``/``transition3``, single conv-BN
  sequences where timm keeps one module per branch (``transition2.2.0``, ``transition3.3.0``).
- DeepLabV3+ (``DeepLabHeadV3Plus``): ``classifier.project`` the 1x1 conv-BN to 48 channels on
  the low-level map (ResNet ``layer1``, MobileNetV2 ``features.3``, HRNet ``layer1``: 256
  channels at stride 4, not a branch), ``classifier.aspp`` torchvision's ASPP names (dropout
  0.1), ``classifier.classifier.0/1`` one 3x3 conv-BN(-ReLU) over [low level, ASPP] (segkit
  concatenates [ASPP, low level]: the conv's input channels are permuted by :func:`adjust`),
  ``.3`` the classifier (its rows are the classes).
- DeepLabV3 (``DeepLabHead``): ``classifier.classifier`` is torchvision's ``DeepLabHead``
  sequence (``0`` ASPP, ``1/2`` 3x3 conv-BN, ``4`` the classifier).

How the backbones compute (segkit backbone options set in :func:`detect`): the ResNet is
torchvision's (output stride 16 dilates layer4); VainF's MobileNetV2 has an unpadded stem and
blocks that zero-pad their input before the 1x1 expansion (its dilation rule is
torchvision's); its HRNet runs without the ReLU after the stem's first BN (the layer getter
calls the children in registration order, where one ReLU module sits after ``bn2``) and
concatenates the four branches upsampled bilinearly, as segkit's HRNetV2.

What no weight records comes from the project's defaults: output stride 16 (``main.py``),
ASPP rates 6/12/18 at output stride 16 and 12/24/36 at 8 (segkit's defaults too), 12/24/36
on HRNetV2 (stride 4). Not converted: the ``--separable_conv`` heads and the Xception backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from segkit.convert.layout import Found, out_channels, regex_mapping, resnet_depth
from segkit.models.backbones.hrnet import HRNETS

PROJECT = "VainF/DeepLabV3Plus-Pytorch"
IGNORED: tuple[str, ...] = ()

PLUS_CLASSIFIER = "classifier.classifier.3.weight"
V3_CLASSIFIER = "classifier.classifier.4.weight"
DECODER_CONV = "classifier.decoder.0.0.weight"  # segkit's name of the conv adjust() permutes
LOW_LEVEL_PROJECTION = "classifier.low_level.0.weight"
HRNET_ASPP_RATES = [12, 24, 36]
# How each backbone of the project computes, as segkit backbone options.
BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "resnet": {},
    "mobilenet_v2": {"pad_block_input": True, "pad_stem": False},
    "hrnet": {"stem_mid_relu": False},
}
HEAD_RULES = {
    "deeplabv3plus": [
        (r"classifier\.project\.(.*)", r"classifier.low_level.\1"),
        (r"classifier\.aspp\.(.*)", r"classifier.aspp.\1"),
        (r"classifier\.classifier\.([01])\.(.*)", r"classifier.decoder.0.\1.\2"),
        (r"classifier\.classifier\.3\.(.*)", r"classifier.classifier.\1"),
    ],
    "deeplabv3": [(r"classifier\.classifier\.([0-9].*)", r"classifier.\1")],
}
BACKBONE_RULES = {
    "resnet": [(r"backbone\.((?:conv1|bn1|layer[1-4])\..*)", r"backbone.\1")],
    "mobilenet_v2": [(r"backbone\.(?:low|high)_level_features\.(.*)", r"backbone.features.\1")],
    "hrnet": [
        (r"backbone\.(transition([23]))\.(.*)", r"backbone.body.\1.\2.0.\3"),
        (r"backbone\.((?:conv[12]|bn[12]|layer1|transition1|stage[2-4])\..*)", r"backbone.body.\1"),
    ],
}


def detect(state: Mapping[str, Tensor]) -> Found | str:
    """DeepLabV3(+) on ResNet-50/101, MobileNetV2 or HRNetV2 in VainF's names."""
    if "classifier.aspp.convs.1.0.body.0.weight" in state or any(
        k.startswith("classifier.classifier.0.convs.1.0.body.") for k in state
    ):
        return "its ASPP holds atrous separable convs (--separable_conv), not converted"
    if PLUS_CLASSIFIER in state and "classifier.project.0.weight" in state:
        name, classifier = "deeplabv3plus", PLUS_CLASSIFIER
    elif V3_CLASSIFIER in state and "classifier.classifier.0.project.0.weight" in state:
        name, classifier = "deeplabv3", V3_CLASSIFIER
    else:
        return (
            "no classifier.project + classifier.classifier.3 (DeepLabHeadV3Plus) nor "
            "classifier.classifier.0 (ASPP) + .4 (DeepLabHead)"
        )
    family, backbone, details = _backbone(state)
    if family is None:
        return backbone
    classes = out_channels(state, classifier)
    model: dict[str, Any] = {
        "name": name,
        "backbone": backbone,
        "num_classes": classes,
        "output_stride": 4 if family == "hrnet" else 16,
        "aspp_dropout": 0.1,
        **BACKBONE_OPTIONS[family],
    }
    if family == "hrnet":
        model["aspp_rates"] = list(HRNET_ASPP_RATES)
    if name == "deeplabv3plus":
        model["decoder_convs"] = 1
        if family == "hrnet":
            model["c1_from_layer1"] = True
    return Found("vainf", model, {"model": name, **details, "classes": classes})


def _backbone(state: Mapping[str, Tensor]) -> tuple[str | None, str, dict[str, Any]]:
    """``(family, segkit backbone, details)``, or ``(None, reason, {})``."""
    if "backbone.low_level_features.0.0.weight" in state:
        if "backbone.high_level_features.17.conv.2.weight" not in state:
            return None, "backbone.high_level_features lacks block 17 (MobileNetV2)", {}
        return "mobilenet_v2", "mobilenet_v2", {"backbone": "MobileNetV2"}
    if "backbone.transition1.0.0.weight" in state:
        width = out_channels(state, "backbone.transition1.0.0.weight")
        if f"hrnetv2_w{width}" not in HRNETS:
            widths = sorted(int(n.rsplit("w", 1)[1]) for n in HRNETS)
            return None, f"HRNetV2 of width {width} (segkit has widths {widths})", {}
        return "hrnet", f"hrnetv2_w{width}", {"backbone": f"HRNetV2-W{width}"}
    if "backbone.conv1.weight" in state and "backbone.layer1.0.conv3.weight" in state:
        depth = resnet_depth(state, "backbone.layer3.")
        if depth is None:
            return None, "backbone.layer3 has neither 6 nor 23 blocks (ResNet-50/101)", {}
        return "resnet", f"resnet{depth}", {"backbone": f"ResNet-{depth}"}
    if any(k.startswith("backbone.block1.") for k in state):
        return None, "an Xception backbone (backbone.block1...), not converted", {}
    return None, "no ResNet, MobileNetV2 or HRNetV2 backbone under backbone.*", {}


def _family(backbone: str) -> str:
    """The key of :data:`BACKBONE_RULES` for a segkit backbone name."""
    for family in ("resnet", "hrnet", "mobilenet_v2"):
        if backbone.startswith(family):
            return family
    raise ValueError(f"backbone {backbone!r} is not one VainF's models use")


def to_segkit(state: Mapping[str, Tensor], found: Found) -> dict[str, str]:
    """``backbone.*`` to segkit's backbone names, the head to ``DeepLabV3(Plus)Head``'s."""
    family = _family(found.model["backbone"])
    return regex_mapping(list(state), HEAD_RULES[found.model["name"]] + BACKBONE_RULES[family])


def adjust(tensors: dict[str, Tensor], found: Found, inverse: bool = False) -> None:
    """DeepLabV3+: the decoder conv reads [low level, ASPP] in VainF, [ASPP, low level] in
    segkit; swap the two groups of its input channels (``inverse``: back)."""
    if found.model["name"] != "deeplabv3plus":
        return
    weight = tensors[DECODER_CONV]
    low = out_channels(tensors, LOW_LEVEL_PROJECTION)
    split = weight.shape[1] - low if inverse else low
    tensors[DECODER_CONV] = torch.cat([weight[:, split:], weight[:, :split]], dim=1)
