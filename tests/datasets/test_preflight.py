"""The pre-flight check: planted faults caught before training, bad samples skipped, the cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.datasets import build_dataset, io
from segkit.datasets.folder import BINARY_HINT
from segkit.datasets.io import SampleError
from segkit.datasets.preflight import PreflightError, default_cache_dir, preflight


@pytest.fixture
def mask_reads(monkeypatch) -> list[Path]:
    """Every mask file decoded from now on (all masks go through ``io._decode``)."""
    reads: list[Path] = []
    decode = io._decode

    def counting(path: Path, *, as_mask: bool):
        if as_mask:
            reads.append(path)
        return decode(path, as_mask=as_mask)

    monkeypatch.setattr(io, "_decode", counting)
    return reads


def plant(root: Path, fault: str) -> tuple[str, str]:
    """Plant ``fault`` in the folder fixture; return the damaged file's name and problem kind."""
    images, masks = root / "images" / "train", root / "masks" / "train"
    if fault == "out-of-range":
        Image.fromarray(np.full((20, 30), 7, np.uint8)).save(masks / "a.png")
        return "a.png", "out-of-range"
    if fault == "size-mismatch":
        Image.fromarray(np.zeros((21, 30), np.uint8)).save(masks / "c.png")
        return "c.png", "size-mismatch"
    if fault == "undecodable-mask":
        (masks / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "b.png", "undecodable"
    if fault == "colour-mask":
        colours = np.zeros((20, 30, 3), np.uint8)
        colours[:, 10:] = (128, 0, 0)
        Image.fromarray(colours).save(masks / "b.png")
        return "b.png", "colour-mask"
    if fault == "missing-image":
        (images / "c.png").unlink()
        return "c.png", "undecodable"
    if fault == "image-header":
        (images / "a.jpg").write_bytes(b"not a jpeg at all")
        return "a.jpg", "undecodable"
    raise AssertionError(fault)


FAULTS = [
    "out-of-range",
    "size-mismatch",
    "undecodable-mask",
    "colour-mask",
    "missing-image",
    "image-header",
]


@pytest.mark.parametrize("fault", FAULTS)
def test_planted_fault_is_refused_naming_the_file_and_the_fix(folder_root, fault):
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    name, kind = plant(folder_root, fault)  # after construction, as a file damaged since
    with pytest.raises(ValueError) as info:
        preflight(dataset, skip_bad=False)
    message = str(info.value)
    assert re.search(rf"^{kind}: .*{re.escape(name)}", message, re.M), message
    assert message.startswith("pre-flight: 1 of 3 samples of FolderDataset split 'train' are bad")
    assert "--skip-bad-samples" in message
    doctor_line = f"segkit doctor --dataset folder --data-root {folder_root} --split train"
    assert f"`{doctor_line} --num-classes 3` lists them all" in message
    index = [files.name for files in dataset.files].index(Path(name).stem)
    with pytest.raises(SampleError) as loading:  # the rule the loader applies
        dataset.load_raw(index)
    assert (loading.value.problem.kind, loading.value.problem.path) == (
        info.value.report.bad[0].kind,
        info.value.report.bad[0].path,
    )


@pytest.mark.parametrize("fault", FAULTS)
def test_skip_bad_removes_exactly_the_bad_sample(folder_root, fault):
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    name, kind = plant(folder_root, fault)
    report = preflight(dataset, skip_bad=True)
    stem = Path(name).stem
    assert len(dataset) == 2 and stem not in [files.name for files in dataset.files]
    assert report.skipped == 1 and [p.kind for p in report.bad] == [kind]
    assert Path(report.bad[0].path).stem == stem
    assert report.summary() == "pre-flight: 3 samples checked, 1 bad skipped"
    for index in range(len(dataset)):
        dataset[index]  # every remaining sample loads


def test_long_listing_shows_20_lines_and_each_hint_once(tmp_path):
    for sub in ("images/train", "masks/train"):
        (tmp_path / sub).mkdir(parents=True)
    for i in range(24):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"images/train/{i:02d}.png")
        Image.fromarray(np.full((4, 4), 0 if i == 0 else 9, np.uint8)).save(
            tmp_path / f"masks/train/{i:02d}.png"
        )
    dataset = build_dataset("folder", root=tmp_path, num_classes=3)
    with pytest.raises(PreflightError) as info:
        preflight(dataset, skip_bad=False)
    lines = str(info.value).splitlines()
    assert len([line for line in lines if line.startswith("out-of-range: ")]) == 20
    assert "... and 3 more" in lines and len(info.value.report.bad) == 23
    assert len([line for line in lines if line.startswith("hint: ")]) == 1
    assert lines[-1].startswith("Fix: pass --skip-bad-samples")
    report = preflight(dataset, skip_bad=True)  # 23 bad, from the cache this time
    assert len(dataset) == 1 and report.skipped == 23 and report.from_cache == 24


def test_every_sample_bad_is_refused_even_when_skipping(folder_root):
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((20, 30), 5, np.uint8)).save(
            folder_root / f"masks/train/{name}.png"
        )
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    with pytest.raises(PreflightError, match=r"all 3 samples of FolderDataset split 'train'"):
        preflight(dataset, skip_bad=True)
    assert len(dataset) == 3


