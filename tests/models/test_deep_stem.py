"""The deep-stem ResNets ``resnet50s``/``resnet101s``: timm's modules, wired like ResNet."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import segkit
from segkit.models.backbones import build_backbone


def _dilations(body: torch.nn.Module) -> list[tuple[int, int]]:
    return [block.conv2.dilation for name in ("layer3", "layer4") for block in getattr(body, name)]


@pytest.mark.parametrize("name", ["resnet50s", "resnet101s"])
def test_names_and_shapes_are_timms_so_imagenet_weights_load(name: str) -> None:
    with torch.device("meta"):
        body = build_backbone(name, output_stride=32)
        reference = timm.create_model(name, pretrained=False)
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in body.state_dict().items()} == expected
    # The deep stem: three 3x3 convs (64, 64, 128 channels), the first with stride 2.
    convs = [body.conv1[i] for i in (0, 3, 6)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (64, (3, 3), (2, 2)),
        (64, (3, 3), (1, 1)),
        (128, (3, 3), (1, 1)),
    ]
    assert body.layer1[0].conv1.in_channels == 128


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_features_equal_timms_own_feature_extractor(stride: int, randomize_bn) -> None:
    torch.manual_seed(0)
    body = randomize_bn(build_backbone("resnet50s", output_stride=stride), affine=True).eval()
    reference = timm.create_model(
        "resnet50s", features_only=True, out_indices=(1, 2, 3, 4), output_stride=stride
    )
    reference.load_state_dict(body.state_dict())
    x = torch.rand(1, 3, 65, 97)
    with torch.no_grad():
        features, expected = body(x), reference.eval()(x)
    sizes = {8: [(17, 25), (9, 13), (9, 13), (9, 13)], 16: [(17, 25), (9, 13), (5, 7), (5, 7)]}
    sizes[32] = [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert [tuple(f.shape[-2:]) for f in features] == sizes[stride]
    assert [f.shape[1] for f in features] == list(body.channels)
    assert body.reductions == (4, 8, min(16, stride), stride)
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("stride", [8, 16])
def test_dilation_rule_is_torchvisions(stride: int) -> None:
    with torch.device("meta"):
        body = build_backbone("resnet50s", output_stride=stride)
        reference = torchvision.models.resnet50(
            replace_stride_with_dilation=[False, stride == 8, True]
        )
    assert _dilations(body) == _dilations(reference)


def test_multi_grid_multiplies_layer4_rates() -> None:
    with torch.device("meta"):
        body = build_backbone("resnet101s", output_stride=16, multi_grid=(1, 2, 4))
    assert [block.conv2.dilation for block in body.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert [block.conv2.padding for block in body.layer4] == [(2, 2), (4, 4), (8, 8)]
    with pytest.raises(ValueError, match="multi_grid"):
        build_backbone("resnet50s", output_stride=16, multi_grid=(1, 2))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fcn", {"output_stride": 8, "aux": True}),
        ("deeplabv3", {"output_stride": 16, "multi_grid": (1, 2, 4)}),
        ("deeplabv3plus", {"output_stride": 16}),
        ("fcn8s", {}),
        ("encnet", {"jpu": True, "se_loss": True, "input_kernel_size": 1}),
    ],
)
def test_every_model_runs_on_the_deep_stem(name: str, options: dict, check_outputs) -> None:
    torch.manual_seed(0)
    model = segkit.create_model(name, backbone="resnet50s", num_classes=3, **options)
    with torch.no_grad():
        check_outputs(model.eval()(torch.rand(1, 3, 49, 57)), (1, 3, 49, 57))
