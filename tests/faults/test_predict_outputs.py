"""`segkit predict` loses nothing: one output per input, inputs never overwritten, one bad
file never stops the others, and every refusal is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit import predictor as predictor_module
from segkit.checkpoint import load_model, save_checkpoint
from segkit.cli import main
from segkit.datasets import read_image
from segkit.deploy.optimize import optimize_for_inference
from segkit.engine.inference import predict_logits, predict_mask
from segkit.models import create_model

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained 3-class checkpoint with the meta predict needs."""
    torch.manual_seed(0)
    model = create_model("fcn", backbone="mobilenet_v2", num_classes=3)
    meta = {
        "class_names": ["background", "a", "b"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "mean": MEAN,
        "std": STD,
        "ignore_index": 255,
    }
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": model.config, "state_dict": model.state_dict(), "meta": meta})
    return path


@pytest.fixture(scope="module")
def reference(ckpt):
    """The class map of one image file, computed here (own decoding and normalisation)."""
    runner = optimize_for_inference(load_model(ckpt))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)

    def predict(path: Path) -> np.ndarray:
        x = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255
        return predict_mask(runner, (x - mean) / std)[0].numpy()

    return predict


def _image(path: Path, height: int, width: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _predict(ckpt: Path, *args: str | Path) -> int:
    return main(["predict", "--checkpoint", str(ckpt), *map(str, args)])


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _count_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Record the input shape of every prediction predict makes (through segkit.Predictor)."""
    calls: list[tuple[int, ...]] = []

    def counted(model, images, **options):
        calls.append(tuple(images.shape))
        return predict_logits(model, images, **options)

    monkeypatch.setattr(predictor_module, "predict_logits", counted)
    return calls


def test_inputs_with_one_stem_get_one_output_each(tmp_path, ckpt, reference, capsys) -> None:
    src = tmp_path / "in"
    inputs = [
        _image(src / "a" / "x.jpg", 40, 56, 0),
        _image(src / "b" / "x.jpg", 48, 40, 1),
        _image(src / "c" / "y.jpg", 44, 44, 2),
        _image(src / "c" / "y.png", 52, 36, 3),
    ]
    out = tmp_path / "out"
    assert _predict(ckpt, src / "a", src / "b", src / "c", "--out", out, "--overlay") == 0
    masks = ["a/x.png", "b/x.png", "c/y.jpg.png", "c/y.png.png"]
    overlays = ["a/x_overlay.png", "b/x_overlay.png", "c/y.jpg_overlay.png", "c/y.png_overlay.png"]
    assert _files(out) == {*masks, *overlays}
    for source, name in zip(inputs, masks, strict=True):
        assert np.array_equal(np.asarray(Image.open(out / name)), reference(source)), name
    assert f"into {out}" in capsys.readouterr().out

    # Two files named explicitly: the layout mirrors their folders, never one flat x.png.
    flat = tmp_path / "flat"
    assert _predict(ckpt, inputs[0], inputs[1], "--out", flat) == 0
    assert _files(flat) == {"a/x.png", "b/x.png"}
    assert np.array_equal(np.asarray(Image.open(flat / "b/x.png")), reference(inputs[1]))


@pytest.mark.parametrize("spelling", ["same", "via-parent"])
def test_out_onto_the_inputs_is_refused(tmp_path, ckpt, capsys, monkeypatch, spelling) -> None:
    src = tmp_path / "in"
    _image(src / "sub" / "a.png", 40, 40, 0)
    _image(src / "b.jpg", 40, 40, 1)
    before = _snapshot(src)
    calls = _count_calls(monkeypatch)
    if spelling == "same":
        code = _predict(ckpt, src, "--out", src)
    else:  # the root of the inputs, spelt differently
        code = _predict(ckpt, src / "sub" / "a.png", src / "b.jpg", "--out", src / "sub" / "..")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.png" in err[0] and "another --out" in err[0]
    assert _snapshot(src) == before and calls == []


@pytest.mark.parametrize(
    "error",
    [RuntimeError("can't allocate memory\nat frame 2"), torch.OutOfMemoryError("CUDA OOM\nmore")],
)
def test_one_failing_image_does_not_stop_the_rest(
    tmp_path, ckpt, reference, capsys, monkeypatch, error
) -> None:
    src = tmp_path / "in"
    good = [_image(src / "a.png", 40, 40, 0), _image(src / "c.png", 44, 36, 2)]
    _image(src / "big.png", 64, 56, 1)

    def fail_on_big(model, images, **options):
        if tuple(images.shape[-2:]) == (64, 56):
            raise error
        return predict_logits(model, images, **options)

    monkeypatch.setattr(predictor_module, "predict_logits", fail_on_big)
    out = tmp_path / "out"
    assert _predict(ckpt, src, "--out", out) == 1
    assert _files(out) == {"a.png", "c.png"}  # no partial or temporary file either
    for source in good:
        assert np.array_equal(np.asarray(Image.open(out / source.name)), reference(source))
    captured = capsys.readouterr()
    named = [line for line in captured.err.splitlines() if "big.png" in line]
    first_line = str(error).splitlines()[0]
    assert len(named) == 1 and first_line in named[0] and type(error).__name__ in named[0]
    assert "wrote 2 prediction(s)" in captured.out and "1 input(s) failed" in captured.out


def _static_onnx(path: Path, size: tuple[int, int], weight: np.ndarray) -> None:
    """A 1x1-convolution "segmenter" whose ONNX graph takes only ``1 x 3 x size``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "static",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, *size])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_static_onnx_file_fails_only_the_other_size(tmp_path, ckpt, capsys) -> None:
    pytest.importorskip("onnxruntime")
    weight = np.random.default_rng(0).normal(size=(3, 3, 1, 1)).astype(np.float32)
    onnx_file = tmp_path / "static.onnx"
    _static_onnx(onnx_file, (32, 32), weight)
    src = tmp_path / "in"
    fits = _image(src / "fits.png", 32, 32, 0)
    _image(src / "other.png", 40, 32, 1)
    out = tmp_path / "out"
    argv = [src, "--out", out, "--runtime", "onnxruntime", "--onnx", onnx_file]
    assert _predict(ckpt, *argv) == 1
    assert _files(out) == {"fits.png"}
    # Independent of segkit: normalise and apply the 1x1 convolution in NumPy.
    x = (np.asarray(Image.open(fits), np.float32) / 255 - MEAN) / STD
    expected = np.einsum("hwc,kc->hwk", x, weight[:, :, 0, 0]).argmax(-1)
    assert np.array_equal(np.asarray(Image.open(out / "fits.png")), expected)
    named = [line for line in capsys.readouterr().err.splitlines() if "other.png" in line]
    assert len(named) == 1 and "INVALID_ARGUMENT" in named[0] and "Expected: 32" in named[0]


