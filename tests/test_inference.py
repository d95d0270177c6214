"""predict_logits / predict_mask with tiny fake models whose exact behaviour is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.engine.inference import predict_logits, predict_mask


class ConvModel(nn.Module):
    """A single conv returning ``{"out": logits}`` at the input size (zero 'same' padding)."""

    def __init__(self, kernel: Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, kernel.shape[0], kernel.shape[-1], padding=kernel.shape[-1] // 2)
        with torch.no_grad():
            self.conv.weight.copy_(kernel)
            self.conv.bias.copy_(torch.linspace(-0.5, 0.5, kernel.shape[0]))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.conv(x)}


class ConstantModel(nn.Module):
    """Logits ``values`` at every pixel, whatever the input."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        n, _, h, w = x.shape
        return {"out": self.values.view(1, -1, 1, 1).expand(n, -1, h, w).clone()}


def _kernel(size: int, *, symmetric: bool = False, seed: int = 0) -> Tensor:
    kernel = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return (kernel + kernel.flip(-1)) / 2 if symmetric else kernel


@pytest.fixture
def images() -> Tensor:
    return torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(1))


def test_whole_is_one_forward(images) -> None:
    model = ConvModel(_kernel(3))
    logits = predict_logits(model, images, num_classes=4)
    assert logits.shape == (2, 4, 97, 131)
    assert not logits.requires_grad
    torch.testing.assert_close(logits, model(images)["out"])


@pytest.mark.parametrize(("window", "stride"), [(32, None), ((40, 64), (25, 30)), (50, 50)])
def test_slide_equals_whole_for_pointwise_model(images, window, stride) -> None:
    model = ConvModel(_kernel(1))
    slide = predict_logits(model, images, mode="slide", window=window, stride=stride)
    torch.testing.assert_close(slide, predict_logits(model, images))


def test_slide_window_larger_than_image_pads_and_crops() -> None:
    # Zero padding up to the window matches the conv's own zero padding at the border, so even
    # a 3x3 model gives the whole-image result exactly.
    images = torch.randn(1, 3, 40, 50)
    model = ConvModel(_kernel(3))
    slide = predict_logits(model, images, mode="slide", window=128)
    assert slide.shape == (1, 4, 40, 50)
    torch.testing.assert_close(slide, predict_logits(model, images))


def test_slide_averages_overlaps_with_counts(images) -> None:
    model = ConstantModel([1.5, -2.0, 0.25])
    slide = predict_logits(model, images, mode="slide", window=(30, 40), stride=(7, 11))
    torch.testing.assert_close(slide, model(images)["out"])


def test_slide_windows_cover_image_with_last_flush_to_border() -> None:
    seen: list[tuple[int, int]] = []

    class Recorder(ConstantModel):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    predict_logits(Recorder([0.0, 1.0]), torch.zeros(1, 3, 70, 50), mode="slide", window=30)
    # Default stride 20: rows start at 0, 20, 40 (flush: 70 - 30); columns at 0, 20.
    assert seen == [(30, 30)] * 6


def test_flip_with_flip_equivariant_model_changes_nothing(images) -> None:
    model = ConvModel(_kernel(3, symmetric=True))
    torch.testing.assert_close(
        predict_logits(model, images, flip=True), predict_logits(model, images)
    )


def test_flip_really_runs_the_mirrored_input(images) -> None:
    model = ConvModel(_kernel(3))
    flipped = predict_logits(model, images, flip=True)
    expected = (model(images)["out"] + model(images.flip(-1))["out"].flip(-1)) / 2
    torch.testing.assert_close(flipped, expected)
    assert not torch.allclose(flipped, predict_logits(model, images), atol=1e-3)


def test_multi_scale_average(images) -> None:
    model = ConvModel(_kernel(3))
    torch.testing.assert_close(
        predict_logits(model, images, scales=(1.0,)), predict_logits(model, images)
    )

    def at_scale(h: int, w: int) -> Tensor:
        small = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
        out = model(small)["out"]
        return F.interpolate(out, size=(97, 131), mode="bilinear", align_corners=False)

    # round-half-up: 97 * 0.5 = 48.5 -> 49, 131 * 0.5 = 65.5 -> 66
    expected = (at_scale(49, 66) + model(images)["out"]) / 2
    torch.testing.assert_close(predict_logits(model, images, scales=(0.5, 1.0)), expected)


def test_all_options_together_keep_odd_shape(images) -> None:
    model = ConvModel(_kernel(3))
    mask = predict_mask(
        model, images, mode="slide", window=48, scales=(0.75, 1.25), flip=True, num_classes=4
    )
    assert mask.shape == (2, 97, 131)
    assert mask.dtype == torch.int64
    assert mask.min() >= 0 and mask.max() < 4


def test_predict_mask_is_argmax(images) -> None:
    model = ConstantModel([0.0, 3.0, 1.0])
    assert torch.equal(predict_mask(model, images), torch.ones(2, 97, 131, dtype=torch.long))


def test_option_errors(images) -> None:
    model = ConvModel(_kernel(1))
    with pytest.raises(ValueError, match=r"'tile'.*whole, slide"):
        predict_logits(model, images, mode="tile")
    with pytest.raises(ValueError, match="needs a window"):
        predict_logits(model, images, mode="slide")
    with pytest.raises(ValueError, match="positive"):
        predict_logits(model, images, scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="positive"):
        predict_logits(model, images, scales=())
    with pytest.raises(ValueError, match="stride"):
        predict_logits(model, images, mode="slide", window=16, stride=32)
    with pytest.raises(ValueError, match="window"):
        predict_logits(model, images, mode="slide", window=0)
    with pytest.raises(ValueError, match=r"\(2, 4, 97, 131\).*\(2, 5, 97, 131\)"):
        predict_logits(model, images, num_classes=5)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        predict_logits(model, images[0])


class _ColourModel(nn.Module):
    """Predicts class 1 where the first channel is positive, else class 0 (dict output)."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        positive = (x[:, :1] > 0).float()
        return {"out": torch.cat([1 - positive, positive], dim=1)}


def test_validation_of_images_of_different_sizes_keeps_padded_samples() -> None:
    from segkit.config import EvalConfig
    from segkit.engine.evaluate import evaluate

    batches = []
    for height, width in ((20, 30), (26, 18), (16, 16)):  # as Pascal VOC: sizes vary
        image = torch.randn(1, 3, height, width)
        mask = (image[:, 0] > 0).long()
        batches.append((image, mask))
    metrics, samples = evaluate(
        _ColourModel(), batches, num_classes=2, class_names=["a", "b"], ignore_index=255,
        device=torch.device("cpu"), config=EvalConfig(), keep_samples=4,
    )  # fmt: skip
    assert metrics.compute()["mIoU"] == 1.0  # padding never reaches the scores
    images, masks, preds = samples
    assert images.shape == (3, 3, 26, 30) and masks.shape == preds.shape == (3, 26, 30)
    assert torch.equal(masks[1, :26, :18], batches[1][1][0])
    assert (masks[1, :, 18:] == 255).all() and (preds[0, 20:] == 255).all()
    assert (images[2, :, 16:] == 0).all()
