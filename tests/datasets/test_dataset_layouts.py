from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.datasets import (
    DATASETS,
    build_dataset,
    build_train_transforms,
    dataset_options,
    list_datasets,
)
from segkit.datasets.palettes import colorize


def test_registry_and_option_errors():
    assert list_datasets() == ["cityscapes", "folder", "massroads", "shapes", "voc"]
    with pytest.raises(ValueError, match=r"unknown dataset 'pascal'.*cityscapes, folder"):
        build_dataset("pascal")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['yaer'\].*'voc'.*'year'"):
        build_dataset("voc", root=".", yaer=2012)
    assert "nodata_ignore" in dataset_options("massroads")
    assert {"seed", "length", "image_size"} <= set(dataset_options("shapes"))
    for name in DATASETS:
        assert "skip_bad_samples" in dataset_options(name), name


@pytest.mark.parametrize("root_part", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_layout_and_root_variants(voc_root, root_part):
    train = build_dataset("voc", root=voc_root / root_part, split="train")
    assert len(train) == 3 and train.num_classes == 21 and train.class_names[15] == "person"
    assert train.palette[1] == (128, 0, 0)
    assert len(build_dataset("voc", root=voc_root, split="val")) == 2
    assert len(build_dataset("voc", root=voc_root, split="trainval")) == 5


def test_voc_palette_indices_and_void_border(voc_root):
    dataset = build_dataset("voc", root=voc_root, split="train")
    raw = dataset.load_raw(1)
    assert raw.name == "2007_000033" and raw.image.shape == (24, 32, 3)
    assert raw.mask[0].tolist() == [255] * 32  # void border kept as ignore
    assert set(np.unique(raw.mask).tolist()) == {0, 2, 15, 255}  # indices, not colours
    image, mask = dataset[1]
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(raw.mask).long())
    assert dataset.sample_name(1) == "2007_000033"
    assert dataset.sample_paths(1)[1].name == "2007_000033.png"


def test_voc_train_aug(voc_root):
    dataset = build_dataset("voc", root=voc_root, split="train_aug")
    assert [dataset.sample_name(i) for i in range(len(dataset))] == [
        "2007_000032", "2007_000033", "2008_000001", "2011_000005"
    ]  # fmt: skip
    assert dataset.mask_dir.name == "SegmentationClassAug"
    assert set(np.unique(dataset.load_raw(3).mask).tolist()) == {0, 15}
    assert dataset.split_checks() == []


def test_voc_train_aug_missing_names_every_path(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    (voc / "SegmentationClassAug").rename(voc / "Other")
    with pytest.raises(FileNotFoundError) as info:
        build_dataset("voc", root=voc_root, split="train_aug")
    message = str(info.value)
    for path in (
        "ImageSets/Segmentation/train_aug.txt",
        "VOC2012/SegmentationClassAug",
        "/train_aug.txt",
    ):
        assert path in message, path
    assert "SBD" in message


def test_voc_errors(voc_root):
    with pytest.raises(FileNotFoundError, match=r"VOC2007/JPEGImages"):
        build_dataset("voc", root=voc_root, year=2007)
    with pytest.raises(ValueError, match=r"2012_aug.*split='train_aug'"):
        build_dataset("voc", root=voc_root, year="2012_aug")
    with pytest.raises(ValueError, match=r"year must be one of \[2007, 2012\], got 2010"):
        build_dataset("voc", root=voc_root, year=2010)
    with pytest.raises(
        FileNotFoundError, match=r"split 'tain'.*\['train', 'train_aug', 'trainval', 'val'\]"
    ):
        build_dataset("voc", root=voc_root, split="tain")
    with pytest.raises(ValueError, match="needs a data root"):
        build_dataset("voc")


def test_voc_2007(voc_root):
    (voc_root / "VOCdevkit" / "VOC2012").rename(voc_root / "VOCdevkit" / "VOC2007")
    assert len(build_dataset("voc", root=voc_root, year=2007, split="val")) == 2
    with pytest.raises(ValueError, match="--year 2007"):
        build_dataset("voc", root=voc_root / "VOCdevkit" / "VOC2007", year=2012)


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root):
    dataset = build_dataset("cityscapes", root=cityscapes_root, split="train")
    assert (
        len(dataset) == 3
        and len(build_dataset("cityscapes", root=cityscapes_root, split="val")) == 1
    )
    assert dataset.num_classes == 19 and dataset.class_names[13] == "car"
    assert dataset.sample_name(2) == "bremen_000000_000019"
    mask = dataset.load_raw(0).mask
    # bands of label ids 0, 7, 26, 33 -> 255, road 0, car 13, bicycle 18
    assert mask[0, ::8].tolist() == [255, 0, 13, 18]


