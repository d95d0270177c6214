"""What `segkit predict` draws besides the mask (segkit/visualize.py): overlays that leave the
background as it is, a legend of exactly the classes present, image | prediction pictures, and
the probabilities (--save-probs). (tests/faults/test_predict_outputs.py: losing nothing.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.checkpoint import model_spec, save_checkpoint
from segkit.cli import main
from segkit.cli.predict import plan_outputs
from segkit.visualize import (
    background_class,
    classes_present,
    colour_mask,
    legend,
    overlay,
    side_by_side,
    with_legend,
)

NAMES = ["background", "road", "car", "tree"]
# Distinct from the legend's white, its black text and grey swatch edges (and their blends).
PALETTE = [(20, 40, 200), (230, 60, 10), (10, 220, 90), (250, 200, 0)]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _luminance(pixels: np.ndarray) -> float:
    """Mean Rec. 601 luma of ``... x 3`` uint8 pixels."""
    return float((pixels.astype(np.float64) @ [0.299, 0.587, 0.114]).mean())


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A bright textured 30 x 40 image; the mask: background on the left half, road and car
    on the right."""
    rng = np.random.default_rng(0)
    image = rng.integers(150, 256, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[:, 20:] = 1
    mask[20:, 30:] = 2
    return image, mask


def test_overlay_keeps_the_background_and_blends_the_rest(scene) -> None:
    image, mask = scene
    drawn = overlay(image, mask, PALETTE, alpha=0.6, keep=background_class(NAMES))
    back = mask == 0
    assert np.array_equal(drawn[back], image[back])  # untouched: same brightness, measured
    assert _luminance(drawn[back]) == pytest.approx(_luminance(image[back]))
    exact = 0.4 * image + 0.6 * np.asarray(PALETTE, np.float64)[mask]
    assert np.abs(drawn[~back] - exact[~back]).max() <= 0.5 + 1e-4  # rounded to nearest
    # The blend of mmsegmentation and VainF (every pixel) darkens a black background to 40%.
    dark = overlay(image, mask, [(0, 0, 0), *PALETTE[1:]], alpha=0.6, keep=None)
    assert _luminance(dark[back]) == pytest.approx(0.4 * _luminance(image[back]), abs=0.5)


def test_background_class_is_found_by_name() -> None:
    assert background_class(NAMES) == 0
    assert background_class(["sky", "_background_"]) == 1
    assert background_class(["road", "sidewalk", "car"]) is None  # Cityscapes: tint all
    with pytest.raises(ValueError, match="between 0 and 1"):
        overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8), PALETTE, alpha=1.5)