LAYOUTS = {  # fixture, options, mask values after label mapping
    "voc": ("voc_root", {}, {0, 1, 2, 3, 15, 255}),
    "cityscapes": ("cityscapes_root", {}, {0, 13, 18, 255}),  # ids 0, 7, 26, 33 -> train ids
    "massroads": ("massroads_root", {"nodata_ignore": True}, {0, 1}),  # no-data: not checked
    "folder": ("folder_root", {"num_classes": 3}, {0, 1, 2, 255}),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_clean_layouts_pass_and_report_mapped_values(request, name):
    fixture, options, values = LAYOUTS[name]
    dataset = build_dataset(name, root=request.getfixturevalue(fixture), **options)
    report = preflight(dataset, skip_bad=False)
    assert (report.samples, report.checked, report.from_cache) == (3, 3, 0)
    assert report.bad == [] and report.skipped == 0 and report.values == values


def test_cityscapes_label_ids_are_checked_before_mapping(cityscapes_root):
    path = cityscapes_root / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((16, 32), 40, np.uint8)).save(path)
    with pytest.raises(
        PreflightError, match=r"(?m)^out-of-range: mask '.*bremen_.*' has label ids \[40\]"
    ):
        preflight(build_dataset("cityscapes", root=cityscapes_root), skip_bad=False)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_massroads_tiff_header_and_label_values(massroads_root):
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(
        massroads_root / "tiff/train_labels/10001_15.tif"
    )
    tile = massroads_root / "tiff/train/10002_15.tiff"
    tile.write_bytes(b"II*\x00garbage")  # a TIFF signature and nothing readable
    dataset = build_dataset("massroads", root=massroads_root)
    report = preflight(dataset, skip_bad=True)
    assert [(p.kind, Path(p.path).name) for p in report.bad] == [
        ("out-of-range", "10001_15.tif"),
        ("undecodable", "10002_15.tiff"),
    ]
    assert "tifffile:" in report.bad[1].message and len(dataset) == 1


@pytest.mark.filterwarnings("ignore:Truncated File Read")
def test_image_pixels_are_not_decoded(folder_root):
    image = folder_root / "images/train/a.jpg"
    image.write_bytes(image.read_bytes()[:-300])  # the header is intact, the pixel data is not
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    assert preflight(dataset, skip_bad=False).bad == []  # left to the loader's clean error
    with pytest.raises(SampleError, match="a.jpg"):
        dataset.load_raw(0)


def test_generated_dataset_is_skipped():
    dataset = build_dataset("shapes", split="val", length=3)
    report = preflight(dataset, skip_bad=False)
    assert (report.samples, report.checked, len(dataset)) == (3, 0, 3)
    assert report.cache_file is None and "no files to check" in report.summary()


def test_split_checks_become_notes(voc_root):
    seg = voc_root / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    (seg / "train_aug.txt").write_text("2007_000032\n2009_000010\n")  # 2009_000010 is a val id
    report = preflight(build_dataset("voc", root=voc_root, split="train_aug"), skip_bad=False)
    assert [note.kind for note in report.notes] == ["split-overlap"]


# The cache


def test_second_run_reads_no_file(folder_root, mask_reads, monkeypatch):
    first = preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)
    assert len(mask_reads) == 3 and first.from_cache == 0
    assert first.cache_file.parent == Path(os.environ["SEGKIT_CACHE"]) / "preflight"
    headers = []
    monkeypatch.setattr(
        "segkit.datasets.preflight.read_image_size", lambda path: headers.append(path)
    )
    second = preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)
    assert len(mask_reads) == 3 and headers == []
    assert (second.checked, second.from_cache, second.values) == (3, 3, first.values)


def test_cache_file_follows_the_umask(folder_root):
    previous = os.umask(0o027)
    try:
        report = preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)
    finally:
        os.umask(previous)
    assert report.cache_file.stat().st_mode & 0o777 == 0o640


def test_touched_file_is_checked_again(folder_root, mask_reads):
    preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)
    mask = folder_root / "masks/train/b.png"
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(mask)  # changed since: bad now
    os.utime(mask, ns=(0, mask.stat().st_mtime_ns + 10**9))
    mask_reads.clear()
    with pytest.raises(PreflightError, match=r"b\.png' has values \[7\]") as info:
        preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)
    assert mask_reads == [mask] and info.value.report.from_cache == 2
    image = folder_root / "images/train/c.png"
    os.utime(image, ns=(0, image.stat().st_mtime_ns + 10**9))
    mask_reads.clear()
    report = preflight(build_dataset("folder", root=folder_root, num_classes=8), skip_bad=True)
    assert report.from_cache == 0  # another class count: another cache
    report = preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=True)
    assert report.from_cache == 2 and report.skipped == 1  # c.png's image was touched


