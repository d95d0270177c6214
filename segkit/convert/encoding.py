"""PyTorch-Encoding (zhanghang1989): FCN, DeepLabV3 and EncNet on ResNet-50/101(S).

Layout (master's ``encoding/models/sseg``, saved by ``experiments/segmentation/train.py`` as
``{"epoch", "state_dict", "optimizer", "best_pred"}``):

- ``pretrained.*``: the backbone. ``resnet50/101`` have torchvision's names (7x7 ``conv1``);
  ``resnet50s/101s`` a deep stem ``conv1.{0,3,6}`` (3x3 convs 64, 64, 128) with BNs
  ``conv1.{1,4}``, as timm's ``resnet50s``. Master drops the ImageNet ``fc``; release 1.0
  (2018), whose ``resnet50/101`` always had the deep stem, kept it (ignored here). Dilated by
  default (``dilated=True``): output stride 8, layer3 and layer4 at dilation 2 and 4 with
  each stage's first block at the previous dilation (torchvision's rule).
- ``head.conv5.{0,1,4}``: ``FCNHead`` (3x3 conv to in/4, BN, ReLU, dropout, 1x1 classifier).
- ``head.aspp.b0..b4``, ``head.aspp.project``, ``head.block.{0,1,4}``: DeepLabV3 (ASPP rates
  12/24/36 at any stride, width in/8 = 256, image pooling at ``b4.gap.{1,2}``; then a 3x3
  conv-BN-ReLU, dropout and the classifier: segkit's ``DeepLabV3Head`` without the dropout,
  which eval mode skips).
- ``head.conv5``, ``head.connect.{0,1}`` (lateral 1x1 convs from c2, c3), ``head.fusion``,
  ``head.encmodule.encoding.{0,1}`` (1x1 conv-BN-ReLU), ``.3.codewords``/``.3.scale``
  (Encoding), ``.4`` (BN over the codes), ``head.encmodule.fc.0``, ``head.encmodule.selayer``
  (SE-loss), ``head.conv6.1`` (classifier): EncNet. The gated features are
  ``relu(x + x * gamma)``; ``x`` comes out of a ReLU and ``gamma`` is a sigmoid, so this is
  segkit's ``x * (1 + gamma)``. The lateral maps are concatenated as ``[head, c2, c3]``.
- ``auxlayer.conv5.*``: the auxiliary ``FCNHead`` on c3.

Every resize is bilinear with ``align_corners=True``. PyTorch-Encoding has no JPU: a file with
``jpu.*`` keys is FastFCN's (:mod:`segkit.convert.fastfcn`, which reuses the rules below).
FastFCN's files without JPU have release 1.0's layout and convert here, at output stride 8 (as
trained with FastFCN's ``--dilated``; give ``--output-stride 32`` for its undilated default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from segkit.convert.layout import Found, out_channels, regex_mapping, resnet_depth

PROJECT = "PyTorch-Encoding"
IGNORED = (r"pretrained\.fc\..*",)  # the ImageNet classifier of release 1.0 files
ASPP_RATES = [12, 24, 36]  # DeepLabV3Head's default, whatever the output stride

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
BACKBONE_RULES = [(r"pretrained\.((?:conv1|bn1|layer[1-4])\..+)", r"backbone.\1")]
AUX_RULES = [(r"auxlayer\.conv5\.([014])\.(.+)", r"aux_classifier.\1.\2")]
HEAD_RULES = {
    # FCNHead: the same indices as segkit's FCNHead.
    "fcn": [(r"head\.conv5\.([014])\.(.+)", r"classifier.\1.\2")],
    # ASPP branches and projection, then the 3x3 conv-BN and the classifier.
    "deeplabv3": [
        (r"head\.aspp\.b0\.([01])\.(.+)", r"classifier.0.convs.0.\1.\2"),
        (r"head\.aspp\.b([123])\.([01])\.(.+)", r"classifier.0.convs.\1.\2.\3"),
        (r"head\.aspp\.b4\.gap\.([12])\.(.+)", r"classifier.0.convs.4.\1.\2"),
        (r"head\.aspp\.project\.([01])\.(.+)", r"classifier.0.project.\1.\2"),
        (r"head\.block\.0\.(.+)", r"classifier.1.\1"),
        (r"head\.block\.1\.(.+)", r"classifier.2.\1"),
        (r"head\.block\.4\.(.+)", r"classifier.4.\1"),
    ],
    "encnet": [
        (r"head\.conv5\.([01])\.(.+)", r"classifier.conv.\1.\2"),
        (r"head\.connect\.([01])\.([01])\.(.+)", r"classifier.lateral.\1.\2.\3"),
        (r"head\.fusion\.([01])\.(.+)", r"classifier.fusion.\1.\2"),
        (r"head\.encmodule\.encoding\.([01])\.(.+)", r"classifier.context.encode.0.\1.\2"),
        (r"head\.encmodule\.encoding\.3\.(codewords|scale)", r"classifier.context.encode.1.\1"),
        (r"head\.encmodule\.encoding\.4\." + _BN, r"classifier.context.encode.2.\1"),
        (r"head\.encmodule\.fc\.0\.(weight|bias)", r"classifier.context.fc.0.\1"),
        (r"head\.encmodule\.selayer\.(weight|bias)", r"classifier.se_classifier.\1"),
        (r"head\.conv6\.1\.(weight|bias)", r"classifier.classifier.1.\1"),
    ],
}
RESNETS = ("resnet50", "resnet101", "resnet50s", "resnet101s")
ENCNET_CODEWORDS = "head.encmodule.encoding.3.codewords"


def detect(state: Mapping[str, Tensor]) -> Found | str:
    """FCN, DeepLabV3 or EncNet on ResNet-50/101 or ResNet-50S/101S in PyTorch-Encoding's
    names (``pretrained.*``, ``head.*``, ``auxlayer.*``), without FastFCN's JPU."""
    if any(key.startswith("jpu.") for key in state):
        return "has jpu.* keys (FastFCN's JPU; PyTorch-Encoding has no JPU)"
    found = detect_body_and_heads(state)
    if isinstance(found, str):
        return found
    model, details = found
    model["output_stride"] = 8  # BaseNet's dilated=True
    kept_fc = "pretrained.fc.weight" in state
    details["layout"] = "1.0 or FastFCN without JPU (ImageNet fc kept)" if kept_fc else "master"
    return Found("encoding", model, details)


