"""The validation images a run report shows: the ``count`` best and ``count`` worst by mIoU.

:class:`SamplePicker` is the ``on_image`` callback of :func:`~segkit.engine.evaluate.evaluate`
during a training run's validation. It scores every image alone
(:func:`~segkit.engine.image_scores.score_image`, so an image's ``mIoU`` means what it means in
``segkit eval --save-dir``) and keeps small thumbnails (input, ground truth, prediction) of the
images that are among the best or the worst so far, never the whole set. Under torchrun each
process picks from its share and :func:`gather_picks` merges them on rank 0. The picks of the
latest validation are kept in the run folder (:data:`SAMPLES_FILE`) for ``segkit report``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from segkit.datasets import denormalize
from segkit.engine.image_scores import score_image
from segkit.files import write_atomically

#: The picks of a run's latest validation, in the run folder.
SAMPLES_FILE = "val_samples.npz"


@dataclass
class Thumbnail:
    """One validation image, scored and shrunk: ``image`` ``h x w x 3`` uint8, ``truth`` and
    ``prediction`` ``h x w`` uint8 class indices (the ignore index kept in ``truth``)."""

    index: int
    name: str
    miou: float
    pixel_acc: float
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray

    def rank_key(self) -> tuple[float, float, int]:
        """Ascending from the worst image (mIoU, then pixel accuracy, then dataset index)."""
        return (self.miou, self.pixel_acc, -self.index)


@dataclass
class Picks:
    """The ``best`` images (best first) and the ``worst`` (worst first) of one validation;
    ``error`` says why there are none when picking failed."""

    iteration: int
    best: list[Thumbnail]
    worst: list[Thumbnail]
    error: str | None = None


class SamplePicker:
    """``on_image(prediction, target, image)``: keeps the ``count`` best and worst images.

    Args:
        names: every validation image's name, by dataset index.
        class_names: one name per class.
        mean, std: the normalisation to undo for the thumbnails.
        ignore_index: target value of unlabelled pixels.
        count: how many best and how many worst images to keep.
        size: longest side of a thumbnail in pixels (smaller images are kept as they are).
        first, step: the dataset index of this process's first image and the stride between
            its images (``rank`` and ``world`` under torchrun: ranks take every world-th one).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int = 255,
        count: int = 4,
        size: int = 160,
        first: int = 0,
        step: int = 1,
    ) -> None:
        self.names, self.class_names = list(names), list(class_names)
        self.mean, self.std = list(mean), list(std)
        self.ignore_index, self.count, self.size = ignore_index, count, size
        self.next_index, self.step = first, step
        self.best: list[Thumbnail] = []
        self.worst: list[Thumbnail] = []
        self.error: str | None = None

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> None:
        """Score one image; a failure stops the picking (:attr:`error` says why), never the
        validation it runs in."""
        if self.error is not None:
            return
        try:
            self._pick(prediction, target, image)
        except Exception as err:  # the report loses its samples; the metrics stay right
            self.error = " ".join(str(err).split()) or repr(err)

    def _pick(self, prediction: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> None:
        index, self.next_index = self.next_index, self.next_index + self.step
        name = self.names[index] if index < len(self.names) else f"image {index}"
        score = score_image(
            name, prediction, target, class_names=self.class_names, ignore_index=self.ignore_index
        )
        if math.isnan(score.miou):  # no labelled pixel: nothing to rank
            return
        key = (score.miou, score.pixel_acc, -index)
        best_in = len(self.best) < self.count or key > self.best[-1].rank_key()
        worst_in = len(self.worst) < self.count or key < self.worst[-1].rank_key()
        if not (best_in or worst_in):
            return  # the usual case once the lists are full: no copy, no thumbnail
        thumb = self._thumbnail(index, name, score.miou, score.pixel_acc, image, target, prediction)
        if best_in:
            self.best = _ranked([*self.best, thumb], self.count, best_first=True)
        if worst_in:
            self.worst = _ranked([*self.worst, thumb], self.count, best_first=False)

    def picks(self, iteration: int) -> Picks:
        """The picks so far (none after an :attr:`error`: they would not be the best and
        worst); an image among both the best and the worst (a validation set of fewer than
        ``2 * count`` images) is listed once, among the worst."""
        if self.error is not None:
            return Picks(iteration, [], [], self.error)
        worst = {t.index for t in self.worst}
        return Picks(iteration, [t for t in self.best if t.index not in worst], list(self.worst))

    def _thumbnail(
        self,
        index: int,
        name: str,
        miou: float,
        pixel_acc: float,
        image: torch.Tensor,
        target: torch.Tensor,
        prediction: torch.Tensor,
    ) -> Thumbnail:
        shown = denormalize(image.detach().float().cpu(), self.mean, self.std)
        pictures = [
            Image.fromarray(shown.permute(1, 2, 0).numpy()),
            Image.fromarray(target.cpu().numpy().astype(np.uint8)),
            Image.fromarray(prediction.cpu().numpy().astype(np.uint8)),
        ]
        height, width = pictures[0].height, pictures[0].width
        scale = min(1.0, self.size / max(height, width))
        if scale < 1.0:
            new = (max(1, round(width * scale)), max(1, round(height * scale)))
            pictures = [pictures[0].resize(new, Image.Resampling.BILINEAR)] + [
                p.resize(new, Image.Resampling.NEAREST) for p in pictures[1:]
            ]
        arrays = [np.asarray(p) for p in pictures]
        return Thumbnail(index, name, miou, pixel_acc, *arrays)


def _ranked(thumbs: list[Thumbnail], count: int, *, best_first: bool) -> list[Thumbnail]:
    return sorted(thumbs, key=Thumbnail.rank_key, reverse=best_first)[:count]


def gather_picks(picker: SamplePicker, iteration: int) -> Picks | None:
    """Every process's picks merged, on rank 0 (``None`` on the others); the picker's own in
    a single process. Under torchrun every rank must call it (it is a collective)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return picker.picks(iteration)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (picker.best, picker.worst, picker.error))
    if dist.get_rank() != 0:
        return None
    merged = SamplePicker([], class_names=[], mean=[], std=[], count=picker.count)
    merged.error = next((g[2] for g in gathered if g[2] is not None), None)
    merged.best = _ranked([t for g in gathered for t in g[0]], picker.count, best_first=True)
    merged.worst = _ranked([t for g in gathered for t in g[1]], picker.count, best_first=False)
    return merged.picks(iteration)


def save_picks(path: Path, picks: Picks) -> None:
    """Write ``picks`` as one ``.npz`` file (atomically): arrays and scores per thumbnail."""
    arrays: dict[str, np.ndarray] = {"iteration": np.array(picks.iteration)}
    for group in ("best", "worst"):
        for n, thumb in enumerate(getattr(picks, group)):
            prefix = f"{group}_{n}_"
            arrays[prefix + "index"] = np.array(thumb.index)
            arrays[prefix + "name"] = np.array(thumb.name)
            arrays[prefix + "scores"] = np.array([thumb.miou, thumb.pixel_acc])
            for part in ("image", "truth", "prediction"):
                arrays[prefix + part] = getattr(thumb, part)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomically(path, lambda handle: handle.write(buffer.getvalue()))


def load_picks(path: Path) -> Picks | None:
    """The picks :func:`save_picks` wrote, or ``None`` when the file is missing or unreadable
    (a report then shows no samples rather than failing)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            groups = {group: _load_group(data, group) for group in ("best", "worst")}
            return Picks(int(data["iteration"]), groups["best"], groups["worst"])
    except (OSError, ValueError, KeyError):
        return None


def _load_group(data: np.lib.npyio.NpzFile, group: str) -> list[Thumbnail]:
    thumbs, n = [], 0
    while f"{group}_{n}_index" in data.files:
        p = f"{group}_{n}_"
        miou, acc = (float(v) for v in data[p + "scores"])
        parts = (data[p + "image"], data[p + "truth"], data[p + "prediction"])
        thumbs.append(Thumbnail(int(data[p + "index"]), str(data[p + "name"]), miou, acc, *parts))
        n += 1
    return thumbs
