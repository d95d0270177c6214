"""Every model and option of the zoo exports to ONNX (dynamic batch and size) and TorchScript.

``segkit.deploy.onnx`` already runs the written file on one input of another size than the export
example and fails when it differs from PyTorch. Both of its sizes are odd, so each file is also
run here at a multiple of 32 and at an even size that is not a multiple of 4, where padding,
cropping and resizing take other branches, and the graph must return the logits only (no
auxiliary or SE-loss output). The export's own example and check sizes are made smaller here
(:data:`EXAMPLE_SIZE`, :data:`CHECK_SIZE`): still odd and different from each other, in the
range of :data:`SIZES`, and every convolution wider than 1x1 still sees at least 3x3 pixels,
so the same branches are checked at a sixth to a tenth of the computation of the defaults.

One case per option, not the cross product: the dynamo ONNX exporter is slow on large graphs,
so head options are tested on timm:resnet18 and each backbone family appears once. resnet101
and HRNetV2-W32/W48 are the same code as resnet50 and HRNetV2-W18, and HRNetV2-W18 is built
here on timm's ``hrnet_w18_small`` body (:data:`SMALL_BODIES`): segkit's padding, cropping and
concatenation and timm's transition, branch and fuse modules are the same, with one module per
stage instead of four, so the graph exports in a fraction of the time.
:func:`test_cases_cover_the_zoo` fails when a model, backbone, attention block or boolean
option is added to the zoo without a case here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import segkit
from segkit.deploy import onnx as onnx_module
from segkit.deploy.onnx import export
from segkit.deploy.ort import input_name, ort_session
from segkit.models import JPU_MODELS, head_options
from segkit.models.attention import ATTENTIONS
from segkit.models.backbones import hrnet

NUM_CLASSES = 3
SAME_CODE = {
    "resnet101": "resnet50",
    "resnet50s": "timm:resnet18",  # timm's ResNet, with a deep stem
    "resnet101s": "timm:resnet18",
    "hrnetv2_w32": "hrnetv2_w18",
    "hrnetv2_w48": "hrnetv2_w18",
}
SMALL_BODIES = {"hrnetv2_w18": "hrnet_w18_small"}  # segkit backbone -> timm body with fewer modules
SIZES = [(1, 64, 96), (2, 78, 50)]  # (batch, height, width) beyond export()'s own check
EXAMPLE_SIZE = (97, 131)  # export()'s trace example and check input, both odd and different
CHECK_SIZE = (65, 83)
FORMATS = {"onnx": "onnx", "torchscript": "pt"}  # format -> file suffix

CASES: list[tuple[str, str, dict[str, Any]]] = [
    # Backbone families, each with its own dilation code where it has one.
    ("fcn", "mobilenet_v2", {"output_stride": 8, "align_corners": True}),
    ("fcn", "resnet50", {"output_stride": 8, "multi_grid": (1, 2, 4)}),
    ("deeplabv3plus", "xception65", {}),
    ("fcn", "hrnetv2_w18", {}),  # pads to a multiple of 32 and crops back
    # Heads and head options on the cheapest backbone to export.
    ("fcn8s", "timm:resnet18", {}),  # output stride 32
    ("deeplabv3", "timm:resnet18", {"output_stride": 8, "separable": True}),
    ("deeplabv3plus", "timm:resnet18", {"separable": True, "attention": "psa", "aux": True}),
    ("encnet", "timm:resnet18", {"lateral": True, "se_loss": True}),
    # JPU on every model that accepts it, each with another attention block.
    ("fcn", "timm:resnet18", {"jpu": True, "attention": "psa"}),
    ("deeplabv3", "timm:resnet18", {"jpu": True, "attention": "se"}),
    (
        "encnet",
        "timm:resnet18",
        {"jpu": True, "attention": "cbam", "aux": True, "input_kernel_size": 1},
    ),
]


def _case_id(name: str, backbone: str, options: dict[str, Any]) -> str:
    parts = [name, backbone]
    for key, value in options.items():
        if value is True:
            parts.append(key)
        elif key == "output_stride":
            parts.append(f"os{value}")
        elif isinstance(value, tuple):
            parts.append(f"{key}={','.join(map(str, value))}")
        else:
            parts.append(f"{key}={value}")
    return "-".join(parts)


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
PARAMS = [pytest.param(*case, id=_case_id(*case)) for case in CASES]


@pytest.fixture(autouse=True)
def _small_exports(monkeypatch) -> None:
    """The export check at the small sizes, HRNetV2 on the small body (module docstring)."""
    monkeypatch.setattr(onnx_module, "EXAMPLE_SIZE", EXAMPLE_SIZE)
    monkeypatch.setattr(onnx_module, "CHECK_SIZE", CHECK_SIZE)
    monkeypatch.setattr(hrnet, "HRNETS", {**hrnet.HRNETS, **SMALL_BODIES})


def _build(name: str, backbone: str, options: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)  # random weights (never downloaded) and export()'s random inputs
    return segkit.create_model(name, backbone=backbone, num_classes=NUM_CLASSES, **options).eval()


def _load(path: Path, format: str) -> Callable[[torch.Tensor], np.ndarray]:
    """The exported file as a function ``image -> output``, run by its deployment runtime."""
    if format == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(x).numpy()
    session = ort_session(path, threads=1)  # tests run in parallel workers on few cores
    assert [o.name for o in session.get_outputs()] == ["output"]  # no "aux" or "se"
    image = input_name(session)
    return lambda x: session.run(None, {image: x.numpy()})[0]


def _rel_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("format", list(FORMATS))
@pytest.mark.parametrize(("name", "backbone", "options"), PARAMS)
def test_export_matches_pytorch(
    name: str, backbone: str, options: dict[str, Any], format: str, tmp_path: Path
) -> None:
    model = _build(name, backbone, options)
    path = tmp_path / f"model.{FORMATS[format]}"
    report = export(model, path, format=format)
    assert report.path == path and path.is_file()
    assert report.max_rel_diff <= 1e-3

    run = _load(path, format)
    for batch, height, width in SIZES:
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(x)["out"].numpy()
            actual = run(x)
        assert actual.shape == (batch, NUM_CLASSES, height, width)
        assert _rel_diff(actual, expected) <= 1e-3, f"at size {height}x{width}"


@pytest.mark.parametrize("format", list(FORMATS))
def test_argmax_export(format: str, tmp_path: Path) -> None:
    model = _build("fcn8s", "timm:resnet18", {})
    path = tmp_path / f"classes.{FORMATS[format]}"
    report = export(model, path, format=format, argmax=True)
    assert path.is_file()
    assert report.max_rel_diff <= 1e-3  # share of pixels whose class differs from PyTorch's
    x = torch.randn(2, 3, 78, 50)
    with torch.no_grad():
        expected = model(x)["out"].argmax(dim=1).numpy()
        classes = _load(path, format)(x)
    assert classes.dtype == np.int64 and classes.shape == (2, 78, 50)
    assert (classes == expected).mean() >= 0.999


def test_cases_cover_the_zoo() -> None:
    """A model, backbone, attention block or boolean option added to the zoo needs a case."""
    names = {name for name, _, _ in CASES}
    assert names == set(segkit.list_models())
    backbones = {backbone for _, backbone, _ in CASES}
    expected = {SAME_CODE.get(b, b) for b in segkit.list_backbones()} | {"timm:resnet18"}
    assert backbones == expected
    assert {o.get("attention") for _, _, o in CASES} >= set(ATTENTIONS)
    assert {name for name, _, o in CASES if o.get("jpu")} == set(JPU_MODELS)
    assert any(o.get("aux") for _, _, o in CASES)
    assert any(o.get("multi_grid") for _, _, o in CASES)
    for name in segkit.list_models():
        flags = {k for k, v in head_options(name).items() if v is False}
        tested = {k for n, _, o in CASES if n == name for k, v in o.items() if v is True}
        assert flags <= tested, f"{name}: no case sets {sorted(flags - tested)}"
    with torch.device("meta"):  # the config is all that is read: no weights to initialise
        strides = {_build(*case).config["output_stride"] for case in CASES}
    assert strides >= {8, 16, 32}