def test_changed_option_changes_the_verdict(folder_root):
    Image.fromarray(np.full((20, 30), 3, np.uint8)).save(folder_root / "masks/train/a.png")
    with pytest.raises(PreflightError, match="a.png"):
        preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)
    report = preflight(build_dataset("folder", root=folder_root, num_classes=4), skip_bad=False)
    assert report.bad == [] and report.from_cache == 0 and 3 in report.values
    with pytest.raises(PreflightError, match="a.png"):  # the first cache still holds its verdict
        preflight(build_dataset("folder", root=folder_root, num_classes=3), skip_bad=False)


@pytest.mark.parametrize("damage", ["garbage", "torn", "wrong-shape", "bad-entry"])
def test_corrupt_cache_is_ignored_and_rebuilt(folder_root, mask_reads, damage):
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    cache = preflight(dataset, skip_bad=False).cache_file
    text = cache.read_text()
    if damage == "garbage":
        cache.write_bytes(b"\x00\xff not json")
    elif damage == "torn":
        cache.write_text(text[: len(text) // 2])
    elif damage == "wrong-shape":
        cache.write_text(json.dumps({"header": json.loads(text)["header"], "entries": [1, 2]}))
    else:
        data = json.loads(text)
        for entry in data["entries"].values():
            entry["bad"] = ["only", "two"]
        cache.write_text(json.dumps(data))
    mask_reads.clear()
    report = preflight(dataset, skip_bad=False)
    assert report.bad == [] and report.from_cache == 0 and len(mask_reads) == 3
    assert preflight(dataset, skip_bad=False).from_cache == 3  # rebuilt


def test_failed_cache_write_keeps_the_old_file_and_no_temp(folder_root, monkeypatch):
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    cache = preflight(dataset, skip_bad=False).cache_file
    before = cache.read_bytes()
    mask = folder_root / "masks/train/a.png"
    os.utime(mask, ns=(0, mask.stat().st_mtime_ns + 10**9))

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.warns(UserWarning, match="pre-flight results not cached.*No space left"):
        report = preflight(dataset, skip_bad=False)
    assert report.bad == [] and report.from_cache == 2
    assert cache.read_bytes() == before and list(cache.parent.iterdir()) == [cache]


def test_unusable_cache_folder_warns_and_still_checks(folder_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dataset = build_dataset("folder", root=folder_root, num_classes=3)
    with pytest.warns(UserWarning, match="pre-flight results not cached"):
        report = preflight(dataset, skip_bad=False, cache_dir=blocker)
    assert report.checked == 3 and report.bad == []


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir() == Path(os.environ["SEGKIT_CACHE"])
    monkeypatch.delenv("SEGKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "segkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "segkit"


# Binary 0/255 masks


@pytest.fixture
def binary_root(tmp_path: Path) -> Path:
    for sub in ("images/train", "masks/train"):
        (tmp_path / sub).mkdir(parents=True)
    for name in ("x", "y"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"images/train/{name}.png")
        mask = np.array([[0, 255] * 4] * 8, np.uint8)
        Image.fromarray(mask).save(tmp_path / f"masks/train/{name}.png")
    return tmp_path


@pytest.mark.parametrize("skip_bad", [False, True])
def test_binary_0_255_masks_are_refused_with_the_flag(binary_root, skip_bad):
    dataset = build_dataset("folder", root=binary_root, num_classes=2)
    with pytest.raises(PreflightError) as info:
        preflight(dataset, skip_bad=skip_bad)
    message = str(info.value)
    assert re.search(
        r"^binary-255: every mask of split 'train' holds only 0 and 255", message, re.M
    )
    assert "add --binary-255" in message and "--skip-bad-samples" not in message
    explicit = build_dataset("folder", root=binary_root, num_classes=2, binary_255=True)
    report = preflight(explicit, skip_bad=skip_bad)
    assert report.values == {0, 1} and report.from_cache == 0  # binary_255 is in the cache key


def test_binary_hint_is_one_flag_for_train_and_doctor(binary_root, run_doctor):
    assert "--binary-255" in BINARY_HINT and "--set" not in BINARY_HINT
    with pytest.raises(PreflightError) as info:
        preflight(build_dataset("folder", root=binary_root, num_classes=2), skip_bad=False)
    hint = next(line for line in str(info.value).splitlines() if line.startswith("hint: "))
    status, out = run_doctor(
        "--dataset", "folder", "--data-root", str(binary_root), "--num-classes", "2"
    )
    assert status == 1 and hint in out.splitlines()
    assert re.search(r"^binary-255: every mask of split 'train' holds only 0 and 255", out, re.M)


def test_binary_refusal_with_other_class_counts_and_real_classes(binary_root):
    with pytest.raises(PreflightError, match="add --num-classes 2 --binary-255"):
        preflight(build_dataset("folder", root=binary_root, num_classes=3), skip_bad=False)
    Image.fromarray(np.array([[0, 1] * 4] * 8, np.uint8)).save(binary_root / "masks/train/y.png")
    report = preflight(build_dataset("folder", root=binary_root, num_classes=2), skip_bad=False)
    assert report.values == {0, 1, 255} and report.bad == []  # class 1 is present: accepted
    assert [note.kind for note in report.notes] == ["binary-255"]  # x.png is still flagged
