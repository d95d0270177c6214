"""jfzhang95/pytorch-deeplab-xception checkpoints: detection, exact fill, round trips, faults.

The layouts (``layouts/jfzhang95.json``) were recorded from files its own code wrote
(``train.py``'s ``{"epoch", "state_dict", "optimizer", "best_pred"}`` container); parity
against its real models is measured outside the test suite, where that code can run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from convertkit import fake_state, layouts, randomize, round_trip, to_source

import segkit
from segkit.convert import SOURCES, ConversionError, convert, detect, jfzhang95

# model id -> (backbone, classes, backbone options)
EXPECTED = {
    "deeplab-resnet_pascal": ("resnet101", 21, {"multi_grid": (1, 2, 4)}),
    "deeplab-xception_pascal": (
        "xception65",
        21,
        {
            "bn_eps": 1e-5,
            "block_input_relu": True,
            "exit_depthwise_relu": False,
            "dilate_unstrided_conv": False,
            "feature_taps": "block_output",
        },
    ),
    "deeplab-mobilenet_pascal": (
        "mobilenet_v2",
        21,
        {"pad_block_input": True, "dilate_from_next_stage": True},
    ),
    "deeplab-resnet_massroad": ("resnet101", 2, {"multi_grid": (1, 2, 4)}),
}


def shapes_only(model_id: str) -> dict[str, torch.Tensor]:
    """The recorded layout as tensors without data (detection reads names and shapes)."""
    return {k: torch.empty(v, device="meta") for k, v in layouts("jfzhang95")[model_id].items()}


def test_every_model_is_recorded() -> None:
    assert set(layouts("jfzhang95")) == set(EXPECTED)


@pytest.mark.parametrize("model_id", list(EXPECTED))
def test_detection(model_id: str) -> None:
    backbone, classes, options = EXPECTED[model_id]
    found = detect(shapes_only(model_id))  # auto: no other project claims the file
    assert found.source == "jfzhang95"
    assert found.model == {
        "name": "deeplabv3plus",
        "backbone": backbone,
        "num_classes": classes,
        "output_stride": 16,
        "align_corners": True,
        **options,
    }
    assert found.details["classes"] == classes


def test_exact_fill_in_its_container() -> None:
    """The recorded tensors fill the model exactly, read from the container its train.py
    writes (numpy ``best_pred`` included); the round trips check the other layouts."""
    shapes = layouts("jfzhang95")["deeplab-resnet_massroad"]
    checkpoint = {
        "epoch": 51,
        "state_dict": fake_state(shapes),
        "optimizer": {"state": {}, "param_groups": []},
        "best_pred": np.float64(0.7185),
    }
    conversion = convert(checkpoint)
    assert conversion.tensors == len(shapes) and not conversion.ignored
    assert conversion.model.config["num_classes"] == 2


@pytest.mark.parametrize("model_id", list(EXPECTED)[:3])
def test_round_trip(model_id: str) -> None:
    options = detect(shapes_only(model_id)).model
    torch.manual_seed(0)
    model = randomize(segkit.create_model(**options))
    shapes = layouts("jfzhang95")[model_id]
    written = to_source(model, shapes, "jfzhang95")
    assert {k: list(v.shape) for k, v in written.items()} == shapes
    converted, worst = round_trip(model, shapes, "jfzhang95")
    assert worst < 1e-5
    assert converted.config == model.config


def test_mobilenet_aliases_fill_the_same_tensors() -> None:
    """Its MobileNetV2 saves each tensor twice (``features.N`` and the slice
    ``low_level_features.N`` / ``high_level_features.N``): both names go to one place."""
    state = shapes_only("deeplab-mobilenet_pascal")
    mapping = jfzhang95.to_segkit(state, detect(state))
    assert len(mapping) == len(state)
    for alias in ("low_level_features.3", "high_level_features.4", "high_level_features.17"):
        key = f"backbone.{alias}.conv.3.weight"
        assert mapping[key] == mapping[key.replace(alias.split(".")[0], "features")]
    assert mapping["backbone.features.1.conv.3.weight"] == "backbone.features.1.conv.1.weight"
    assert mapping["backbone.features.2.conv.3.weight"] == "backbone.features.2.conv.1.0.weight"


def test_xception_separable_convs_in_order() -> None:
    """``rep`` numbers ReLUs too (none first in block1/block2); the conv number and the BN
    after each separable conv follow from the indices."""
    state = shapes_only("deeplab-xception_pascal")
    mapping = jfzhang95.to_segkit(state, detect(state))
    body = "backbone.body."
    expected = {
        "backbone.block1.rep.0.conv1.weight": body + "blocks_0.stack.conv1.conv_dw.weight",
        "backbone.block1.rep.7.weight": body + "blocks_0.stack.conv3.bn_pw.weight",
        "backbone.block3.rep.4.pointwise.weight": body + "blocks_2.stack.conv2.conv_pw.weight",
        "backbone.block20.rep.8.running_var": body + "blocks_19.stack.conv3.bn_pw.running_var",
        "backbone.block20.skipbn.bias": body + "blocks_19.shortcut.bn.bias",
        "backbone.conv5.bn.weight": body + "blocks_20.stack.conv3.bn_dw.weight",
        "backbone.bn3.running_mean": body + "blocks_20.stack.conv1.bn_pw.running_mean",
        "aspp.aspp4.atrous_conv.weight": "classifier.aspp.convs.3.0.weight",
        "aspp.global_avg_pool.2.bias": "classifier.aspp.convs.4.2.bias",
        "decoder.last_conv.5.weight": "classifier.decoder.1.1.weight",
    }
    assert {k: mapping[k] for k in expected} == expected


def test_output_stride_override() -> None:
    state = fake_state(layouts("jfzhang95")["deeplab-mobilenet_pascal"])
    assert convert(state).model.config["output_stride"] == 16
    assert convert(state, output_stride=8).model.config["output_stride"] == 8


@pytest.mark.parametrize(
    ("model_id", "stride", "message"),
    [
        ("deeplab-resnet_pascal", 8, "first block of layer3"),
        ("deeplab-mobilenet_pascal", 32, "run at 16"),
    ],
)
def test_strides_it_cannot_match_are_refused(model_id: str, stride: int, message: str) -> None:
    state = shapes_only(model_id)
    with pytest.raises(ConversionError, match=message):
        convert(state, output_stride=stride)


def test_missing_tensor_is_named() -> None:
    state = fake_state(layouts("jfzhang95")["deeplab-xception_pascal"])
    del state["backbone.block12.rep.5.running_var"]
    with pytest.raises(ConversionError, match=r"unfilled: backbone\.body\.blocks_11\.stack\.conv2"):
        convert(state)


def test_extra_tensor_is_named() -> None:
    state = fake_state(layouts("jfzhang95")["deeplab-resnet_pascal"])
    state["aspp.aspp5.atrous_conv.weight"] = torch.zeros(256, 2048, 3, 3)
    with pytest.raises(ConversionError, match=r"no place: aspp\.aspp5\.atrous_conv\.weight"):
        convert(state)


def test_unsupported_layouts_say_why() -> None:
    state = shapes_only("deeplab-resnet_pascal")
    drn = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    drn["backbone.layer0.0.weight"] = torch.empty(16, 3, 7, 7, device="meta")
    assert "DRN" in jfzhang95.detect(drn)
    headless = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    assert "decoder.last_conv.8.weight" in jfzhang95.detect(headless)
    short = {k: v for k, v in state.items() if not k.startswith("backbone.layer4.2.")}
    assert "layer4 of 3" in jfzhang95.detect(short)


@pytest.mark.parametrize("source", [s for s in SOURCES if s not in ("jfzhang95", "torchvision")])
def test_other_projects_layouts_are_not_jfzhang95(source: str) -> None:
    """Detection is specific: no layout recorded from another project passes as this one's."""
    try:
        recorded = layouts(source)
    except FileNotFoundError:
        pytest.skip(f"no recorded layouts for {source} yet")
    for model_id, shapes in recorded.items():
        state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        assert isinstance(jfzhang95.detect(state), str), model_id
