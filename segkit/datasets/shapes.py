"""``shapes``: a built-in synthetic dataset that needs no files.

Each sample shows 1-3 filled shapes (circle, square, triangle, star, cross), each with a random
size, rotation and colour, on a textured, noisy background (a colour gradient with stripes or
smooth blotches, plus thin distractor lines), later shapes partly occluding earlier ones.
Colours are drawn independently of the class, so a model must learn shape, not colour.

A sample is a pure function of ``(seed, split, index)`` (a numpy ``SeedSequence`` of the three),
so random access, DataLoader workers and reruns all see the same data, and splits differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segkit.datasets.base import RawSample, SegmentationDataset, Transform

SHAPE_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle", "star", "cross")
SHAPE_PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
]
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 1000, "val": 100, "test": 100}
MAX_SHAPES = 3
RADIUS_RANGE = (0.18, 0.30)  # of the shorter image side
MAX_OVERLAP = 0.3  # a new shape may cover at most this share of earlier shapes' pixels
NOISE_RANGE = (2.0, 6.0)  # pixel noise standard deviation
TEXTURE_RANGE = (5.0, 20.0)  # background texture amplitude
MIN_CONTRAST = 100.0  # RGB distance between a shape and the background behind it


class ShapesDataset(SegmentationDataset):
    """Synthetic shapes on textured backgrounds, 6 classes (background + 5 shapes).

    Args:
        root: Ignored (the data is generated); accepted so configs may always pass one.
        split: ``train``, ``val`` or ``test``; each split draws different samples.
        transform: Joint transform; None = normalise only.
        seed: Base seed; a sample depends only on ``(seed, split, index)``.
        length: Samples in the split (default 1000 for train, 100 for val and test).
        image_size: Side of the square images, or ``(height, width)``; at least 32.
        skip_bad_samples: Accepted for a uniform interface; generated samples are never bad.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        seed: int = 0,
        length: int | None = None,
        image_size: int | tuple[int, int] = 128,
        skip_bad_samples: bool = False,
    ):
        super().__init__(split=split, transform=transform, skip_bad_samples=skip_bad_samples)
        if split not in SPLIT_CODES:
            raise ValueError(f"shapes split must be one of {list(SPLIT_CODES)}, got {split!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(
                f"shapes image_size must be >= 32 (or (h, w) >= 32), got {image_size!r}"
            )
        self.length = DEFAULT_LENGTHS[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"shapes length must be >= 1, got {length}")
        self.seed, self.image_size = int(seed), (int(size[0]), int(size[1]))
        self.class_names = list(SHAPE_CLASSES)
        self.palette = list(SHAPE_PALETTE)
        self.image_count = self.mask_count = self.length

    def __len__(self) -> int:
        return self.length

    def sample_name(self, index: int) -> str:
        return f"shapes_{self.split}_{self._check_index(index):06d}"

    def sample_paths(self, index: int) -> tuple[Path | None, Path | None]:
        self._check_index(index)
        return None, None

    def load_raw(self, index: int) -> RawSample:
        index = self._check_index(index)
        image, mask = render_shapes(self.seed, SPLIT_CODES[self.split], index, self.image_size)
        return RawSample(image, mask, self.sample_name(index))


def render_shapes(
    seed: int, split_code: int, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one sample.

    Returns:
        ``(H x W x 3 uint8 image, H x W uint8 mask)``.
    """
    rng = np.random.default_rng([seed, split_code, index])
    height, width = size
    image = _background(rng, height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        label = int(rng.integers(1, len(SHAPE_CLASSES)))
        for _attempt in range(10):  # overlap is fine (occlusion), hiding most of a shape is not
            radius = rng.uniform(*RADIUS_RANGE) * side
            cx = rng.uniform(radius * 0.7, width - radius * 0.7)
            cy = rng.uniform(radius * 0.7, height - radius * 0.7)
            angle = rng.uniform(0, 2 * math.pi)
            region = _shape_mask(label, cx, cy, radius, angle, (height, width))
            if region.any() and (mask[region] > 0).mean() <= MAX_OVERLAP:
                break
        else:
            continue
        color = _contrasting_color(rng, image[region].mean(axis=0))
        shade = _gradient(rng, height, width)[region][:, None] * rng.uniform(10, 30)  # lighting
        image[region] = color + shade
        mask[region] = label
    image += rng.normal(0.0, rng.uniform(*NOISE_RANGE), size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear ramp in [-0.5, 0.5] along a random direction, ``H x W``."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = math.cos(angle) * xs / width + math.sin(angle) * ys / height
    return ramp - ramp.mean()


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = _gradient(rng, height, width)[..., None] + 0.5
    image = (start * (1 - t) + end * t).astype(np.float32)
    if rng.random() < 0.5:  # stripes
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
        pattern = np.sin((math.cos(angle) * xs + math.sin(angle) * ys) * 2 * math.pi / period)
    else:  # smooth blotches: low-resolution noise upsampled
        coarse = rng.uniform(0, 255, (int(rng.integers(3, 7)),) * 2).astype(np.uint8)
        pattern = (
            np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
            / 127.5
            - 1
        )
    image += pattern[..., None] * rng.uniform(*TEXTURE_RANGE) * rng.choice([-1, 1], 3)
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):  # thin distractor lines belong to the background
        points = [tuple(rng.uniform(0, (width, height))) for _ in range(2)]
        draw.line(
            points,
            fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            width=int(rng.integers(1, 3)),
        )
    return np.asarray(canvas, dtype=np.float32).copy()


def _contrasting_color(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random colour far (RGB distance) from ``behind``, so the shape stays visible."""
    color = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(color - behind) >= MIN_CONTRAST:
            break
        color = rng.uniform(0, 255, 3)
    return color.astype(np.float32)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.cos(angle + i * step), cy + r * math.sin(angle + i * step))
        for i, r in enumerate(radii)
    ]


def _shape_mask(
    label: int, cx: float, cy: float, radius: float, angle: float, size: tuple[int, int]
) -> np.ndarray:
    canvas = Image.new("L", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    name = SHAPE_CLASSES[label]
    if name == "circle":
        r = radius * 0.85  # equal area-ish with the other shapes
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, [radius * 0.95] * 4, angle), fill=1)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, [radius * 1.1] * 3, angle), fill=1)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, [radius * 1.15, radius * 0.5] * 5, angle), fill=1)
    else:  # cross: a plus sign of two bars
        arm, half = radius, radius * 0.33
        for bar in (angle, angle + math.pi / 2):
            c, s = math.cos(bar), math.sin(bar)
            corners = [(-arm, -half), (arm, -half), (arm, half), (-arm, half)]
            draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners], fill=1)
    return np.asarray(canvas, dtype=bool)
