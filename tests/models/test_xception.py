"""The ``xception65`` backbone: timm's network by default, and each of its options.

The defaults are checked against timm's own ``features_only`` extractor and classification
model; each option against the same network changed by other means (a shifted running
variance, an in-place ReLU that the shortcut then reads, a hand-written separable conv, a
conv re-dilated by hand).
"""

from __future__ import annotations

import copy
import math
from functools import cache

import pytest
import timm
import torch
import torch.nn.functional as F
from convertkit import randomize
from torch import nn

import segkit
from segkit.models.backbones import build_backbone

X = torch.rand(1, 3, 49, 67, generator=torch.Generator().manual_seed(3))
JFZ = {  # every option away from its default
    "bn_eps": 1e-5,
    "block_input_relu": True,
    "exit_depthwise_relu": False,
    "dilate_unstrided_conv": False,
    "feature_taps": "block_output",
}


def build(output_stride: int = 16, **options) -> nn.Module:
    """A backbone with the weights of ``torch.manual_seed(0)`` and random BN statistics."""
    torch.manual_seed(0)
    return randomize(build_backbone("xception65", output_stride=output_stride, **options))


def same_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    """``target`` with the tensors of ``source`` (the same names), in eval mode."""
    target.load_state_dict(source.state_dict())
    return target.eval()


