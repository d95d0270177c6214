"""Joint image + mask transforms built from ``torchvision.transforms.v2``.

``tv_tensors.Mask`` carries the mask through every geometric step, so v2 applies the same random
parameters to image and mask, resizes masks with nearest-neighbour interpolation, leaves them out
of photometric steps and never rescales their values. Padding fills the mask with the ignore index
(never with 0, which is background) and the image with 0 or the mean colour.

Train: random scale (0.5-2.0) -> pad to the crop size -> random crop -> horizontal flip -> colour
jitter -> float + normalise (ImageNet mean/std). Eval: optional resize (shorter side, or exact
size) and centre crop (``crop_val`` in DeepLabV3Plus-Pytorch: resize the shorter side to the crop
size, then centre crop) -> float + normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return pair[0], pair[1]


class _JointResize(v2.Transform):
    """Base for resizes: images bilinear with antialiasing, masks nearest (exact centres)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return F.resize(inpt, params["size"], antialias=True)


class RandomScale(_JointResize):
    """Resize by a factor drawn uniformly from ``scale_range`` (aspect ratio kept)."""

    def __init__(self, scale_range: tuple[float, float]):
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}"
            )
        self.scale_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = float(torch.empty(()).uniform_(*self.scale_range))
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}


class Resize(_JointResize):
    """Resize the shorter side to ``size`` (an int) or to exactly ``(height, width)``."""

    def __init__(self, size: int | Sequence[int]):
        super().__init__()
        self.size = size if isinstance(size, int) else _pair(size, "resize")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not isinstance(self.size, int):
            return {"size": list(self.size)}
        height, width = v2.query_size(flat_inputs)
        scale = self.size / min(height, width)
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}


class PadToSize(v2.Transform):
    """Pad bottom and right up to ``size``: masks with ``mask_fill``, images with ``image_fill``."""

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        image_fill: float | Sequence[float] = 0,
        mask_fill: int = 255,
    ):
        super().__init__()
        self.size = _pair(size, "crop_size")
        self.image_fill = list(image_fill) if isinstance(image_fill, Sequence) else image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.image_fill
        return F.pad(inpt, params["padding"], fill=fill)


class JointTransform:
    """A ``(image, mask) -> (image, mask)`` callable around a ``v2.Compose`` pipeline.

    Accepts ``tv_tensors``, tensors (``3 x H x W`` ``uint8`` image, ``H x W`` mask), numpy arrays
    (``H x W x 3`` image, ``H x W`` mask) or PIL images; returns plain tensors: a ``float32``
    ``3 x H x W`` image and an ``int64`` ``H x W`` mask.
    """

    def __init__(self, steps: Sequence[v2.Transform]):
        self.pipeline = v2.Compose(list(steps))

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pipeline(_as_image(image), _as_mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline!r})"


def _as_image(image: Any) -> tv_tensors.Image:
    if isinstance(image, tv_tensors.Image):
        return image
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return tv_tensors.Image(image)


def _as_mask(mask: Any) -> tv_tensors.Mask:
    if isinstance(mask, tv_tensors.Mask):
        return mask
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray):
        return tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
    return tv_tensors.Mask(mask)


def _to_float_and_normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype(
            {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
            scale=True,
        ),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def build_train_transforms(
    crop_size: int | Sequence[int],
    *,
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: tuple[float, float, float, float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
    image_fill: Literal["zero", "mean"] = "zero",
) -> JointTransform:
    """The training pipeline: scale, pad, crop, flip, jitter, normalise.

    Args:
        crop_size: Output size, an int or ``(height, width)``.
        scale_range: Random scale factor range, or None for no scaling.
        hflip: Probability of a horizontal flip (0 disables it).
        color_jitter: ``(brightness, contrast, saturation, hue)`` for ``v2.ColorJitter``, or None.
        mean: Per-channel mean of ``[0, 1]`` images, subtracted after scaling to float.
        std: Per-channel standard deviation.
        ignore_index: Mask value of padded pixels.
        image_fill: Padded image pixels: ``"zero"`` (black, as DeepLabV3Plus-Pytorch and
            mmsegmentation do) or ``"mean"`` (the mean colour, 0 after normalisation).

    Returns:
        A callable ``(image, mask) -> (3 x H x W float32, H x W int64)`` with ``H x W`` =
        ``crop_size``.
    """
    if image_fill not in ("zero", "mean"):
        raise ValueError(f"image_fill must be 'zero' or 'mean', got {image_fill!r}")
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
    fill = [round(255 * m) for m in mean] if image_fill == "mean" else 0
    steps: list[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range))
    steps += [
        PadToSize(crop_size, image_fill=fill, mask_fill=ignore_index),
        v2.RandomCrop(_pair(crop_size, "crop_size")),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter is not None and any(color_jitter):
        brightness, contrast, saturation, hue = color_jitter
        steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
    return JointTransform(steps + _to_float_and_normalize(mean, std))


def build_eval_transforms(
    *,
    crop_size: int | Sequence[int] | None = None,
    resize: int | Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> JointTransform:
    """The evaluation pipeline: optional resize and centre crop, then normalise.

    Args:
        crop_size: Centre-crop to this size (padding first with the ignore index if smaller).
        resize: Resize first: an int sets the shorter side, ``(height, width)`` the exact size.
            ``resize=crop_size`` with ``crop_size`` reproduces ``--crop_val`` of
            DeepLabV3Plus-Pytorch.
        mean: Per-channel mean of ``[0, 1]`` images.
        std: Per-channel standard deviation.
        ignore_index: Mask value of padded pixels.

    Returns:
        A callable ``(image, mask) -> (3 x H x W float32, H x W int64)``.
    """
    steps: list[v2.Transform] = []
    if resize is not None:
        steps.append(Resize(resize))
    if crop_size is not None:
        steps += [
            PadToSize(crop_size, mask_fill=ignore_index),
            v2.CenterCrop(_pair(crop_size, "crop_size")),
        ]
    return JointTransform(steps + _to_float_and_normalize(mean, std))


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Undo normalisation for display.

    Args:
        image: ``3 x H x W`` (or ``N x 3 x H x W``) normalised float tensor.

    Returns:
        The same shape as ``uint8`` in ``0..255``.
    """
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return ((image * std_t + mean_t) * 255).round().clamp(0, 255).to(torch.uint8)
