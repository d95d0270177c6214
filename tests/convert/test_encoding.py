"""PyTorch-Encoding (master) checkpoints: detection, exact fill, round trips, planted faults.

The layouts in ``layouts/encoding.json`` were recorded from files written by PyTorch-Encoding's
own ``experiments/segmentation/train.py`` code (``/work/scratch/encoding/parity.py``).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from convertkit import LAYOUTS, fake_state, layouts, randomize, round_trip

import segkit
from segkit.convert import ConversionError, convert, detect, encoding, fastfcn

BASE = {"output_stride": 8, "align_corners": True}
ENCNET = {"num_codes": 32, "channels": 512, "input_kernel_size": 3}
# Layout id -> the create_model arguments that compute the same function.
EXPECTED = {
    "fcn_resnet50": {
        "name": "fcn",
        "backbone": "resnet50",
        "num_classes": 150,
        "aux": False,
        **BASE,
    },
    "deeplabv3_resnet50": {
        "name": "deeplabv3",
        "backbone": "resnet50",
        "num_classes": 150,
        "aux": False,
        "aspp_rates": [12, 24, 36],
        "aspp_channels": 256,
        **BASE,
    },
    "encnet_resnet50_aux_se": {
        "name": "encnet",
        "backbone": "resnet50",
        "num_classes": 150,
        "aux": True,
        "lateral": False,
        "se_loss": True,
        **ENCNET,
        **BASE,
    },
    "encnet_resnet50s_lateral": {
        "name": "encnet",
        "backbone": "resnet50s",
        "num_classes": 21,
        "aux": False,
        "lateral": True,
        "se_loss": False,
        **ENCNET,
        **BASE,
    },
}


def test_every_acceptance_pair_is_recorded() -> None:
    assert set(layouts("encoding")) == set(EXPECTED)


def meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensors of the recorded shapes without data: detection reads names and shapes only."""
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_detection(model_id: str) -> None:
    found = detect(meta_state(layouts("encoding")[model_id]))  # auto: no other layout matches
    assert found.source == "encoding"
    assert found.model == EXPECTED[model_id]


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_exact_fill(model_id: str) -> None:
    shapes = layouts("encoding")[model_id]
    conversion = convert({"state_dict": fake_state(shapes)})
    assert conversion.tensors == len(shapes) and conversion.ignored == []
    assert conversion.model.config["backbone"] == EXPECTED[model_id]["backbone"]


# The mapping does not depend on the output stride (no weight records it): the round trips
# run at 32, four times cheaper than the files' 8, except one, which runs at 8.
@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_round_trip(model_id: str) -> None:
    stride = 8 if model_id == "encnet_resnet50_aux_se" else 32
    torch.manual_seed(0)
    model = randomize(segkit.create_model(**{**EXPECTED[model_id], "output_stride": stride}))
    _, worst = round_trip(model, layouts("encoding")[model_id], "encoding", output_stride=stride)
    assert worst < 1e-5


def test_output_stride_override_keeps_the_aspp_rates() -> None:
    state = fake_state(layouts("encoding")["deeplabv3_resnet50"])
    conversion = convert({"state_dict": state}, output_stride=16)
    assert conversion.model.config["output_stride"] == 16
    assert conversion.model.config["aspp_rates"] == [12, 24, 36]


def test_a_missing_tensor_is_named() -> None:
    state = fake_state(layouts("encoding")["encnet_resnet50_aux_se"])
    del state["head.encmodule.encoding.3.scale"]
    with pytest.raises(ConversionError, match=r"unfilled: classifier\.context\.encode\.1\.scale"):
        convert({"state_dict": state})


def test_an_extra_tensor_is_named() -> None:
    state = fake_state(layouts("encoding")["fcn_resnet50"])
    state["head.conv5.2.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r"no place: head\.conv5\.2\.weight"):
        convert({"state_dict": state})


def _edited(model_id: str, drop: str = "", **extra: list[int]) -> dict[str, torch.Tensor]:
    """A recorded layout without the keys starting with ``drop``, plus ``extra``."""
    shapes = layouts("encoding")[model_id]
    kept = {k: v for k, v in shapes.items() if not (drop and k.startswith(drop))}
    return meta_state({**kept, **extra})


@pytest.mark.parametrize(
    ("drop", "extra", "reason"),
    [
        ("", {"jpu.conv5.0.weight": [512, 2048, 3, 3]}, "jpu"),
        ("", {"head.conv5.5.weight": [150, 1024, 1, 1]}, "with_global"),
        ("head.", {}, "none of FCN"),
        ("pretrained.layer1.0.conv2.", {}, "plain 64-channel"),
        ("pretrained.layer3.5.", {}, "neither 6 nor 23"),
        ("", {"pretrained.conv1.weight": [32, 3, 7, 7]}, "stem"),
    ],
)
def test_other_layouts_are_refused_with_a_reason(drop: str, extra: dict, reason: str) -> None:
    found = encoding.detect(_edited("fcn_resnet50", drop, **extra))
    assert isinstance(found, str) and reason in found


def test_release_1_0_files_keep_the_imagenet_fc() -> None:
    # Release 1.0 (and FastFCN without JPU): deep stem, ImageNet fc kept, output stride 8.
    shapes = layouts("encoding")["encnet_resnet50s_lateral"]
    fc = {"pretrained.fc.weight": [1000, 2048], "pretrained.fc.bias": [1000]}
    found = detect(meta_state({**shapes, **fc}))
    assert found.source == "encoding" and found.model == EXPECTED["encnet_resnet50s_lateral"]
    assert found.details["layout"].startswith("1.0")
    assert detect(meta_state(shapes)).details["layout"] == "master"


def test_no_other_projects_layout_is_taken_for_pytorch_encoding() -> None:
    others = [path.stem for path in LAYOUTS.glob("*.json") if path.stem != "encoding"]
    assert "fastfcn" in others
    for source in others:
        for model_id, shapes in layouts(source).items():
            found = encoding.detect(meta_state(shapes))
            assert isinstance(found, str), f"{source} {model_id} detected as PyTorch-Encoding"
    for model_id, shapes in layouts("encoding").items():
        assert isinstance(fastfcn.detect(meta_state(shapes)), str), model_id


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet101"])
def test_torchvision_files_are_neither_pytorch_encodings_nor_fastfcns(name: str) -> None:
    with torch.device("meta"):
        build = getattr(torchvision.models.segmentation, name)
        state = build(weights=None, weights_backbone=None, aux_loss=True).state_dict()
    assert "pretrained" in encoding.detect(state)
    assert isinstance(fastfcn.detect(state), str)
