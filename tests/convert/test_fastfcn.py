"""FastFCN checkpoints (JPU, deep-stem ResNet) and the EncNet option ``input_kernel_size``.

The layouts in ``layouts/fastfcn.json`` were recorded from files written by FastFCN's own
``experiments/segmentation/train.py`` code (``/work/scratch/encoding/parity.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from convertkit import LAYOUTS, fake_state, layouts, randomize, round_trip

import segkit
from segkit.convert import ConversionError, convert, detect, encoding, fastfcn
from segkit.models.heads.encnet import EncNetHead

BASE = {"backbone": "resnet50s", "num_classes": 150, "aux": True, "jpu": True}
BASE |= {"output_stride": 32, "align_corners": True}
EXPECTED = {
    "fcn_jpu_resnet50_aux": {"name": "fcn", **BASE},
    "deeplabv3_jpu_resnet50_aux": {
        "name": "deeplabv3",
        "aspp_rates": [12, 24, 36],
        "aspp_channels": 256,
        **BASE,
    },
    "encnet_jpu_resnet50_aux_se": {
        "name": "encnet",
        "lateral": False,
        "se_loss": True,
        "num_codes": 32,
        "channels": 512,
        "input_kernel_size": 1,
        **BASE,
    },
}
FC = ["pretrained.fc.bias", "pretrained.fc.weight"]


def meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensors of the recorded shapes without data: detection reads names and shapes only."""
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def _edited(model_id: str, drop: str = "", **extra: list[int]) -> dict[str, list[int]]:
    shapes = layouts("fastfcn")[model_id]
    return {**{k: v for k, v in shapes.items() if not (drop and k.startswith(drop))}, **extra}


def test_every_acceptance_pair_is_recorded() -> None:
    assert set(layouts("fastfcn")) == set(EXPECTED)


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_detection(model_id: str) -> None:
    found = detect(meta_state(layouts("fastfcn")[model_id]))  # auto: no other layout matches
    assert found.source == "fastfcn"
    assert found.model == EXPECTED[model_id]
    assert found.details["jpu"] is True and found.details["aux"] is True


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_exact_fill_and_round_trip(model_id: str) -> None:
    shapes = layouts("fastfcn")[model_id]
    conversion = convert({"state_dict": fake_state(shapes)})
    assert conversion.ignored == FC and conversion.tensors == len(shapes) - len(FC)
    torch.manual_seed(0)
    model = randomize(segkit.create_model(**EXPECTED[model_id]))
    _, worst = round_trip(model, shapes, "fastfcn")
    assert worst < 1e-5


def test_jpu_branches_read_the_projections_in_fastfcns_order() -> None:
    """FastFCN's branch on cat([c4, c3, c2] projections), written with plain tensor ops from
    the file's tensors, equals the converted branch on segkit's cat([c2, c3, c4])."""
    state = fake_state(layouts("fastfcn")["fcn_jpu_resnet50_aux"])
    neck = convert({"state_dict": state}).model.neck
    p2, p3, p4 = (torch.randn(1, 512, 5, 6) for _ in range(3))

    def bn(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            state[prefix + "running_mean"],
            state[prefix + "running_var"],
            state[prefix + "weight"],
            state[prefix + "bias"],
            eps=1e-5,
        )

    for index, rate in enumerate((1, 2, 4, 8)):
        p = f"jpu.dilation{index + 1}."
        x = torch.cat([p4, p3, p2], dim=1)
        x = F.conv2d(x, state[p + "0.conv1.weight"], padding=rate, dilation=rate, groups=1536)
        x = F.conv2d(bn(x, p + "0.bn."), state[p + "0.pointwise.weight"])
        expected = F.relu(bn(x, p + "1."))
        with torch.no_grad():
            got = neck.dilations[index](torch.cat([p2, p3, p4], dim=1))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_without_jpu_a_file_converts_as_pytorch_encodings_at_stride_8() -> None:
    # FastFCN --dilated without --jpu: PyTorch-Encoding 1.0's layout, code and stride.
    shapes = _edited("fcn_jpu_resnet50_aux", drop="jpu.")
    assert "no jpu.conv5.0.weight" in fastfcn.detect(meta_state(shapes))
    found = detect(meta_state(shapes))
    assert found.source == "encoding"
    assert (found.model["backbone"], found.model["output_stride"]) == ("resnet50s", 8)
    assert "jpu" not in found.model


