"""Export to ONNX/TorchScript: the written file runs and matches PyTorch, or nothing is left."""

from __future__ import annotations

import argparse
import importlib
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

import segkit
from segkit.cli import main
from segkit.cli.export import static_size
from segkit.deploy.onnx import META_KEY, SUFFIXES, ExportError, export, resolve_format
from segkit.deploy.ort import input_name, ort_session

export_module = importlib.import_module("segkit.deploy.onnx")  # the function shadows the module
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("run")
    # timm's ResNet-18: the ONNX exporter traces it in a third of MobileNetV2's time, and
    # these tests are about the export, not the network (test_export_zoo covers each family).
    argv = ["train", "--iters", "1", "--val-interval", "1", "--workers", "0",
            "--backbone", "timm:resnet18",
            "--set", "data.length=16", "--set", "data.val_length=2",
            "--work-dir", str(work)]  # fmt: skip
    assert main(argv) == 0
    return str(work / "checkpoints" / "last.pt")


def test_onnx_export_with_dynamic_size_matches_pytorch(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert "max rel diff" in capsys.readouterr().out
    model = segkit.load_model(checkpoint)
    session = ort_session(out)
    x = torch.randn(3, 3, 71, 45)  # another batch and size than any used during export
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)["out"].numpy()
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() / np.abs(expected).max() < 1e-3

    # Deployment-time accuracy: eval and predict through ONNX Runtime agree with PyTorch.
    results = {}
    for runtime in ("torch", "onnxruntime"):
        metrics = tmp_path / f"{runtime}.json"
        argv = ["eval", "--checkpoint", checkpoint, "--runtime", runtime, "--onnx", str(out)]
        assert main([*argv, "--json", str(metrics)]) == 0
        results[runtime] = json.loads(metrics.read_text())
        image = tmp_path / "in.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)).save(
            image
        )
        argv = ["predict", "--checkpoint", checkpoint, "--runtime", runtime, "--onnx", str(out)]
        assert main([*argv, str(image), "--out", str(tmp_path / runtime)]) == 0
    assert results["onnxruntime"]["mIoU"] == pytest.approx(results["torch"]["mIoU"], abs=1e-3)
    a = np.asarray(Image.open(tmp_path / "torch" / "in.png"))
    b = np.asarray(Image.open(tmp_path / "onnxruntime" / "in.png"))
    assert (a == b).mean() > 0.999


def test_argmax_and_torchscript(checkpoint, tmp_path) -> None:
    model = segkit.load_model(checkpoint)
    report = export(model, tmp_path / "m.onnx", argmax=True, static=(64, 64))
    session = ort_session(report.path)
    x = torch.randn(1, 3, 64, 64)
    (classes,) = session.run(None, {"image": x.numpy()})
    assert classes.dtype == np.int64 and classes.shape == (1, 64, 64)
    script = export(model, tmp_path / "m.pt", format="torchscript")
    loaded = torch.jit.load(str(script.path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x)["out"], rtol=1e-4, atol=1e-5)


def test_failed_check_leaves_no_file(checkpoint, tmp_path, monkeypatch) -> None:
    model = segkit.load_model(checkpoint)
    out = tmp_path / "model.onnx"
    run_onnx = export_module._run_onnx

    def off_by_one_percent(path, *images):  # a planted fault in the exported file's outputs
        return [logits * 1.01 for logits in run_onnx(path, *images)]

    monkeypatch.setattr(export_module, "_run_onnx", off_by_one_percent)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(model, out, static=(64, 64))  # the size does not matter to a planted fault
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        export(model, out, format="tflite")


def _onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    return ort_session(path).run(None, {"image": x.numpy()})[0]


def _signal_model() -> torch.nn.Module:
    """Random weights whose logits depend on the input (He init keeps the signal alive through
    depth; PyTorch's default init makes the logits of a deep net nearly constant)."""
    torch.manual_seed(0)
    model = segkit.create_model("deeplabv3plus", backbone="timm:resnet18", num_classes=3)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


