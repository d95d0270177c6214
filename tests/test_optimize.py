"""The inference fast path equals the eval-mode model on every model of the zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segkit
from segkit.models.backbones import HRNETS
from segkit.optimize import optimize_for_inference

CASES = [
    (model, backbone)
    for model in segkit.list_models()
    for backbone in [*segkit.list_backbones(), "timm:resnet18"]
    if backbone not in ("resnet101", "hrnetv2_w32", "hrnetv2_w48")  # same code as their peers
]


def _random_statistics(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


OPTIONS = [
    ("deeplabv3plus", "mobilenet_v2", {"attention": "psa", "separable": True}),
    ("deeplabv3", "resnet50", {"jpu": True, "attention": "cbam"}),
    ("encnet", "resnet50", {"jpu": True, "lateral": True, "se_loss": True, "aux": True}),
    ("fcn", "mobilenet_v2", {"attention": "se", "aux": True}),
]


@pytest.mark.parametrize(("name", "backbone", "options"), [(m, b, {}) for m, b in CASES] + OPTIONS)
def test_fast_path_matches_eval_model(name: str, backbone: str, options: dict) -> None:
    torch.manual_seed(0)
    stride = 4 if backbone in HRNETS else (32 if options.get("jpu") else 16)
    model = segkit.create_model(
        name, backbone=backbone, num_classes=3, output_stride=stride, **options
    )
    _random_statistics(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)

    remaining = [m for m in fast.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not remaining, f"{len(remaining)} BatchNorm2d left unfolded"
    assert not any(isinstance(m, nn.Dropout) for m in fast.modules())
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        expected = model(x)["out"]
    actual = fast(x)["out"]
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() / expected.abs().max() < 1e-4
    for key, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key])