def test_a_missing_and_an_extra_tensor_are_named() -> None:
    state = fake_state(layouts("fastfcn")["encnet_jpu_resnet50_aux_se"])
    del state["jpu.dilation3.0.bn.running_mean"]
    with pytest.raises(ConversionError, match=r"unfilled: neck\.dilations\.2\.0\.1\.running_mean"):
        convert({"state_dict": state})
    state = fake_state(layouts("fastfcn")["fcn_jpu_resnet50_aux"])
    state["jpu.conv6.0.weight"] = torch.ones(512, 256, 3, 3)
    with pytest.raises(ConversionError, match=r"no place: jpu\.conv6\.0\.weight"):
        convert({"state_dict": state}, source="fastfcn")


@pytest.mark.parametrize(
    ("drop", "extra", "reason"),
    [
        ("jpu.", {"jpu.jum_1.conv_l.0.weight": [256, 1024, 3, 3]}, "JPU_X"),
        ("pretrained.conv1.", {"pretrained.conv1.weight": [64, 3, 7, 7]}, "deep stem"),
        ("jpu.dilation4.", {}, "3 dilation branches"),
        ("", {"jpu.conv5.0.weight": [256, 2048, 3, 3]}, "width 512"),
    ],
)
def test_detection_reasons(drop: str, extra: dict, reason: str) -> None:
    found = fastfcn.detect(meta_state(_edited("encnet_jpu_resnet50_aux_se", drop, **extra)))
    assert isinstance(found, str) and reason in found, found


def test_the_imagenet_fc_is_not_needed() -> None:
    found = detect(meta_state(_edited("fcn_jpu_resnet50_aux", "pretrained.fc.")))
    assert found.source == "fastfcn" and found.model == EXPECTED["fcn_jpu_resnet50_aux"]


def test_no_other_projects_layout_is_taken_for_fastfcn() -> None:
    others = [path.stem for path in LAYOUTS.glob("*.json") if path.stem != "fastfcn"]
    assert "encoding" in others
    for source in others:
        for model_id, shapes in layouts(source).items():
            found = fastfcn.detect(meta_state(shapes))
            assert isinstance(found, str), f"{source} {model_id} detected as FastFCN"
    for model_id, shapes in layouts("fastfcn").items():
        assert isinstance(encoding.detect(meta_state(shapes)), str), model_id


# input_kernel_size (EncNet): the first conv's kernel, 3 by default, 1 in FastFCN with JPU.


@pytest.mark.parametrize(
    ("jpu", "stride"), [(False, 8), (False, 16), (False, 32), (True, 32)], ids=str
)
def test_input_kernel_size_one_is_a_pointwise_reduction(jpu: bool, stride: int) -> None:
    torch.manual_seed(0)
    kwargs = {"backbone": "mobilenet_v2", "num_classes": 3, "jpu": jpu, "output_stride": stride}
    model = randomize(segkit.create_model("encnet", input_kernel_size=1, **kwargs))
    conv, bn = model.classifier.conv[0], model.classifier.conv[1]
    assert conv.kernel_size == (1, 1) and conv.padding == (0, 0)
    x = torch.rand(1, 3, 49, 71)
    with torch.no_grad():
        assert model(x)["out"].shape == (1, 3, 49, 71)
        features = model.backbone(x)
        if model.neck is not None:
            features = model.neck(features)
        top = features[-1]
        # The same map by hand: a per-pixel matrix product, BN in eval mode, ReLU.
        mixed = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], top)
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        shift = bn.bias - bn.running_mean * scale
        expected = (mixed * scale[:, None, None] + shift[:, None, None]).relu()
        torch.testing.assert_close(model.classifier.conv(top), expected, rtol=1e-4, atol=1e-5)
    default = segkit.create_model("encnet", **kwargs)
    assert default.classifier.conv[0].kernel_size == (3, 3)
    rebuilt = segkit.create_model(**model.config)  # the option is kept in the config
    assert rebuilt.classifier.conv[0].kernel_size == (1, 1)


@pytest.mark.parametrize("size", [0, 2, -1])
def test_input_kernel_size_must_be_positive_and_odd(size: int) -> None:
    with pytest.raises(ValueError, match=rf"input_kernel_size .* got {size}"):
        EncNetHead((24, 32, 96, 320), 3, input_kernel_size=size)
