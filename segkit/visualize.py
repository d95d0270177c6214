"""Pictures of predictions: colour masks, overlays, a legend of the classes present, and panels
side by side (``segkit predict --overlay/--side-by-side``; meant for reports too).

Every function takes and returns ``H x W x 3`` ``uint8`` RGB arrays (the legend is drawn with
PIL and returned the same way), so the pieces compose: ``with_legend(side_by_side(image,
colour_mask(mask, palette)), mask, names, palette)``.

Overlays keep the background as it is. mmsegmentation's ``SegLocalVisualizer`` blends
``image * (1 - alpha) + colour * alpha`` over every pixel (alpha 0.8) and VainF's
DeepLabV3Plus-Pytorch draws the prediction over the image at alpha 0.7 (``plt.imshow(pred,
alpha=0.7)``): with the VOC-style palettes, where background is black, both darken the whole
background to 20-30% of its brightness, so the scene the classes sit in is hard to see. Here
the pixels of the background class (:func:`background_class`: the class named
``background``) are copied unchanged and every other class is blended at ``alpha``, the plain
blend both projects use. A dataset without such a class (Cityscapes) is tinted everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segkit.datasets import colorize

Color = Sequence[int]
#: Class names taken to mean "no object here" (compared in lower case).
BACKGROUND_NAMES = ("background", "_background_", "bg")
LEGEND_FILL = (255, 255, 255)
LEGEND_TEXT = (0, 0, 0)
SWATCH_EDGE = (96, 96, 96)
#: Ignored pixels are drawn as stripes of these two colours, which no palette colour resembles.
HATCH_COLOURS = ((0, 0, 0), (255, 255, 255))
#: Wrong pixels of an :func:`error_map`.
ERROR_COLOUR = (255, 0, 0)


def background_class(class_names: Sequence[str]) -> int | None:
    """Index of the class named ``background`` (:data:`BACKGROUND_NAMES`), or ``None``."""
    for index, name in enumerate(class_names):
        if name.strip().lower() in BACKGROUND_NAMES:
            return index
    return None


def colour_mask(mask: np.ndarray, palette: Sequence[Color]) -> np.ndarray:
    """Class indices ``H x W`` (0..255) as the palette's colours, ``H x W x 3`` uint8 (the
    colours the palette PNG of :func:`segkit.datasets.colorize` shows)."""
    return np.asarray(colorize(mask, palette).convert("RGB"))


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Color],
    *,
    alpha: float = 0.5,
    keep: int | None = None,
) -> np.ndarray:
    """The class colours blended over ``image``, except on class ``keep``.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        mask: ``H x W`` class indices (0..255).
        palette: RGB colour of each class.
        alpha: opacity of the colours, 0 (the image) to 1 (the colour mask).
        keep: class whose pixels stay exactly as in ``image`` (the background, see the module
            docstring); ``None`` tints every pixel.

    Returns:
        ``H x W x 3`` uint8: ``round((1 - alpha) * image + alpha * colour)`` per pixel.

    Raises:
        ValueError: ``alpha`` outside 0..1, or ``image`` and ``mask`` of different sizes.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    mask = np.asarray(mask)
    if image.shape[:2] != mask.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"overlay needs an H x W x 3 image and an H x W mask of the same size, got "
            f"{image.shape} and {mask.shape}"
        )
    colours = colour_mask(mask, palette).astype(np.float32)
    blended = ((1 - alpha) * image + alpha * colours).round().astype(np.uint8)
    if keep is not None:
        untouched = mask == keep
        blended[untouched] = image[untouched]
    return blended


