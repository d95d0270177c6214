"""`segkit eval --save-dir`: each image's mask and per-image scores (checked against IoU computed
here in NumPy), the ten worst images, and the --json record of what produced the numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segkit
from segkit.checkpoint import load_model, model_spec, save_checkpoint
from segkit.cli import main
from segkit.config import Config
from segkit.datasets import SHAPE_CLASSES, SHAPE_PALETTE
from segkit.engine.data import build_val_dataset
from segkit.engine.image_scores import ImageScore, unique_names, worst, write_csv
from segkit.engine.inference import predict_logits

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONFIG = {"data": {"dataset": "shapes", "val_length": 13, "image_size": 40, "workers": 0}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained 6-class checkpoint of a shapes run, recording iteration 7."""
    torch.manual_seed(0)
    meta = {"class_names": list(SHAPE_CLASSES), "palette": [list(c) for c in SHAPE_PALETTE],
            "mean": MEAN, "std": STD, "ignore_index": 255}  # fmt: skip
    model = segkit.create_model("fcn", backbone="mobilenet_v2", num_classes=6, meta=meta)
    # An untrained model's logits barely vary (the bias decides): make the last convolution a
    # random projection of standardised features, so images score differently.
    last = model.classifier[-1]
    seen = {}
    hook = last.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 40, 40))
        hook.remove()
        mean, std = seen["x"].mean((0, 2, 3)), seen["x"].std((0, 2, 3)).clamp_min(1e-4)
        weight = torch.randn(6, len(mean)) / len(mean) ** 0.5 / std
        last.weight.copy_(weight[:, :, None, None])
        last.bias.copy_(-weight @ mean + torch.tensor([2.0, 0, 0, 0, 0, 0]))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    payload = {**model_spec(model), "state_dict": model.state_dict(), "config": CONFIG}
    save_checkpoint(path, {**payload, "iteration": 7})
    return path


def _scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float | None]:
    """IoU per class, their mean over classes in either map, and pixel accuracy, by hand."""
    valid = target != 255
    row: dict[str, float | None] = {}
    for index, name in enumerate(SHAPE_CLASSES):
        inter = ((pred == index) & (target == index) & valid).sum()
        union = (((pred == index) | (target == index)) & valid).sum()
        row[f"iou_{name}"] = inter / union if union else None
    defined = [v for v in row.values() if v is not None]
    return {"mIoU": sum(defined) / len(defined), "pixel_acc": (pred == target)[valid].mean(), **row}


def test_save_dir_writes_each_mask_its_scores_and_the_worst(ckpt, tmp_path, capsys) -> None:
    save, report = tmp_path / "preds", tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(ckpt), "--flip", "--save-dir", str(save),
            "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    dataset = build_val_dataset(Config.from_dict(CONFIG))
    names = [dataset.sample_name(i) for i in range(len(dataset))]
    assert sorted(p.name for p in save.iterdir()) == sorted(
        [f"{name}.png" for name in names] + ["per_image.csv"]
    )
    with (save / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = ["image", "mIoU", "pixel_acc", *(f"iou_{name}" for name in SHAPE_CLASSES)]
    assert list(rows[0]) == columns
    assert [row["image"] for row in rows] == names  # one row per image, in order

    model = load_model(ckpt)  # the plain eval-mode model, not the fast path eval runs
    for index, row in enumerate(rows):
        image, target = dataset[index]
        written = Image.open(save / f"{names[index]}.png")
        assert written.mode == "P"
        pred = np.asarray(written)
        expected = predict_logits(model, image[None], flip=True).argmax(1)[0].numpy()
        assert (pred == expected).mean() > 0.999
        for key, value in _scores(pred, target.numpy()).items():
            if value is None:
                assert row[key] == "", (index, key)
            else:
                assert float(row[key]) == pytest.approx(float(value), abs=1e-6), (index, key)
    mious = {row["image"]: float(row["mIoU"]) for row in rows}
    assert len(set(mious.values())) > 3  # the images really score differently

    text = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(text) if "worst image(s) by mIoU" in line)
    listed = [line.split()[-1] for line in text[start + 2 : start + 12]]
    assert text[start].startswith("10 worst") and len(set(listed)) == 10
    values = [mious[name] for name in listed]
    assert values == sorted(values)
    assert max(values) <= min(v for name, v in mious.items() if name not in listed)

    record = json.loads(report.read_text())
    assert record["checkpoint"] == str(ckpt) and record["iteration"] == 7
    assert record["inference"] == {
        "mode": "whole", "window": None, "stride": None, "scales": [1.0], "flip": True,
        "runtime": "torch", "precision": "fp32", "compile": False, "onnx": None,
    }  # fmt: skip
    assert set(record["per_class_acc"]) == set(SHAPE_CLASSES)
    assert {"mIoU", "pixel_acc", "mean_acc", "fw_iou", "per_class_iou"} <= set(record)
    assert (record["dataset"], record["split"], record["images"]) == ("shapes", "val", 13)


def test_save_dir_that_cannot_be_a_folder_is_refused_first(ckpt, tmp_path, capsys) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert main(["eval", "--checkpoint", str(ckpt), "--save-dir", str(a_file / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-dir" in err[0] and "not a directory" in err[0]
    assert a_file.read_text() == "keep me"


def _score(name: str, miou: float, acc: float = 0.5) -> ImageScore:
    return ImageScore(name, miou, acc, {"a": None if math.isnan(miou) else miou, "b": None})


def test_worst_skips_unlabelled_images_and_breaks_ties() -> None:
    scores = [_score("x", 0.5), _score("y", math.nan), _score("z", 0.2), _score("w", 0.5, 0.1)]
    assert [s.name for s in worst(scores, 3)] == ["z", "w", "x"]
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a_2", "a_3"]


def test_csv_leaves_undefined_values_empty(tmp_path) -> None:
    path = tmp_path / "scores.csv"
    write_csv(path, [_score("x", 0.25), _score("y", math.nan)], ["a", "b"])
    assert path.read_text().splitlines() == [
        "image,mIoU,pixel_acc,iou_a,iou_b",
        "x,0.250000,0.500000,0.250000,",
        "y,,0.500000,,",
    ]
