"""What the model sees: training samples after augmentation, drawn as pictures
(``segkit doctor --show N``, like mmsegmentation's ``browse_dataset``).

The samples are the run's own first draws: the training split with the run's augmentation
(:func:`~segkit.engine.data.train_transforms`), in the order and with the random seeds of the
first epoch of ``segkit train`` with the same recipe and seed (one process). Each picture
shows the augmented image beside the same image with its mask blended over it
(:func:`~segkit.visualize.overlay`, background left as it is), ignored pixels (the ignore
index, 255: padding, borders) hatched, and a legend of the classes present.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.config import Config
from segkit.datasets import SegmentationDataset, build_dataset, denormalize
from segkit.engine.data import (
    SampleFailure,
    SeededDataset,
    SeededSampler,
    configured_dataset_options,
    train_transforms,
    with_crop,
)
from segkit.files import write_atomically
from segkit.visualize import background_class, hatch, overlay, side_by_side, with_legend

#: Pictures are enlarged by a whole factor until their shorter side reaches this many pixels.
MIN_SIDE = 256


@dataclass
class ShownSample:
    """One picture written: the sample's dataset ``index`` and ``name``, the ``classes``
    present (names) and the share of ignored pixels; or ``error``, why it could not be drawn."""

    path: Path | None
    index: int
    name: str
    classes: list[str]
    ignored: float
    error: str | None = None


def training_dataset(config: Config, split: str | None = None) -> SegmentationDataset:
    """The training split (or ``split``) with the run's training augmentation. Unpaired files
    are left out; a sample that fails to load raises its :class:`SampleError` (never another
    sample in its place)."""
    data = config.data
    options = configured_dataset_options(config) | {"skip_bad_samples": True}
    dataset = build_dataset(
        data.dataset, root=data.root, split=split or data.train_split, **options
    )
    dataset.transform = train_transforms(with_crop(config, dataset))
    dataset.skip_bad_samples = False  # a bad file is named where it is drawn, not replaced
    return dataset


def show_training_samples(
    config: Config, count: int, folder: Path, *, split: str | None = None
) -> Iterator[ShownSample]:
    """Draw the first ``count`` training draws into ``folder`` as
    ``<nnn>_<sample name>.png``, yielding each as it is written."""
    if count < 1:
        raise ValueError(f"--show takes a number of samples >= 1, got {count}")
    dataset = training_dataset(config, split)
    draws = SeededSampler(len(dataset), seed=config.train.seed, shuffle=True)
    seeded = SeededDataset(dataset)
    ignore = config.train.ignore_index
    for number, (index, seed) in zip(range(count), draws, strict=False):
        name = dataset.sample_name(index)
        item = seeded[(index, seed)]
        if isinstance(item, SampleFailure):
            yield ShownSample(None, index, name, [], 0.0, item.problem.message)
            continue
        image = denormalize(item[0], config.data.mean, config.data.std).permute(1, 2, 0).numpy()
        mask = item[1].numpy()
        picture = training_picture(image, mask, dataset, ignore_index=ignore)
        path = folder / f"{number:03d}_{name}.png"
        write_atomically(path, lambda handle, p=picture: Image.fromarray(p).save(handle, "PNG"))
        present = [dataset.class_names[c] for c in np.unique(mask) if c < dataset.num_classes]
        yield ShownSample(path, index, name, present, float((mask == ignore).mean()))


def training_picture(
    image: np.ndarray, mask: np.ndarray, dataset: SegmentationDataset, *, ignore_index: int
) -> np.ndarray:
    """``image`` (``H x W x 3`` uint8) | the image with ``mask`` (``H x W``) over it, ignored
    pixels hatched | a legend; enlarged (nearest) so the shorter side is at least
    :data:`MIN_SIDE` pixels and every augmented pixel stays a visible square."""
    factor = max(1, -(-MIN_SIDE // min(mask.shape)))
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    mask = mask.repeat(factor, axis=0).repeat(factor, axis=1)
    names, palette = dataset.class_names, dataset.palette
    ignored = mask == ignore_index
    blended = overlay(image, mask, palette, alpha=0.5, keep=background_class(names))
    drawn = side_by_side(image, _gap(image.shape[0]), hatch(blended, ignored))
    return with_legend(drawn, mask, names, palette, ignore_index=ignore_index)


def _gap(height: int, width: int = 6) -> np.ndarray:
    return np.full((height, width, 3), 255, dtype=np.uint8)
