"""``zero_init_residual``: every residual block of the backbone starts as the identity."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from segkit.models import create_model
from segkit.models.backbones.base import zero_init_residual


def _residual_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Blocks whose output is their input plus a branch, found independently of the code under
    test: torchvision/timm ResNet blocks without a projection shortcut, and inverted residuals
    that add their input (torchvision's MobileNetV2, timm's EfficientNet)."""
    blocks = []
    for module in backbone.modules():
        name = type(module).__name__
        resnet_identity = name in ("Bottleneck", "BasicBlock") and module.downsample is None
        adds_input = getattr(module, "use_res_connect", False) or getattr(module, "has_skip", False)
        if resnet_identity or adds_input:
            blocks.append(module)
    return blocks


def _block_io(backbone: nn.Module, blocks: list[nn.Module], x: torch.Tensor) -> list:
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
        for b in blocks
    ]
    with torch.no_grad():
        backbone(x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize(
    ("backbone", "options", "blocks"),
    [
        ("resnet50", {}, 12),  # torchvision; 16 blocks, 4 with a projection
        ("resnet50s", {}, 12),  # timm (zero_init_last)
        ("mobilenet_v2", {}, 10),
        ("mobilenet_v2", {"pad_block_input": True}, 10),  # blocks wrapped by segkit
        ("timm:efficientnet_b0", {}, 9),
    ],
)
def test_residual_blocks_start_as_the_identity(backbone: str, options: dict, blocks: int) -> None:
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus", backbone=backbone, num_classes=3, zero_init_residual=True, **options
    ).eval()
    found = _residual_blocks(model.backbone)
    x = torch.randn(1, 3, 64, 64)
    pairs = _block_io(model.backbone, found, x)
    assert len(found) == blocks and len(pairs) == blocks
    for block_in, block_out in pairs:
        torch.testing.assert_close(block_out, block_in)  # ResNet: relu(x + 0) = x, x >= 0
    # the function itself reports what it set (the downsampling blocks' branch too for ResNets)
    assert zero_init_residual(model.backbone) >= blocks


def test_off_keeps_the_networks_own_initialisation() -> None:
    torch.manual_seed(0)
    model = create_model("deeplabv3plus", backbone="resnet50", num_classes=3).eval()
    assert all(float(b.bn3.weight.detach().min()) == 1.0 for b in _residual_blocks(model.backbone))
    pairs = _block_io(model.backbone, _residual_blocks(model.backbone), torch.randn(1, 3, 64, 64))
    assert not any(torch.equal(i, o) for i, o in pairs)


def test_pretrained_weights_load_over_the_zero_start(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model("deeplabv3plus", backbone="mobilenet_v2", num_classes=3).backbone
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(source.state_dict(), path)
    model = create_model(
        "deeplabv3plus", backbone="mobilenet_v2", num_classes=3, pretrained_backbone=str(path),
        zero_init_residual=True,
    )  # fmt: skip
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], value, msg=name)


def test_a_backbone_without_known_residual_blocks_says_so(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="segkit.models"):
        create_model("deeplabv3plus", backbone="xception65", num_classes=3, zero_init_residual=True)
    assert "'xception65' has no residual block segkit knows how to start at zero" in caplog.text
    assert (
        "zero_init_residual"
        not in create_model(
            "fcn", backbone="mobilenet_v2", num_classes=3, zero_init_residual=True
        ).config
    )  # an initialisation, not part of the architecture a checkpoint records
