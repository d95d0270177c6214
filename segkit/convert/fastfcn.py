"""FastFCN (wuhuikai, master): FCN, DeepLabV3 and EncNet with JPU on ResNet-50/101.

Layout (``encoding/models``, saved by ``experiments/segmentation/train.py`` as ``{"epoch",
"state_dict", "optimizer", "best_pred"}``): PyTorch-Encoding's (see
:mod:`segkit.convert.encoding`, whose backbone and head rules apply) with these differences:

- ``pretrained.*`` always has the deep stem (``deep_base=True``: ``conv1.{0,3,6}``, segkit's
  ``resnet50s``/``resnet101s``) and keeps the ImageNet ``fc`` (ignored).
- ``--jpu JPU`` adds ``jpu.*`` and runs the backbone undilated (output stride 32):
  ``jpu.conv5/conv4/conv3`` are the 3x3 conv-BN-ReLU projections of c4/c3/c2 (segkit's
  ``neck.convs.2/1/0``), ``jpu.dilation1..4`` the separable branches at dilations 1, 2, 4, 8
  (``0.conv1`` depthwise, ``0.bn``, ``0.pointwise``, then ``1`` BN-ReLU: segkit's
  ``neck.dilations.0..3``). FastFCN concatenates the projections as ``[c4, c3, c2]`` and
  segkit as ``[c2, c3, c4]``, so :func:`adjust` reverses the three channel blocks of each
  branch's depthwise conv and BN and of its pointwise conv's input.
- With JPU, EncNet's ``head.conv5`` is a 1x1 conv (``input_kernel_size=1``).
- ``--jpu JPU_X`` (``jpu.jum_*``) is not supported.

Without JPU a FastFCN file has PyTorch-Encoding 1.0's layout (FastFCN forked that code) and
converts as PyTorch-Encoding's. Every resize is bilinear with ``align_corners=True``;
DeepLabV3's ASPP rates are 12/24/36.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from segkit.convert.encoding import detect_body_and_heads, head_and_backbone_mapping
from segkit.convert.layout import Found, out_channels, regex_mapping

PROJECT = "FastFCN"
IGNORED = (r"pretrained\.fc\..*",)
JPU_WIDTH = 512  # segkit's JPU width
JPU_BRANCHES = 4  # dilations 1, 2, 4, 8

JPU_RULES = [
    (r"jpu\.conv3\.([01])\.(.+)", r"neck.convs.0.\1.\2"),
    (r"jpu\.conv4\.([01])\.(.+)", r"neck.convs.1.\1.\2"),
    (r"jpu\.conv5\.([01])\.(.+)", r"neck.convs.2.\1.\2"),
]
for _i in range(JPU_BRANCHES):
    JPU_RULES += [
        (rf"jpu\.dilation{_i + 1}\.0\.conv1\.weight", f"neck.dilations.{_i}.0.0.weight"),
        (rf"jpu\.dilation{_i + 1}\.0\.bn\.(.+)", rf"neck.dilations.{_i}.0.1.\1"),
        (rf"jpu\.dilation{_i + 1}\.0\.pointwise\.weight", f"neck.dilations.{_i}.1.0.weight"),
        (rf"jpu\.dilation{_i + 1}\.1\.(.+)", rf"neck.dilations.{_i}.1.1.\1"),
    ]


def detect(state: Mapping[str, Tensor]) -> Found | str:
    """FCN, DeepLabV3 or EncNet with JPU on FastFCN's deep-stem ResNet."""
    if any(key.startswith("jpu.jum_") for key in state):
        return "jpu.jum_* is FastFCN's JPU_X, which segkit does not implement (only JPU)"
    if "jpu.conv5.0.weight" not in state:
        return (
            "no jpu.conv5.0.weight (FastFCN's JPU; without JPU its files have PyTorch-Encoding "
            "1.0's layout and convert as PyTorch-Encoding's)"
        )
    found = detect_body_and_heads(state)
    if isinstance(found, str):
        return found
    model, details = found
    if not model["backbone"].endswith("s"):
        return "pretrained.conv1 is a 7x7 conv, not FastFCN's deep stem (conv1.0/3/6)"
    reason = _check_jpu(state)
    if reason:
        return reason
    model.update(jpu=True, output_stride=32)  # JPU replaces dilation
    details["jpu"] = True
    return Found("fastfcn", model, details)


def _check_jpu(state: Mapping[str, Tensor]) -> str:
    """Why ``jpu.*`` is not the JPU segkit builds, or ``""``."""
    width = out_channels(state, "jpu.conv5.0.weight")
    if width != JPU_WIDTH:
        return f"jpu.conv5 is {width} channels wide; segkit's JPU has width {JPU_WIDTH}"
    branches = {k.split(".")[1] for k in state if k.startswith("jpu.dilation")}
    if len(branches) != JPU_BRANCHES:
        return f"jpu has {len(branches)} dilation branches; segkit's JPU has {JPU_BRANCHES}"
    return ""


def to_segkit(state: Mapping[str, Tensor], found: Found) -> dict[str, str]:
    """Backbone (without ``fc``), JPU and heads: see the module docstring."""
    keys = list(state)
    return {**head_and_backbone_mapping(keys, found), **regex_mapping(keys, JPU_RULES)}


def adjust(tensors: dict[str, Tensor], found: Found, inverse: bool = False) -> None:
    """Reorder each JPU branch's input channels from FastFCN's ``[c4, c3, c2]`` blocks to
    segkit's ``[c2, c3, c4]``. Reversing the blocks is its own inverse, so ``inverse`` changes
    nothing."""
    if not found.model.get("jpu"):
        return
    order = torch.arange(3 * JPU_WIDTH).view(3, JPU_WIDTH).flip(0).flatten()
    for branch in range(JPU_BRANCHES):
        prefix = f"neck.dilations.{branch}."
        # A missing tensor is skipped here and named by the strict fill check.
        for name in ("0.0.weight", "0.1.weight", "0.1.bias", "0.1.running_mean", "0.1.running_var"):
            if prefix + name in tensors:
                tensors[prefix + name] = tensors[prefix + name][order]
        if prefix + "1.0.weight" in tensors:
            tensors[prefix + "1.0.weight"] = tensors[prefix + "1.0.weight"][:, order]
