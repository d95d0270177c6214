"""VainF/DeepLabV3Plus-Pytorch checkpoints: detection, exact fill, round trips, faults.

The layouts (``layouts/vainf.json``) were recorded from files VainF's own code wrote
(``main.py``'s ``{"model_state": ...}`` container); parity against its real models is
measured outside the test suite, where that code can run.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from convertkit import fake_state, layouts, randomize, round_trip, to_source

import segkit
from segkit.convert import SOURCES, ConversionError, convert, detect, vainf

# model id -> (model, backbone, classes)
EXPECTED = {
    "deeplabv3plus_resnet50": ("deeplabv3plus", "resnet50", 21),
    "deeplabv3plus_resnet101": ("deeplabv3plus", "resnet101", 21),
    "deeplabv3plus_mobilenet": ("deeplabv3plus", "mobilenet_v2", 21),
    "deeplabv3_resnet50": ("deeplabv3", "resnet50", 21),
    "deeplabv3plus_hrnetv2_32": ("deeplabv3plus", "hrnetv2_w32", 21),
    "deeplabv3plus_mobilenet_19": ("deeplabv3plus", "mobilenet_v2", 19),
    "deeplabv3_mobilenet": ("deeplabv3", "mobilenet_v2", 21),
    "deeplabv3_hrnetv2_32": ("deeplabv3", "hrnetv2_w32", 21),
}
ACCEPTANCE = list(EXPECTED)[:5]
MOBILENET = {"pad_block_input": True, "pad_stem": False}
HRNET = {"stem_mid_relu": False, "aspp_rates": [12, 24, 36]}


def shapes_only(model_id: str) -> dict[str, torch.Tensor]:
    """The recorded layout as tensors without data (detection reads names and shapes)."""
    return {k: torch.empty(v, device="meta") for k, v in layouts("vainf")[model_id].items()}


def test_every_model_is_recorded() -> None:
    assert set(layouts("vainf")) == set(EXPECTED)


@pytest.mark.parametrize("model_id", list(EXPECTED))
def test_detection(model_id: str) -> None:
    name, backbone, classes = EXPECTED[model_id]
    found = detect(shapes_only(model_id))  # auto: no other project claims the file
    assert found.source == "vainf"
    expected = {
        "name": name,
        "backbone": backbone,
        "num_classes": classes,
        "output_stride": 4 if backbone.startswith("hrnet") else 16,
        "aspp_dropout": 0.1,
    }
    if backbone == "mobilenet_v2":
        expected |= MOBILENET
    if backbone.startswith("hrnet"):
        expected |= HRNET
    if name == "deeplabv3plus":
        expected["decoder_convs"] = 1
        if backbone.startswith("hrnet"):
            expected["c1_from_layer1"] = True
    assert found.model == expected
    assert found.details["classes"] == classes


@pytest.mark.parametrize("model_id", [m for m in EXPECTED if m not in ACCEPTANCE])
def test_exact_fill(model_id: str) -> None:
    """The recorded tensors fill the model exactly (the round trips check this for the
    acceptance models: their source-layout state has the recorded names and shapes)."""
    shapes = layouts("vainf")[model_id]
    checkpoint = {"cur_itrs": 3, "model_state": fake_state(shapes), "best_score": 0.5}
    conversion = convert(checkpoint)
    assert conversion.tensors == len(shapes) and not conversion.ignored
    assert conversion.model.config["output_stride"] == conversion.found.model["output_stride"]


@pytest.mark.parametrize("model_id", ACCEPTANCE)
def test_round_trip(model_id: str) -> None:
    options = detect(shapes_only(model_id)).model
    torch.manual_seed(0)
    model = randomize(segkit.create_model(**options))
    shapes = layouts("vainf")[model_id]
    written = to_source(model, shapes, "vainf")
    assert {k: list(v.shape) for k, v in written.items()} == shapes
    converted, worst = round_trip(model, shapes, "vainf")
    assert worst < 1e-5
    assert converted.config == model.config


def test_output_stride_override() -> None:
    state = fake_state(layouts("vainf")["deeplabv3plus_mobilenet"])
    assert convert(state).model.config["output_stride"] == 16
    assert convert(state, output_stride=8).model.config["output_stride"] == 8


def test_decoder_reads_low_level_first() -> None:
    """VainF's decoder conv reads [48 low-level, 256 ASPP] channels; segkit's [ASPP, low]."""
    found = detect(shapes_only("deeplabv3plus_resnet50"))
    weight = torch.cat([torch.ones(256, 48, 3, 3), torch.zeros(256, 256, 3, 3)], dim=1)
    tensors = {vainf.DECODER_CONV: weight, vainf.LOW_LEVEL_PROJECTION: torch.zeros(48, 256, 1, 1)}
    vainf.adjust(tensors, found)
    adjusted = tensors[vainf.DECODER_CONV]
    assert adjusted[:, :256].eq(0).all() and adjusted[:, 256:].eq(1).all()
    vainf.adjust(tensors, found, inverse=True)
    assert torch.equal(tensors[vainf.DECODER_CONV], weight)


def test_missing_tensor_is_named() -> None:
    state = fake_state(layouts("vainf")["deeplabv3plus_mobilenet"])
    del state["backbone.high_level_features.17.conv.3.running_var"]
    with pytest.raises(ConversionError, match=r"unfilled: backbone\.features\.17\.conv\.3\."):
        convert(state)


def test_extra_tensor_is_named() -> None:
    state = fake_state(layouts("vainf")["deeplabv3plus_mobilenet"])
    state["classifier.aspp.convs.5.0.weight"] = torch.zeros(256, 320, 3, 3)
    with pytest.raises(ConversionError, match=r"no place: classifier\.aspp\.convs\.5\.0\.weight"):
        convert(state)


def test_unsupported_variants_say_why() -> None:
    state = shapes_only("deeplabv3plus_mobilenet")
    separable = dict(state)
    separable["classifier.aspp.convs.1.0.body.0.weight"] = separable.pop(
        "classifier.aspp.convs.1.0.weight"
    )
    assert "separable" in vainf.detect(separable)
    xception = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    xception["backbone.block1.rep.0.weight"] = torch.empty(128, 64, 3, 3, device="meta")
    assert "Xception" in vainf.detect(xception)
    with pytest.raises(ConversionError, match="separable"):
        convert(fake_state({k: list(v.shape) for k, v in separable.items()}), source="vainf")


@pytest.mark.parametrize("source", [s for s in SOURCES if s != "vainf"])
def test_other_projects_layouts_are_not_vainf(source: str) -> None:
    """Detection is specific: no layout recorded from another project passes as VainF's."""
    if source == "torchvision":  # installed: its real models, without data
        with torch.device("meta"):
            models = {
                name: getattr(torchvision.models.segmentation, name)(
                    weights=None, weights_backbone=None, num_classes=21, aux_loss=True
                )
                for name in ("deeplabv3_resnet50", "fcn_resnet50")
            }
        recorded = {name: m.state_dict() for name, m in models.items()}
    else:
        try:
            recorded = {
                model_id: {k: torch.empty(v, device="meta") for k, v in shapes.items()}
                for model_id, shapes in layouts(source).items()
            }
        except FileNotFoundError:
            pytest.skip(f"no recorded layouts for {source} yet")
    for model_id, state in recorded.items():
        assert isinstance(vainf.detect(state), str), model_id
