"""What a run writes besides checkpoints: config.yaml, metrics.jsonl, TensorBoard events, PNG
plots, the validation samples of the report and report.html (:mod:`segkit.engine.run_report`).

The report is a convenience: a failure to write it (or its samples) is one warning line and
training goes on."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from segkit.config import Config
from segkit.datasets import SegmentationDataset, colorize, denormalize
from segkit.engine.report_html import write_report
from segkit.engine.run_folder import read_metrics
from segkit.engine.run_log import logger, one_line
from segkit.engine.run_report import TrainCurves, read_train_curves
from segkit.engine.val_samples import SAMPLES_FILE, Picks, save_picks


def start_reporting(
    config: Config, train_set: SegmentationDataset, *, resume_at: int | None
) -> RunReporter:
    """Write the resolved config.yaml into the run folder and open its metrics writers."""
    work_dir = Path(config.work_dir)
    (work_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    config.save(work_dir / "config.yaml")
    data = config.data
    return RunReporter(
        work_dir,
        train_set.class_names,
        train_set.palette,
        data.mean,
        data.std,
        resume_at=resume_at,
        ignore_index=config.train.ignore_index,
    )


class RunReporter:
    """Rank-0 writer of a run's logs under ``work_dir``.

    Args:
        work_dir: the run folder.
        class_names: one name per class.
        palette: one RGB colour per class (for image grids).
        mean: normalisation mean (to show inputs).
        std: normalisation std.
        resume_at: the checkpoint's iteration when the run is resumed.
        ignore_index: mask value of unlabelled pixels.
    """

    def __init__(
        self,
        work_dir: Path,
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        mean: Sequence[float],
        std: Sequence[float],
        resume_at: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.work_dir = work_dir
        self.class_names = list(class_names)
        self.palette = list(palette)
        self.mean, self.std = list(mean), list(std)
        self.ignore_index = ignore_index
        self.curves = TrainCurves()
        self.picks: Picks | None = None
        if resume_at is not None:  # the curves so far, for the plots and the report
            self._best_effort("read the training curves so far", self._read_history, resume_at)
        # On resume, TensorBoard drops the events an interrupted run logged after its checkpoint.
        purge = None if resume_at is None else resume_at + 1
        self.writer = SummaryWriter(log_dir=str(work_dir / "tensorboard"), purge_step=purge)
        self.metrics_path = work_dir / "metrics.jsonl"

    def log_train(self, iteration: int, loss: float, parts: dict[str, float], lr: float) -> None:
        """Scalars of one training iteration."""
        self.curves.loss.append((iteration, loss))
        self.curves.lr.append((iteration, lr))
        self.writer.add_scalar("train/loss", loss, iteration)
        for name, value in parts.items():
            self.writer.add_scalar(f"train/loss_{name}", value, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)

    def log_validation(
        self,
        record: dict[str, Any],
        confusion: torch.Tensor,
        samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        picks: Picks | None = None,
    ) -> None:
        """Append to metrics.jsonl, write TensorBoard scalars/images, refresh the plots, keep
        the validation ``picks`` (best and worst images) and refresh report.html."""
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        iteration = record["iter"]
        for key in ("mIoU", "pixel_acc", "mean_acc", "fw_iou"):
            self.writer.add_scalar(f"val/{key}", record[key], iteration)
        for name, value in record["per_class_iou"].items():
            if value is not None:
                self.writer.add_scalar(f"val_iou/{name}", value, iteration)
        if samples is not None:
            self.writer.add_image("val/input_truth_prediction", self._grid(*samples), iteration)
        self.writer.flush()
        self._plot(confusion)
        if picks is not None:
            self.picks = picks
            self._best_effort(
                f"write {SAMPLES_FILE}", save_picks, self.work_dir / SAMPLES_FILE, picks
            )
        self.write_report()

    def write_report(self) -> None:
        """Write report.html from the run folder and what this reporter holds; a failure is
        a warning."""
        self._best_effort(
            "write report.html",
            write_report,
            self.work_dir,
            curves=self.curves,
            picks=self.picks,
            class_names=self.class_names,
            palette=self.palette,
            ignore_index=self.ignore_index,
        )

    def _read_history(self, resume_at: int) -> None:
        self.curves = read_train_curves(self.work_dir, up_to=resume_at)

    def _best_effort(self, what: str, write: Callable[..., object], *args, **kwargs) -> None:
        """``write(*args, **kwargs)``; an error is one warning line, never the run's end."""
        try:
            write(*args, **kwargs)
        except Exception as err:
            logger.warning(f"could not {what}: {one_line(err) or repr(err)}; training goes on")

    def _grid(self, images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
        """Rows of (input, ground truth, prediction) as a ``3 x H x W`` uint8 array."""
        rows = []
        for image, gt, pr in zip(images, truth, pred, strict=True):
            shown = denormalize(image.float().cpu(), self.mean, self.std).permute(1, 2, 0)
            colours = [np.asarray(colorize(m.cpu(), self.palette).convert("RGB")) for m in (gt, pr)]
            rows.append(np.concatenate([shown.numpy(), *colours], axis=1))
        return np.concatenate(rows, axis=0).transpose(2, 0, 1)

    def _plot(self, confusion: torch.Tensor) -> None:
        records = read_metrics(self.metrics_path)
        plots = self.work_dir / "plots"
        plots.mkdir(exist_ok=True)

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        if self.curves.loss:
            its, losses = zip(*self.curves.loss, strict=True)
            left.plot(its, losses, lw=0.8)
        left.set(title="training loss", xlabel="iteration", yscale="log")
        right.plot([r["iter"] for r in records], [r["mIoU"] for r in records], marker="o")
        right.set(title="validation mIoU", xlabel="iteration", ylim=(0, 1))
        _save(fig, plots / "curves.png")

        last = records[-1]["per_class_iou"]
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(last)), 4))
        ax.bar(range(len(last)), [v if v is not None else 0.0 for v in last.values()])
        ax.set_xticks(range(len(last)), list(last), rotation=60, ha="right")
        ax.set(title=f"per-class IoU at iteration {records[-1]['iter']}", ylim=(0, 1))
        _save(fig, plots / "per_class_iou.png")

        matrix = confusion.double().cpu()
        normalised = (matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)).numpy()
        size = max(5, 0.45 * len(self.class_names))
        fig, ax = plt.subplots(figsize=(size + 1, size))
        image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        ticks = range(len(self.class_names))
        ax.set_xticks(ticks, self.class_names, rotation=60, ha="right")
        ax.set_yticks(ticks, self.class_names)
        ax.set(xlabel="prediction", ylabel="ground truth", title="confusion (row-normalised)")
        fig.colorbar(image, ax=ax)
        _save(fig, plots / "confusion_matrix.png")

    def close(self) -> None:
        self.writer.close()


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
