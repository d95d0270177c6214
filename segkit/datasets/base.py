"""The dataset base class: file pairs, validated loading, bad-sample skipping."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterable, Set
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segkit.datasets.io import IMAGE_SUFFIXES, Problem, SampleError, read_image, read_mask
from segkit.datasets.palettes import Color
from segkit.datasets.transforms import build_eval_transforms

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]

SKIP_HINT = (
    "skip_bad_samples=True (--skip-bad-samples) skips such samples; `segkit doctor` lists them all"
)

UNPAIRED_HINT = (
    "Fix: images and masks pair by file stem (a.jpg <-> a.png); rename, add or remove files"
)


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample; ``name`` is the stem used for prediction outputs."""

    name: str
    image: Path
    mask: Path


@dataclass
class RawSample:
    """An untransformed, validated sample.

    Attributes:
        image: ``H x W x 3`` ``uint8`` RGB.
        mask: ``H x W`` ``uint8`` class indices, ``255`` = ignore.
        name: Sample stem.
        image_path: Source file, or None for generated samples.
        mask_path: Source file, or None for generated samples.
        warnings: Non-fatal problems met while loading (e.g. unknown mask colours).
    """

    image: np.ndarray
    mask: np.ndarray
    name: str
    image_path: Path | None = None
    mask_path: Path | None = None
    warnings: list[Problem] = field(default_factory=list)


def require_root(root: str | Path | None, dataset: str) -> Path:
    """``root`` as a path; datasets read from files need one (``--data-root DIR``)."""
    if root is None:
        raise ValueError(f"dataset {dataset!r} needs a data root (--data-root DIR)")
    return Path(root)


