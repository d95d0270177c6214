"""Datasets, joint transforms, palettes and dataset checks.

Every dataset yields ``(image, mask)``: a normalised ``float32`` tensor ``3 x H x W`` and an
``int64`` mask ``H x W`` with ``255`` = ignore, and knows its ``class_names`` and ``palette``.

>>> from segkit.datasets import build_dataset, build_train_transforms
>>> train = build_dataset("shapes", split="train", transform=build_train_transforms(96))
>>> image, mask = train[0]
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from segkit.datasets.base import RawSample, SampleFiles, SegmentationDataset, Transform
from segkit.datasets.cityscapes import Cityscapes
from segkit.datasets.folder import FolderDataset
from segkit.datasets.io import Problem, SampleError, read_image, read_mask
from segkit.datasets.massroads import ROAD_CLASSES, ROAD_PALETTE, MassachusettsRoads
from segkit.datasets.palettes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    VOC_CLASSES,
    Color,
    colorize,
    colors_to_index,
    voc_palette,
)
from segkit.datasets.shapes import SHAPE_CLASSES, SHAPE_PALETTE, ShapesDataset
from segkit.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    JointTransform,
    build_eval_transforms,
    build_train_transforms,
    denormalize,
)
from segkit.datasets.voc import VOCSegmentation

# One hop from a name to the code: a plain dict, no registry.
DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "cityscapes": Cityscapes,
    "massroads": MassachusettsRoads,
    "folder": FolderDataset,
    "shapes": ShapesDataset,
}


def fixed_classes(name: str) -> tuple[list[str], list[Color]] | None:
    """Class names and palette of a dataset whose label set is fixed (``voc``, ``cityscapes``,
    ``massroads``, ``shapes``), without its files; ``None`` for ``folder``.

    Raises:
        ValueError: an unknown dataset name.
    """
    _dataset_class(name)
    classes = {
        "voc": (VOC_CLASSES, voc_palette(len(VOC_CLASSES))),
        "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
        "massroads": (ROAD_CLASSES, ROAD_PALETTE),
        "shapes": (SHAPE_CLASSES, SHAPE_PALETTE),
    }.get(name)
    if classes is None:
        return None
    names, palette = classes
    return list(names), [tuple(color) for color in palette]


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset` (and ``--dataset``)."""
    return sorted(DATASETS)


def dataset_options(name: str) -> list[str]:
    """The keyword options dataset ``name`` accepts besides ``root``, ``split``, ``transform``."""
    params = inspect.signature(_dataset_class(name)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    transform: Transform | None = None,
    **options: Any,
) -> SegmentationDataset:
    """Build a dataset by name.

    Args:
        name: One of :func:`list_datasets`.
        root: Data root (``--data-root``); not needed for ``shapes``.
        split: Split name, e.g. ``train`` or ``val``.
        transform: Joint ``(image, mask) -> (image, mask)`` callable; None = normalise only.
        **options: Dataset options, see :func:`dataset_options` (e.g. ``year`` for voc,
            ``num_classes``/``palette_file``/``class_names``/``binary_255`` for folder,
            ``nodata_ignore`` for massroads, ``seed``/``length``/``image_size`` for shapes,
            ``skip_bad_samples`` for all).

    Returns:
        The dataset, yielding ``(3 x H x W float32, H x W int64)``.

    Raises:
        ValueError: Unknown name or option (the message lists the valid ones).
    """
    cls = _dataset_class(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for dataset {name!r}; valid options: {valid}"
        )
    return cls(root=root, split=split, transform=transform, **options)


def _dataset_class(name: str) -> type[SegmentationDataset]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return DATASETS[name]


__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASSES",
    "Cityscapes",
    "FolderDataset",
    "JointTransform",
    "MassachusettsRoads",
    "Problem",
    "RawSample",
    "SampleError",
    "SampleFiles",
    "SegmentationDataset",
    "ShapesDataset",
    "VOCSegmentation",
    "build_dataset",
    "build_eval_transforms",
    "build_train_transforms",
    "colorize",
    "colors_to_index",
    "dataset_options",
    "denormalize",
    "fixed_classes",
    "list_datasets",
    "read_image",
    "read_mask",
    "voc_palette",
]
