"""jfzhang95/pytorch-deeplab-xception: DeepLabV3+ on ResNet-101, aligned Xception or MobileNetV2.

Layout (``modeling/``; ``train.py`` saves ``{"epoch", "state_dict", "optimizer", "best_pred"}``,
the state dict of the unwrapped ``DeepLab``; its ``SynchronizedBatchNorm2d`` has BatchNorm's
names):

- ``aspp.aspp1`` (1x1) ... ``aspp.aspp4`` (3x3, rates 6/12/18 at output stride 16), each
  ``atrous_conv`` + ``bn``; ``aspp.global_avg_pool.1/.2`` the image-pooling conv and BN;
  ``aspp.conv1``/``aspp.bn1`` the projection of the five branches.
- ``decoder.conv1``/``decoder.bn1`` project the stride-4 map to 48 channels;
  ``decoder.last_conv.0/.1`` and ``.4/.5`` are two 3x3 conv-BN(-ReLU) on [ASPP, low level],
  ``.8`` the classifier (its rows are the classes).
- ``backbone.*``: ResNet-101 in torchvision's names (``layer4``: three blocks, multi-grid
  (1, 2, 4), its first block dilated too); aligned Xception (``conv1/bn1, conv2/bn2`` the stem,
  ``block1`` ... ``block20`` with ``skip``/``skipbn`` shortcuts and a ``rep`` sequence of
  ReLU, ``SeparableConv2d`` (``conv1`` depthwise, ``bn``, ``pointwise``) and BN, the ReLU left
  out at the start of ``block1``/``block2``, then ``conv3..5``/``bn3..5`` the exit separable
  convs): timm's ``xception65`` tensor for tensor; MobileNetV2 (``features.N.conv.K`` flat
  where torchvision nests ``conv.J.K``; each tensor is saved twice, also under
  ``low_level_features.N`` (N < 4) or ``high_level_features.N``, the slices its forward runs,
  and both names go to the same place). The DRN backbone is not converted.

What no weight records comes from the project's defaults: output stride 16, bilinear
upsampling with ``align_corners=True`` everywhere, ResNet multi-grid (1, 2, 4), and for each
backbone how it computes (the Xception and MobileNetV2 options set in :func:`detect`). Its
other output stride, 8 (``--out-stride 8``), converts for Xception and MobileNetV2; there its
ResNet also dilates the first block of ``layer3``, which segkit's ResNet does not, so that
combination (like 32, which it never runs at) is refused rather than converted inexactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from segkit.convert.layout import (
    ConversionError,
    Found,
    out_channels,
    regex_mapping,
    resnet_depth,
)

PROJECT = "jfzhang95/pytorch-deeplab-xception"
IGNORED: tuple[str, ...] = ()

CLASSIFIER = "decoder.last_conv.8.weight"
LOW_LEVEL = "decoder.conv1.weight"  # its input channels tell the backbone
# How each backbone of the project computes, as segkit backbone options.
BACKBONE_OPTIONS = {
    "resnet": {"multi_grid": (1, 2, 4)},
    "xception": {
        "bn_eps": 1e-5,
        "block_input_relu": True,
        "exit_depthwise_relu": False,
        "dilate_unstrided_conv": False,
        "feature_taps": "block_output",
    },
    "mobilenet": {"pad_block_input": True, "dilate_from_next_stage": True},
}
HEAD_RULES = [
    (r"aspp\.aspp1\.atrous_conv\.(.*)", r"classifier.aspp.convs.0.0.\1"),
    (r"aspp\.aspp1\.bn\.(.*)", r"classifier.aspp.convs.0.1.\1"),
    (r"aspp\.aspp([234])\.atrous_conv\.(.*)", r"classifier.aspp.convs.<\1>.0.\2"),
    (r"aspp\.aspp([234])\.bn\.(.*)", r"classifier.aspp.convs.<\1>.1.\2"),
    (r"aspp\.global_avg_pool\.([12])\.(.*)", r"classifier.aspp.convs.4.\1.\2"),
    (r"aspp\.conv1\.(.*)", r"classifier.aspp.project.0.\1"),
    (r"aspp\.bn1\.(.*)", r"classifier.aspp.project.1.\1"),
    (r"decoder\.conv1\.(.*)", r"classifier.low_level.0.\1"),
    (r"decoder\.bn1\.(.*)", r"classifier.low_level.1.\1"),
    (r"decoder\.last_conv\.0\.(.*)", r"classifier.decoder.0.0.\1"),
    (r"decoder\.last_conv\.1\.(.*)", r"classifier.decoder.0.1.\1"),
    (r"decoder\.last_conv\.4\.(.*)", r"classifier.decoder.1.0.\1"),
    (r"decoder\.last_conv\.5\.(.*)", r"classifier.decoder.1.1.\1"),
    (r"decoder\.last_conv\.8\.(.*)", r"classifier.classifier.\1"),
]
MOBILENET_RULES = [
    (r"backbone\.features\.0\.([01])\.(.*)", r"backbone.features.0.\1.\2"),
    # The first block has no expansion: depthwise conv.0/1, pointwise conv.3/4.
    (r"backbone\.features\.1\.conv\.([01])\.(.*)", r"backbone.features.1.conv.0.\1.\2"),
    (r"backbone\.features\.1\.conv\.3\.(.*)", r"backbone.features.1.conv.1.\1"),
    (r"backbone\.features\.1\.conv\.4\.(.*)", r"backbone.features.1.conv.2.\1"),
    # The others: expansion conv.0/1, depthwise conv.3/4, projection conv.6/7.
    (r"backbone\.features\.(\d+)\.conv\.([01])\.(.*)", r"backbone.features.\1.conv.0.\2.\3"),
    (r"backbone\.features\.(\d+)\.conv\.3\.(.*)", r"backbone.features.\1.conv.1.0.\2"),
    (r"backbone\.features\.(\d+)\.conv\.4\.(.*)", r"backbone.features.\1.conv.1.1.\2"),
    (r"backbone\.features\.(\d+)\.conv\.6\.(.*)", r"backbone.features.\1.conv.2.\2"),
    (r"backbone\.features\.(\d+)\.conv\.7\.(.*)", r"backbone.features.\1.conv.3.\2"),
]
XCEPTION_BLOCKS = 20  # block1 ... block20 (xception65), then the exit convs conv3..5
# Its exit convs conv3..5 (with bn3..5) are the separable convs of timm's final block.
EXIT = f"backbone.body.blocks_{XCEPTION_BLOCKS}.stack.conv"
XCEPTION_RULES = [
    (r"backbone\.conv1\.(.*)", r"backbone.body.stem_0.conv.\1"),
    (r"backbone\.bn1\.(.*)", r"backbone.body.stem_0.bn.\1"),
    (r"backbone\.conv2\.(.*)", r"backbone.body.stem_1.conv.\1"),
    (r"backbone\.bn2\.(.*)", r"backbone.body.stem_1.bn.\1"),
    (r"backbone\.conv([345])\.conv1\.(.*)", EXIT + r"<\1>.conv_dw.\2"),
    (r"backbone\.conv([345])\.bn\.(.*)", EXIT + r"<\1>.bn_dw.\2"),
    (r"backbone\.conv([345])\.pointwise\.(.*)", EXIT + r"<\1>.conv_pw.\2"),
    (r"backbone\.bn([345])\.(.*)", EXIT + r"<\1>.bn_pw.\2"),
]


def detect(state: Mapping[str, Tensor]) -> Found | str:
    """DeepLabV3+ with its ASPP/decoder names, on ResNet-50/101, Xception-65 or MobileNetV2."""
    if not all(key in state for key in ("aspp.aspp1.atrous_conv.weight", LOW_LEVEL, CLASSIFIER)):
        return (
            "no aspp.aspp1.atrous_conv.weight, decoder.conv1.weight and "
            "decoder.last_conv.8.weight (its DeepLabV3+)"
        )
    backbone = _backbone(state)
    if backbone.startswith("not "):
        return backbone
    classes = out_channels(state, CLASSIFIER)
    name = {"xception": "xception65", "mobilenet": "mobilenet_v2"}.get(backbone, backbone)
    kind = "resnet" if backbone.startswith("resnet") else backbone
    model = {
        "name": "deeplabv3plus",
        "backbone": name,
        "num_classes": classes,
        "output_stride": 16,
        "align_corners": True,
        **BACKBONE_OPTIONS[kind],
    }
    details = {"model": "DeepLabV3+", "backbone": name, "classes": classes}
    return Found("jfzhang95", model, details)


def to_segkit(state: Mapping[str, Tensor], found: Found) -> dict[str, str]:
    """Head names to segkit's DeepLabV3+ head, backbone names to its backbone."""
    keys = list(state)
    backbone = found.model["backbone"]
    _check_stride(backbone, found.model.get("output_stride"))
    if backbone.startswith("resnet"):
        rules = [(r"backbone\.((conv1|bn1|layer\d)\..*)", r"backbone.\1")]
        mapping = regex_mapping(keys, rules)
    elif backbone == "mobilenet_v2":
        canonical = {key: _unalias(key) for key in keys}
        renamed = regex_mapping(list(set(canonical.values())), MOBILENET_RULES)
        mapping = {key: renamed[name] for key, name in canonical.items() if name in renamed}
    else:
        mapping = _shift(regex_mapping(keys, XCEPTION_RULES), -2)
        mapping.update(_xception_blocks(keys))
    mapping.update(_shift(regex_mapping(keys, HEAD_RULES), -1))
    return mapping


