"""The run report (RUN/report.html, `segkit report`): one page with everything inside, whose
numbers are metrics.jsonl's and whose samples are the validation's best and worst images
(checked against `segkit eval --save-dir`), refreshed at each validation, and never a reason
for training to stop. No browser needed: the page is parsed (tools/check_report.py renders it
in Chromium)."""

from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runkit import read_jsonl, train

from segkit.checkpoint import load_checkpoint, load_model
from segkit.cli import main
from segkit.config import Config
from segkit.engine import report as report_module
from segkit.engine.data import build_val_dataset
from segkit.engine.report_html import training_seconds
from segkit.engine.run_report import read_log, read_train_curves
from segkit.engine.val_samples import SamplePicker, load_picks
from segkit.metrics import SegmentationMetrics
from segkit.visualize import ERROR_COLOUR, error_map

SECTIONS = ["summary", "recipe", "curves", "classes", "confusion", "samples", "validations"]
VOID = {"img", "meta", "br", "hr", "link", "input", "source"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(k) == v for k, v in wanted.items()
            ):
                found.append(child)
            found += child.find_all(tag, **attrs)
        return found

    def value(self) -> float:
        return float(self.attrs["data-value"])

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text += data


def parse(path: Path) -> Node:
    builder = _TreeBuilder()
    builder.feed(path.read_text())
    return builder.root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One tiny run (4 iterations, validations at 2 and 4), recording each report write."""
    work = tmp_path_factory.mktemp("report") / "run"
    writes = []
    original = report_module.write_report

    def spy(run_dir: Path, out: Path | None = None, **known) -> Path:
        path = original(run_dir, out, **known)
        writes.append(read_jsonl(run_dir / "metrics.jsonl")[-1]["iter"])
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_module, "write_report", spy)
        assert train(work, "--iters", "4", "--val-interval", "2",
                     "--set", "train.log_interval=1") == 0  # fmt: skip
    return {"work": work, "writes": writes, "records": read_jsonl(work / "metrics.jsonl")}


def test_the_report_is_one_self_contained_page(run) -> None:
    path = run["work"] / "report.html"
    text = path.read_text()
    page = parse(path)
    assert [s.attrs["id"] for s in page.find_all("section")] == SECTIONS
    assert "http://" not in text and "https://" not in text
    assert not page.find_all("script") and not page.find_all("link")
    references = [n.attrs.get("src") or n.attrs.get("href") for n in page.find_all()]
    assert all(ref.startswith("data:") for ref in references if ref is not None)
    images = page.find_all("img")
    assert len(images) == 1 + 8 * 4  # the curves, then 8 samples of 4 panels
    for image in images:
        src = image.attrs["src"]
        assert src.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        decoded.load()
        assert min(decoded.size) > 0
    assert run["work"].name in page.find_all("h1")[0].text
    # The recipe's key values and the whole config.yaml.
    settings = page.find_all("dl", id="key-settings")[0]
    pairs = zip(settings.find_all("dt"), settings.find_all("dd"), strict=True)
    shown = {dt.text: dd.text for dt, dd in pairs}
    assert shown["model.name"] == "deeplabv3plus" and shown["train.iters"] == "4"
    assert "val_length: 8" in page.find_all("pre")[0].text


def test_the_report_shows_the_numbers_of_metrics_jsonl(run) -> None:
    page = parse(run["work"] / "report.html")
    records = run["records"]
    last, best = records[-1], max(records, key=lambda r: r["mIoU"])
    assert page.find_all(data_key="best-mIoU")[0].value() == best["mIoU"]
    assert page.find_all(data_key="last-mIoU")[0].value() == last["mIoU"]
    assert page.find_all(data_key="last-pixel_acc")[0].value() == last["pixel_acc"]
    summary = page.find_all("section", id="summary")[0].all_text()
    assert "4 of 4" in summary and "finished" in summary and "at iteration 4" in summary
    for index, name in enumerate(last["per_class_iou"]):
        for key, values in (("iou", last["per_class_iou"]), ("acc", last["per_class_acc"])):
            (cell,) = page.find_all("td", data_key=f"{key}-{index}")
            if values[name] is None:
                assert "data-value" not in cell.attrs and cell.text == "-"
            else:
                assert cell.value() == values[name]
    rows = page.find_all("table", id="validation-table")[0].find_all("tr")[1:]
    assert [int(r.attrs["data-iter"]) for r in rows] == [r["iter"] for r in records]
    for row, record in zip(rows, records, strict=True):
        for key in ("mIoU", "pixel_acc", "mean_acc", "fw_iou"):
            assert row.find_all("td", data_key=key)[0].value() == record[key]
    # The confusion matrix: row-normalised record["confusion"], which is the validation's own
    # (its metrics computed again from it are the record's).
    matrix = np.array(last["confusion"], dtype=np.float64)
    again = SegmentationMetrics(len(matrix), class_names=list(last["per_class_iou"]))
    again.matrix.copy_(torch.from_numpy(matrix).long())
    assert again.compute()["mIoU"] == pytest.approx(last["mIoU"], abs=1e-12)
    assert again.per_class_acc() == pytest.approx(last["per_class_acc"])
    table = page.find_all("table", id="confusion-table")[0]
    for i, row in enumerate(table.find_all("tr")[1:]):
        cells = row.find_all("td")
        if matrix[i].sum() == 0:
            assert all(c.text == "-" for c in cells)
        else:
            shown = [c.value() for c in cells]
            assert shown == pytest.approx(list(matrix[i] / matrix[i].sum()), abs=1e-12)


def test_samples_are_the_best_and_worst_images_of_the_last_validation(run) -> None:
    work = run["work"]
    picks = load_picks(work / "val_samples.npz")
    assert picks is not None and picks.iteration == 4
    # 8 validation images, 4 best and 4 worst: each image once.
    assert sorted(t.index for t in picks.best + picks.worst) == list(range(8))
    assert [t.miou for t in picks.worst] == sorted(t.miou for t in picks.worst)
    assert [t.miou for t in picks.best] == sorted((t.miou for t in picks.best), reverse=True)
    assert max(t.miou for t in picks.worst) <= min(t.miou for t in picks.best)
    # The model of last.pt (iteration 4) on the validation images, scored here in NumPy.
    checkpoint = load_checkpoint(work / "checkpoints" / "last.pt")
    model = load_model(work / "checkpoints" / "last.pt")
    dataset = build_val_dataset(Config.from_dict(checkpoint["config"]))
    images, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    with torch.no_grad():
        preds = model(torch.stack(images))["out"].argmax(1).numpy()
    scores = {}
    for index, (pred, mask) in enumerate(zip(preds, masks, strict=True)):
        mask = mask.numpy()
        scores[dataset.sample_name(index)] = (_miou(pred, mask, 6), pred, mask)
    for thumb in picks.best + picks.worst:
        miou, pred, mask = scores[thumb.name]
        assert thumb.image.shape == (48, 48, 3)  # 48 px: no thumbnail shrinking
        assert np.array_equal(thumb.truth, mask)
        # Its score is its own prediction's; that prediction is the model's (memory format
        # and batching may move a near-tie pixel).
        assert thumb.miou == pytest.approx(_miou(thumb.prediction, mask, 6), abs=1e-12)
        assert (thumb.prediction == pred).mean() > 0.99
        assert thumb.miou == pytest.approx(miou, abs=0.02)
    scores = {name: miou for name, (miou, _, _) in scores.items()}
    lowest = sorted(scores.values())[:4]
    assert [t.miou for t in picks.worst] == pytest.approx(lowest, abs=0.02)
    # The page shows them in that order, worst first.
    page = parse(work / "report.html")
    for group in ("worst", "best"):
        figures = page.find_all("div", id=group)[0].find_all("figure")
        wanted = [t.miou for t in getattr(picks, group)]
        assert [float(f.attrs["data-miou"]) for f in figures] == wanted


def _miou(pred: np.ndarray, target: np.ndarray, classes: int) -> float:
    """Mean IoU over the classes in either map, labelled pixels only."""
    valid = target != 255
    ious = []
    for c in range(classes):
        union = (((pred == c) | (target == c)) & valid).sum()
        if union:
            ious.append(((pred == c) & (target == c) & valid).sum() / union)
    return float(np.mean(ious))


def test_the_report_is_written_at_each_validation_and_at_the_end(run) -> None:
    assert run["writes"] == [2, 4, 4]  # at each validation, then with the run's end


def test_segkit_report_writes_the_page_from_the_folder(run, tmp_path, capsys) -> None:
    out = tmp_path / "copy.html"
    assert main(["report", str(run["work"]), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = parse(out)
    assert [s.attrs["id"] for s in page.find_all("section")] == SECTIONS
    assert page.find_all(data_key="last-mIoU")[0].value() == run["records"][-1]["mIoU"]
    # The training curves come from the TensorBoard events.
    curves = read_train_curves(run["work"])
    assert [step for step, _ in curves.loss] == [1, 2, 3, 4]
    assert [step for step, _ in read_train_curves(run["work"], up_to=2).lr] == [1, 2]
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a segkit run folder" in capsys.readouterr().err


def test_a_run_without_the_new_records_still_gets_a_report(run, tmp_path) -> None:
    """An older run: no confusion or per-class accuracy, no samples, no events, no log."""
    old = tmp_path / "old"
    shutil.copytree(run["work"], old)
    records = read_jsonl(old / "metrics.jsonl")
    for record in records:
        del record["confusion"], record["per_class_acc"]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in ("val_samples.npz", "train.log", "report.html"):
        (old / name).unlink()
    shutil.rmtree(old / "tensorboard")
    assert main(["report", str(old)]) == 0
    page = parse(old / "report.html")
    assert [s.attrs["id"] for s in page.find_all("section")] == SECTIONS
    notes = " ".join(n.all_text() for n in page.find_all("p", **{"class": "note"}))
    assert "confusion matrix" in notes and "per-class accuracy" in notes
    assert "No validation samples" in notes
    assert page.find_all(data_key="last-mIoU")[0].value() == records[-1]["mIoU"]


def test_a_failing_report_never_stops_training(tmp_path, monkeypatch, capsys) -> None:
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "write_report", full_disk)
    monkeypatch.setattr(report_module, "save_picks", full_disk)
    monkeypatch.setattr(SamplePicker, "_thumbnail", full_disk)
    work = tmp_path / "run"
    assert train(work, "--iters", "1", "--val-interval", "1") == 0
    assert [r["iter"] for r in read_jsonl(work / "metrics.jsonl")] == [1]
    assert (work / "checkpoints" / "last.pt").is_file() and not (work / "report.html").exists()
    warned = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "warning: validation samples of the report left out: [Errno 28]" in warned[0]
    assert all(line.startswith("warning: ") for line in warned)
    assert any("could not write report.html: [Errno 28] No space" in line for line in warned)


def test_train_log_says_how_the_run_went(tmp_path) -> None:
    log = tmp_path / "train.log"
    lines = [
        "2026-01-02 10:00:00 model:    fcn, backbone resnet50",
        "2026-01-02 10:00:00 device:   cuda:0, AMP on, channels_last on, 2 processes",
        "2026-01-02 10:30:00 stopping at iteration 300 (signal received); continue with --resume",
        "2026-01-02 10:30:01 run written to runs/x",
    ]
    log.write_text("\n".join(lines) + "\n")
    facts = read_log(log)
    assert facts.status == "stopped at iteration 300" and facts.sessions == 1
    assert (
        facts.summary["device"].startswith("cuda:0")
        and facts.summary["model"] == "fcn, backbone resnet50"
    )
    lines += ["2026-01-03 09:00:00 resumed runs/x at iteration 300", "class  IoU", "---"]
    log.write_text("\n".join(lines) + "\n")
    facts = read_log(log)
    assert facts.status == "running or interrupted" and facts.sessions == 2
    assert (facts.ended - facts.started).total_seconds() == 23 * 3600
    log.write_text("\n".join([*lines, "2026-01-03 10:00:00 run written to runs/x"]) + "\n")
    assert read_log(log).status == "finished"
    log.write_text("\n".join([*lines, "2026-01-03 09:10:00 error: loss is nan at 310"]) + "\n")
    assert read_log(log).status == "failed: loss is nan at 310"
    # A resume restarts the records' clock: the sessions add up.
    records = [{"seconds": 10.0}, {"seconds": 20.0}, {"seconds": 5.0}, {"seconds": 15.0}]
    assert training_seconds(records) == 35.0


def test_the_picker_keeps_the_best_and_worst_and_shrinks_them() -> None:
    names = [f"im{i}" for i in range(6)]
    picker = SamplePicker(names, class_names=["a", "b"], mean=[0.0] * 3, std=[1.0] * 3,
                          count=2, size=32, first=1, step=2)  # fmt: skip
    target = torch.zeros(64, 80, dtype=torch.long)
    target[:, 40:] = 1
    image = torch.rand(3, 64, 80)
    wrong = [0, 40, 10, 30, 20, 5]  # columns of class 1 predicted as 0: fewer is better
    for columns in wrong:
        pred = target.clone()
        pred[:, 40 : 40 + columns] = 0
        picker(pred, target, image)
    picks = picker.picks(iteration=9)
    # Images are the process's: dataset indices 1, 3, 5, ... (rank 1 of 2).
    assert [t.index for t in picks.best] == [1, 11] and [t.index for t in picks.worst] == [3, 7]
    assert [t.name for t in picks.best] == ["im1", "image 11"]
    assert picks.best[0].miou == 1.0 and picks.worst[0].miou < picks.worst[1].miou
    thumb = picks.best[0]
    assert thumb.image.shape == (26, 32, 3) and thumb.truth.shape == (26, 32)
    assert set(np.unique(thumb.truth)) == {0, 1}  # nearest: no blended class values


def test_error_map_marks_wrong_pixels_and_stripes_ignored_ones() -> None:
    image = np.full((6, 8, 3), 200, dtype=np.uint8)
    truth = np.zeros((6, 8), dtype=np.uint8)
    truth[:, 4:] = 1
    truth[0] = 255
    prediction = np.zeros((6, 8), dtype=np.uint8)  # wrong on class 1, right on class 0
    out = error_map(image, truth, prediction)
    wrong = (prediction != truth) & (truth != 255)
    assert (out[wrong] == ERROR_COLOUR).all()
    assert (out[~wrong & (truth != 255)] == round(0.25 * 200 + 40)).all()  # dimmed grey
    assert np.isin(out[truth == 255], (0, 255)).all() and {0, 255} <= set(out[0].ravel())
