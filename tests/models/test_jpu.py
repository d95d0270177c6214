"""JPU (FastFCN joint pyramid upsampling): stride-8 features from an undilated backbone."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import segkit
from segkit.models.necks import JPU


def test_jpu_module_replaces_c4_by_stride_8_features() -> None:
    jpu = JPU((4, 6, 8, 10), (4, 8, 16, 32), width=5)
    assert jpu.channels == (4, 6, 8, 20)
    assert jpu.reductions == (4, 8, 16, 8)
    assert jpu.output_stride == 8
    # Sizes of a 65 x 97 input: ceil division at each stride.
    features = [
        torch.randn(2, 4, 17, 25),
        torch.randn(2, 6, 9, 13),
        torch.randn(2, 8, 5, 7),
        torch.randn(2, 10, 3, 4),
    ]
    out = jpu(features)
    assert len(out) == 4
    assert all(a is b for a, b in zip(out[:3], features[:3], strict=True))
    assert out[-1].shape == (2, 20, 9, 13)
    # Four dilated separable branches (rates 1, 2, 4, 8), each depthwise over 3 * width.
    depthwise = [branch[0][0] for branch in jpu.dilations]
    assert [conv.dilation[0] for conv in depthwise] == [1, 2, 4, 8]
    assert all(conv.groups == conv.in_channels == 15 for conv in depthwise)
    out[-1].square().mean().backward()
    for name, param in jpu.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_fcn_with_jpu_on_resnet50_at_output_stride_32(check_outputs) -> None:
    model = segkit.create_model("fcn", backbone="resnet50", num_classes=3, jpu=True)
    assert model.config["output_stride"] == 32 and model.config["jpu"] is True
    assert model.backbone.output_stride == 32
    assert isinstance(model.neck, JPU)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.dilation == (1, 1) for conv in convs)  # no dilation in the backbone
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        backbone_maps = model.backbone.eval()(x)
        neck_maps = model.neck.eval()(backbone_maps)
        out = model.eval()(x)
    assert backbone_maps[-1].shape[-2:] == (3, 4)  # stride 32
    assert neck_maps[-1].shape == (2, 2048, 9, 13)  # stride 8, 4 x 512 channels
    check_outputs(out, (2, 3, 65, 97))
    rebuilt = segkit.create_model(**model.config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def _flops(model: torch.nn.Module) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["fcn", "deeplabv3"])
def test_jpu_costs_fewer_flops_than_dilated_output_stride_8(name: str) -> None:
    fast = segkit.create_model(name, backbone="resnet50", num_classes=3, jpu=True)
    dilated = segkit.create_model(name, backbone="resnet50", num_classes=3, output_stride=8)
    assert fast.neck is not None and dilated.neck is None
    assert _flops(fast) < 0.8 * _flops(dilated)


def test_deeplabv3_fastfcn_style_with_aux(check_outputs) -> None:
    model = segkit.create_model("deeplabv3", backbone="resnet50", num_classes=3, jpu=True, aux=True)
    aspp = model.classifier[0]
    # JPU's map is at stride 8, so the default ASPP rates are the stride-8 ones.
    assert [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == [12, 24, 36]
    assert model.aux_classifier[0].in_channels == 1024  # c3, passed through by the neck
    out = model.train()(torch.randn(2, 3, 40, 48))
    check_outputs(out, (2, 3, 40, 48), aux=True)
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing[:5]


def test_jpu_on_mobilenet_uses_backbone_channels(check_outputs) -> None:
    model = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3, jpu=True)
    assert [conv[0].in_channels for conv in model.neck.convs] == [32, 96, 320]
    assert model.classifier[0].in_channels == 2048
    check_outputs(model.train()(torch.randn(2, 3, 48, 40)), (2, 3, 48, 40))


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        # The rule: JPU replaces dilation; a dilated backbone is refused with the fix.
        ({"name": "fcn", "output_stride": 8}, ["output_stride=8", "output_stride=32"]),
        ({"name": "encnet", "output_stride": 16}, ["output_stride=16", "replaces"]),
        ({"name": "deeplabv3plus"}, ["'deeplabv3plus'", "'encnet'"]),
        ({"name": "fcn8s"}, ["'fcn8s'", "'fcn'"]),
        ({"name": "fcn", "backbone": "hrnetv2_w18"}, ["strides [8, 16, 32]", "[4, 8, 16, 4]"]),
        ({"name": "fcn", "jpu": "JPU"}, ["jpu", "'JPU'"]),
    ],
)
def test_jpu_errors(kwargs: dict, fragments: list[str]) -> None:
    kwargs = {"backbone": "resnet50", "num_classes": 3, "jpu": True, **kwargs}
    with pytest.raises(ValueError) as info:
        segkit.create_model(kwargs.pop("name"), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_jpu_with_explicit_output_stride_32_is_accepted() -> None:
    model = segkit.create_model(
        "fcn", backbone="mobilenet_v2", num_classes=3, jpu=True, output_stride=32
    )
    assert model.neck.output_stride == 8
