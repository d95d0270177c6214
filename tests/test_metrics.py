"""SegmentationMetrics against confusion matrices worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from segkit.metrics import SegmentationMetrics

# 2 x 3 image, one ignored pixel. Labelled (target, prediction) pairs:
# (0,0) (0,1) (1,1) (1,2) (2,2)  ->  rows = ground truth, columns = prediction
TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
MATRIX = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
# tp = [1, 1, 1], gt = [2, 2, 1], pred = [1, 2, 2], union = gt + pred - tp = [2, 3, 2]
IOU = [1 / 2, 1 / 3, 1 / 2]


def _metrics(num_classes: int = 3, **kwargs) -> SegmentationMetrics:
    metrics = SegmentationMetrics(num_classes, **kwargs)
    metrics.update(PRED, TARGET)
    return metrics


def test_matrix_and_metrics_match_hand_computation() -> None:
    metrics = _metrics(class_names=["bg", "road", "car"])
    assert metrics.matrix.dtype == torch.int64
    assert metrics.matrix.tolist() == MATRIX
    result = metrics.compute()
    assert set(result) == {"mIoU", "pixel_acc", "mean_acc", "fw_iou", "per_class_iou"}
    assert result["per_class_iou"] == pytest.approx({"bg": IOU[0], "road": IOU[1], "car": IOU[2]})
    assert result["mIoU"] == pytest.approx(4 / 9)
    assert result["pixel_acc"] == pytest.approx(3 / 5)
    assert result["mean_acc"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    # Frequencies 2/5, 2/5, 1/5 times the IoUs.
    assert result["fw_iou"] == pytest.approx(2 / 5 * 1 / 2 + 2 / 5 * 1 / 3 + 1 / 5 * 1 / 2)
    assert all(isinstance(result[k], float) for k in ("mIoU", "pixel_acc", "mean_acc", "fw_iou"))
    assert metrics.per_class_acc() == pytest.approx({"bg": 0.5, "road": 0.5, "car": 1.0})


def test_class_absent_from_both_is_none_and_excluded_from_means() -> None:
    result = _metrics(num_classes=4).compute()
    assert result["per_class_iou"]["3"] is None
    assert result["mIoU"] == pytest.approx(4 / 9)
    assert result["mean_acc"] == pytest.approx(2 / 3)


def test_class_only_predicted_counts_as_zero_iou() -> None:
    metrics = SegmentationMetrics(3)
    metrics.update(torch.tensor([[[0, 2], [0, 0]]]), torch.zeros(1, 2, 2, dtype=torch.long))
    result = metrics.compute()
    assert metrics.matrix.tolist() == [[3, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert result["per_class_iou"] == {"0": pytest.approx(3 / 4), "1": None, "2": 0.0}
    assert result["mIoU"] == pytest.approx((3 / 4 + 0) / 2)
    # Class 2 has no ground truth: not part of mean accuracy, zero weight in fw_iou.
    assert result["mean_acc"] == pytest.approx(3 / 4)
    assert result["fw_iou"] == pytest.approx(3 / 4)
    assert metrics.per_class_acc() == {"0": pytest.approx(3 / 4), "1": None, "2": None}


def test_ignored_pixels_excluded_whatever_is_predicted() -> None:
    target = torch.full((2, 4, 4), 255)
    target[0, 0, 0] = 1
    metrics = SegmentationMetrics(3)
    metrics.update(torch.full((2, 4, 4), 2), target)
    assert metrics.matrix.sum() == 1
    assert metrics.matrix[1, 2] == 1


def test_custom_ignore_index() -> None:
    metrics = SegmentationMetrics(2, ignore_index=-1)
    metrics.update(torch.tensor([[1, 1, 0]]), torch.tensor([[1, -1, 0]]))
    assert metrics.matrix.tolist() == [[1, 0], [0, 1]]


def test_logits_and_indices_give_the_same_matrix() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=generator)
    target = torch.randint(0, 3, (2, 5, 7), generator=generator)
    target[:, 0] = 255
    from_logits, from_indices = SegmentationMetrics(3), SegmentationMetrics(3)
    from_logits.update(logits, target)
    from_indices.update(logits.argmax(1), target)
    assert torch.equal(from_logits.matrix, from_indices.matrix)
    assert from_logits.matrix.sum() == 2 * 4 * 7


def test_streaming_merge_and_reset() -> None:
    metrics = _metrics()
    metrics.update(PRED, TARGET)
    assert metrics.matrix.tolist() == [[2 * v for v in row] for row in MATRIX]
    other = _metrics()
    other.merge(_metrics())
    assert torch.equal(other.matrix, metrics.matrix)
    metrics.all_reduce()  # not distributed: no-op
    assert torch.equal(other.matrix, metrics.matrix)
    metrics.reset()
    assert metrics.matrix.sum() == 0
    assert all(math.isnan(v) for k, v in metrics.compute().items() if k != "per_class_iou")
    with pytest.raises(ValueError, match="4 classes"):
        metrics.merge(SegmentationMetrics(4))


def test_format_table_lists_classes_and_means() -> None:
    table = _metrics(num_classes=4, class_names=["bg", "road", "car", "bus"]).format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "acc"]
    assert lines[2].split() == ["bg", "50.00", "50.00"]
    assert lines[3].split() == ["road", "33.33", "50.00"]
    assert lines[5].split() == ["bus", "-", "-"]
    assert "mIoU" in table and "44.44" in table


def test_errors_name_the_shapes_and_values() -> None:
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"\(1, 2, 2\).*\(1, 2, 3\)"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), TARGET)
    with pytest.raises(ValueError, match=r"\(1, 4, 2, 3\)"):
        metrics.update(torch.zeros(1, 4, 2, 3), TARGET)
    with pytest.raises(ValueError, match=r"target values \[7, 9\]"):
        metrics.update(PRED, torch.tensor([[[0, 7, 1], [9, 2, 255]]]))
    with pytest.raises(ValueError, match=r"prediction values \[5\]"):
        metrics.update(torch.tensor([[[0, 5, 1], [1, 2, 0]]]), TARGET)
    with pytest.raises(ValueError, match="integers"):
        metrics.update(PRED.float(), TARGET)
    with pytest.raises(ValueError, match="2 names"):
        SegmentationMetrics(3, class_names=["a", "b"])
    assert metrics.matrix.sum() == 0  # failed updates add nothing