def _check_stride(backbone: str, output_stride: int | None) -> None:
    """Its models run at output stride 16 or 8; at 8 its ResNet also dilates layer3's first
    block, which segkit's ResNet (torchvision's rule) does not, so only 16 converts exactly."""
    if output_stride not in (None, 8, 16):
        raise ConversionError(
            f"output stride {output_stride}: {PROJECT} models run at 16 (its default) or 8; "
            "leave --output-stride out, or give the one the model was trained with"
        )
    if output_stride == 8 and backbone.startswith("resnet"):
        raise ConversionError(
            f"output stride 8 with its ResNet: {PROJECT} also dilates the first block of "
            "layer3 there, which segkit's ResNet does not, so the outputs would differ; only "
            "output stride 16 (its default) converts exactly for this backbone"
        )


def _backbone(state: Mapping[str, Tensor]) -> str:
    """``resnet50/101``, ``xception`` or ``mobilenet``, else ``"not ..."`` with the reason."""
    low_level = int(state[LOW_LEVEL].shape[1])
    if "backbone.layer0.0.weight" in state or "backbone.layer5.0.conv1.weight" in state:
        return "not converted: a DRN backbone (backbone.layer0/layer5), which segkit does not have"
    if "backbone.layer4.0.conv1.weight" in state and low_level == 256:
        depth = resnet_depth(state, "backbone.layer3.")
        blocks = {k.split(".")[2] for k in state if k.startswith("backbone.layer4.")}
        if depth is None or len(blocks) != 3:
            return "not a ResNet-50/101 backbone (layer3 of 6 or 23 blocks, layer4 of 3)"
        return f"resnet{depth}"
    if "backbone.block1.skip.weight" in state and low_level == 128:
        blocks = {k.split(".")[1] for k in state if re.match(r"backbone\.block\d+\.", k)}
        if len(blocks) != XCEPTION_BLOCKS or "backbone.conv5.pointwise.weight" not in state:
            return f"not its Xception-65 backbone (block1..block20, conv3..5): {len(blocks)} blocks"
        return "xception"
    if "backbone.features.17.conv.7.weight" in state and low_level == 24:
        return "mobilenet"
    return (
        "not one of its backbones (backbone.layer4 ResNet, backbone.block1 Xception, "
        f"backbone.features MobileNetV2 with a {low_level}-channel low-level map)"
    )