def test_int8_export_is_quantised_close_and_checked(tmp_path) -> None:
    model = _signal_model()
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 64, 64, generator=generator) for _ in range(8)]
    # Fixed at the images' size: a smaller graph to export, quantise and check (dynamic-size
    # int8 is the CLI test's).
    int8 = {"int8": True, "static": (64, 64)}
    report = export(model, tmp_path / "q.onnx", **int8, calibration=images, min_agreement=0)
    assert report.int8_images == 2 and report.int8_agreement > 0.9
    graph = onnx.load(str(report.path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    int8_weights = [
        t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert len(int8_weights) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert report.path.stat().st_size < 0.4 * float_bytes

    x = images[-1]  # held out: calibration used the first six
    with torch.no_grad():
        expected = model(x)["out"].numpy()

    def rms_error(path) -> float:
        error = _onnx_logits(path, x) - expected
        return float(np.sqrt((error**2).mean()) / expected.std())

    error = rms_error(report.path)
    assert error < 0.25
    # Planted fault: ranges calibrated on images 50x too bright quantise real ones coarsely.
    too_bright = [image * 50 for image in images[:6]] + images[6:]
    bad = export(model, tmp_path / "bad.onnx", **int8, calibration=too_bright, min_agreement=0)
    assert rms_error(bad.path) > 1.5 * error
    with pytest.raises(ExportError, match="PyTorch's class on only"):
        export(model, tmp_path / "strict.onnx", **int8, calibration=images, min_agreement=1.01)
    assert not (tmp_path / "strict.onnx").exists()
    with pytest.raises(ValueError, match="needs calibration images"):
        export(model, tmp_path / "none.onnx", int8=True)
    with pytest.raises(ValueError, match="for ONNX exports"):
        export(model, tmp_path / "q.pt", format="torchscript", int8=True, calibration=images)


def test_int8_cli_calibrates_on_the_dataset_and_evaluates(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.int8.onnx"
    argv = ["export", "--checkpoint", checkpoint, "--out", str(out), "--int8",
            "--calibration-images", "4", "--min-agreement", "0"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "held-out calibration image(s)" in printed
    metrics = tmp_path / "int8.json"
    argv = ["eval", "--checkpoint", checkpoint, "--runtime", "onnxruntime", "--onnx", str(out)]
    assert main([*argv, "--json", str(metrics)]) == 0
    assert 0 <= json.loads(metrics.read_text())["mIoU"] <= 1
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--int8",
                 "--calibration-images", "0"]) == 2  # fmt: skip
    assert "--calibration-images must be >= 1" in capsys.readouterr().err


def test_unexportable_operator_is_named(tmp_path) -> None:
    class Bessel(torch.nn.Module):  # prims.bessel_i1 has no ONNX function
        def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": torch.special.i1(image)}

    with pytest.raises(ExportError, match=r"No ONNX function found for .*bessel_i1"):
        export(Bessel(), tmp_path / "bessel.onnx", static=(8, 8))
    assert list(tmp_path.iterdir()) == []


def test_format_follows_the_file_name() -> None:
    for suffix, format in SUFFIXES.items():
        assert resolve_format(f"model{suffix}") == format
        assert resolve_format(f"MODEL{suffix.upper()}") == format
        assert resolve_format(f"model{suffix}", format) == format  # agreeing: allowed
    assert resolve_format("model.int8.onnx") == "onnx"
    assert resolve_format("model.bin", "torchscript") == "torchscript"  # an override
    with pytest.raises(ValueError, match=r"--format onnx contradicts --out m\.pt.*m\.onnx"):
        resolve_format("m.pt", "onnx")
    with pytest.raises(ValueError, match=r"--format torchscript contradicts --out m\.onnx"):
        resolve_format("m.onnx", "torchscript")
    with pytest.raises(ValueError, match="cannot tell the export format") as error:
        resolve_format("model.bin")
    assert all(suffix in str(error.value) for suffix in SUFFIXES)
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        resolve_format("model.onnx", "tflite")


def test_static_takes_one_side_or_two() -> None:
    assert static_size("512") == (512, 512)
    assert static_size("512x1024") == (512, 1024)
    assert static_size("48X64") == (48, 64)
    for bad in ("0", "512x", "x512", "ax4", "1x2x3", "-8", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a side such as 512"):
            static_size(bad)


def test_cli_infers_torchscript_from_the_suffix(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.pth"
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--static", "48"]) == 0
    assert "(torchscript)" in capsys.readouterr().out
    files = {META_KEY: ""}
    module = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files[META_KEY])["input"]["shape"] == ["N", 3, 48, 48]
    model = segkit.load_model(checkpoint)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x)["out"], rtol=1e-4, atol=1e-5)


def test_cli_refuses_a_contradicting_or_unknown_suffix(checkpoint, tmp_path, capsys) -> None:
    argv = ["export", "--checkpoint", checkpoint, "--format", "onnx", "--out"]
    assert main([*argv, str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "--format onnx contradicts --out" in err and "m.pt" in err
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "m.bin")]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the export format" in err and all(s in err for s in SUFFIXES)
    assert list(tmp_path.iterdir()) == []


def _onnx_file(path, inputs: tuple[str, ...] = ("image",)) -> None:
    node = helper.make_node("Identity" if len(inputs) == 1 else "Add", list(inputs), ["output"])
    value = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 8, 8]) for name in inputs
    ]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])
    onnx.save(helper.make_model(helper.make_graph([node], "g", value, [output])), str(path))


def test_ort_session_settings_and_input_name(tmp_path) -> None:
    path = tmp_path / "identity.onnx"
    _onnx_file(path)
    session = ort_session(path)
    options = session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()  # PyTorch's by default
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level != onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort_session(path, threads=1, optimise=False).get_session_options()
    assert plain.intra_op_num_threads == 1
    assert plain.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert input_name(session) == input_name(path) == "image"
    two = tmp_path / "two.onnx"
    _onnx_file(two, ("a", "b"))
    for source in (two, ort_session(two)):
        with pytest.raises(ValueError, match=r"takes the inputs \['a', 'b'\], not one image"):
            input_name(source)