def run(backbone: nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return backbone(X)


@cache
def outputs(output_stride: int = 16, **options) -> list[torch.Tensor]:
    """``run(build(...))``, once per configuration: an xception65 pass costs about a second."""
    return run(build(output_stride, **options))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_default_is_timm_feature_extractor() -> None:
    """Same parameter names, maps, channels and strides as timm's ``features_only`` model
    (what the backbone was before segkit built it from timm's modules)."""
    ours = build()
    timm_body = timm.create_model(
        "xception65", features_only=True, out_indices=(-4, -3, -2, -1), output_stride=16
    )
    assert list(ours.state_dict()) == [f"body.{name}" for name in timm_body.state_dict()]
    same_weights(ours.body, timm_body)
    assert ours.channels == tuple(timm_body.feature_info.channels())
    assert ours.reductions == tuple(timm_body.feature_info.reduction())
    with torch.no_grad():
        expected = timm_body(X)
    for got, want in zip(outputs(), expected, strict=True):
        assert torch.equal(got, want)


def test_timm_checkpoint_loads_by_name() -> None:
    """A timm ``xception65`` state dict fills the backbone; its last map is timm's
    ``forward_features``."""
    torch.manual_seed(1)
    net = randomize(timm.create_model("xception65"))
    backbone = build_backbone("xception65", output_stride=32).eval()
    report = segkit.load_weights(backbone, net.state_dict())
    assert report.missing == [] and report.mismatched == []
    assert len(report.loaded) == len(backbone.state_dict())
    with torch.no_grad():
        assert torch.equal(run(backbone)[-1], net.forward_features(X))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("options", [{}, JFZ], ids=["default", "all-options"])
def test_output_shapes(output_stride: int, options: dict) -> None:
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only
        backbone = build_backbone("xception65", output_stride=output_stride, **options)
        outs = backbone(torch.empty(2, 3, 49, 67))
    assert backbone.output_stride == output_stride
    for out, channels, reduction in zip(outs, backbone.channels, backbone.reductions, strict=True):
        size = (math.ceil(49 / reduction), math.ceil(67 / reduction))
        assert tuple(out.shape) == (2, channels, *size)


def test_bn_eps_is_every_batchnorm_epsilon() -> None:
    """eps e with running variance v normalises as eps 1e-3 with variance v + e - 1e-3."""
    small = build(bn_eps=1e-5)
    assert {m.eps for m in small.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    shifted = same_weights(small, build())
    for module in shifted.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.add_(1e-5 - 1e-3)
    expected = run(shifted)
    for got, want in zip(outputs(bn_eps=1e-5), expected, strict=True):
        assert close(got, want)
    assert not close(outputs()[-1], expected[-1])


def test_block_input_relu_is_read_by_the_shortcut() -> None:
    """Equals timm's blocks whose leading ReLU works in place (so the shortcut reads its
    output), with a ReLU before the final block."""
    reference = build()
    blocks = list(reference.body.children())[2:]
    for block in blocks[:-1]:
        block.stack.act1 = nn.ReLU(inplace=True)
    with torch.no_grad():
        x = reference.body.stem_1(reference.body.stem_0(X))
        for block in blocks[:-1]:
            x = block(x)
        expected = blocks[-1](F.relu(x))
    assert close(outputs(block_input_relu=True)[-1], expected)
    assert not close(outputs()[-1], expected)


def test_exit_depthwise_relu() -> None:
    """Off: the final block's separable convs are depthwise-BN-pointwise-BN-ReLU."""
    body = build().body
    with torch.no_grad():
        x = body[:-1](X)
        for conv in body.blocks_20.stack:
            x = F.relu(conv.bn_pw(conv.conv_pw(conv.bn_dw(conv.conv_dw(x)))))
    ours = outputs(exit_depthwise_relu=False)
    assert close(ours[-1], x)
    assert not close(outputs()[-1], x)
    assert all(torch.equal(a, b) for a, b in zip(ours[:3], outputs()[:3], strict=True))


def test_dilate_unstrided_conv() -> None:
    """Off: at output stride 8 the exit block's formerly strided conv runs undilated; at 16
    (where it is undilated anyway) and 32 (still strided) no conv changes."""
    reference = build(8)
    conv = reference.body.blocks_19.stack.conv3.conv_dw
    assert conv.dilation == (2, 2) and conv.stride == (1, 1)
    conv.dilation, conv.padding = (1, 1), (1, 1)
    ours = outputs(8, dilate_unstrided_conv=False)
    assert close(ours[-1], run(reference)[-1])
    assert not close(ours[-1], outputs(8)[-1])
    for stride in (16, 32):
        with torch.device("meta"):
            convs = [
                build_backbone("xception65", output_stride=stride, **options).modules()
                for options in ({}, {"dilate_unstrided_conv": False})
            ]
            for a, b in zip(*convs, strict=True):
                if isinstance(a, nn.Conv2d):
                    assert (a.dilation, a.padding, a.stride) == (b.dilation, b.padding, b.stride)


def test_feature_taps_block_output() -> None:
    """The stride-4/8/16 maps are the ReLU of blocks 0, 1 and 18's outputs."""
    ours = build(feature_taps="block_output")
    assert ours.channels == (128, 256, 728, 2048)
    assert ours.reductions == (4, 8, 16, 16)
    body = ours.body
    with torch.no_grad():
        c1 = body[:3](X)  # stem_0, stem_1, blocks_0
        c2 = body[3](c1)
        c3 = body[4:21](c2)  # blocks_2 ... blocks_18
    expected = [F.relu(c1), F.relu(c2), F.relu(c3), outputs()[-1]]
    for got, want in zip(outputs(feature_taps="block_output"), expected, strict=True):
        assert close(got, want)


def test_all_options_match_their_composition() -> None:
    """All options together (as in jfzhang95/pytorch-deeplab-xception) at output stride 16:
    the low-level map and the deepest map from timm's modules changed by hand."""
    ours = build(**JFZ)
    reference = copy.deepcopy(ours)
    blocks = list(reference.body.children())[2:]
    for block in blocks[:-1]:
        block.stack.act1 = nn.ReLU(inplace=True)
    with torch.no_grad():
        x = reference.body.stem_1(reference.body.stem_0(X))
        x = blocks[0](x)
        low_level = F.relu(x.clone())  # the next block's in-place ReLU changes x itself
        for block in blocks[1:-1]:
            x = block(x)
        x = F.relu(x)
        for conv in blocks[-1].stack:
            x = F.relu(conv.bn_pw(conv.conv_pw(conv.bn_dw(conv.conv_dw(x)))))
    outs = outputs(**JFZ)
    assert close(outs[0], low_level) and close(outs[-1], x)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"feature_taps": "middle"}, "feature_taps='middle'"), ({"bn_eps": 0.0}, "bn_eps")],
)
def test_invalid_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_backbone("xception65", **options)
