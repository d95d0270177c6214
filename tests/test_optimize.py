"""The inference fast path equals the eval-mode model on every model of the zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segkit
from segkit.deploy.optimize import cpp_compiler, optimize_for_inference
from segkit.models.backbones import HRNETS

CASES = [
    (model, backbone)
    for model in segkit.list_models()
    for backbone in [*segkit.list_backbones(), "timm:resnet18"]
    if backbone not in ("resnet101", "resnet101s", "hrnetv2_w32", "hrnetv2_w48")  # same code
]


OPTIONS = [
    ("deeplabv3plus", "mobilenet_v2", {"attention": "psa", "separable": True}),
    ("deeplabv3", "resnet50", {"jpu": True, "attention": "cbam"}),
    ("encnet", "resnet50", {"jpu": True, "lateral": True, "se_loss": True, "aux": True}),
    ("fcn", "mobilenet_v2", {"attention": "se", "aux": True}),
]


@pytest.mark.parametrize(("name", "backbone", "options"), [(m, b, {}) for m, b in CASES] + OPTIONS)
def test_fast_path_matches_eval_model(
    name: str, backbone: str, options: dict, randomize_bn
) -> None:
    torch.manual_seed(0)
    stride = 4 if backbone in HRNETS else (32 if options.get("jpu") else 16)
    model = segkit.create_model(
        name, backbone=backbone, num_classes=3, output_stride=stride, **options
    )
    randomize_bn(model, affine=True)  # non-trivial BN: folding must carry the statistics
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


def test_bf16_fast_path_is_close_and_returns_float32() -> None:
    torch.manual_seed(0)
    model = segkit.create_model("deeplabv3plus", backbone="mobilenet_v2", num_classes=3)
    for module in model.modules():  # He init: logits that depend on the input
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    model.eval()
    fast = optimize_for_inference(model, precision="bf16")
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = model(x)["out"]
    actual = fast(x)["out"]
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    rms = ((actual - expected) ** 2).mean().sqrt() / expected.std()
    assert 1e-5 < rms < 0.1  # bfloat16 rounding, not float32 agreement, and not garbage
    assert (actual.argmax(1) == expected.argmax(1)).float().mean() > 0.9


def test_precision_errors() -> None:
    model = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        optimize_for_inference(model, precision="fp16")
    with pytest.raises(ValueError, match="Unknown precision 'int4'"):
        optimize_for_inference(model, precision="int4")


@pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on the CPU needs g++/clang++")
def test_compiled_fast_path_matches_eval_model(randomize_bn) -> None:
    torch.manual_seed(0)
    model = segkit.create_model("fcn", backbone="timm:resnet18", num_classes=3).eval()
    randomize_bn(model, affine=True)
    compiled = optimize_for_inference(model, compile=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)["out"]
    actual = compiled(x)["out"]
    assert (actual - expected).abs().max() / expected.abs().max() < 1e-4


def test_compile_without_a_compiler_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    model = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        optimize_for_inference(model, compile=True)
