"""EncNet: the Encoding layer, the Context Encoding Module and every head combination."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import segkit
from segkit.models.heads.encnet import ContextEncoding, EncNetHead, Encoding


def _naive_encoding(x: Tensor, codewords: Tensor, scale: Tensor) -> Tensor:
    """The paper's formula with the full N x HW x K x D residual tensor."""
    pixels = x.flatten(2).transpose(1, 2)  # N x HW x D
    residuals = pixels[:, :, None, :] - codewords  # N x HW x K x D
    weights = torch.softmax(scale * residuals.pow(2).sum(-1), dim=2)  # over the K codewords
    return (weights[..., None] * residuals).sum(1)  # N x K x D


def test_encoding_matches_the_naive_formula_and_trains() -> None:
    torch.manual_seed(0)
    layer = Encoding(channels=6, num_codes=5).double()
    x = torch.randn(3, 6, 4, 7, dtype=torch.double, requires_grad=True)
    encoded = layer(x)
    assert encoded.shape == (3, 5, 6)
    torch.testing.assert_close(encoded, _naive_encoding(x, layer.codewords, layer.scale))
    assert (layer.scale < 0).all()  # smoothing factors start negative: nearer codes weigh more
    assert torch.autograd.gradcheck(layer, (x[:1, :, :2, :3],))


def test_context_encoding_gates_channels_and_trains_at_batch_one() -> None:
    torch.manual_seed(0)
    module = ContextEncoding(16, num_codes=4).train()
    x = torch.rand(1, 16, 5, 6) + 0.1
    gated, context = module(x)
    assert gated.shape == x.shape and context.shape == (1, 16)
    ratio = gated / x  # y = x * (1 + gamma), gamma = sigmoid(...) per channel
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert ((ratio > 1) & (ratio < 2)).all()
    (gated.sum() + context.sum()).backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_lateral_fusion_width_is_what_is_concatenated() -> None:
    head = EncNetHead((24, 32, 96, 320), 3, channels=64, lateral=True)
    assert head.fusion[0].in_channels == 3 * 64
    # c2/c3/c4 at three different sizes (JPU-like: c3 coarser than the head map).
    features = [torch.randn(2, c, s, s) for c, s in ((24, 16), (32, 8), (96, 4), (320, 8))]
    assert head(features)["out"].shape == (2, 3, 8, 8)


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError, match="num_codes"):
        segkit.create_model("encnet", backbone="mobilenet_v2", num_classes=3, num_codes=0)
    with pytest.raises(ValueError, match=r"'psp'.*\['psa', 'se', 'cbam'\]"):
        segkit.create_model("encnet", backbone="mobilenet_v2", num_classes=3, attention="psp")


VALID = [
    (jpu, lateral, se_loss, aux, stride)
    for jpu, lateral, se_loss, aux, stride in itertools.product(
        (False, True), (False, True), (False, True), (False, True), (8, 16, 32)
    )
    if not jpu or stride == 32
]
REFUSED = [
    (lateral, se_loss, aux, stride)
    for lateral, se_loss, aux, stride in itertools.product(
        (False, True), (False, True), (False, True), (8, 16)
    )
]


@pytest.mark.parametrize(("jpu", "lateral", "se_loss", "aux", "stride"), VALID)
def test_every_combination_builds_runs_and_trains(
    jpu: bool, lateral: bool, se_loss: bool, aux: bool, stride: int, check_outputs
) -> None:
    # MobileNetV2 keeps the 48 combinations fast (its c2/c3/c4 are at strides 8/16/32, so JPU
    # runs the same code as on ResNet); PyTorch-Encoding's ResNet-50 setting is tested below.
    _check_combination(check_outputs, "mobilenet_v2", jpu, lateral, se_loss, aux, stride)


def test_pytorch_encoding_setting_resnet50_jpu_lateral_se_loss_aux(check_outputs) -> None:
    # PyTorch-Encoding: train.py --model encnet --jpu JPU --se-loss --lateral --aux
    _check_combination(check_outputs, "resnet50", True, True, True, True, 32)


def _check_combination(
    check_outputs: Callable[..., None],
    backbone: str,
    jpu: bool,
    lateral: bool,
    se_loss: bool,
    aux: bool,
    stride: int,
) -> None:
    """Build EncNet with these options; check its config, outputs and gradients."""
    torch.manual_seed(0)
    model = segkit.create_model(
        "encnet",
        backbone=backbone,
        num_classes=3,
        output_stride=stride,
        jpu=jpu,
        lateral=lateral,
        se_loss=se_loss,
        aux=aux,
    )
    config = model.config
    assert (config["jpu"], config["lateral"], config["se_loss"], config["aux"]) == (
        jpu,
        lateral,
        se_loss,
        aux,
    )
    assert config["output_stride"] == stride
    x = torch.randn(2, 3, 49, 57)
    out = model.train()(x)
    check_outputs(out, (2, 3, 49, 57), aux=aux, se=se_loss)
    sum((v * torch.randn_like(v)).sum() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing[:5]
    with torch.no_grad():
        evaluated = model.eval()(x)
    check_outputs(evaluated, (2, 3, 49, 57))


@pytest.mark.parametrize(("lateral", "se_loss", "aux", "stride"), REFUSED)
def test_jpu_with_dilated_backbone_is_refused(
    lateral: bool, se_loss: bool, aux: bool, stride: int
) -> None:
    with pytest.raises(ValueError, match=rf"output_stride={stride}.*output_stride=32"):
        segkit.create_model(
            "encnet",
            backbone="resnet50",
            num_classes=3,
            output_stride=stride,
            jpu=True,
            lateral=lateral,
            se_loss=se_loss,
            aux=aux,
        )


def test_config_rebuilds_the_same_model() -> None:
    model = segkit.create_model(
        "encnet", backbone="mobilenet_v2", num_classes=3, lateral=True, se_loss=True, num_codes=8
    )
    rebuilt = segkit.create_model(**model.config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert model.classifier.context.encode[1].codewords.shape == (8, 512)
