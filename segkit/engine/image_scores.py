"""Per-image results of an evaluation (``segkit eval --save-dir DIR``): each image's predicted
mask as a palette PNG, its IoU per class and pixel accuracy in a CSV, and the worst images.

An image is scored by :class:`~segkit.metrics.SegmentationMetrics` over that image alone, so
its ``mIoU`` is the mean over the classes present in its ground truth or its prediction, the
same definition as the dataset's ``mIoU`` (which is not the mean of the images' values).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from segkit.datasets import colorize
from segkit.files import write_atomically
from segkit.metrics import SegmentationMetrics

#: The CSV's first columns; one ``iou_<class name>`` column per class follows.
CSV_COLUMNS = ("image", "mIoU", "pixel_acc")


@dataclass
class ImageScore:
    """One image's scores: ``miou`` (the CSV's ``mIoU``) and ``pixel_acc`` are NaN when no
    pixel is labelled; ``per_class_iou`` holds ``None`` for a class in neither its ground
    truth nor its prediction."""

    name: str
    miou: float
    pixel_acc: float
    per_class_iou: dict[str, float | None]


def score_image(
    name: str,
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    class_names: Sequence[str],
    ignore_index: int,
) -> ImageScore:
    """Score one ``H x W`` prediction against its ``H x W`` target."""
    metrics = SegmentationMetrics(
        len(class_names), ignore_index=ignore_index, class_names=class_names
    )
    metrics.update(prediction[None], target[None])
    values = metrics.compute()
    return ImageScore(name, values["mIoU"], values["pixel_acc"], values["per_class_iou"])


class ImageScorer:
    """The ``on_image`` callback of :func:`~segkit.engine.evaluate.evaluate`: scores each image
    (:attr:`scores`, in order) and writes its mask to ``folder/<name>.png``.

    Args:
        names: the images' names in evaluation order (:func:`unique_names`).
        folder: where the palette PNGs go (created by the caller).
        class_names, palette, ignore_index: the model's.
    """

    def __init__(
        self,
        names: Sequence[str],
        folder: Path,
        *,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        ignore_index: int,
    ) -> None:
        self.names = list(names)
        self.folder = folder
        self.class_names = list(class_names)
        self.palette = palette
        self.ignore_index = ignore_index
        self.scores: list[ImageScore] = []

    def __call__(
        self, prediction: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None = None
    ) -> None:
        index = len(self.scores)
        name = self.names[index] if index < len(self.names) else f"image_{index:06d}"
        prediction, target = prediction.cpu(), target.cpu()
        picture = colorize(prediction, self.palette)
        write_atomically(self.folder / f"{name}.png", lambda f: picture.save(f, format="PNG"))
        self.scores.append(
            score_image(
                name,
                prediction,
                target,
                class_names=self.class_names,
                ignore_index=self.ignore_index,
            )
        )


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with a repeated one made distinct by its position (``x``, ``x_3``)."""
    seen: set[str] = set()
    result = []
    for index, name in enumerate(names):
        unique = name if name not in seen else f"{name}_{index}"
        seen.add(unique)
        result.append(unique)
    return result


def write_csv(path: Path, scores: Sequence[ImageScore], class_names: Sequence[str]) -> None:
    """One row per image: :data:`CSV_COLUMNS` then ``iou_<class>`` per class; values as
    fractions (0-1) with six decimals, empty where undefined (NaN or ``None``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"iou_{name}" for name in class_names)])
    for score in scores:
        ious = [score.per_class_iou.get(name) for name in class_names]
        writer.writerow([score.name, *map(_cell, (score.miou, score.pixel_acc, *ious))])
    data = buffer.getvalue().encode()
    write_atomically(path, lambda handle: handle.write(data))


def worst(scores: Sequence[ImageScore], count: int = 10) -> list[ImageScore]:
    """The ``count`` images of lowest ``mIoU`` (then lowest pixel accuracy, then by name),
    lowest first; images without a labelled pixel are left out."""
    scored = [score for score in scores if not math.isnan(score.miou)]
    return sorted(scored, key=lambda s: (s.miou, s.pixel_acc, s.name))[:count]


def format_worst(scores: Sequence[ImageScore], count: int = 10) -> str:
    """:func:`worst` as a table: mIoU and pixel accuracy (percent) and the image's name."""
    rows = worst(scores, count)
    lines = [f"{len(rows)} worst image(s) by mIoU:", f"{'mIoU':>7}  {'acc':>7}  image"]
    lines += [f"{100 * s.miou:7.2f}  {100 * s.pixel_acc:7.2f}  {s.name}" for s in rows]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6f}"
