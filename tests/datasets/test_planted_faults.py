"""Planted faults: each must be caught at loading time and by ``segkit doctor``, naming the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from segkit.datasets import build_dataset
from segkit.datasets.io import SampleError


def plant(folder_root, fault: str) -> str:
    """Plant ``fault`` in the folder fixture; return the name of the file that carries it."""
    images, masks = folder_root / "images" / "train", folder_root / "masks" / "train"
    if fault == "undecodable":
        (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "b.png"
    if fault == "size-mismatch":
        Image.fromarray(np.zeros((21, 30), np.uint8)).save(masks / "c.png")
        return "c.png"
    if fault == "out-of-range":
        Image.fromarray(np.full((20, 30), 7, np.uint8)).save(masks / "a.png")
        return "a.png"
    if fault == "colour-mask":
        colours = np.zeros((20, 30, 3), np.uint8)
        colours[:, 10:] = (128, 0, 0)
        Image.fromarray(colours).save(masks / "b.png")
        return "b.png"
    raise AssertionError(fault)


FAULTS = ["undecodable", "size-mismatch", "out-of-range", "colour-mask"]
FAULT_INDEX = {"undecodable": 1, "size-mismatch": 2, "out-of-range": 0, "colour-mask": 1}


@pytest.mark.parametrize("fault", FAULTS)
def test_loading_raises_naming_file_and_problem(folder_root, fault):
    name = plant(folder_root, fault)
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    with pytest.raises(SampleError, match=re.escape(name)) as info:
        dataset[FAULT_INDEX[fault]]
    assert info.value.problem.kind == fault
    if fault == "out-of-range":
        assert "[7] outside [0, 3) ∪ {255}" in str(info.value) and info.value.problem.values == (7,)
    if fault == "size-mismatch":
        assert "30x20" in str(info.value) and "30x21" in str(info.value)


@pytest.mark.parametrize("fault", FAULTS)
def test_skip_bad_samples_skips_counts_and_warns(folder_root, fault):
    plant(folder_root, fault)
    dataset = build_dataset("folder", root=folder_root, num_classes=3, skip_bad_samples=True)
    bad = FAULT_INDEX[fault]
    with pytest.warns(UserWarning, match=r"skipping bad sample \(1 so far\)"):
        _, mask = dataset[bad]
    np.testing.assert_array_equal(
        mask.numpy(), dataset.load_raw((bad + 1) % 3).mask
    )  # the next one
    assert list(dataset.bad_samples) == [bad]
    dataset[bad]  # known bad: skipped again without re-reading
    assert len(dataset.bad_samples) == 1


@pytest.mark.parametrize("fault", FAULTS)
def test_doctor_reports_each_fault_on_a_line_naming_the_file(folder_root, run_doctor, fault):
    name = plant(folder_root, fault)
    status, out = run_doctor(
        "--dataset", "folder", "--data-root", str(folder_root), "--num-classes", "3"
    )
    assert status == 1
    lines = [line for line in out.splitlines() if line.startswith(f"{fault}:")]
    assert len(lines) == 1 and name in lines[0], out
    assert re.search(rf"found 1 problem\(s\) in 1 file\(s\): 1 {fault}", out)
    if fault == "out-of-range":
        assert "out-of-range values: 7 (1 files)" in out


def test_unpaired_files_raise_and_are_reported(folder_root, run_doctor):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
        folder_root / "images" / "train" / "lonely.jpg"
    )
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder_root / "masks" / "train" / "orphan.png")
    with pytest.raises(
        ValueError, match=r"(?s)lonely\.jpg' has no mask.*orphan\.png' has no image"
    ):
        build_dataset("folder", root=folder_root, num_classes=3)
    with pytest.warns(UserWarning, match="lonely"):
        dataset = build_dataset("folder", root=folder_root, num_classes=3, skip_bad_samples=True)
    assert len(dataset) == 3 and (dataset.image_count, dataset.mask_count) == (4, 4)
    status, out = run_doctor(
        "--dataset", "folder", "--data-root", str(folder_root), "--num-classes", "3"
    )
    assert status == 1
    assert re.search(r"^unpaired: image '.*lonely\.jpg' has no mask$", out, re.M)
    assert re.search(r"^unpaired: mask '.*orphan\.png' has no image$", out, re.M)
    assert "4 images, 4 masks, 3 pairs" in out


def test_voc_missing_listed_file_and_bad_palette_index(voc_root, run_doctor):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2008_000001.jpg").unlink()
    mask = np.zeros((24, 32), np.uint8)
    mask[3, 3] = 21  # one index past the 21 classes
    Image.fromarray(mask).save(voc / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(
        ValueError,
        match=r"'2008_000001' is listed in .*train\.txt' but .*2008_000001\.jpg' is missing",
    ):
        build_dataset("voc", root=voc_root)
    status, out = run_doctor("--dataset", "voc", "--data-root", str(voc_root))
    assert status == 1
    assert re.search(r"^unpaired: '2008_000001' is listed", out, re.M)
    assert re.search(r"^out-of-range: mask '.*2007_000032\.png' has values \[21\]", out, re.M)


def test_voc_split_overlap_is_reported(voc_root, run_doctor):
    seg = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (seg / "train_aug.txt").write_text("2007_000032\n2009_000010\n")  # 2009_000010 is a val id
    status, out = run_doctor(
        "--dataset", "voc", "--data-root", str(voc_root), "--split", "train_aug"
    )
    assert status == 1 and re.search(
        r"^split-overlap: .*train_aug\.txt' lists 1 image\(s\) of the val split \(2009_000010\)",
        out,
        re.M,
    )


def test_cityscapes_bad_label_id(cityscapes_root, run_doctor):
    path = (
        cityscapes_root / "gtFine" / "train" / "bremen" / "bremen_000000_000019_gtFine_labelIds.png"
    )
    Image.fromarray(np.full((16, 32), 40, np.uint8)).save(path)
    dataset = build_dataset("cityscapes", root=cityscapes_root)
    with pytest.raises(
        SampleError, match=r"bremen_000000_000019_gtFine_labelIds\.png' has label ids \[40\]"
    ):
        dataset.load_raw(2)
    status, out = run_doctor("--dataset", "cityscapes", "--data-root", str(cityscapes_root))
    assert status == 1 and "out-of-range: mask" in out and "bremen_000000_000019" in out


def test_massroads_bad_label_value(massroads_root):
    path = massroads_root / "tiff" / "train_labels" / "10001_15.tif"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(path)
    with pytest.raises(
        SampleError, match=r"10001_15\.tif' has values \[128\].*0 \(background\) and 255"
    ):
        build_dataset("massroads", root=massroads_root).load_raw(1)


def test_doctor_clean_dataset_prints_frequencies(folder_root, run_doctor):
    status, out = run_doctor(
        "--dataset", "folder", "--data-root", str(folder_root), "--num-classes", "3"
    )
    assert status == 0 and "ok: no problems found" in out
    # each mask: 4 bands of 20 x 7 or 8 px over 30 columns: 0, 1, 2 and 255
    assert re.search(r"^\s+0\s+class_0\s+420\s+23\.33%\s+in 3 images$", out, re.M), out
    assert re.search(r"^\s+255\s+\(ignore\)\s+480\s+26\.67%", out, re.M)


def test_doctor_flags_binary_255_masks_and_absent_classes(tmp_path, run_doctor):
    for sub in ("images/train", "masks/train"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/train/x.png")
    Image.fromarray(np.array([[0, 255] * 4] * 8, np.uint8)).save(tmp_path / "masks/train/x.png")
    status, out = run_doctor(
        "--dataset", "folder", "--data-root", str(tmp_path), "--num-classes", "2"
    )
    assert status == 1 and re.search(r"^binary-255: mask '.*x\.png' holds 0 and 255", out, re.M)
    assert "classes absent from this split: class_1" in out
    status, out = run_doctor(
        "--dataset",
        "folder",
        "--data-root",
        str(tmp_path),
        "--num-classes",
        "2",
        "--binary-255",
    )
    assert status == 0, out


def test_doctor_rejects_bad_setup(tmp_path, run_doctor):
    status, out = run_doctor("--dataset", "voc", "--data-root", str(tmp_path))
    assert status == 1 and "Pascal VOC 2012 not found" in out
    status, out = run_doctor(
        "--dataset", "cityscapes", "--data-root", str(tmp_path), "--year", "2007"
    )
    assert status == 1 and "--year do(es) not apply to dataset 'cityscapes'" in out


def test_doctor_through_the_cli(capsys):
    cli = pytest.importorskip("segkit.cli")
    status = cli.main(["doctor", "--dataset", "shapes", "--length", "3", "--split", "val"])
    out = capsys.readouterr().out
    assert status == 0 and "ok: no problems found" in out and "circle" in out


def test_empty_split_fails_at_construction(tmp_path, run_doctor):
    for sub in ("images/train", "masks/train"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "images/train/notes.txt").write_text("not an image")
    with pytest.raises(
        ValueError, match=r"split 'train' has no image/mask pairs \(0 images, 0 masks"
    ):
        build_dataset("folder", root=tmp_path, num_classes=2)
    status, out = run_doctor(
        "--dataset", "folder", "--data-root", str(tmp_path), "--num-classes", "2"
    )
    assert status == 1 and "no image/mask pairs" in out


LAYOUT_FILES = {  # dataset -> (fixture, file to damage, its sample index)
    "voc": ("voc_root", "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg", 1),
    "cityscapes": (
        "cityscapes_root",
        "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
        1,
    ),
    "massroads": ("massroads_root", "tiff/train/10001_15.tiff", 1),
}


@pytest.mark.filterwarnings("ignore:Truncated File Read")
@pytest.mark.parametrize("name", sorted(LAYOUT_FILES))
def test_truncated_image_in_each_layout(request, run_doctor, name):
    fixture, relative, index = LAYOUT_FILES[name]
    root = request.getfixturevalue(fixture)
    path = root / relative
    path.write_bytes(path.read_bytes()[:60])  # a truncated download
    dataset = build_dataset(name, root=root)
    with pytest.raises(SampleError, match=re.escape(path.name)) as info:
        dataset[index]
    assert info.value.problem.kind == "undecodable"
    status, out = run_doctor("--dataset", name, "--data-root", str(root))
    assert status == 1
    assert re.search(rf"^undecodable: cannot decode image '.*{re.escape(path.name)}'", out, re.M), (
        out
    )


def test_doctor_max_samples(run_doctor):
    status, out = run_doctor("--dataset", "shapes", "--length", "5", "--max-samples", "2")
    assert status == 0 and "checked the first 2 of 5 samples" in out
    assert "over 2 valid samples" in out
