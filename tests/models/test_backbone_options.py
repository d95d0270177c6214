"""Backbone options of MobileNetV2 and HRNetV2: shapes at odd sizes, and that each option
changes the function the way its docstring says (against an independent computation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import segkit
from segkit.models.backbones import build_backbone
from segkit.models.backbones.hrnet import HRNetV2Backbone
from segkit.models.backbones.mobilenet import MobileNetV2Backbone

# ---------------------------------------------------------------- MobileNetV2


def _mobilenet(randomize_bn, output_stride: int = 16, **options) -> MobileNetV2Backbone:
    torch.manual_seed(0)
    return randomize_bn(MobileNetV2Backbone(output_stride, **options), affine=True).eval()


def _dilations(backbone: MobileNetV2Backbone) -> list[int]:
    """Dilation of each block's depthwise conv, blocks 1..17."""
    return [
        next(m for m in block.conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1).dilation[
            0
        ]
        for block in backbone.features[1:]
    ]


def test_mobilenet_defaults_are_torchvision(randomize_bn) -> None:
    backbone = _mobilenet(randomize_bn, 32)
    reference = torchvision.models.mobilenet_v2(weights=None).features[:18].eval()
    assert list(backbone.features.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(backbone.features.state_dict())
    x = torch.rand(1, 3, 67, 53)
    with torch.no_grad():
        assert torch.equal(backbone(x)[-1], reference(x))


@pytest.mark.parametrize("options", [{}, {"pad_block_input": True, "pad_stem": False}])
def test_mobilenet_options_keep_torchvision_names(options) -> None:
    names = list(MobileNetV2Backbone(16).state_dict())
    assert list(MobileNetV2Backbone(16, **options).state_dict()) == names


# Depthwise dilation of blocks 1..17, by stage (1, 2, 3, 4, 3, 3 and 1 blocks).
DILATIONS = {
    (16, False): [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 2, 2], [2]],
    (16, True): [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 1, 1], [2]],
    (8, False): [[1], [1, 1], [1, 1, 1], [1, 2, 2, 2], [2, 2, 2], [2, 4, 4], [4]],
    (8, True): [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [2, 2, 2], [2, 2, 2], [4]],
    (32, False): [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 1, 1], [1]],
}
DILATIONS[32, True] = DILATIONS[32, False]


