from __future__ import annotations

import numpy as np
import pytest
import torch

from segkit.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transforms,
    build_train_transforms,
    denormalize,
)

# Each class gets a colour far from the others, so a pixel's class can be read off its colour.
CODE = np.array(
    [[0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 0], [255, 0, 255], [0, 255, 255]]
)
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # keeps images in [0, 1] for decoding


def coded_sample(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A mask of 6 irregular blocks and an image painting each class in its code colour."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[: height // 2, : width // 3] = 1
    mask[: height // 2, width // 3 :] = 2
    mask[height // 2 :, : width // 2] = 3
    mask[height // 2 :, width // 2 :] = 4
    mask[5:15, 40:50] = 5
    mask[30:36, 3:9] = 0
    return CODE[mask].astype(np.uint8), mask


def decode(image: torch.Tensor) -> torch.Tensor:
    """Nearest code colour of each pixel of a ``3 x H x W`` [0, 1] image -> class ``H x W``."""
    code = torch.tensor(CODE, dtype=torch.float32) / 255
    dist = ((image.permute(1, 2, 0)[..., None, :] - code) ** 2).sum(-1)
    return dist.argmin(-1)


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    torch.manual_seed(seed)
    image, mask = coded_sample()
    transform = build_train_transforms(
        (40, 56), scale_range=(0.5, 2.0), hflip=0.5, color_jitter=None, **PLAIN
    )
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 40, 56) and out_image.dtype == torch.float32
    assert out_mask.shape == (40, 56) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    padded = out_mask == 255
    black = (out_image == 0).all(0)  # no code colour is black: only padding is
    assert torch.equal(black, padded)  # image padded with 0 exactly where the mask is 255
    valid = ~padded
    # Bilinear image edges blend two colours; nearest mask edges do not: allow the edge pixels.
    agreement = (decode(out_image)[valid] == out_mask[valid]).float().mean()
    assert agreement > 0.9, f"image and mask disagree on {1 - agreement:.1%} of pixels"


def test_small_image_is_padded_with_ignore_and_scale_changes_size():
    torch.manual_seed(0)
    image, mask = coded_sample(10, 12)
    transform = build_train_transforms(32, scale_range=None, hflip=0.0, color_jitter=None, **PLAIN)
    out_image, out_mask = transform(image, mask)
    assert out_mask.shape == (32, 32)
    assert (out_mask == 255).sum() == 32 * 32 - 10 * 12  # padding only, never 0 (background)
    np.testing.assert_array_equal(out_mask[out_mask != 255].reshape(10, 12).numpy(), mask)
    assert (out_image[:, out_mask == 255] == 0).all()
    kept = out_image[:, out_mask != 255].reshape(3, 10, 12).permute(1, 2, 0)
    assert torch.allclose(kept, torch.from_numpy(image) / 255)


def test_mean_padding_normalises_to_zero():
    image, mask = coded_sample(10, 12)
    transform = build_train_transforms(
        16, scale_range=None, hflip=0.0, color_jitter=None, image_fill="mean"
    )
    out_image, out_mask = transform(image, mask)
    assert out_image[:, out_mask == 255].abs().max() < 0.01


def test_hflip_flips_both():
    image, mask = coded_sample()
    transform = build_train_transforms(
        (48, 64), scale_range=None, hflip=1.0, color_jitter=None, **PLAIN
    )
    out_image, out_mask = transform(image, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask[:, ::-1])
    assert torch.allclose(out_image, torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1) / 255)


def test_color_jitter_changes_image_not_mask():
    torch.manual_seed(3)
    image, mask = coded_sample()
    transform = build_train_transforms(
        (48, 64), scale_range=None, hflip=0.0, color_jitter=(0.5, 0.5, 0.5, 0.1)
    )
    plain = build_eval_transforms()
    jittered, out_mask = transform(image, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    assert not torch.allclose(jittered, plain(image, mask)[0])


def test_eval_normalises_with_imagenet_stats():
    mean_colour = np.array([round(255 * m) for m in IMAGENET_MEAN], dtype=np.uint8)
    image = np.broadcast_to(mean_colour, (4, 5, 3)).copy()
    out, mask = build_eval_transforms()(image, np.zeros((4, 5), np.uint8))
    assert out.abs().max() < 0.01 and mask.dtype == torch.int64
    white, _ = build_eval_transforms()(
        np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2), np.uint8)
    )
    assert torch.allclose(
        white[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    )
    assert torch.equal(denormalize(white), torch.full((3, 2, 2), 255, dtype=torch.uint8))


def test_crop_val_resizes_shorter_side_then_centre_crops():
    image, mask = coded_sample(48, 64)
    out_image, out_mask = build_eval_transforms(crop_size=24, resize=24, **PLAIN)(image, mask)
    assert out_image.shape == (3, 24, 24) and out_mask.shape == (24, 24)
    # Shorter side 48 -> 24 halves the mask (nearest at pixel centres: source pixel 2i + 1);
    # the centre crop keeps columns 4..27 of 32.
    np.testing.assert_array_equal(out_mask.numpy(), mask[1::2, 1::2][:, 4:28])


def test_eval_centre_crop_pads_masks_with_ignore():
    image, mask = coded_sample(10, 12)
    _, out_mask = build_eval_transforms(crop_size=16)(image, mask)
    assert out_mask.shape == (16, 16) and (out_mask == 255).sum() == 16 * 16 - 10 * 12
    assert not (out_mask == 0).all()


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match=r"crop_size.*-3"):
        build_train_transforms(-3)
    with pytest.raises(ValueError, match="image_fill"):
        build_train_transforms(8, image_fill="grey")
    with pytest.raises(ValueError, match="scale_range"):
        build_train_transforms(8, scale_range=(2.0, 1.0))
