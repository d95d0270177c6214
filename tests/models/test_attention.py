"""Attention blocks (PSA, SE, CBAM) and the ``attention=`` option of the heads."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

import segkit
from segkit.models.attention import (
    ATTENTIONS,
    CBAM,
    PolarizedSelfAttention,
    build_attention,
)

KINDS = list(ATTENTIONS)


def _block(kind: str, channels: int = 16) -> nn.Module:
    torch.manual_seed(0)
    block = build_attention(kind, channels)
    assert block is not None
    return block


@pytest.mark.parametrize("kind", KINDS)
def test_shape_preserved_and_not_identity(kind: str) -> None:
    block = _block(kind)
    x = torch.randn(2, 16, 13, 17)
    out = block(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, x, atol=1e-3)
    # A perturbation at one pixel changes the output at other pixels: the block uses global
    # context (pooling / attention over positions), unlike any per-pixel map.
    bumped = x.clone()
    bumped[:, :, 0, 0] += 5.0
    changed = (block(bumped) - out).abs()
    changed[:, :, 0, 0] = 0
    assert changed.amax() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind: str) -> None:
    block = _block(kind)
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    (block(x) * torch.randn(2, 16, 9, 11)).sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_one_in_training_mode(kind: str) -> None:
    block = _block(kind).train()
    out = block(torch.randn(1, 16, 7, 5))
    assert out.shape == (1, 16, 7, 5)
    assert torch.isfinite(out).all()


def _psa_reference(psa: PolarizedSelfAttention, x: Tensor) -> Tensor:
    """The paper's equations written independently with einsum, reusing the module's weights."""
    n, c, h, w = x.shape

    def proj(conv: nn.Conv2d) -> Tensor:
        return torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x)

    q = proj(psa.channel_query).reshape(n, h * w).softmax(-1)
    v = proj(psa.channel_value).reshape(n, c // 2, h * w)
    z = torch.einsum(
        "ok,nk->no", psa.channel_up.weight[:, :, 0, 0], torch.einsum("nkp,np->nk", v, q)
    )
    z = nn.functional.layer_norm(z, (c,), psa.channel_norm.weight, psa.channel_norm.bias)
    channel = torch.sigmoid(z).reshape(n, c, 1, 1)
    q_sp = proj(psa.spatial_query).mean((2, 3)).softmax(-1)  # softmax over the C/2 channels
    v_sp = proj(psa.spatial_value).reshape(n, c // 2, h * w)
    spatial = torch.sigmoid(torch.einsum("nk,nkp->np", q_sp, v_sp)).reshape(n, 1, h, w)
    return x * channel + x * spatial


def test_psa_matches_the_papers_equations() -> None:
    psa = _block("psa", 12)
    assert isinstance(psa, PolarizedSelfAttention)
    x = torch.randn(2, 12, 6, 10)
    torch.testing.assert_close(psa(x), _psa_reference(psa, x), rtol=1e-4, atol=1e-5)


def test_psa_spatial_gate_varies_over_positions() -> None:
    # A softmax over the positions followed by a sigmoid squashes the gate to ~0.5 everywhere
    # (sigmoid of values near 1/(H*W)); the published form must produce a real spatial map.
    psa = _block("psa", 32)
    x = torch.randn(2, 32, 16, 16)
    gate = psa.spatial_gate(x)
    assert gate.shape == (2, 1, 16, 16)
    assert gate.amax() - gate.amin() > 0.2
    # That wrong order with the same weights: softmax over the positions, then sigmoid.
    query = psa.spatial_query(x).mean((2, 3)).unsqueeze(1)
    logits = torch.bmm(query, psa.spatial_value(x).flatten(2))
    squashed_gate = torch.sigmoid(logits.softmax(dim=-1))
    assert squashed_gate.amax() - squashed_gate.amin() < (gate.amax() - gate.amin()) / 10


def test_build_attention_choices_and_errors() -> None:
    assert build_attention(None, 8) is None
    assert isinstance(build_attention("se", 64), torchvision.ops.SqueezeExcitation)
    assert isinstance(build_attention("cbam", 64), CBAM)
    with pytest.raises(ValueError, match=r"'nonlocal'.*\['psa', 'se', 'cbam'\]"):
        build_attention("nonlocal", 8)
    with pytest.raises(ValueError, match="'nonlocal'"):
        segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3, attention="nonlocal")
    with pytest.raises(ValueError, match="at least 2 channels"):
        PolarizedSelfAttention(1)


def test_heads_without_attention_keep_torchvision_names() -> None:
    fcn = segkit.create_model("fcn", backbone="resnet50", num_classes=3, aux=True)
    reference = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    )
    ours = {k: v.shape for k, v in fcn.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items()}
    assert ours == theirs
    lab = segkit.create_model("deeplabv3", backbone="mobilenet_v2", num_classes=3)
    assert [k for k in lab.classifier.state_dict() if k.startswith("4.")] == ["4.weight", "4.bias"]


@pytest.mark.parametrize(
    ("name", "channels", "expected"),
    [("fcn", 80, 1), ("deeplabv3", 256, 1), ("deeplabv3plus", None, 2), ("encnet", 512, 1)],
)
@pytest.mark.parametrize("kind", KINDS)
def test_attention_option_in_models(
    name: str, channels: int | None, expected: int, kind: str, check_outputs
) -> None:
    torch.manual_seed(0)
    model = segkit.create_model(name, backbone="mobilenet_v2", num_classes=3, attention=kind)
    assert model.config["attention"] == kind
    block_type = type(build_attention(kind, 16))
    blocks = [m for m in model.classifier.modules() if type(m) is block_type]
    assert len(blocks) == expected
    if name == "deeplabv3plus":  # after ASPP (256) and on the projected low-level map (48)
        widths = [next(b.parameters()).shape[1] for b in blocks]
        assert sorted(widths) == [48, 256]
    else:
        assert next(blocks[0].parameters()).shape[1] == channels
    out = model.train()(torch.randn(2, 3, 33, 47))
    check_outputs(out, (2, 3, 33, 47))
    out["out"].square().mean().backward()
    for param in blocks[0].parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