def test_cityscapes_prefers_train_id_files(cityscapes_root):
    folder = cityscapes_root / "gtFine" / "train" / "aachen"
    train_ids = np.full((16, 32), 5, dtype=np.uint8)
    Image.fromarray(train_ids).save(folder / "aachen_000000_000019_gtFine_labelTrainIds.png")
    dataset = build_dataset("cityscapes", root=cityscapes_root, split="train")
    assert (dataset.load_raw(0).mask == 5).all()
    assert dataset.load_raw(1).mask[0, 8] == 0  # others still from label ids


def test_cityscapes_missing_split_names_the_path(cityscapes_root):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/test"):
        build_dataset("cityscapes", root=cityscapes_root, split="test")


def test_massroads_tiff_pairs_and_road_class(massroads_root):
    dataset = build_dataset("massroads", root=massroads_root, split="train")
    assert len(dataset) == 3 and dataset.class_names == ["background", "road"]
    assert len(build_dataset("massroads", root=massroads_root / "tiff", split="val")) == 1
    for i in range(3):
        mask = dataset.load_raw(i).mask
        assert mask[0, :20].tolist() == [0] * 20 and mask[0, 20:].tolist() == [1] * 20
    image, mask = dataset[2]  # the .png label
    assert image.shape == (3, 40, 40) and set(mask.unique().tolist()) == {0, 1}


def test_massroads_nodata_ignore(massroads_root):
    dataset = build_dataset("massroads", root=massroads_root, split="train", nodata_ignore=True)
    mask = dataset.load_raw(0).mask
    assert (mask[:, :10] == 255).all() and (mask[:, 10:20] == 0).all() and (mask[:, 20:] == 1).all()
    assert not (dataset.load_raw(1).mask == 255).any()


def test_folder_pairs_by_stem_with_index_masks(folder_root):
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    assert len(dataset) == 3 and dataset.class_names == ["class_0", "class_1", "class_2"]
    for i in range(3):  # L and P masks read alike
        assert dataset.load_raw(i).mask[0, ::8].tolist() == [0, 1, 2, 255]
    named = build_dataset("folder", root=folder_root, class_names="sky, tree, road")
    assert named.class_names == ["sky", "tree", "road"]


def test_folder_class_arguments_are_checked(folder_root):
    with pytest.raises(ValueError, match="num_classes=N"):
        build_dataset("folder", root=folder_root)
    with pytest.raises(ValueError, match=r"num_classes=4 but 3 class names"):
        build_dataset("folder", root=folder_root, num_classes=4, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"binary_255=True needs exactly 2 classes"):
        build_dataset("folder", root=folder_root, num_classes=3, binary_255=True)
    with pytest.raises(FileNotFoundError, match=r"images/val.*splits found: \['train'\]"):
        build_dataset("folder", root=folder_root, split="val", num_classes=3)