def _swatch_pixels(panel: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((panel == np.asarray(colour, np.uint8)).all(axis=-1).sum())


def test_legend_lists_exactly_the_classes_present(scene) -> None:
    image, mask = scene
    assert classes_present(mask, len(NAMES)) == [0, 1, 2]
    size = 12
    panel = legend(NAMES, PALETTE, [0, 1, 2], size=size)
    for index, colour in enumerate(PALETTE):
        count = _swatch_pixels(panel, colour)
        # A present class: its swatch, a size x size square inside a 1-pixel grey edge.
        assert count == ((size - 2) ** 2 if index < 3 else 0), NAMES[index]
    # One row per class: the panel grows by one row's height per class.
    two = legend(NAMES, PALETTE, [0, 1], size=size)
    assert panel.shape[0] - two.shape[0] == size + size // 2
    # Attached to a picture: on its right, the picture's pixels unchanged.
    pictured = with_legend(image, mask, NAMES, PALETTE)
    assert np.array_equal(pictured[: image.shape[0], : image.shape[1]], image)
    assert pictured.shape[1] > image.shape[1]
    assert _swatch_pixels(pictured[:, image.shape[1] :], PALETTE[3]) == 0
    assert all(_swatch_pixels(pictured[:, image.shape[1] :], PALETTE[i]) > 0 for i in range(3))


def test_side_by_side_joins_top_aligned_and_pads_white(scene) -> None:
    image, mask = scene
    short = colour_mask(mask[:20], PALETTE)
    joined = side_by_side(image, short)
    assert joined.shape == (30, 80, 3)
    assert np.array_equal(joined[:, :40], image)
    assert np.array_equal(joined[:20, 40:], np.asarray(PALETTE, np.uint8)[mask[:20]])
    assert (joined[20:, 40:] == 255).all()


def test_extra_outputs_that_would_clash_keep_the_suffix(tmp_path) -> None:
    files = [tmp_path / "a.jpg", tmp_path / "a_side.jpg"]
    jobs = plan_outputs(files, tmp_path, tmp_path / "out", ["side", "probs"])
    outputs = [path.name for job in jobs for path in job.outputs]
    assert len(outputs) == len(set(outputs)) == 6
    assert outputs[:3] == ["a.jpg.png", "a.jpg_side.png", "a.jpg_probs.npy"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained 4-class checkpoint (classes NAMES, colours PALETTE)."""
    torch.manual_seed(0)
    meta = {"class_names": NAMES, "palette": PALETTE, "mean": MEAN, "std": STD}
    model = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=4, meta=meta)
    # An untrained model's logits barely vary (the bias decides): make the last convolution a
    # random projection of standardised features, so several classes are predicted.
    last = model.classifier[-1]
    seen = {}
    hook = last.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 48, 48))
        hook.remove()
        mean, std = seen["x"].mean((0, 2, 3)), seen["x"].std((0, 2, 3)).clamp_min(1e-4)
        weight = torch.randn(4, len(mean)) / len(mean) ** 0.5 / std
        last.weight.copy_(weight[:, :, None, None])
        last.bias.copy_(-weight @ mean)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {**model_spec(model), "state_dict": model.state_dict()})
    return path


def test_predict_writes_overlay_side_by_side_and_probabilities(ckpt, tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    source = tmp_path / "in" / "photo.png"
    source.parent.mkdir()
    image = rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)
    Image.fromarray(image).save(source)
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(ckpt), str(source), "--out", str(out),
            "--overlay", "--overlay-alpha", "0.7", "--side-by-side", "--save-probs"]  # fmt: skip
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["photo.png", "photo_overlay.png", "photo_probs.npy", "photo_side.png"]
    mask = np.asarray(Image.open(out / "photo.png"))
    assert np.array_equal(mask, segkit.Predictor(ckpt)(source))
    present = classes_present(mask, 4)
    assert 0 in present and len(present) >= 2  # background and something else

    drawn = np.asarray(Image.open(out / "photo_overlay.png").convert("RGB"))
    blend = drawn[:36, :44]
    back = mask == 0
    assert np.array_equal(blend[back], image[back])
    exact = 0.3 * image + 0.7 * np.asarray(PALETTE, np.float64)[mask]
    assert np.abs(blend[~back] - exact[~back]).max() <= 0.5 + 1e-4
    panel = drawn[:, 44:]  # the legend: exactly the classes in the mask
    assert [i for i in range(4) if _swatch_pixels(panel, PALETTE[i]) > 0] == present

    side = np.asarray(Image.open(out / "photo_side.png").convert("RGB"))
    assert np.array_equal(side[:36, :44], image)
    assert np.array_equal(side[:36, 44:88], np.asarray(PALETTE, np.uint8)[mask])
    assert [i for i in range(4) if _swatch_pixels(side[:, 88:], PALETTE[i]) > 0] == present

    probs = np.load(out / "photo_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (4, 36, 44)
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1, atol=4e-3)
    exact = segkit.Predictor(ckpt).predict(source).probs
    np.testing.assert_allclose(probs, exact, atol=1e-3)  # float16: ~3 significant digits
    assert "wrote 1 prediction(s)" in capsys.readouterr().out
