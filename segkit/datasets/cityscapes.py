"""Cityscapes fine annotations: 34 label ids mapped to the 19 train ids inside the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.datasets.base import (
    SampleFiles,
    SegmentationDataset,
    Transform,
    require_dir,
    require_root,
)
from segkit.datasets.io import Problem, read_mask
from segkit.datasets.palettes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    cityscapes_id_to_train_id,
)

IMAGE_TAIL = "_leftImg8bit.png"
LABEL_ID_TAIL = "_gtFine_labelIds.png"
TRAIN_ID_TAIL = "_gtFine_labelTrainIds.png"
NUM_LABEL_IDS = 34


class Cityscapes(SegmentationDataset):
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/``.

    Masks are ``*_gtFine_labelIds.png`` (label ids 0..33, mapped to the 19 train ids with the
    official table, all others to 255) or, when present for a sample, the already mapped
    ``*_gtFine_labelTrainIds.png`` from ``cityscapesscripts``' ``createTrainIdLabelImgs``.

    Args:
        root: Folder holding ``leftImg8bit`` and ``gtFine``.
        split: ``train``, ``val`` or ``test`` (the public test labels are all void).
        transform: Joint transform; None = normalise only.
        skip_bad_samples: Skip unreadable or invalid samples with a warning instead of raising.
    """

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        skip_bad_samples: bool = False,
    ):
        super().__init__(split=split, transform=transform, skip_bad_samples=skip_bad_samples)
        self.root = require_root(root, "cityscapes")
        self.class_names = list(CITYSCAPES_CLASSES)
        self.palette = list(CITYSCAPES_PALETTE)
        fix = "Point --data-root at the folder holding leftImg8bit/ and gtFine/."
        image_root = require_dir(
            self.root / "leftImg8bit" / split, f"Cityscapes split '{split}'", fix
        )
        mask_root = require_dir(
            self.root / "gtFine" / split, f"Cityscapes gtFine split '{split}'", fix
        )
        images = {p.name[: -len(IMAGE_TAIL)]: p for p in image_root.glob(f"*/*{IMAGE_TAIL}")}
        label_ids = {
            p.name[: -len(LABEL_ID_TAIL)]: p for p in mask_root.glob(f"*/*{LABEL_ID_TAIL}")
        }
        train_ids = {
            p.name[: -len(TRAIN_ID_TAIL)]: p for p in mask_root.glob(f"*/*{TRAIN_ID_TAIL}")
        }
        files, problems = [], []
        for key in sorted(images):
            mask = train_ids.get(key) or label_ids.get(key)
            if mask is None:
                expected = mask_root / images[key].parent.name / f"{key}{LABEL_ID_TAIL}"
                problems.append(
                    Problem(
                        "unpaired",
                        str(images[key]),
                        f"image '{images[key]}' has no mask (looked for '{expected}')",
                    )
                )
            else:
                files.append(SampleFiles(key, images[key], mask))
        for key in sorted((label_ids.keys() | train_ids.keys()) - images.keys()):
            path = label_ids.get(key) or train_ids[key]
            problems.append(
                Problem("unpaired", str(path), f"mask '{path}' has no image '{key}{IMAGE_TAIL}'")
            )
        self._set_files(
            files, problems, images=len(images), masks=len(label_ids.keys() | train_ids.keys())
        )
        self._lut = cityscapes_id_to_train_id()

    def read_label(
        self, files: SampleFiles, image: np.ndarray | None, notes: list[Problem]
    ) -> np.ndarray:
        mask = read_mask(files.mask)
        if files.mask.name.endswith(TRAIN_ID_TAIL):
            return mask  # already train ids; the base class checks them against 19 classes
        self.check_values(mask, NUM_LABEL_IDS, files.mask, what="label ids")
        return self._lut[mask]

    def label_settings(self) -> dict[str, object]:
        return {**super().label_settings(), "label_id_to_train_id": self._lut.tolist()}

    def value_hint(self, bad: list[int]) -> str:
        return (
            "Cityscapes label-id masks hold ids 0..33 (255 for none) and train-id masks 0..18 "
            "and 255; use the *_gtFine_labelIds.png files, not the *_color.png ones. "
            + super().value_hint(bad)
        )