def test_folder_colour_masks_with_palette_file(folder_root, tmp_path):
    palette = {"sky": [0, 0, 255], "road": [128, 64, 128], "ignore": [255, 255, 255]}
    (tmp_path / "classes.json").write_text(json.dumps(palette))
    colours = np.array([[0, 0, 255], [128, 64, 128], [255, 255, 255], [1, 2, 3]], dtype=np.uint8)
    labels = np.array([[0, 1, 2, 3]]).repeat(20, 0).repeat(30 // 4 + 1, 1)[:, :30]
    Image.fromarray(colours[labels]).save(folder_root / "masks" / "train" / "c.png")
    dataset = build_dataset(
        "folder", root=folder_root, palette_file=tmp_path / "classes.json", num_classes=2
    )
    assert dataset.class_names == ["sky", "road"] and dataset.palette == [
        (0, 0, 255),
        (128, 64, 128),
    ]
    raw = dataset.load_raw(2)
    assert raw.mask[0, ::8].tolist() == [0, 1, 255, 255]
    assert [w.kind for w in raw.warnings] == [
        "unknown-colour"
    ]  # (1, 2, 3) only, not the ignore colour
    assert "(1, 2, 3)" in raw.warnings[0].message
    with pytest.warns(UserWarning, match="not in the palette"):
        dataset[2]


def test_folder_binary_255(tmp_path):
    for sub in ("images/train", "masks/train"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/train/x.png")
    Image.fromarray(np.array([[0, 255] * 4] * 8, np.uint8)).save(tmp_path / "masks/train/x.png")
    explicit = build_dataset("folder", root=tmp_path, num_classes=2, binary_255=True)
    assert explicit.load_raw(0).mask[0, :2].tolist() == [0, 1]
    implicit = build_dataset("folder", root=tmp_path, num_classes=2)
    raw = implicit.load_raw(0)
    assert raw.mask[0, :2].tolist() == [0, 255] and raw.warnings[0].kind == "binary-255"
    assert "binary_255=True" in raw.warnings[0].hint


def test_shapes_is_deterministic_and_splits_differ():
    a = build_dataset("shapes", split="train", seed=3, length=6, image_size=64)
    b = build_dataset("shapes", split="train", seed=3, length=6, image_size=64)
    later_first = b.load_raw(5)  # random access order must not matter
    np.testing.assert_array_equal(a.load_raw(5).image, later_first.image)
    for i in range(6):
        np.testing.assert_array_equal(a.load_raw(i).image, b.load_raw(i).image)
        np.testing.assert_array_equal(a.load_raw(i).mask, b.load_raw(i).mask)
    val = build_dataset("shapes", split="val", seed=3, length=6, image_size=64)
    other_seed = build_dataset("shapes", split="train", seed=4, length=6, image_size=64)
    assert not np.array_equal(a.load_raw(0).image, val.load_raw(0).image)
    assert not np.array_equal(a.load_raw(0).image, other_seed.load_raw(0).image)
    assert not np.array_equal(a.load_raw(0).image, a.load_raw(1).image)


def test_shapes_content():
    dataset = build_dataset("shapes", split="train", length=40, image_size=(64, 80))
    assert (
        len(dataset) == 40 and dataset.num_classes == 6 and dataset.class_names[0] == "background"
    )
    assert build_dataset("shapes", split="val").__len__() == 100
    counts = np.zeros(256, dtype=np.int64)
    for i in range(len(dataset)):
        raw = dataset.load_raw(i)
        assert raw.image.shape == (64, 80, 3) and raw.mask.shape == (64, 80)
        counts += np.bincount(raw.mask.ravel(), minlength=256)
    assert (counts[:6] > 0).all() and counts[6:].sum() == 0
    assert 0.1 < counts[1:6].sum() / counts.sum() < 0.6  # shapes cover a fair share, not all
    # Colour is not the class: the mean colour of a class's pixels varies widely across samples.
    raws = [dataset.load_raw(i) for i in range(40)]
    colours = np.array([r.image[r.mask == 1].mean(0) for r in raws if (r.mask == 1).any()])
    assert len(colours) > 10
    assert colours.std(0).min() > 30
    image, mask = dataset[0]
    assert image.shape == (3, 64, 80) and mask.dtype == torch.int64
    assert dataset.sample_name(7) == "shapes_train_000007" and dataset.sample_paths(7) == (
        None,
        None,
    )


def test_dataloader_collates_batches():
    dataset = build_dataset("shapes", split="val", length=4, image_size=32)
    images, masks = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32)
    assert type(images) is torch.Tensor and masks.dtype == torch.int64


def test_colorized_prediction_reads_back(tmp_path, voc_root):
    dataset = build_dataset("voc", root=voc_root, split="val")
    mask = dataset.load_raw(0).mask
    colorize(mask, dataset.palette).save(tmp_path / "pred.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred.png")), mask)


def test_datasets_pickle_for_spawned_workers(cityscapes_root):
    dataset = build_dataset("cityscapes", root=cityscapes_root, transform=build_train_transforms(8))
    clone = pickle.loads(pickle.dumps(dataset))
    torch.manual_seed(0)
    image, mask = dataset[0]
    torch.manual_seed(0)
    image2, mask2 = clone[0]
    assert torch.equal(image, image2) and torch.equal(mask, mask2)
