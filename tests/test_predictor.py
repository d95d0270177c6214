"""segkit.Predictor: every input kind gives the mask `segkit predict` writes; probabilities,
the checkpoint's protocol, another project's checkpoint, and an ONNX file used on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.checkpoint import load_model, model_spec, save_checkpoint
from segkit.cli import main
from segkit.engine.inference import predict_logits

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
META = {
    "class_names": ["background", "a", "b"],
    "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    "mean": MEAN,
    "std": STD,
    "ignore_index": 255,
}
# The run's validation protocol, recorded in the checkpoint's config (window: the crop size).
SLIDE = {"data": {"crop_size": 32}, "eval": {"mode": "slide", "flip": True}}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two checkpoints of one tiny untrained model (default protocol, and slide + flip) and
    three images (two of one size)."""
    folder = tmp_path_factory.mktemp("predictor")
    torch.manual_seed(0)
    # timm's ResNet-18: the one ONNX export below traces it in a third of MobileNetV2's time.
    model = segkit.create_model("deeplabv3plus", backbone="timm:resnet18", num_classes=3, meta=META)
    _spread_classes(model)
    payload = {**model_spec(model), "state_dict": model.state_dict()}
    save_checkpoint(folder / "whole.pt", payload)
    save_checkpoint(folder / "slide.pt", {**payload, "config": SLIDE})
    rng = np.random.default_rng(0)
    paths = {"whole": folder / "whole.pt", "slide": folder / "slide.pt"}
    for name, (h, w) in {"a.png": (40, 56), "b.jpg": (48, 40), "c.png": (40, 56)}.items():
        paths[name] = folder / "images" / name
        paths[name].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[name])
    return paths


def _spread_classes(model: torch.nn.Module) -> None:
    """Make an untrained model's classes depend on the image: its logits barely vary (the
    bias decides), so the classifier becomes a random projection of standardised features."""
    classifier = model.classifier.classifier
    seen = {}
    hook = classifier.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 48, 48))
        hook.remove()
        mean, std = seen["x"].mean((0, 2, 3)), seen["x"].std((0, 2, 3)).clamp_min(1e-4)
        weight = torch.randn(3, len(mean)) / len(mean) ** 0.5 / std
        classifier.weight.copy_(weight[:, :, None, None])
        classifier.bias.copy_(-weight @ mean)


