"""Streaming segmentation metrics from a confusion matrix: pixel accuracy, mean accuracy, mIoU,
frequency-weighted IoU and per-class IoU.

The keys returned by :meth:`SegmentationMetrics.compute` are the contract used by
``segkit eval --json`` and ``metrics.jsonl`` (README: "Train, evaluate, predict").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class SegmentationMetrics:
    """Accumulates a ``C x C`` confusion matrix over batches and derives the usual metrics.

    Rows index the ground-truth class, columns the predicted class. Pixels whose target equals
    ``ignore_index`` are left out entirely.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value of pixels to leave out.
        class_names: ``C`` names used as keys of ``per_class_iou``; defaults to ``"0"``,
            ``"1"``, ...
        device: where the matrix lives. ``None`` follows the device of the first batch, so
            updates on a GPU never copy to the CPU.

    Example:
        >>> metrics = SegmentationMetrics(3)
        >>> metrics.update(logits, masks)  # logits N x C x H x W, masks N x H x W
        >>> metrics.compute()["mIoU"]
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is None:
            class_names = [str(k) for k in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names)
        self._follow_input = device is None
        self._matrix = torch.zeros(
            num_classes, num_classes, dtype=torch.int64, device=device or "cpu"
        )

    @property
    def matrix(self) -> Tensor:
        """The ``C x C`` int64 confusion matrix (rows: ground truth, columns: prediction)."""
        return self._matrix

    def reset(self) -> None:
        """Clear the accumulated counts."""
        self._matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch to the confusion matrix.

        Args:
            pred: class indices ``N x H x W`` or logits ``N x C x H x W`` (argmax over ``C``).
            target: ground-truth class indices ``N x H x W``; ``ignore_index`` marks pixels to
                skip.

        Raises:
            ValueError: if the shapes do not match, or a target (prediction) value lies outside
                ``[0, C)`` and is not ``ignore_index``.
        """
        pred = self._to_indices(pred, target)
        valid = target != self.ignore_index
        self._check_range(target, valid, "target")
        t, p = target[valid].long(), pred[valid].long()
        self._check_range(p, None, "prediction")
        # One bincount over t * C + p fills the whole matrix in a single kernel on the input's
        # device; no per-class loop and no copy to the CPU.
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        if self._follow_input and self._matrix.device != counts.device:
            self._matrix = self._matrix.to(counts.device)
        self._matrix += counts.view(self.num_classes, self.num_classes).to(self._matrix.device)

    def _to_indices(self, pred: Tensor, target: Tensor) -> Tensor:
        """Validate shapes and turn logits into class indices."""
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes or pred.shape[:1] + pred.shape[2:] != (
                target.shape
            ):
                raise ValueError(
                    f"logits of shape {tuple(pred.shape)} do not match target of shape "
                    f"{tuple(target.shape)} with num_classes={self.num_classes}; expected "
                    "logits N x C x H x W for a target N x H x W"
                )
            return pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction of shape {tuple(pred.shape)} does not match target of shape "
                f"{tuple(target.shape)}; pass class indices N x H x W or logits N x C x H x W"
            )
        if pred.is_floating_point():
            raise ValueError(f"class-index predictions must be integers, got {pred.dtype}")
        return pred

    def _check_range(self, values: Tensor, valid: Tensor | None, what: str) -> None:
        bad = (values < 0) | (values >= self.num_classes)
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            found = torch.unique(values[bad]).tolist()
            raise ValueError(
                f"{what} values {found[:20]} are outside [0, {self.num_classes}) and not "
                f"ignore_index={self.ignore_index}; check num_classes and the mask encoding"
            )

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the counts of another instance with the same number of classes."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge metrics with {other.num_classes} classes into {self.num_classes}"
            )
        self._matrix += other.matrix.to(self._matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks when ``torch.distributed`` is initialised.

        A no-op otherwise. With the NCCL backend the matrix must be on the rank's GPU (pass
        ``device`` or update with GPU tensors first).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._matrix, op=dist.ReduceOp.SUM)

    def _stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class true positives, ground-truth counts and prediction counts (float64)."""
        cm = self._matrix.double().cpu()
        return cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0)

    def _iou(self) -> Tensor:
        """Per-class IoU, NaN for a class absent from both ground truth and prediction."""
        tp, gt, pred = self._stats()
        union = gt + pred - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)

    def compute(self) -> dict[str, float | dict[str, float | None]]:
        """The metrics of everything seen since the last :meth:`reset`.

        Returns:
            A dict with ``mIoU`` (mean IoU over classes present in ground truth or prediction),
            ``pixel_acc`` (correct / labelled pixels), ``mean_acc`` (mean recall over classes
            present in the ground truth), ``fw_iou`` (IoU weighted by ground-truth pixel
            frequency), all floats in ``[0, 1]`` (NaN when no pixel has been counted), and
            ``per_class_iou``: class name -> IoU, or ``None`` for a class absent from both
            ground truth and prediction (such classes are left out of the means).
        """
        return {**self._summary(), "per_class_iou": self._named(self._iou())}

    def _summary(self) -> dict[str, float]:
        """The four scalar metrics of :meth:`compute`."""
        tp, gt, _ = self._stats()
        iou = self._iou()
        total = gt.sum()
        if total == 0:
            return dict.fromkeys(("mIoU", "pixel_acc", "mean_acc", "fw_iou"), math.nan)
        labelled = gt > 0
        return {
            "mIoU": float(iou[~iou.isnan()].mean()),
            "pixel_acc": float(tp.sum() / total),
            "mean_acc": float((tp[labelled] / gt[labelled]).mean()),
            # Classes without ground-truth pixels weigh nothing, so their (NaN) IoU is skipped.
            "fw_iou": float((gt[labelled] / total * iou[labelled]).sum()),
        }

    def per_class_acc(self) -> dict[str, float | None]:
        """Class name -> accuracy (recall), ``None`` for a class absent from the ground truth."""
        tp, gt, _ = self._stats()
        return self._named(torch.where(gt > 0, tp / gt.clamp_min(1), torch.nan))

    def _named(self, values: Tensor) -> dict[str, float | None]:
        return {
            name: None if math.isnan(v) else v
            for name, v in zip(self.class_names, values.tolist(), strict=True)
        }

    def format_table(self) -> str:
        """A plain-text table of per-class IoU and accuracy (percent) followed by the means."""
        ious, accs = self._named(self._iou()), self.per_class_acc()
        width = max([9, *(len(name) for name in self.class_names)])
        rule = "-" * (width + 18)
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}", rule]
        lines += [f"{n:<{width}}  {_pct(ious[n])}  {_pct(accs[n])}" for n in self.class_names]
        lines.append(rule)
        lines += [f"{key:<{width}}  {_pct(value)}" for key, value in self._summary().items()]
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return f"{'-':>7}" if value is None or math.isnan(value) else f"{100 * value:7.2f}"
