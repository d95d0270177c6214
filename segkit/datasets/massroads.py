"""Massachusetts Roads (Mnih 2013) as commonly distributed: 1500x1500 aerial tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.datasets.base import (
    SampleFiles,
    SegmentationDataset,
    Transform,
    index_by_stem,
    pair_by_stem,
    require_dir,
    require_root,
)
from segkit.datasets.io import Problem, read_mask

SUFFIXES = (".tif", ".tiff", ".png")
SPLITS = ("train", "val", "test")
ROAD_CLASSES = ("background", "road")
ROAD_PALETTE = ((0, 0, 0), (255, 255, 255))


class MassachusettsRoads(SegmentationDataset):
    """Massachusetts Roads: ``tiff/<split>/*.tiff`` with ``tiff/<split>_labels/*.tif``.

    Images and labels pair by file stem; ``.tif``, ``.tiff`` and ``.png`` are accepted on either
    side. Labels hold 0 (background) and 255 (road), read as classes 0 and 1 (a label already
    holding 1 for road is accepted too). Samples are whole tiles: training crops them with the
    train transform, evaluation slides a window over them.

    Args:
        root: The folder holding ``tiff/``, or ``tiff/`` itself.
        split: ``train``, ``val`` or ``test``.
        transform: Joint transform; None = normalise only.
        nodata_ignore: Mark pixels whose three image channels are all 255 (the white no-data
            areas at the edge of some tiles) as 255 = ignore, so they count neither as
            background in the loss nor in the metrics. Off by default, as in published results.
        skip_bad_samples: Skip unreadable or invalid samples with a warning instead of raising.
    """

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        nodata_ignore: bool = False,
        skip_bad_samples: bool = False,
    ):
        super().__init__(split=split, transform=transform, skip_bad_samples=skip_bad_samples)
        self.root = require_root(root, "massroads")
        if split not in SPLITS:
            raise ValueError(f"massroads split must be one of {list(SPLITS)}, got {split!r}")
        self.class_names = list(ROAD_CLASSES)
        self.palette = list(ROAD_PALETTE)
        self.nodata_ignore = bool(nodata_ignore)
        base = self.root / "tiff" if (self.root / "tiff").is_dir() else self.root
        fix = (
            f"Expected '{base}/{split}/' and '{base}/{split}_labels/'; "
            "point --data-root at the folder holding tiff/."
        )
        images, image_dups = index_by_stem(
            require_dir(base / split, "Massachusetts Roads images", fix), SUFFIXES
        )
        masks, mask_dups = index_by_stem(
            require_dir(base / f"{split}_labels", "Massachusetts Roads labels", fix), SUFFIXES
        )
        files, problems = pair_by_stem(images, masks)
        self._set_files(
            files, image_dups + mask_dups + problems, images=len(images), masks=len(masks)
        )

    def read_label(
        self, files: SampleFiles, image: np.ndarray | None, notes: list[Problem]
    ) -> np.ndarray:
        raw = read_mask(files.mask)
        bad = np.setdiff1d(np.unique(raw), [0, 1, 255])
        if bad.size:
            self.check_values(np.where(raw == 255, 0, raw), 2, files.mask)  # raises, naming values
        mask = (raw != 0).astype(np.uint8)  # 255 (or 1) = road
        if self.nodata_ignore and image is not None:  # None: pre-flight (only adds 255s)
            mask[(image == 255).all(axis=2)] = self.ignore_index
        return mask

    def value_hint(self, bad: list[int]) -> str:
        return (
            "Massachusetts Roads labels hold 0 (background) and 255 (road). "
            + super().value_hint(bad)
        )
