"""Evaluation over a loader with the configured inference protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.config import EvalConfig
from segkit.engine.distributed import is_main_process
from segkit.engine.inference import predict_logits
from segkit.metrics import SegmentationMetrics


class EvaluationInterruptedError(Exception):
    """``should_stop`` asked evaluation to end early (a signal during validation)."""


def inference_options(config: EvalConfig) -> dict:
    """Keyword arguments of :func:`predict_logits` for an eval config."""
    return {
        "mode": config.mode,
        "window": config.window,
        "stride": config.stride,
        "scales": tuple(config.scales),
        "flip": config.flip,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    class_names: Sequence[str],
    ignore_index: int,
    device: torch.device,
    config: EvalConfig,
    keep_samples: int = 0,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_image: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[SegmentationMetrics, tuple[torch.Tensor, ...] | None]:
    """Score ``model`` on ``(image N x 3 x H x W, mask N x H x W)`` batches.

    The confusion matrix is summed over all processes under torchrun. ``on_image(prediction,
    mask, image)`` (``H x W`` int64 and the normalised ``3 x H x W`` input, on ``device``) is
    called for each image in the order of ``batches`` (``segkit eval --save-dir``:
    :mod:`segkit.engine.image_scores`; a training run's report: :mod:`segkit.engine.val_samples`).

    Raises:
        EvaluationInterruptedError: ``should_stop()`` returned True before a batch (checked in a
            single process only: under torchrun every rank must reach the final reduction).

    Returns:
        The metrics and, if ``keep_samples``, the first images, masks and predictions.
    """
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(
        num_classes, ignore_index=ignore_index, class_names=class_names, device=device
    )
    kept: list[tuple[torch.Tensor, ...]] = []
    if progress and is_main_process():
        from tqdm import tqdm

        batches = tqdm(batches, desc="eval", unit="batch", leave=False)
    for images, masks in batches:
        if should_stop is not None and should_stop():
            model.train(was_training)
            raise EvaluationInterruptedError
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        logits = predict_logits(model, images, num_classes=num_classes, **inference_options(config))
        pred = logits.argmax(dim=1)
        metrics.update(pred, masks)
        if on_image is not None:
            for one_pred, one_mask, one_image in zip(pred, masks, images, strict=True):
                on_image(one_pred, one_mask, one_image)
        if sum(len(k[0]) for k in kept) < keep_samples:
            kept.append((images.cpu(), masks.cpu(), pred.cpu()))
    metrics.all_reduce()
    model.train(was_training)
    if not kept:
        return metrics, None
    images, masks, preds = (
        torch.cat(_padded(parts, ignore_index))[:keep_samples] for parts in zip(*kept, strict=True)
    )
    return metrics, (images, masks, preds)


def _padded(batches: tuple[torch.Tensor, ...], ignore_index: int) -> list[torch.Tensor]:
    """Batches of images, masks or predictions of different sizes (whole-image validation of
    a dataset whose images vary, such as Pascal VOC) padded at the bottom and right to the
    largest, so they stack: images with 0, masks and predictions with ``ignore_index``."""
    height = max(batch.shape[-2] for batch in batches)
    width = max(batch.shape[-1] for batch in batches)
    fill = 0.0 if batches[0].is_floating_point() else ignore_index
    return [
        F.pad(batch, (0, width - batch.shape[-1], 0, height - batch.shape[-2]), value=fill)
        for batch in batches
    ]