def detect_body_and_heads(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """``(create_model arguments, report details)`` of the backbone and heads both projects
    write the same way, or why the file is not such a model (output stride and JPU are left to
    the caller)."""
    backbone = detect_backbone(state)
    if backbone not in RESNETS:
        return backbone
    head = _detect_head(state)
    if isinstance(head, str):
        return head
    name, classes, options = head
    aux = "auxlayer.conv5.4.weight" in state
    model = {
        "name": name,
        "backbone": backbone,
        "num_classes": classes,
        "aux": aux,
        "align_corners": True,
        **options,
    }
    stem = "deep stem" if backbone.endswith("s") else "7x7 stem"
    details = {
        "model": name,
        "backbone": f"ResNet-{backbone[6:].rstrip('s')} ({stem})",
        "classes": classes,
        "aux": aux,
        **{k: v for k, v in options.items() if isinstance(v, bool)},
    }
    return model, details


def detect_backbone(state: Mapping[str, Tensor]) -> str:
    """One of :data:`RESNETS` (segkit backbone names) from ``pretrained.*``, otherwise a
    sentence saying why not."""
    deep = state.get("pretrained.conv1.0.weight")
    plain = state.get("pretrained.conv1.weight")
    if deep is not None:
        last = state.get("pretrained.conv1.6.weight")
        if tuple(deep.shape) != (64, 3, 3, 3) or last is None or last.shape[0] != 128:
            return "pretrained.conv1 is a deep stem but not 3x3 convs 64, 64, 128 (ResNet-S)"
        suffix = "s"
    elif plain is not None and tuple(plain.shape) == (64, 3, 7, 7):
        suffix = ""
    else:
        return "no pretrained.conv1.weight 7x7 or pretrained.conv1.0.weight (a ResNet stem)"
    conv2 = state.get("pretrained.layer1.0.conv2.weight")
    if conv2 is None or tuple(conv2.shape) != (64, 64, 3, 3):
        return (
            "pretrained.layer1.0.conv2 is not a plain 64-channel 3x3 conv (ResNeSt, ResNeXt "
            "and other backbones are not supported)"
        )
    if "pretrained.layer1.0.downsample.0.weight" not in state:
        return "no pretrained.layer1.0.downsample.0.weight (ResNet-D's avg-pool shortcut?)"
    depth = resnet_depth(state, "pretrained.layer3.")
    if depth is None:
        return "pretrained.layer3 has neither 6 nor 23 blocks (ResNet-50/101)"
    return f"resnet{depth}{suffix}"


def _detect_head(state: Mapping[str, Tensor]) -> tuple[str, int, dict[str, Any]] | str:
    """``(model name, classes, head options)`` from ``head.*``."""
    if ENCNET_CODEWORDS in state:
        if "head.conv5.0.weight" not in state or "head.conv6.1.weight" not in state:
            return "EncNet's head.encmodule without head.conv5.0 / head.conv6.1"
        codes, channels = state[ENCNET_CODEWORDS].shape
        options = {
            "lateral": "head.connect.0.0.weight" in state,
            "se_loss": "head.encmodule.selayer.weight" in state,
            "num_codes": int(codes),
            "channels": int(channels),
            "input_kernel_size": int(state["head.conv5.0.weight"].shape[-1]),
        }
        return "encnet", out_channels(state, "head.conv6.1.weight"), options
    if "head.aspp.b0.0.weight" in state:
        if "head.block.4.weight" not in state:
            return "DeepLabV3's head.aspp without the classifier head.block.4"
        options = {
            "aspp_rates": list(ASPP_RATES),
            "aspp_channels": out_channels(state, "head.aspp.b0.0.weight"),
        }
        return "deeplabv3", out_channels(state, "head.block.4.weight"), options
    if "head.conv5.5.weight" in state:
        return "head.conv5.5 (FCN with_global=True: a global-pooling branch) is not supported"
    if "head.conv5.4.weight" in state:
        return "fcn", out_channels(state, "head.conv5.4.weight"), {}
    return (
        "head.* is none of FCN (head.conv5.4), DeepLabV3 (head.aspp) or EncNet "
        "(head.encmodule); PSPNet, UPerNet and the other heads are not supported"
    )


def to_segkit(state: Mapping[str, Tensor], found: Found) -> dict[str, str]:
    """Backbone and heads renamed to segkit's names (see the module docstring)."""
    return head_and_backbone_mapping(list(state), found)


def head_and_backbone_mapping(keys: list[str], found: Found) -> dict[str, str]:
    """The renaming of ``pretrained.*``, ``head.*`` and ``auxlayer.*`` (both projects)."""
    return regex_mapping(keys, BACKBONE_RULES + AUX_RULES + HEAD_RULES[found.model["name"]])
