"""Model-wide ``align_corners`` and the DeepLabV3+ ``decoder_convs`` option.

Each upsampling the option reaches is recomputed here from the model's own layers with
``F.interpolate(..., align_corners=True)`` and compared with what the model does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from convertkit import randomize

import segkit
from segkit.config import Config


def up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def build(name: str, **kwargs) -> segkit.models.Segmenter:
    torch.manual_seed(0)
    model = segkit.create_model(name, backbone="mobilenet_v2", num_classes=3, **kwargs)
    randomize(model)
    return model.eval()


X = torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fcn", {}),
        ("fcn", {"jpu": True}),
        ("fcn8s", {}),
        ("deeplabv3", {}),
        ("deeplabv3", {"jpu": True}),
        ("deeplabv3plus", {}),
        ("encnet", {"lateral": True}),
        ("encnet", {"jpu": True}),
    ],
)
def test_align_corners_reaches_every_upsampling(name: str, kwargs: dict) -> None:
    model = build(name, align_corners=True, **kwargs)
    plain = build(name, **kwargs)
    assert model.config["align_corners"] is True
    assert model.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        features = model.backbone(X)
        if model.neck is not None:
            features = _jpu(model.neck, features)
        logits = _head(model.classifier, features)
        expected = up(logits, X.shape[-2:])
        out = model(X)["out"]
        assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
        assert not torch.allclose(out, plain(X)["out"], atol=1e-4)  # the option changes it


def _jpu(neck, features):
    size = features[-3].shape[-2:]
    maps = [up(conv(f), size) for conv, f in zip(neck.convs, features[-3:], strict=True)]
    joint = torch.cat(maps, dim=1)
    return [*features[:-1], torch.cat([branch(joint) for branch in neck.dilations], dim=1)]


def _head(head, features):
    """The head's logits with every inner resize recomputed with align_corners=True."""
    kind = type(head).__name__
    if kind == "DeepLabV3PlusHead":
        low = head.low_level(features[0])
        high = up(head.aspp(features[-1]), low.shape[-2:])
        return head.classifier(head.decoder(torch.cat([high, low], dim=1)))
    if kind == "EncNetHead" and head.lateral is not None:
        x = head.conv(features[-1])
        pairs = zip(head.lateral, (1, 2), strict=True)
        laterals = [up(conv(features[i]), x.shape[-2:]) for conv, i in pairs]
        x, _ = head.context(head.fusion(torch.cat([x, *laterals], dim=1)))
        return head.classifier(x)
    if kind == "FCN8sHead":
        score = head.score_c4(features)["out"]
        for skip, feature in ((head.score_c3, features[-2]), (head.score_c2, features[-3])):
            s = skip(feature)
            size = max(score.shape[-2:], s.shape[-2:])
            score = up(score, size) + up(s, size)
        return score
    return head(features)["out"]


def test_align_corners_is_a_config_field_and_flag() -> None:
    config = Config()
    config.update({"model.align_corners": "true"})
    assert config.model.align_corners is True


@pytest.mark.parametrize("convs", [1, 2, 3])
def test_decoder_convs(convs: int) -> None:
    model = build("deeplabv3plus", decoder_convs=convs)
    assert len(model.classifier.decoder) == convs
    first = model.classifier.decoder[0][0]
    assert first.in_channels == 256 + 48 and first.out_channels == 256
    assert model(X)["out"].shape == (1, 3, 45, 61)
    keys = {k.split(".")[2] for k in model.state_dict() if k.startswith("classifier.decoder.")}
    assert keys == {str(i) for i in range(convs)}


def test_decoder_convs_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="decoder_convs must be 1 or more, got 0"):
        build("deeplabv3plus", decoder_convs=0)


def test_backbone_option_for_another_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['nonsense'\] for model 'fcn'"):
        build("fcn", nonsense=1)
