"""Your own data: ``images/<split>/*`` and ``masks/<split>/*`` paired by file stem."""

from __future__ import annotations

from collections.abc import Sequence, Set
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
from segkit.datasets.io import Problem, SampleError, decode_label_array
from segkit.datasets.palettes import colors_to_index, load_palette_file, voc_palette


def binary_hint(num_classes: int) -> str:
    """How to read 0/255 masks as classes 0 and 1 (``binary_255`` needs 2 classes)."""
    flags = "--binary-255" if num_classes == 2 else "--num-classes 2 --binary-255"
    return (
        f"if 255 marks the foreground of binary masks stored as 0/255, add {flags} "
        "(binary_255=True; the same flag for segkit train and segkit doctor)"
    )


BINARY_HINT = binary_hint(2)


class FolderDataset(SegmentationDataset):
    """A folder of images and masks: ``images/<split>/a.jpg`` pairs with ``masks/<split>/a.png``.

    Masks are index images (``L`` or ``P`` mode PNGs; value = class, 255 = ignore), or colour
    images when ``palette_file`` gives the class colours (colours not in it become 255).

    Args:
        root: Folder holding ``images/`` and ``masks/``.
        split: Sub-folder name, e.g. ``train`` or ``val``.
        transform: Joint transform; None = normalise only.
        num_classes: Class count (names become ``class_0``...); not needed with a palette file
            or ``class_names``, and must agree with them if given.
        class_names: Class names in index order (a list or a comma-separated string).
        palette_file: YAML/JSON file mapping class name -> RGB (see
            :func:`~segkit.datasets.palettes.load_palette_file`); needed for colour masks.
        binary_255: Masks are binary with 0 = background and 255 = foreground: 255 is read as
            class 1 (so nothing is ignored). Requires 2 classes.
        skip_bad_samples: Skip unreadable or invalid samples with a warning instead of raising.
    """

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | str | None = None,
        palette_file: str | Path | None = None,
        binary_255: bool = False,
        skip_bad_samples: bool = False,
    ):
        super().__init__(split=split, transform=transform, skip_bad_samples=skip_bad_samples)
        self.root = require_root(root, "folder")
        self.binary_255 = bool(binary_255)
        self.palette_file = Path(palette_file) if palette_file is not None else None
        self._color_palette: list[tuple[int, int, int]] | None = None
        self._ignore_colors: list[tuple[int, int, int]] = []
        self._set_classes(num_classes, class_names, palette_file)
        found = sorted(p.name for p in (self.root / "images").glob("*") if p.is_dir())
        fix = (
            f"Expected '{self.root}/images/{split}/' and '{self.root}/masks/{split}/'; "
            f"splits found: {found}"
        )
        images, image_dups = index_by_stem(
            require_dir(self.root / "images" / split, "images folder", fix)
        )
        masks, mask_dups = index_by_stem(
            require_dir(self.root / "masks" / split, "masks folder", fix)
        )
        files, problems = pair_by_stem(images, masks)
        self._set_files(
            files, image_dups + mask_dups + problems, images=len(images), masks=len(masks)
        )

    def _set_classes(
        self,
        num_classes: int | None,
        class_names: Sequence[str] | str | None,
        palette_file: str | Path | None,
    ) -> None:
        if isinstance(class_names, str):
            class_names = [name.strip() for name in class_names.split(",") if name.strip()]
        names = list(class_names) if class_names is not None else None
        if palette_file is not None:
            spec = load_palette_file(palette_file)
            if names is not None and names != spec.class_names:
                raise ValueError(
                    f"class_names {names} disagree with palette file '{palette_file}' "
                    f"({spec.class_names}); give only one of them"
                )
            names, self._color_palette, self._ignore_colors = (
                spec.class_names,
                spec.colors,
                spec.ignore_colors,
            )
        if names is None and num_classes is None:
            raise ValueError(
                "dataset 'folder' needs the classes: num_classes=N (--num-classes), class_names, "
                "or palette_file (--palette-file FILE: class name -> RGB)"
            )
        if names is None:
            names = [f"class_{i}" for i in range(int(num_classes))]
        if num_classes is not None and int(num_classes) != len(names):
            raise ValueError(
                f"num_classes={num_classes} but {len(names)} class names are given: {names}"
            )
        if not 2 <= len(names) <= 255:
            raise ValueError(
                f"the folder dataset needs 2..255 classes, got {len(names)}; a binary task has 2 "
                "classes (background, foreground)"
            )
        if self.binary_255 and len(names) != 2:
            raise ValueError(f"binary_255=True needs exactly 2 classes, got {len(names)}: {names}")
        self.class_names = names
        self.palette = self._color_palette or voc_palette(len(names))

    def read_label(
        self, files: SampleFiles, image: np.ndarray | None, notes: list[Problem]
    ) -> np.ndarray:
        array = decode_label_array(files.mask)
        if array.ndim == 3:
            return self._colors_to_index(array, files.mask, notes)
        if self.binary_255:
            return np.where(array == 255, 1, array)
        if self.num_classes == 2 and array.size and array.max() == 255 and not (array == 1).any():
            notes.append(
                Problem(
                    "binary-255",
                    str(files.mask),
                    f"mask '{files.mask}' holds 0 and 255 but no 1 with 2 classes: 255 is the "
                    "ignore index, so those pixels are ignored",
                    hint=f"Fix: {BINARY_HINT}",
                )
            )
        return array

    def value_checks(self, values: Set[int]) -> list[Problem]:
        """Refuse masks that hold nothing but 0 and 255 when 255 is the ignore index.

        Trained so, every foreground pixel is ignored: the model predicts background everywhere
        and validation mIoU reads 1.0 (class 0 is the only class present).
        """
        if self.binary_255 or self._color_palette is not None or 255 not in values:
            return []
        if set(values) - {0, 255}:
            return []
        return [
            Problem(
                "binary-255",
                str(self.root / "masks" / self.split),
                f"every mask of split '{self.split}' holds only 0 and 255, and 255 is the ignore "
                "index: no pixel is foreground, so the model would learn nothing (and report "
                "val mIoU 1.0)",
                hint=f"Fix: {binary_hint(self.num_classes)}",
            )
        ]

    def label_settings(self) -> dict[str, object]:
        return {
            **super().label_settings(),
            "binary_255": self.binary_255,
            "palette": self._color_palette,
            "ignore_colors": self._ignore_colors,
        }

    def _colors_to_index(self, rgb: np.ndarray, path: Path, notes: list[Problem]) -> np.ndarray:
        if self._color_palette is None:
            raise SampleError(
                "colour-mask",
                path,
                f"mask '{path}' is a colour (RGB) image, but no palette file gives the class "
                "colours",
                hint="Fix: pass --palette-file FILE (YAML/JSON class name -> [r, g, b]) or save "
                "masks as index PNGs (mode L or P)",
            )
        mask = colors_to_index(rgb, self._color_palette, self.ignore_index)
        unknown = mask == self.ignore_index
        if self._ignore_colors:
            unknown &= colors_to_index(rgb, self._ignore_colors) == self.ignore_index
        if unknown.any():
            colors = np.unique(rgb[unknown].reshape(-1, 3), axis=0)[:5]
            shown = ", ".join(str(tuple(int(v) for v in c)) for c in colors)
            notes.append(
                Problem(
                    "unknown-colour",
                    str(path),
                    f"mask '{path}' has {int(unknown.sum())} pixels of colours not in the palette "
                    f"file (e.g. {shown}); they are read as 255 (ignore)",
                    hint="Fix: add the colours to the palette file (or list them under 'ignore')",
                )
            )
        return mask

    def value_hint(self, bad: list[int]) -> str:
        hint = super().value_hint(bad)
        return f"{hint}; {BINARY_HINT}" if self.num_classes == 2 and not self.binary_255 else hint