def test_a_failed_write_keeps_the_old_file(tmp_path, ckpt, capsys, monkeypatch) -> None:
    src = tmp_path / "in"
    _image(src / "a.png", 40, 40, 0)
    out = tmp_path / "out"
    old = _image(out / "a.png", 8, 8, 5).read_bytes()
    original = Image.Image.save

    def disk_full_midway(self, fp, format=None, **params):
        original(self, fp, format=format, **params)
        raise OSError(28, "No space left on device")  # after some bytes are on disk

    monkeypatch.setattr(Image.Image, "save", disk_full_midway)
    assert _predict(ckpt, src, "--out", out) == 1
    assert (out / "a.png").read_bytes() == old and _files(out) == {"a.png"}
    named = [line for line in capsys.readouterr().err.splitlines() if "a.png" in line]
    assert len(named) == 1 and "no space left on device" in named[0]


def test_out_that_cannot_be_a_folder_is_refused(tmp_path, ckpt, capsys, monkeypatch) -> None:
    image = _image(tmp_path / "a.png", 40, 40, 0)
    calls = _count_calls(monkeypatch)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert _predict(ckpt, image, "--out", a_file) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segkit predict: error: --out must be a folder; {a_file} is a file"]
    assert _predict(ckpt, image, "--out", a_file / "sub") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(a_file / "sub") in err[0] and "not a directory" in err[0]
    assert a_file.read_text() == "keep me" and calls == []


def test_read_only_out_is_refused_before_predicting(
    tmp_path, ckpt, capsys, monkeypatch, read_only_dir
) -> None:
    image = _image(tmp_path / "a.png", 40, 40, 0)
    calls = _count_calls(monkeypatch)
    for out in (read_only_dir, read_only_dir / "out"):  # an existing folder, a new one
        assert _predict(ckpt, image, "--out", out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(read_only_dir) in err[0], err
        assert "not permitted" in err[0] or "permission denied" in err[0]
    assert calls == [] and list(read_only_dir.iterdir()) == []


def test_a_file_reached_twice_is_predicted_once(tmp_path, ckpt, capsys, monkeypatch) -> None:
    src = tmp_path / "in"
    _image(src / "a.png", 40, 40, 0)
    _image(src / "b.png", 44, 40, 1)
    calls = _count_calls(monkeypatch)
    out = tmp_path / "out"
    assert _predict(ckpt, src, src / "*.png", src / "a.png", "--out", out) == 0
    assert sorted(calls) == [(1, 3, 40, 40), (1, 3, 44, 40)]
    assert _files(out) == {"a.png", "b.png"}
    assert "wrote 2 prediction(s)" in capsys.readouterr().out


def test_earlier_predictions_under_out_are_not_inputs(tmp_path, ckpt, monkeypatch) -> None:
    src = tmp_path / "in"
    _image(src / "a.png", 40, 40, 0)
    _image(src / "sub" / "b.jpg", 44, 40, 1)
    out = src / "pred"
    assert _predict(ckpt, src, "--out", out, "--overlay") == 0
    first = _snapshot(out)
    calls = _count_calls(monkeypatch)
    for inputs in ([src], [src / "**" / "*.*"]):
        assert _predict(ckpt, *inputs, "--out", out, "--overlay") == 0
    assert len(calls) == 4  # a.png and b.jpg, twice; none of the 4 files in pred/
    assert set(first) == _files(out) == {
        "a.png", "a_overlay.png", "sub/b.png", "sub/b_overlay.png",
    }  # fmt: skip
    assert _snapshot(out) == first