def _unalias(key: str) -> str:
    """``backbone.low_level_features.N`` / ``high_level_features.N`` as ``features.N``: the
    slices ``features[0:4]`` and ``features[4:]`` its MobileNetV2 runs are saved beside
    ``features`` under the same block numbers (the same tensors)."""
    return re.sub(r"^backbone\.(low|high)_level_features\.", "backbone.features.", key)


def _xception_blocks(keys: list[str]) -> dict[str, str]:
    """``block{k}.skip/skipbn/rep.{i}`` -> timm's ``blocks_{k-1}.shortcut/stack``.

    ``rep`` numbers ReLUs too and starts without one in ``block1``/``block2``, so a separable
    conv's number in the block is its rank among the ``rep`` indices holding one, and the BN
    after it (timm's ``bn_pw``) is at the next index.
    """
    pattern = re.compile(r"backbone\.block(\d+)\.(skip|skipbn|rep\.(\d+))\.(.+)")
    convs: dict[str, list[int]] = {}
    for key in keys:
        match = pattern.fullmatch(key)
        if match and match[3] is not None and match[4].startswith("conv1."):
            convs.setdefault(match[1], []).append(int(match[3]))
    ranks = {b: {i: n for n, i in enumerate(sorted(set(v)), 1)} for b, v in convs.items()}
    parts = {"conv1": "conv_dw", "bn": "bn_dw", "pointwise": "conv_pw"}
    mapping = {}
    for key in keys:
        match = pattern.fullmatch(key)
        if not match:
            continue
        block, part, index, rest = match[1], match[2], match[3], match[4]
        prefix = f"backbone.body.blocks_{int(block) - 1}."
        if part in ("skip", "skipbn"):
            mapping[key] = prefix + f"shortcut.{'conv' if part == 'skip' else 'bn'}.{rest}"
            continue
        rank = ranks.get(block, {})
        sub, _, tail = rest.partition(".")
        if int(index) in rank and sub in parts:
            mapping[key] = prefix + f"stack.conv{rank[int(index)]}.{parts[sub]}.{tail}"
        elif int(index) - 1 in rank and "." not in rest:
            mapping[key] = prefix + f"stack.conv{rank[int(index) - 1]}.bn_pw.{rest}"
    return mapping


def _shift(mapping: dict[str, str], offset: int) -> dict[str, str]:
    """Replace each ``<n>`` in the new names by ``n + offset``."""
    return {k: re.sub(r"<(\d+)>", lambda m: str(int(m[1]) + offset), v) for k, v in mapping.items()}
