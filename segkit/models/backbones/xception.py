"""timm's aligned Xception (``xception65``) as a dilatable backbone, with the variants that other
DeepLabV3+ implementations of it use.

The modules are timm's own (stem, ``XceptionModule`` blocks, separable convolutions), so timm's
ImageNet weights load; segkit writes only which maps are returned and the options below, none
of which adds or removes a parameter.
"""

from __future__ import annotations

from collections import OrderedDict

import timm
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.models.backbones.base import DILATABLE_STRIDES, Backbone, check_stride

FEATURE_TAPS = ("strided_conv_input", "block_output")


class XceptionBackbone(Backbone):
    """timm's aligned Xception (e.g. ``xception65``), its last four feature levels.

    Parameter names are those of timm's ``features_only`` extractor (``body.stem_0...``,
    ``body.blocks_N...``: the top-level ``.`` of timm's ``stem.0`` and ``blocks.N`` become
    ``_``), whatever the options; :func:`segkit.load_weights` also matches timm's own spelling.
    Output stride 8/16 turns the later strided blocks into dilated ones (timm's rule). The
    defaults are timm's network.

    Args:
        name: the timm model (``xception41``, ``xception65``, ``xception71``).
        output_stride: 8, 16 or 32.
        bn_eps: epsilon of every BatchNorm: 1e-3 as timm's (and TensorFlow's) weights were
            trained, 1e-5 PyTorch's default (jfzhang95/pytorch-deeplab-xception).
        block_input_relu: every block's input passes through a ReLU that its shortcut also
            reads (the residual adds ReLU(x), not x), and the final block, which has no leading
            ReLU of its own, gets one (as jfzhang95/pytorch-deeplab-xception, whose blocks
            start with an in-place ReLU); false: the ReLU is on the separable-conv branch only.
        exit_depthwise_relu: a ReLU between the depthwise BN and the pointwise conv of the
            final block's three separable convs (timm, TensorFlow DeepLab); false: only after
            the pointwise BN (jfzhang95/pytorch-deeplab-xception).
        dilate_unstrided_conv: a strided block's last separable conv, whose stride 2 the output
            stride turns to 1, is dilated like the rest of its block (timm's rule); false: it
            stays undilated (as jfzhang95/pytorch-deeplab-xception's exit block at output
            stride 8; at 16 and 32 the two agree).
        feature_taps: where the maps at strides 4, 8 and 16 are taken: ``strided_conv_input``,
            inside each strided block at the input of its last (strided) separable conv (256,
            728 and 1024 channels; timm's features); ``block_output``, the ReLU of the output
            of the block before it, the activation the strided block reads (128, 256 and 728
            channels; DeepLabV3+'s low-level map in jfzhang95/pytorch-deeplab-xception).
    """

    def __init__(
        self,
        name: str,
        output_stride: int,
        *,
        bn_eps: float = 1e-3,
        block_input_relu: bool = False,
        exit_depthwise_relu: bool = True,
        dilate_unstrided_conv: bool = True,
        feature_taps: str = "strided_conv_input",
    ) -> None:
        super().__init__()
        check_stride(name, output_stride, DILATABLE_STRIDES)
        if feature_taps not in FEATURE_TAPS:
            raise ValueError(f"feature_taps={feature_taps!r}: choose one of {list(FEATURE_TAPS)}")
        if not bn_eps > 0:
            raise ValueError(f"bn_eps must be positive, got {bn_eps!r}")
        net = timm.create_model(name, pretrained=False, num_classes=0, output_stride=output_stride)
        modules = [(f"stem_{i}", m) for i, m in enumerate(net.stem)]
        modules += [(f"blocks_{i}", m) for i, m in enumerate(net.blocks)]
        self.body = nn.Sequential(OrderedDict(modules))
        self.stem_layers = len(net.stem)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = bn_eps
        if not exit_depthwise_relu:
            for conv in self.body[-1].stack:  # separable convs only: it has no leading ReLU
                if hasattr(conv, "act_dw"):
                    conv.act_dw = nn.Identity()
        # The strided blocks: timm's feature_info taps each at ``blocks.N.stack.act3``, the input
        # of its last (strided) separable conv. The last three give the stride-4/8/16 maps, the
        # final block's output the last one.
        levels = net.feature_info[-4:]
        strided = [int(info["module"].split(".")[1]) for info in net.feature_info[:-1]]
        if not dilate_unstrided_conv:
            for index in strided:
                conv = net.blocks[index].stack[-1].conv_dw
                if conv.stride == (1, 1):
                    conv.dilation, conv.padding = (1, 1), (1, 1)
        self.block_input_relu = block_input_relu
        self.block_output_taps = feature_taps == "block_output"
        self.taps = strided[-3:]
        if self.block_output_taps:
            self.taps = [index - 1 for index in self.taps]
            channels = [net.blocks[index].out_channels for index in self.taps]
        else:
            channels = [info["num_chs"] for info in levels[:-1]]
        self.channels = (*channels, levels[-1]["num_chs"])
        self.reductions = tuple(info["reduction"] for info in levels)
        self.output_stride = self.reductions[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for position, block in enumerate(self.body):
            index = position - self.stem_layers  # the block's number, negative in the stem
            if index < 0:
                x = block(x)
                continue
            if self.block_input_relu:
                x = F.relu(x)
            tapped = index in self.taps
            if tapped and not self.block_output_taps:
                x, tap = _run_with_tap(block, x)
                outs.append(tap)
            else:
                x = block(x)
                if tapped:
                    outs.append(F.relu(x))
        outs.append(x)
        return outs


def _run_with_tap(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """A timm ``XceptionModule`` forward that also returns the input of its last separable
    conv (written here: ``forward_with_tap`` is not in every timm 1.x)."""
    *layers, last = block.stack
    tap = x
    for layer in layers:
        tap = layer(tap)
    out = last(tap)
    if not block.no_skip:
        out = out + (x if block.shortcut is None else block.shortcut(x))
    return out, tap
