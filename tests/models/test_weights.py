"""Weights: torchvision/timm parity, the load report, safe loading."""

from __future__ import annotations

import argparse
import logging
import socket

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models import segmentation as tv_seg
from torchvision.models._utils import IntermediateLayerGetter

import segkit
from segkit.models.backbones import build_backbone


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual - expected).abs().max() / scale < rel


@pytest.mark.parametrize("depth", ["resnet50", "resnet101"])
@pytest.mark.parametrize("stride", [8, 16, 32])
def test_resnet_features_equal_torchvision(depth: str, stride: int, randomize_bn) -> None:
    torch.manual_seed(0)
    dilate = [False, stride <= 8, stride <= 16]
    reference = getattr(torchvision.models, depth)(replace_stride_with_dilation=dilate)
    randomize_bn(reference, seed=1)  # non-trivial statistics: eval-mode parity tests BN wiring
    ours = build_backbone(depth, output_stride=stride)
    report = segkit.load_weights(ours, reference.state_dict())
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(ours.state_dict())

    getter = IntermediateLayerGetter(reference, {f"layer{i}": f"c{i}" for i in range(1, 5)}).eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        expected = list(getter(x).values())
        actual = ours.eval()(x)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        _assert_close(a, e)


@pytest.mark.parametrize(
    ("builder", "name", "depth"),
    [
        (tv_seg.fcn_resnet50, "fcn", "resnet50"),
        (tv_seg.fcn_resnet101, "fcn", "resnet101"),
        (tv_seg.deeplabv3_resnet50, "deeplabv3", "resnet50"),
        (tv_seg.deeplabv3_resnet101, "deeplabv3", "resnet101"),
    ],
)
def test_torchvision_segmentation_state_dicts_load_with_equal_outputs(
    builder, name: str, depth: str, randomize_bn
) -> None:
    torch.manual_seed(0)
    reference = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    randomize_bn(reference, seed=1)  # non-trivial statistics: eval-mode parity tests BN wiring
    ours = segkit.create_model(name, backbone=depth, num_classes=21, output_stride=8, aux=True)
    report = segkit.load_weights(ours, reference.state_dict(), strict=True)
    assert len(report.loaded) == len(reference.state_dict())

    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        _assert_close(ours.eval()(x)["out"], reference.eval()(x)["out"])
        # In train mode the auxiliary head matches too (dropout disabled for determinism).
        for model in (ours, reference):
            model.train()
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.eval()
        ours_train, reference_train = ours(x), reference(x)
    _assert_close(ours_train["aux"], reference_train["aux"])
    _assert_close(ours_train["out"], reference_train["out"])


def test_mobilenet_v2_torchvision_file_matches_every_backbone_tensor(
    tmp_path, randomize_bn, caplog
) -> None:
    reference = torchvision.models.mobilenet_v2()
    randomize_bn(reference, seed=1)  # non-trivial statistics: eval-mode parity tests BN wiring
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="segkit.models"):
        model = segkit.create_model(
            "deeplabv3plus",
            backbone="mobilenet_v2",
            num_classes=3,
            output_stride=32,
            pretrained_backbone=str(path),
        )
    # create_model logs the load report of the pretrained backbone.
    (report,) = [r.args[0] for r in caplog.records if r.name == "segkit.models"]
    assert report.missing == [] and report.mismatched == []
    assert len(report.loaded) == len(model.backbone.state_dict())
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        expected = reference.eval().features[:18](x)
        _assert_close(model.backbone.eval()(x)[-1], expected)


@pytest.mark.parametrize(
    ("backbone", "timm_name"),
    [("xception65", "xception65"), ("timm:resnet18", "resnet18"), ("hrnetv2_w18", "hrnet_w18")],
)
def test_timm_checkpoint_names_match_feature_extractor(backbone: str, timm_name: str) -> None:
    source = timm.create_model(timm_name).state_dict()
    target = build_backbone(backbone, output_stride=32 if "hrnet" not in backbone else 4)
    report = segkit.load_weights(target, source)
    assert report.missing == [] and report.mismatched == []
    loaded = target.state_dict()
    assert len(report.loaded) == len(loaded)
    # Spot-check that values (not only names) arrived.
    name = report.loaded[len(report.loaded) // 2]
    assert any(torch.equal(loaded[name], value) for value in source.values())


def test_load_report_on_partial_wrapped_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source = segkit.create_model("deeplabv3", backbone="mobilenet_v2", num_classes=21)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    del state["module.backbone.features.0.0.weight"]  # planted: missing in the file
    state["module.extra.weight"] = torch.zeros(3)  # planted: not in the model
    path = tmp_path / "voc.pth.tar"
    # A checkpoint as popular repositories write it, numpy best score included.
    torch.save({"epoch": 3, "state_dict": state, "best_pred": np.float64(0.71)}, path)

    target = segkit.create_model("deeplabv3", backbone="mobilenet_v2", num_classes=2)
    report = segkit.load_weights(target, path)
    assert report.missing == ["backbone.features.0.0.weight"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [
        ("classifier.4.weight", (21, 256, 1, 1), (2, 256, 1, 1)),
        ("classifier.4.bias", (21,), (2,)),
    ]
    assert len(report.loaded) == len(target.state_dict()) - 3
    loaded = target.state_dict()
    assert torch.equal(loaded["classifier.1.weight"], source.state_dict()["classifier.1.weight"])
    text = str(report)
    assert "classifier.4.weight" in text and "extra.weight" in text
    with pytest.raises(ValueError, match="strict"):
        segkit.load_weights(target, path, strict=True)


@pytest.mark.parametrize("wrapper", ["model_state", "model", None])
def test_wrappers_and_safetensors(tmp_path, wrapper: str | None) -> None:
    source = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    target = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    state = source.state_dict()
    if wrapper is None:
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        path = tmp_path / "weights.pt"
        torch.save({wrapper: state, "cur_itrs": 10}, path)
    report = segkit.load_weights(target, path, strict=True)
    assert len(report.loaded) == len(state)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key])


def test_loading_into_backbone_strips_model_prefix() -> None:
    source = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    backbone = build_backbone("mobilenet_v2")
    report = segkit.load_weights(backbone, source.state_dict())
    assert report.missing == [] and "stripped 'backbone.'" in report.renamed
    assert all(name.startswith("classifier.") for name in report.unexpected)


def test_zero_matching_tensors_is_an_error() -> None:
    target = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    with pytest.raises(ValueError, match="No tensor"):
        segkit.load_weights(target, {"foo.weight": torch.zeros(1)})


def test_unsafe_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "unsafe.pth"
    state = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3).state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    target = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    with pytest.raises(ValueError, match="Refused to load .*arbitrary code"):
        segkit.load_weights(target, path)


def test_missing_file_is_named(tmp_path) -> None:
    target = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        segkit.load_weights(target, tmp_path / "nope.pth")


def test_pretrained_true_fails_clearly_offline(tmp_path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for backbone in ("resnet50", "timm:resnet18"):
        with pytest.raises(RuntimeError, match="pretrained_backbone='/path/to/weights.pth'"):
            segkit.create_model("fcn", backbone=backbone, num_classes=3, pretrained_backbone=True)