def hatch(picture: np.ndarray, where: np.ndarray, *, period: int = 6) -> np.ndarray:
    """``picture`` (``H x W x 3`` uint8) with the pixels of ``where`` (``H x W`` bool) drawn as
    diagonal black and white stripes, ``period`` pixels apart: how ignored pixels (the ignore
    index, 255) are shown, since a palette's entry for 255 may look like a class."""
    if picture.shape[:2] != where.shape:
        raise ValueError(f"hatch: picture {picture.shape} and mask {where.shape} differ in size")
    rows, cols = np.indices(where.shape)
    dark = ((rows + cols) // max(1, period // 2)) % 2 == 0
    out = picture.copy()
    out[where & dark] = HATCH_COLOURS[0]
    out[where & ~dark] = HATCH_COLOURS[1]
    return out


def error_map(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, *, ignore_index: int = 255
) -> np.ndarray:
    """Where ``prediction`` misses ``truth`` (both ``H x W`` class indices): wrong pixels in
    :data:`ERROR_COLOUR` over ``image`` (``H x W x 3`` uint8) turned grey and darkened, so the
    scene stays recognisable; pixels whose truth is ``ignore_index`` are hatched."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.repeat((0.25 * grey + 40).round().astype(np.uint8)[..., None], 3, axis=2)
    ignored = truth == ignore_index
    out[(prediction != truth) & ~ignored] = ERROR_COLOUR
    return hatch(out, ignored)


def classes_present(mask: np.ndarray, num_classes: int) -> list[int]:
    """The class indices below ``num_classes`` that occur in ``mask``, ascending."""
    values = np.unique(np.asarray(mask))
    return [int(v) for v in values if 0 <= v < num_classes]


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 panels joined left to right, top-aligned; a shorter panel is
    padded below with white."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    height = max(panel.shape[0] for panel in panels)
    padded = [_pad_below(panel, height) for panel in panels]
    return np.concatenate(padded, axis=1)


def legend(
    class_names: Sequence[str],
    palette: Sequence[Color],
    classes: Sequence[int],
    *,
    size: int,
    ignored: bool = False,
) -> np.ndarray:
    """A white panel listing ``classes``, one row each: a swatch of the class colour (with a
    grey edge, so white and black classes show) and the class name.

    Args:
        class_names: name of each class index.
        palette: colour of each class index.
        classes: the indices to list, in this order.
        size: text height in pixels (the swatch is as high).
        ignored: add a last row, ``ignored``, with a :func:`hatch` swatch.

    Returns:
        ``h x w x 3`` uint8; an empty list gives a panel reading ``(no class)``.
    """
    font = _font(size)
    pad = max(2, size // 2)
    labels = [class_names[c] for c in classes] or ([] if ignored else ["(no class)"])
    labels += ["ignored"] if ignored else []
    widths = [font.getbbox(text)[2] for text in labels]
    width = pad + size + pad + max(widths) + pad
    height = pad + len(labels) * (size + pad)
    panel = Image.new("RGB", (width, height), LEGEND_FILL)
    draw = ImageDraw.Draw(panel)
    for row, text in enumerate(labels):
        top = pad + row * (size + pad)
        if row < len(classes):
            colour = tuple(int(v) for v in palette[classes[row]])
            draw.rectangle([pad, top, pad + size - 1, top + size - 1], colour, SWATCH_EDGE)
        draw.text((pad + size + pad, top + size / 2), text, LEGEND_TEXT, font, anchor="lm")
    array = np.array(panel)
    if ignored:  # the last row's swatch, striped as the ignored pixels are
        top = pad + (len(labels) - 1) * (size + pad)
        box = (slice(top, top + size), slice(pad, pad + size))
        array[box] = hatch(array[box], np.ones((size, size), dtype=bool), period=max(4, size // 3))
    return array


def with_legend(
    picture: np.ndarray,
    mask: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Color],
    *,
    ignore_index: int | None = None,
) -> np.ndarray:
    """``picture`` (``H x W x 3`` uint8) with a :func:`legend` of the classes present in
    ``mask`` on its right (and an ``ignored`` row when ``mask`` holds ``ignore_index``); the
    text height follows the picture's (1/30 of it, 10 to 40 pixels)."""
    size = int(min(40, max(10, round(picture.shape[0] / 30))))
    present = classes_present(mask, len(class_names))
    ignored = ignore_index is not None and bool((np.asarray(mask) == ignore_index).any())
    panel = legend(class_names, palette, present, size=size, ignored=ignored)
    return side_by_side(picture, panel)


def _pad_below(panel: np.ndarray, height: int) -> np.ndarray:
    if panel.shape[0] == height:
        return panel
    fill = np.full((height - panel.shape[0], *panel.shape[1:]), 255, dtype=panel.dtype)
    return np.concatenate([panel, fill], axis=0)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in font at ``size`` pixels (its fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):
        return ImageFont.load_default()