def _normalised(path: Path) -> torch.Tensor:
    """``3 x H x W``, computed here: PIL's RGB, scaled, minus mean, over std."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy((rgb - MEAN) / STD).permute(2, 0, 1).float()


def test_every_input_kind_gives_the_mask_predict_writes(files, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(files["whole"]), str(files["a.png"].parent)]
    assert main([*args, "--out", str(out)]) == 0
    written = {name: np.asarray(Image.open(out / f"{Path(name).stem}.png")) for name in
               ("a.png", "b.jpg", "c.png")}  # fmt: skip
    assert any(len(np.unique(mask)) > 1 for mask in written.values())  # not one class

    predictor = segkit.Predictor(files["whole"], device="cpu")
    a, b = files["a.png"], files["b.jpg"]
    for image in (a, str(a), Image.open(a), np.asarray(Image.open(a))):
        mask = predictor(image)
        assert mask.dtype == np.uint8 and mask.shape == (40, 56)
        assert np.array_equal(mask, written["a.png"]), type(image)
    # A batch of any kinds and sizes: one mask per image, in order.
    batch = predictor([b, Image.open(a), np.asarray(Image.open(files["c.png"]))])
    assert isinstance(batch, list) and len(batch) == 3
    for mask, name in zip(batch, ("b.jpg", "a.png", "c.png"), strict=True):
        assert np.array_equal(mask, written[name]), name
    # Normalised tensors: one image (3 x H x W), or a batch (N x 3 x H x W) run at once.
    assert np.array_equal(predictor(_normalised(a)), written["a.png"])
    stacked = predictor(torch.stack([_normalised(a), _normalised(files["c.png"])]))
    assert [m.shape for m in stacked] == [(40, 56), (40, 56)]
    assert np.array_equal(stacked[0], written["a.png"])
    assert np.array_equal(stacked[1], written["c.png"])


def test_probabilities_are_the_softmax_of_the_logits(files) -> None:
    predictor = segkit.Predictor(files["whole"])
    result = predictor.predict(files["a.png"])
    assert result.probs.dtype == np.float32 and result.probs.shape == (3, 40, 56)
    np.testing.assert_allclose(result.probs.sum(axis=0), 1, atol=1e-5)
    assert np.array_equal(result.probs.argmax(axis=0), result.mask)
    # Independent of the fast path: the plain eval-mode model on our own normalisation.
    with torch.no_grad():
        logits = load_model(files["whole"])(_normalised(files["a.png"])[None])["out"][0]
    np.testing.assert_allclose(result.probs, torch.softmax(logits, 0).numpy(), atol=1e-4)
    results = predictor.predict([files["a.png"], files["b.jpg"]])
    assert [r.probs.shape for r in results] == [(3, 40, 56), (3, 48, 40)]


def test_protocol_comes_from_the_checkpoint_unless_given(files) -> None:
    predictor = segkit.Predictor(files["slide"])
    expected = {"mode": "slide", "window": 32, "stride": None, "scales": (1.0,), "flip": True}
    assert predictor.options == expected
    x = _normalised(files["a.png"])[None]
    reference = predict_logits(predictor.runner, x, **expected).argmax(1)[0].numpy()
    whole = predict_logits(predictor.runner, x).argmax(1)[0].numpy()
    assert not np.array_equal(reference, whole)  # the protocol changes the answer here
    assert np.array_equal(predictor(files["a.png"]), reference)

    given = segkit.Predictor(files["slide"], mode="whole", scales=[0.5, 1.0], flip=False)
    # Whole images need no window (the CLI's rule: the crop size is slide's default only).
    changed = {"mode": "whole", "window": None, "scales": (0.5, 1.0), "flip": False}
    assert given.options == {**expected, **changed}
    with pytest.raises(ValueError, match=r"Valid choices: \[.whole., .slide.\]"):
        segkit.Predictor(files["whole"], mode="tile")


def test_a_model_object_needs_eval_mode_and_normalisation(files) -> None:
    model = load_model(files["whole"])
    from_model = segkit.Predictor(model)
    assert np.array_equal(
        from_model(files["b.jpg"]), segkit.Predictor(files["whole"])(files["b.jpg"])
    )
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        segkit.Predictor(model.train())
    bare = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=3).eval()
    with pytest.raises(ValueError, match="meta="):
        segkit.Predictor(bare)
    predictor = segkit.Predictor(bare, meta={"mean": MEAN, "std": STD})
    assert predictor.class_names == [] and predictor(files["a.png"]).shape == (40, 56)
    with pytest.raises(ValueError, match="C x H x W"):
        predictor(np.zeros((3, 40, 56), np.uint8))
    with pytest.raises(ValueError, match="flatten"):
        predictor([[files["a.png"]]])


def test_another_projects_checkpoint_is_converted_in_memory(tmp_path) -> None:
    """torchvision's FCN names are segkit's: its state dict is a foreign checkpoint."""
    torch.manual_seed(1)
    original = segkit.create_model("fcn", backbone="resnet50", output_stride=8, num_classes=3)
    original.eval()
    path = tmp_path / "fcn_torchvision.pth"
    torch.save(original.state_dict(), path)
    notes: list[str] = []
    predictor = segkit.Predictor(path, note=notes.append)
    assert len(notes) == 1 and "converted in memory" in notes[0]
    image = np.random.default_rng(1).integers(0, 255, (33, 45, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None] / 255 - torch.tensor(MEAN)[:, None, None]
    with torch.no_grad():
        logits = original(x / torch.tensor(STD)[:, None, None])["out"][0]
    result = predictor.predict(image)
    np.testing.assert_allclose(result.probs, torch.softmax(logits, 0).numpy(), atol=1e-4)


def test_onnx_file_alone_predicts_like_its_checkpoint(files, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(files["slide"]), "--out", str(onnx_file)]) == 0
    torch_predictor = segkit.Predictor(files["slide"])
    predictor = segkit.Predictor(onnx_file)
    assert predictor.runtime == "onnxruntime"
    assert predictor.class_names == META["class_names"]
    assert predictor.palette == [tuple(c) for c in META["palette"]]
    assert predictor.meta["mean"] == MEAN and predictor.meta["std"] == STD
    assert predictor.options == torch_predictor.options  # the protocol travels in the file
    for image in (files["a.png"], files["b.jpg"]):
        ours, theirs = predictor.predict(image), torch_predictor.predict(image)
        np.testing.assert_allclose(ours.probs, theirs.probs, atol=1e-4)
        top2 = np.sort(theirs.probs, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-3  # pixels whose class float error cannot flip
        assert np.array_equal(ours.mask[clear], theirs.mask[clear])
    with pytest.raises(ValueError, match="precision and compile"):
        segkit.Predictor(onnx_file, precision="bf16")


def _onnx_1x1(path: Path, size: tuple[int, int], weight: np.ndarray, meta: dict) -> None:
    """A 1x1-convolution "segmenter" taking only ``N x 3 x size``, with segkit's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "static",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, *size])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"segkit.meta": json.dumps(meta)})
    onnx.save(model, path)


def test_fixed_size_onnx_file_runs_window_by_window(tmp_path) -> None:
    pytest.importorskip("onnx")
    weight = np.random.default_rng(0).normal(size=(3, 3, 1, 1)).astype(np.float32)
    meta = {**META, "input": {"shape": ["N", 3, 24, 32]}, "output": {"kind": "logits"}}
    path = tmp_path / "static.onnx"
    _onnx_1x1(path, (24, 32), weight, meta)
    predictor = segkit.Predictor(path)
    assert predictor.options["mode"] == "slide" and predictor.options["window"] == (24, 32)
    image = np.random.default_rng(1).integers(0, 255, (41, 70, 3), dtype=np.uint8)
    # Independent of segkit: normalise and apply the 1x1 convolution in NumPy.
    x = (image.astype(np.float32) / 255 - MEAN) / STD
    expected = np.einsum("hwc,kc->hwk", x, weight[:, :, 0, 0]).argmax(-1)
    assert np.array_equal(predictor(image), expected)

    _onnx_1x1(path, (24, 32), weight, {**meta, "output": {"kind": "argmax"}})
    with pytest.raises(ValueError, match="--argmax"):
        segkit.Predictor(path)