@pytest.mark.parametrize(("output_stride", "next_stage"), list(DILATIONS))
def test_mobilenet_dilation_rules(randomize_bn, output_stride: int, next_stage: bool) -> None:
    backbone = _mobilenet(randomize_bn, output_stride, dilate_from_next_stage=next_stage)
    assert _dilations(backbone) == [
        d for stage in DILATIONS[output_stride, next_stage] for d in stage
    ]
    x = torch.rand(1, 3, 65, 97)
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in backbone(x)]
    sides = [(-(-65 // r), -(-97 // r)) for r in backbone.reductions]
    assert shapes == sides


def test_mobilenet_dilation_rule_changes_the_output(randomize_bn) -> None:
    x = torch.rand(1, 3, 65, 65)
    with torch.no_grad():
        block = _mobilenet(randomize_bn, 16)(x)[-1]
        stage = _mobilenet(randomize_bn, 16, dilate_from_next_stage=True)(x)[-1]
    assert block.shape == stage.shape and not torch.allclose(block, stage, atol=1e-4)


@pytest.mark.parametrize("size", [(65, 65), (49, 71)])
def test_mobilenet_unpadded_stem(randomize_bn, size: tuple[int, int]) -> None:
    backbone = _mobilenet(randomize_bn, pad_stem=False)
    stem = backbone.features[0]
    x = torch.rand(1, 3, *size)
    expected = F.relu6(stem[1](F.conv2d(x, stem[0].weight, stride=2)))  # no padding
    with torch.no_grad():
        assert torch.allclose(stem(x), expected, atol=1e-6)
        features = backbone(x)
    side = [(s - 3) // 2 + 1 for s in size]  # the stem's output, one pixel short
    assert [tuple(f.shape[-2:]) for f in features] == [
        tuple(-(-s // r) for s in side) for r in (2, 4, 8, 8)
    ]


def _bn_relu6_of_zero(bn: nn.BatchNorm2d) -> Tensor:
    """What BN + ReLU6 make of a zero input, per channel."""
    zero = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return zero.clamp(0, 6)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_mobilenet_blocks_pad_their_input(randomize_bn, output_stride: int) -> None:
    """An expanding block sees its padding through the expansion: the depthwise conv's border
    is BN+ReLU6 of zero, not zero. The residual adds the unpadded input."""
    padded = _mobilenet(randomize_bn, output_stride, pad_block_input=True)
    x = torch.rand(1, 3, 65, 71)
    with torch.no_grad():
        for index in (1, 3, 4, 14, 16):
            x_in = padded.features[:index](x)
            expand, depthwise, project, project_bn = _block_parts(padded.features[index])
            expanded = expand(x_in) if expand is not None else x_in
            d = depthwise[0].dilation[0]
            if expand is not None:  # border value = what the expansion makes of zeros
                border = _bn_relu6_of_zero(expand[1]).view(1, -1, 1, 1)
                expanded = F.pad(expanded - border, (d, d, d, d)) + border
            else:
                expanded = F.pad(expanded, (d, d, d, d))
            dw = depthwise[2](depthwise[1](F.conv2d(
                expanded, depthwise[0].weight, stride=depthwise[0].stride, dilation=d,
                groups=depthwise[0].groups,
            )))  # fmt: skip
            expected = project_bn(project(dw))
            if padded.features[index].use_res_connect:
                expected = expected + x_in
            out = padded.features[index](x_in)
            assert out.shape == expected.shape
            assert torch.allclose(out, expected, atol=1e-5), index


def test_mobilenet_block_padding_changes_expanding_blocks_only(randomize_bn) -> None:
    default = _mobilenet(randomize_bn)
    padded = _mobilenet(randomize_bn, pad_block_input=True)
    x = torch.rand(1, 32, 33, 33)
    with torch.no_grad():
        # block 1 does not expand: zero padding before it is the depthwise conv's own
        assert torch.allclose(default.features[1](x), padded.features[1](x), atol=1e-6)
        x = torch.rand(1, 16, 33, 33)
        assert not torch.allclose(default.features[2](x), padded.features[2](x), atol=1e-4)


def _block_parts(block: nn.Module):
    """(expansion conv-BN-ReLU6 or None, depthwise conv-BN-ReLU6, projection conv, its BN)."""
    layers = list(block.conv)
    expand = layers.pop(0) if len(layers) == 4 else None
    return expand, *layers


def test_mobilenet_options_through_create_model() -> None:
    model = segkit.create_model(
        "deeplabv3plus",
        backbone="mobilenet_v2",
        num_classes=3,
        pad_block_input=True,
        pad_stem=False,
        dilate_from_next_stage=True,
    ).eval()
    assert model.config["pad_stem"] is False
    with torch.no_grad():
        assert model(torch.rand(1, 3, 65, 49))["out"].shape == (1, 3, 65, 49)


# ---------------------------------------------------------------- HRNetV2


_HRNETS: dict[tuple, HRNetV2Backbone] = {}


def _hrnet(randomize_bn, **options) -> HRNetV2Backbone:
    """One HRNetV2-W18 per option set, same weights (the body is large: each is built once)."""
    key = tuple(sorted(options.items()))
    if key not in _HRNETS:
        torch.manual_seed(0)
        _HRNETS[key] = randomize_bn(build_backbone("hrnetv2_w18", **options), affine=True).eval()
    return _HRNETS[key]


@pytest.mark.parametrize("stem_mid_relu", [True, False])
def test_hrnet_layer1_as_c1(randomize_bn, stem_mid_relu: bool) -> None:
    """c1 is layer1's output, computed through the stem with or without its middle ReLU."""
    backbone = _hrnet(randomize_bn, c1_from_layer1=True, stem_mid_relu=stem_mid_relu)
    assert backbone.channels == (256, 36, 72, 270)
    body = backbone.body
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        stem = body.bn1(body.conv1(x))
        stem = F.relu(stem) if stem_mid_relu else stem
        expected = body.layer1(F.relu(body.bn2(body.conv2(stem))))
        assert torch.allclose(backbone(x)[0], expected, atol=1e-5)


def test_hrnet_options_at_an_odd_size(randomize_bn) -> None:
    """layer1 as c1: 256 channels at ceil(size / 4), the other maps unchanged; without the
    stem's middle ReLU: same shapes and names, another function."""
    x = torch.rand(1, 3, 49, 71)
    with torch.no_grad():
        default = _hrnet(randomize_bn)(x)
        layer1 = _hrnet(randomize_bn, c1_from_layer1=True)(x)
        no_relu = _hrnet(randomize_bn, c1_from_layer1=True, stem_mid_relu=False)(x)
    assert tuple(layer1[0].shape) == (1, 256, 13, 18)
    assert all(torch.equal(p, q) for p, q in zip(default[1:], layer1[1:], strict=True))
    assert [t.shape for t in no_relu] == [t.shape for t in layer1]
    assert not torch.allclose(no_relu[-1], layer1[-1], atol=1e-4)
    names = list(_hrnet(randomize_bn).state_dict())
    assert (
        list(_hrnet(randomize_bn, c1_from_layer1=True, stem_mid_relu=False).state_dict()) == names
    )


def test_hrnet_options_through_create_model() -> None:
    model = segkit.create_model(
        "deeplabv3plus",
        backbone="hrnetv2_w18",
        num_classes=3,
        c1_from_layer1=True,
        stem_mid_relu=False,
    ).eval()
    assert model.classifier.low_level[0].in_channels == 256
    assert model.config["stem_mid_relu"] is False
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 35))["out"].shape == (1, 3, 33, 35)