class SegmentationDataset(Dataset):
    """Base of every dataset: yields ``(image 3 x H x W float32, mask H x W int64)``.

    Subclasses fill ``self.files`` (or override :meth:`load_raw` and ``__len__``) and set
    ``class_names`` and ``palette``. Loading validates each sample: an undecodable file, an
    image/mask size mismatch, a colour mask, or a mask value outside
    ``[0, num_classes) ∪ {255}`` raises :class:`~segkit.datasets.io.SampleError` naming the file,
    unless ``skip_bad_samples`` is set: then ``__getitem__`` warns, records the sample in
    ``bad_samples`` (per process: DataLoader workers keep their own) and returns the next good one.

    Attributes:
        class_names: One name per class index.
        palette: One RGB colour per class index.
        ignore_index: Mask value excluded from losses and metrics (always 255).
        split: The split this dataset reads.
        file_problems: Unpaired, missing or duplicated files found at construction.
        image_count: Image files found (paired or not).
        mask_count: Mask files found (paired or not).
    """

    ignore_index: int = 255
    class_names: list[str]
    palette: list[Color]

    def __init__(self, *, split: str, transform: Transform | None, skip_bad_samples: bool):
        self.split = split
        self.transform = transform if transform is not None else build_eval_transforms()
        self.skip_bad_samples = bool(skip_bad_samples)
        self.files: list[SampleFiles] = []
        self.file_problems: list[Problem] = []
        self.image_count = 0
        self.mask_count = 0
        self.bad_samples: dict[int, str] = {}
        self._warned: set[str] = set()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def sample_name(self, index: int) -> str:
        """The stem of sample ``index`` (e.g. ``2007_000033``), for naming prediction files."""
        return self.files[self._check_index(index)].name

    def sample_paths(self, index: int) -> tuple[Path | None, Path | None]:
        """``(image_path, mask_path)`` of sample ``index`` without reading them."""
        files = self.files[self._check_index(index)]
        return files.image, files.mask

    def load_raw(self, index: int) -> RawSample:
        """Read and validate sample ``index`` without transforms.

        Doctor and class-frequency code use it; it never skips: a bad sample raises.

        Returns:
            The :class:`RawSample` with its file paths.

        Raises:
            SampleError: The file and the problem (see the class docstring).
        """
        files = self.files[self._check_index(index)]
        image = read_image(files.image)
        notes: list[Problem] = []
        mask = self.read_label(files, image, notes)
        self.check_label(files, image.shape[:2], mask)
        return RawSample(image, mask.astype(np.uint8), files.name, files.image, files.mask, notes)

    def check_label(
        self, files: SampleFiles, image_size: tuple[int, int], mask: np.ndarray
    ) -> None:
        """Raise ``"size-mismatch"`` or ``"out-of-range"`` for a mask read by :meth:`read_label`.

        Args:
            files: The sample's files.
            image_size: The image's ``(height, width)``.
            mask: ``H x W`` class indices.
        """
        if mask.shape != tuple(image_size):
            raise SampleError(
                "size-mismatch",
                files.mask,
                f"image '{files.image}' is {image_size[1]}x{image_size[0]} (WxH) but its mask "
                f"'{files.mask}' is {mask.shape[1]}x{mask.shape[0]}",
                hint=f"Fix: image and mask must be the same size; {SKIP_HINT}",
            )
        self.check_values(mask, self.num_classes, files.mask)

    def split_checks(self) -> list[Problem]:
        """Whole-split problems that no single file shows (overridden; used by doctor)."""
        return []

    def value_checks(self, values: Set[int]) -> list[Problem]:
        """Problems shown by the set of mask ``values`` met in the whole split (overridden).

        Doctor reports them and the pre-flight check refuses to train on them.
        """
        return []

    def label_settings(self) -> dict[str, object]:
        """The settings that decide whether a mask is valid and how it reads (JSON values).

        Part of the pre-flight cache key: subclasses add their label options and mappings.
        """
        cls = type(self)
        return {
            "dataset": f"{cls.__module__}.{cls.__qualname__}",
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
        }

    def read_label(
        self, files: SampleFiles, image: np.ndarray | None, notes: list[Problem]
    ) -> np.ndarray:
        """Read the mask of ``files`` as ``H x W`` class indices (overridden for label mapping).

        Args:
            files: The sample's files.
            image: The decoded ``H x W x 3`` image (for rules such as no-data masking), or None
                in the pre-flight check, which decodes no image: rules that need it are skipped.
            notes: Append non-fatal problems here.
        """
        return read_mask(files.mask)

    def value_hint(self, bad: list[int]) -> str:
        """The fix suggested when a mask holds ``bad`` values (datasets refine it)."""
        return (
            "Fix: remap these values to class indices or to 255 (ignore), or raise the class "
            "count if they are real classes; masks must be index PNGs (JPEG compression invents "
            "values). " + SKIP_HINT
        )

    def check_values(self, mask: np.ndarray, limit: int, path: Path, what: str = "values") -> None:
        """Raise ``"out-of-range"`` if ``mask`` holds values outside ``[0, limit) ∪ {255}``."""
        if mask.size == 0 or (mask.min() >= 0 and self._max_label(mask) < limit):
            return
        values = np.unique(mask)
        bad = [int(v) for v in values if (v < 0 or v >= limit) and v != self.ignore_index]
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            raise SampleError(
                "out-of-range",
                path,
                f"mask '{path}' has {what} [{shown}] outside "
                f"[0, {limit}) ∪ {{{self.ignore_index}}} "
                f"(dataset '{type(self).__name__}' split '{self.split}' has {self.num_classes} "
                "classes)",
                tuple(bad),
                self.value_hint(bad),
            )

    def _max_label(self, mask: np.ndarray) -> int:
        """The largest value of ``mask`` other than the ignore index (0 if none)."""
        top = int(mask.max())
        if top != self.ignore_index:
            return top
        # Masks with an ignore border (VOC) land here: a masked max, cheaper than np.unique.
        return int(np.max(mask, where=mask != self.ignore_index, initial=0))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` after the transform: ``(3 x H x W float32, H x W int64)``."""
        raw = self._load_or_skip(self._check_index(index))
        for note in raw.warnings:
            if note.kind not in self._warned:  # once per kind, not once per file
                self._warned.add(note.kind)
                warnings.warn(
                    f"{note.message}. {note.hint} (further '{note.kind}' warnings suppressed)",
                    stacklevel=2,
                )
        image = tv_tensors.Image(torch.from_numpy(raw.image).permute(2, 0, 1))
        image, mask = self.transform(image, tv_tensors.Mask(torch.from_numpy(raw.mask)))
        mask = mask.as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), (mask.squeeze(0) if mask.ndim == 3 else mask).long()

    def _load_or_skip(self, index: int) -> RawSample:
        if not self.skip_bad_samples:
            return self.load_raw(index)
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate in self.bad_samples:
                continue
            try:
                return self.load_raw(candidate)
            except SampleError as err:
                self.bad_samples[candidate] = str(err)
                warnings.warn(
                    f"skipping bad sample ({len(self.bad_samples)} so far): {err}", stacklevel=3
                )
        raise RuntimeError(f"every sample of {type(self).__name__} split '{self.split}' is bad")

    def remove_samples(self, indices: Collection[int]) -> None:
        """Drop samples ``indices`` (e.g. bad ones) so that no sampler draws them."""
        drop = set(indices)
        self.files = [files for i, files in enumerate(self.files) if i not in drop]
        self.bad_samples = {}  # indices moved

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return index % len(self)

    def _set_files(
        self, files: list[SampleFiles], problems: list[Problem], *, images: int, masks: int
    ) -> None:
        """Store the pairs and file counts; file problems raise, or warn when skipping."""
        self.files, self.file_problems = files, problems
        self.image_count, self.mask_count = images, masks
        if not files:
            listing = "".join(f"\n  {p.message}" for p in problems[:20])
            raise ValueError(
                f"{type(self).__name__} split '{self.split}' has no image/mask pairs "
                f"({images} images, {masks} masks found){listing}"
            )
        if not problems:
            return
        listing = "\n  ".join(p.message for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        message = (
            f"{len(problems)} unpaired, missing or duplicated file(s) in split "
            f"'{self.split}':\n  {listing}{more}"
        )
        if not self.skip_bad_samples:
            raise ValueError(f"{message}\nFix: add or remove the files; {SKIP_HINT}")
        warnings.warn(f"{message}\n(skipped: skip_bad_samples=True)", stacklevel=3)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, "
            f"num_classes={self.num_classes})"
        )


def index_by_stem(
    folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES
) -> tuple[dict[str, Path], list[Problem]]:
    """Map file stem -> path for the image files directly in ``folder``; duplicates reported."""
    suffixes = {s.lower() for s in suffixes}
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.append(
                Problem(
                    "duplicate-stem",
                    str(path),
                    f"'{path}' and '{found[path.stem]}' share the stem '{path.stem}'",
                )
            )
            continue
        found[path.stem] = path
    return found, problems


def pair_by_stem(
    images: dict[str, Path], masks: dict[str, Path]
) -> tuple[list[SampleFiles], list[Problem]]:
    """Pair images and masks with equal keys; every file without a partner is a problem."""
    files = [SampleFiles(key, images[key], masks[key]) for key in sorted(images) if key in masks]
    unpaired = [
        Problem("unpaired", str(path), f"image '{path}' has no mask", hint=UNPAIRED_HINT)
        for key, path in sorted(images.items())
        if key not in masks
    ]
    unpaired += [
        Problem("unpaired", str(path), f"mask '{path}' has no image", hint=UNPAIRED_HINT)
        for key, path in sorted(masks.items())
        if key not in images
    ]
    return files, unpaired


def require_dir(path: Path, what: str, fix: str) -> Path:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: '{path}' is not a directory. {fix}")
    return path
