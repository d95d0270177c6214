"""Pascal VOC 2007/2012 segmentation, with the SBD-augmented ``train_aug`` split."""

from __future__ import annotations

import re
from pathlib import Path

from segkit.datasets.base import SampleFiles, SegmentationDataset, Transform, require_root
from segkit.datasets.io import Problem
from segkit.datasets.palettes import VOC_CLASSES, voc_palette

YEARS = (2007, 2012)
AUG_HELP = (
    "train_aug is the SBD-augmented set (10582 images) arranged as DeepLabV3Plus-Pytorch and "
    "mmsegmentation describe: SBD labels converted to index PNGs in VOC<year>/SegmentationClassAug "
    "and their ids in ImageSets/Segmentation/train_aug.txt"
)


class VOCSegmentation(SegmentationDataset):
    """Pascal VOC: ``VOCdevkit/VOC<year>/{JPEGImages,SegmentationClass,ImageSets/Segmentation}``.

    The palette PNG's indices are the labels (21 classes, 255 = the void border). ``root`` may be
    the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOC<year>``.

    Args:
        root: Data root (see above).
        split: ``train``, ``val``, ``trainval``, ``train_aug`` or any ``ImageSets/Segmentation``
            list (``test`` for VOC2007).
        transform: Joint transform; None = normalise only.
        year: 2007 or 2012.
        skip_bad_samples: Skip unreadable or invalid samples with a warning instead of raising.
    """

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        year: int | str = 2012,
        skip_bad_samples: bool = False,
    ):
        super().__init__(split=split, transform=transform, skip_bad_samples=skip_bad_samples)
        self.root = require_root(root, "voc")
        self.year = _parse_year(year)
        self.class_names = list(VOC_CLASSES)
        self.palette = voc_palette(len(VOC_CLASSES))
        self.voc_dir = find_voc_dir(self.root, self.year)
        if split == "train_aug":
            split_file, mask_dir = self._find_aug_files()
        else:
            split_file = self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
            mask_dir = self.voc_dir / "SegmentationClass"
            if not split_file.is_file():
                raise FileNotFoundError(
                    f"VOC split '{split}' not found: '{split_file}' does not exist; available "
                    f"splits: {sorted(self.available_splits())}"
                )
        self.split_file, self.mask_dir = split_file, mask_dir
        ids = read_split_file(split_file)
        files, problems = [], []
        images = masks = 0
        for sample_id in ids:
            image = self.voc_dir / "JPEGImages" / f"{sample_id}.jpg"
            mask = mask_dir / f"{sample_id}.png"
            images, masks = images + image.is_file(), masks + mask.is_file()
            missing = [p for p in (image, mask) if not p.is_file()]
            problems += [
                Problem(
                    "unpaired",
                    str(p),
                    f"'{sample_id}' is listed in '{split_file}' but '{p}' is missing",
                )
                for p in missing
            ]
            if not missing:
                files.append(SampleFiles(sample_id, image, mask))
        self._set_files(files, problems, images=images, masks=masks)

    def available_splits(self) -> list[str]:
        """Names of the split lists in ``ImageSets/Segmentation`` (plus ``train_aug`` if found)."""
        found = {p.stem for p in (self.voc_dir / "ImageSets" / "Segmentation").glob("*.txt")}
        if any(p.is_file() for p in self._aug_list_candidates()):
            found.add("train_aug")
        return sorted(found)

    def _aug_list_candidates(self) -> list[Path]:
        seg = self.voc_dir / "ImageSets" / "Segmentation"
        return [
            seg / "train_aug.txt",
            seg / "trainaug.txt",  # tensorflow/models deeplab naming
            seg / "aug.txt",  # mmsegmentation's tools/dataset_converters/voc_aug.py output
            self.voc_dir / "train_aug.txt",
            self.voc_dir.parent / "train_aug.txt",
            self.voc_dir.parent.parent
            / "train_aug.txt",  # DeepLabV3Plus-Pytorch: next to VOCdevkit
        ]

    def _find_aug_files(self) -> tuple[Path, Path]:
        lists = self._aug_list_candidates()
        mask_dirs = [
            self.voc_dir / "SegmentationClassAug",
            self.voc_dir.parent / "SegmentationClassAug",
        ]
        split_file = next((p for p in lists if p.is_file()), None)
        mask_dir = next((p for p in mask_dirs if p.is_dir()), None)
        if split_file is None or mask_dir is None:
            looked = [
                p for p, found in ((lists, split_file), (mask_dirs, mask_dir)) if found is None
            ]
            paths = "\n  ".join(str(p) for group in looked for p in group)
            raise FileNotFoundError(
                f"VOC split 'train_aug' not found; looked for:\n  {paths}\n{AUG_HELP}."
            )
        return split_file, mask_dir

    def split_checks(self) -> list[Problem]:
        """Training ids must not include ``val`` ids, or val mIoU is measured on training data."""
        val_file = self.voc_dir / "ImageSets" / "Segmentation" / "val.txt"
        if self.split not in ("train_aug", "train") or not val_file.is_file():
            return []
        overlap = {f.name for f in self.files} & set(read_split_file(val_file))
        if not overlap:
            return []
        shown = ", ".join(sorted(overlap)[:5])
        return [
            Problem(
                "split-overlap",
                str(self.split_file),
                f"'{self.split_file}' lists {len(overlap)} image(s) of the val split ({shown}"
                f"{', ...' if len(overlap) > 5 else ''}); validation would measure training "
                "images. The usual train_aug.txt (10582 ids) excludes val",
            )
        ]

    def value_hint(self, bad: list[int]) -> str:
        return (
            "VOC masks are palette PNGs whose indices are 0..20 and 255; a mask saved as RGB "
            "colours or resaved through another tool loses them. " + super().value_hint(bad)
        )


def _parse_year(year: int | str) -> int:
    if str(year).endswith("_aug"):
        raise ValueError(f"year={year!r}: use year={str(year)[:-4]} with split='train_aug'")
    try:
        value = int(year)
    except (TypeError, ValueError):
        value = -1
    if value not in YEARS:
        raise ValueError(f"VOC year must be one of {list(YEARS)}, got {year!r}")
    return value


def find_voc_dir(root: Path, year: int) -> Path:
    """Locate ``VOC<year>`` from ``root`` (its parent, ``VOCdevkit``, or the folder itself)."""
    name = f"VOC{year}"
    candidates = [root / "VOCdevkit" / name, root / name, root]
    other = re.fullmatch(r"VOC(\d{4})", root.name)
    if other and root.name != name:
        raise ValueError(
            f"--data-root '{root}' is {root.name} but year={year}; pass --year {other[1]}"
        )
    for candidate in candidates:
        if (candidate / "JPEGImages").is_dir():
            return candidate
    looked = "\n  ".join(str(c / "JPEGImages") for c in candidates)
    raise FileNotFoundError(
        f"Pascal VOC {year} not found under '{root}'; looked for:\n  {looked}\n"
        "Point --data-root at the folder holding VOCdevkit, at VOCdevkit, or at " + name
    )


def read_split_file(path: Path) -> list[str]:
    """Image ids from a split list: one id a line, or ``/JPEGImages/x.jpg /Seg.../x.png`` lines."""
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.split()[0] if line.strip() else ""
        if token and not token.startswith("#"):
            ids.append(Path(token).stem)
    return ids
