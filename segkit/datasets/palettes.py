"""Class names and colour maps: Pascal VOC, Cityscapes, index <-> colour conversion.

A palette is a list of ``(r, g, b)`` tuples, one per class, in class-index order. Masks are
index arrays with ``255`` = ignore; :func:`colorize` turns one into a mode ``"P"`` PNG (it opens
as colours in any viewer and reads back as indices with PIL), :func:`colors_to_index` turns a
colour mask back into indices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

Color = tuple[int, int, int]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Colour drawn for the ignore index when a palette does not define entry 255 (VOC's void colour).
IGNORE_COLOR: Color = (224, 224, 192)


def voc_palette(n: int = 256) -> list[Color]:
    """The Pascal VOC colour map: the bits of the index are interleaved into R, G and B.

    Bit ``3k`` of the index goes to bit ``7 - k`` of red, bit ``3k + 1`` to green and bit
    ``3k + 2`` to blue, so index 1 is ``(128, 0, 0)``, 2 is ``(0, 128, 0)``, 255 is
    ``(224, 224, 192)``.

    Args:
        n: Number of colours, 1 to 256.

    Returns:
        ``n`` RGB tuples.
    """
    if not 1 <= n <= 256:
        raise ValueError(f"voc_palette(n={n}): n must be in 1..256")
    index = np.arange(n)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):  # 3 bits per step, 8 steps cover the 8-bit index
        for channel in range(3):
            rgb[:, channel] |= ((index >> (3 * k + channel)) & 1) << (7 - k)
    return [(int(r), int(g), int(b)) for r, g, b in rgb]


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table (``cityscapesscripts/helpers/labels.py``)."""

    name: str
    id: int
    train_id: int  # 255 = not used for training or evaluation
    color: Color


CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
)
_TRAIN_LABELS = sorted(
    (lab for lab in CITYSCAPES_LABELS if lab.train_id != 255), key=lambda x: x.train_id
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
CITYSCAPES_PALETTE: list[Color] = [lab.color for lab in _TRAIN_LABELS]


def cityscapes_id_to_train_id() -> np.ndarray:
    """Lookup table ``lut[label_id] -> train_id`` for the 34 label ids; all other entries 255.

    Returns:
        ``uint8`` array of shape ``(256,)``; apply it as ``lut[label_id_mask]``.
    """
    lut = np.full(256, 255, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        lut[label.id] = label.train_id
    return lut


def colorize(mask: np.ndarray | torch.Tensor, palette: Sequence[Color]) -> Image.Image:
    """Turn an index mask into a palette (mode ``"P"``) image.

    The file it saves opens as colours and reads back, with PIL, as the original indices
    (``255`` stays ``255``; it is drawn in ``palette[255]`` if given, else VOC's void colour).

    Args:
        mask: ``H x W`` integer class indices in ``0..255``.
        palette: RGB colour of each class index (at most 256).

    Returns:
        A mode ``"P"`` image of size ``W x H``.
    """
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"colorize expects an H x W index mask, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"colorize: mask values must lie in 0..255, got {array.min()}..{array.max()}"
        )
    if len(palette) > 256:
        raise ValueError(f"colorize: a palette holds at most 256 colours, got {len(palette)}")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[255] = IGNORE_COLOR
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    image = Image.fromarray(array.astype(np.uint8))  # mode "L"
    image.putpalette(table.ravel().tolist())  # turns "L" into "P" without touching the indices
    return image


def colors_to_index(
    rgb: np.ndarray, palette: Sequence[Color], ignore_index: int = 255
) -> np.ndarray:
    """Turn a colour mask into class indices; colours not in ``palette`` become ``ignore_index``.

    Args:
        rgb: ``H x W x 3`` (or ``H x W x 4``, alpha dropped) ``uint8`` colour mask.
        palette: RGB colour of each class; if a colour appears twice the first index wins.
        ignore_index: Index given to unknown colours.

    Returns:
        ``H x W`` ``uint8`` index array.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"colors_to_index expects an H x W x 3 colour array, got {rgb.shape}")
    if not 0 < len(palette) <= 255:
        raise ValueError(f"colors_to_index: palette must hold 1..255 colours, got {len(palette)}")
    keys = _color_keys(rgb[..., :3].astype(np.int64))
    table = _color_keys(np.asarray(palette, dtype=np.int64).reshape(-1, 3))
    # np.unique keeps the first occurrence of each colour, so the lowest class index wins.
    unique_keys, first = np.unique(table, return_index=True)
    pos = np.clip(np.searchsorted(unique_keys, keys), 0, len(unique_keys) - 1)
    found = unique_keys[pos] == keys
    return np.where(found, first[pos], ignore_index).astype(np.uint8)


def _color_keys(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True)
class PaletteFile:
    """Class names and colours read from a palette file (see :func:`load_palette_file`)."""

    class_names: list[str]
    colors: list[Color]
    ignore_colors: list[Color]


def load_palette_file(path: str | Path) -> PaletteFile:
    """Read a YAML or JSON file mapping class name -> RGB colour, in class-index order.

    Example (YAML)::

        background: [0, 0, 0]
        road: [255, 255, 255]
        ignore: [[224, 224, 192]]   # optional: colours read as 255 (ignore), not a class

    Colours are ``[r, g, b]`` lists or ``"#rrggbb"`` strings; the key ``ignore`` takes one
    colour or a list of them.

    Returns:
        The class names, their colours and the ignore colours.
    """
    import yaml  # YAML is a superset of JSON, so one parser reads both

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read palette file '{path}': {err}") from err
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"palette file '{path}' must map class names to colours, e.g. "
            f"{json.dumps({'background': [0, 0, 0], 'road': [255, 255, 255]})}; got {data!r:.80}"
        )
    names, colors, ignore = [], [], []
    for name, value in data.items():
        if str(name).lower() == "ignore":
            many = isinstance(value, list) and value and isinstance(value[0], list | str)
            ignore = [_parse_color(v, path, name) for v in (value if many else [value])]
            continue
        names.append(str(name))
        colors.append(_parse_color(value, path, name))
    if len(names) > 255:
        raise ValueError(f"palette file '{path}' lists {len(names)} classes; at most 255 fit")
    return PaletteFile(names, colors, ignore)


def _parse_color(value: object, path: Path, name: object) -> Color:
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
        return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return int(value[0]), int(value[1]), int(value[2])
    raise ValueError(
        f"palette file '{path}': colour of {name!r} must be [r, g, b] with 0..255 integers "
        f"or '#rrggbb', got {value!r}"
    )
