"""Export to ONNX/TorchScript: the written file runs and matches PyTorch, or nothing is left."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

import segkit
from segkit.cli import main
from segkit.export import ExportError, export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("run")
    argv = ["train", "--iters", "1", "--val-interval", "1", "--workers", "0",
            "--set", "data.length=16", "--set", "data.val_length=2",
            "--work-dir", str(work)]  # fmt: skip
    assert main(argv) == 0
    return str(work / "checkpoints" / "last.pt")


def test_onnx_export_with_dynamic_size_matches_pytorch(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert "max rel diff" in capsys.readouterr().out
    model = segkit.load_model(checkpoint)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
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
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 64)
    (classes,) = session.run(None, {"image": x.numpy()})
    assert classes.dtype == np.int64 and classes.shape == (1, 64, 64)
    script = export(model, tmp_path / "m.pt", format="torchscript")
    loaded = torch.jit.load(str(script.path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x)["out"], rtol=1e-4, atol=1e-5)


def test_failed_check_leaves_no_file(tmp_path) -> None:
    # HRNet's pad-and-crop depends on the input size: the dynamic ONNX graph is wrong at other
    # sizes, which the check catches.
    model = segkit.create_model("fcn", backbone="hrnetv2_w18", num_classes=3)
    out = tmp_path / "hrnet.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(model, out)
    assert list(tmp_path.iterdir()) == []
    assert export(model, out, static=(96, 128)).max_rel_diff < 1e-3  # fixed size exports fine
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        export(model, out, format="tflite")
