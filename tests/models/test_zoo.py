"""Every registered model on every backbone: output contract, gradients, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import segkit
from segkit.models.backbones import HRNETS

BACKBONES = [*segkit.list_backbones(), "timm:resnet18"]
# Same code as a backbone kept in the cases, with more blocks or wider branches.
SAME_CODE = ("resnet101", "resnet101s", "hrnetv2_w32", "hrnetv2_w48")
CHEAP = ("mobilenet_v2", "timm:resnet18")  # every model at both dilated strides
CASES = [
    (model, backbone, stride)
    for model in segkit.list_models()
    for backbone in BACKBONES
    if backbone not in SAME_CODE
    for stride in ([4] if backbone in HRNETS else [8, 16] if backbone in CHEAP else [16])
]


@pytest.mark.parametrize(("name", "backbone", "stride"), CASES)
def test_output_contract_and_gradients(
    name: str, backbone: str, stride: int, check_outputs, randomize_bn
) -> None:
    torch.manual_seed(0)
    model = segkit.create_model(
        name, backbone=backbone, num_classes=3, output_stride=stride, aux=True
    )
    assert model.config["output_stride"] == stride
    # Some timm bodies zero-initialise the last BN of each block (zero_init_last), which
    # blocks gradients at initialisation only; random BN scales test the wiring instead.
    randomize_bn(model, affine=True)
    x = torch.randn(2, 3, 97, 131)

    out = model.train()(x)
    check_outputs(out, (2, 3, 97, 131), aux=True)
    loss = sum(v.float().pow(2).mean() for v in out.values())
    loss.backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    with torch.no_grad():
        out = model.eval()(x)
    check_outputs(out, (2, 3, 97, 131))


# Broken versions of a good train-mode output with aux and se; the checker rejects each.
PLANTED: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {
    "missing aux": lambda out: {"out": out["out"]},
    "missing se": lambda out: {"out": out["out"], "aux": out["aux"]},
    "extra key": lambda out: {**out, "features": out["out"]},
    "se per pixel": lambda out: {**out, "se": out["out"]},
    "aux at feature size": lambda out: {**out, "aux": out["aux"][..., ::8, ::8]},
    "wrong class count": lambda out: {**out, "out": out["out"][:, :2]},
    "NaN pixel": lambda out: {**out, "out": out["out"].index_fill(2, torch.tensor([3]), torch.nan)},
    "integer logits": lambda out: {**out, "out": out["out"].long()},
}


@pytest.mark.parametrize("fault", PLANTED)
def test_output_checker_catches_planted_faults(fault: str, check_outputs) -> None:
    good = {"out": torch.randn(2, 3, 17, 19), "aux": torch.randn(2, 3, 17, 19)}
    good["se"] = torch.randn(2, 3)
    check_outputs(good, (2, 3, 17, 19), aux=True, se=True)
    with pytest.raises(AssertionError):
        check_outputs(PLANTED[fault](good), (2, 3, 17, 19), aux=True, se=True)


def test_batchnorm_randomiser_is_reproducible_and_touches_only_batchnorm(randomize_bn) -> None:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return segkit.create_model("encnet", backbone="mobilenet_v2", num_classes=3, se_loss=True)

    fresh = build()
    rng = torch.random.get_rng_state()
    stats, again = randomize_bn(build(), seed=3), randomize_bn(build(), seed=3)
    affine = randomize_bn(build(), seed=3, affine=True)
    assert torch.equal(torch.random.get_rng_state(), rng)  # own generator, global RNG untouched
    bns = {
        n
        for n, m in fresh.named_modules()
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
    }
    assert any(isinstance(fresh.get_submodule(n), torch.nn.BatchNorm1d) for n in bns)
    before = fresh.state_dict()
    for model in (stats, again, affine):
        for key, value in model.state_dict().items():
            owner, _, field = key.rpartition(".")
            randomized = owner in bns and (
                field in ("running_mean", "running_var")
                or (model is affine and field in ("weight", "bias"))
            )
            assert torch.equal(value, before[key]) != randomized, key
            if randomized and field in ("running_var", "weight"):
                assert value.min() >= 0.5 and value.max() < 1.5, key
    for key, value in stats.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key  # same seed, same state


def test_backbone_reductions_match_feature_sizes() -> None:
    x = torch.randn(1, 3, 128, 160)
    for name in BACKBONES:
        for stride in [4] if name in HRNETS else [8, 16, 32]:
            backbone = segkit.models.build_backbone(name, output_stride=stride).eval()
            with torch.no_grad():
                features = backbone(x)
            assert len(features) == 4
            for feature, channels, reduction in zip(
                features, backbone.channels, backbone.reductions, strict=True
            ):
                assert feature.shape[1:] == (channels, 128 // reduction, 160 // reduction), name
            assert backbone.output_stride == stride


def test_multi_grid_dilates_layer4_blocks() -> None:
    model = segkit.create_model(
        "deeplabv3", backbone="resnet50", num_classes=3, output_stride=16, multi_grid=(1, 2, 4)
    )
    rates = [block.conv2.dilation[0] for block in model.backbone.layer4]
    assert rates == [2, 4, 8]
    assert model.config["multi_grid"] == [1, 2, 4]
    eight = segkit.create_model(
        "fcn", backbone="resnet50", num_classes=3, output_stride=8, multi_grid=(1, 2, 4)
    )
    assert [b.conv2.dilation[0] for b in eight.backbone.layer4] == [4, 8, 16]
    assert eight(torch.randn(2, 3, 65, 65))["out"].shape == (2, 3, 65, 65)


def test_aspp_rates_follow_output_stride() -> None:
    for stride, rates in ((16, [6, 12, 18]), (8, [12, 24, 36])):
        model = segkit.create_model(
            "deeplabv3", backbone="mobilenet_v2", num_classes=3, output_stride=stride
        )
        aspp = model.classifier[0]
        assert [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == rates


def test_separable_option_uses_depthwise_convolutions() -> None:
    model = segkit.create_model(
        "deeplabv3plus", backbone="mobilenet_v2", num_classes=3, separable=True
    )
    head_convs = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [c for c in head_convs if c.groups > 1 and c.groups == c.in_channels]
    assert len(depthwise) == 5  # three ASPP branches and two decoder convs
    plain = segkit.create_model("deeplabv3plus", backbone="mobilenet_v2", num_classes=3)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"name": "unet", "backbone": "resnet50"}, ["'unet'", "deeplabv3plus"]),
        ({"name": "fcn", "backbone": "resnet34"}, ["'resnet34'", "mobilenet_v2", "timm:"]),
        ({"name": "fcn", "backbone": "resnet50", "output_stride": 4}, ["output_stride=4", "[8"]),
        (
            {"name": "fcn", "backbone": "hrnetv2_w18", "output_stride": 16},
            ["output_stride=16", "stride-4", "[4]"],
        ),
        ({"name": "fcn", "backbone": "resnet50", "aspp_rates": (1, 2)}, ["aspp_rates", "dropout"]),
        ({"name": "fcn", "backbone": "mobilenet_v2", "multi_grid": (1, 2, 4)}, ["multi_grid"]),
        ({"name": "fcn", "backbone": "resnet50", "multi_grid": (1, 2)}, ["(1, 2)", "3 blocks"]),
        ({"name": "fcn", "backbone": "resnet50", "num_classes": 0}, ["num_classes", "0"]),
        ({"name": "fcn", "backbone": "timm:not_a_model"}, ["'not_a_model'", "timm"]),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, fragments: list[str]) -> None:
    kwargs = {"num_classes": 3, **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as info:
        segkit.create_model(name, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_none_options_do_not_override_defaults() -> None:
    model = segkit.create_model(
        "deeplabv3", backbone="mobilenet_v2", num_classes=3, aspp_rates=None, aspp_dropout=None
    )
    assert model.classifier[0].project[3].p == 0.5
    assert "aspp_dropout" not in model.config
