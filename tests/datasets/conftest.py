"""Tiny on-disk datasets in their real layouts and formats, built in ``tmp_path``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segkit.cli import doctor
from segkit.datasets.palettes import colorize, voc_palette


def random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def block_mask(height: int, width: int, values: list[int], border: int = 0) -> np.ndarray:
    """Vertical bands of ``values``; an optional ``border``-pixel frame of 255 (VOC's void)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for i, value in enumerate(values):
        mask[:, i * width // len(values) : (i + 1) * width // len(values)] = value
    if border:
        mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = 255, 255, 255, 255
    return mask


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """``VOCdevkit/VOC2012`` with 3 train + 2 val ids (palette PNGs) and a 4-id train_aug."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in (
        "JPEGImages",
        "SegmentationClass",
        "SegmentationClassAug",
        "ImageSets/Segmentation",
    ):
        (voc / sub).mkdir(parents=True)
    ids = ["2007_000032", "2007_000033", "2008_000001", "2009_000010", "2010_000020", "2011_000005"]
    for i, sample_id in enumerate(ids):
        Image.fromarray(random_rgb(24, 32, i)).save(voc / "JPEGImages" / f"{sample_id}.jpg")
        mask = block_mask(24, 32, [0, 1 + i, 15], border=2)
        colorize(mask, voc_palette()).save(voc / "SegmentationClass" / f"{sample_id}.png")
        Image.fromarray(block_mask(24, 32, [0, 20 - i])).save(
            voc / "SegmentationClassAug" / f"{sample_id}.png"
        )
    seg = voc / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (seg / "val.txt").write_text("\n".join(ids[3:5]) + "\n")
    (seg / "trainval.txt").write_text("\n".join(ids[:5]) + "\n")
    aug = [ids[0], ids[1], ids[2], ids[5]]  # never the val ids, as the usual list
    (seg / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in aug)
    )
    return tmp_path


CITY_FRAMES = [
    ("aachen", "aachen_000000_000019"),
    ("aachen", "aachen_000001_000019"),
    ("bremen", "bremen_000000_000019"),
]


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """3 train frames in 2 cities with ``labelIds`` masks holding ids 0, 7, 26 and 33."""
    for split in ("train", "val"):
        for city, frame in CITY_FRAMES if split == "train" else CITY_FRAMES[:1]:
            image_dir = tmp_path / "leftImg8bit" / split / city
            label_dir = tmp_path / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_rgb(16, 32, 1)).save(image_dir / f"{frame}_leftImg8bit.png")
            labels = block_mask(16, 32, [0, 7, 26, 33])
            Image.fromarray(labels).save(label_dir / f"{frame}_gtFine_labelIds.png")
    return tmp_path


@pytest.fixture
def massroads_root(tmp_path: Path) -> Path:
    """``tiff/{train,val}`` RGB TIFF tiles with 0/255 label TIFFs; one tile has white no-data."""
    base = tmp_path / "tiff"
    for split, count in (("train", 3), ("val", 1)):
        (base / split).mkdir(parents=True)
        (base / f"{split}_labels").mkdir(parents=True)
        for i in range(count):
            image = random_rgb(40, 40, i).clip(0, 254)
            if i == 0:
                image[:, :10] = 255  # white no-data strip
            label = block_mask(40, 40, [0, 255])
            tifffile.imwrite(base / split / f"1000{i}_15.tiff", image, photometric="rgb")
            suffix = ".png" if i == 2 else ".tif"  # both label formats are in circulation
            if suffix == ".png":
                Image.fromarray(label).save(base / f"{split}_labels" / f"1000{i}_15.png")
            else:
                tifffile.imwrite(base / f"{split}_labels" / f"1000{i}_15.tif", label)
    return tmp_path


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """``images/train`` (jpg, png) + ``masks/train`` index PNGs (L and P), 3 classes."""
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    for i, name in enumerate(["a", "b", "c"]):
        suffix = ".jpg" if i == 0 else ".png"
        Image.fromarray(random_rgb(20, 30, i)).save(
            tmp_path / "images" / "train" / f"{name}{suffix}"
        )
        mask = block_mask(20, 30, [0, 1, 2, 255])
        out = colorize(mask, voc_palette(3)) if i == 1 else Image.fromarray(mask)
        out.save(tmp_path / "masks" / "train" / f"{name}.png")
    return tmp_path


@pytest.fixture
def run_doctor(capsys) -> Callable[..., tuple[int, str]]:
    """``segkit doctor ARGV`` (2 reader threads): its exit status and everything it printed."""

    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        doctor.add_arguments(parser)
        status = doctor.run(parser.parse_args(["--workers", "2", *argv]))
        captured = capsys.readouterr()
        return status, captured.out + captured.err

    return run
