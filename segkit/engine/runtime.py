"""Pieces of a training run that are not the loop itself: device, model, modes, signals."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkit.config import Config
from segkit.datasets import SampleError, SegmentationDataset
from segkit.losses import compute_class_weights
from segkit.models import Segmenter, create_model


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is left intact."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Unknown device {name!r}; valid choices: ['auto', 'cpu', 'cuda']")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: Config, num_classes: int) -> Segmenter:
    """``create_model`` from the ``model`` section; unset (``None``) options are dropped."""
    m = config.model
    options = {
        "separable": m.separable,
        "aspp_rates": m.aspp_rates,
        "aspp_channels": m.aspp_channels,
        "decoder_channels": m.decoder_channels,
        "attention": m.attention,
        "jpu": m.jpu,
        "lateral": m.lateral,
        "se_loss": m.se_loss,
    }
    return create_model(
        m.name,
        backbone=m.backbone,
        num_classes=num_classes,
        output_stride=m.output_stride,
        aux=m.aux,
        pretrained_backbone=m.pretrained_backbone,
        multi_grid=m.multi_grid,
        **{k: v for k, v in options.items() if v is not None},
    )


def default_work_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    name = f"{config.data.dataset}_{config.model.name}_{config.model.backbone}_{stamp}"
    return Path("runs") / name.replace(":", "-").replace("/", "-")


def set_train_mode(model: nn.Module, *, backbone_frozen: bool, freeze_bn: bool) -> None:
    """Train mode, except BatchNorm statistics that are frozen (frozen backbone, --freeze-bn)."""
    model.train()
    if backbone_frozen:
        model.backbone.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class StopRequest:
    """SIGINT/SIGTERM handler: finish the current iteration, save last.pt, exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                return

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def class_weights_for(config: Config, dataset: SegmentationDataset) -> list[float] | None:
    """``train.class_weights``: a list, ``auto`` (ENet weights from the training masks), None."""
    weights = config.train.class_weights
    if weights is None or isinstance(weights, list):
        return weights
    if weights != "auto":
        raise ValueError(f"class_weights must be a list of floats or 'auto', got {weights!r}")
    return compute_class_weights(
        _good_masks(dataset), dataset.num_classes, config.train.ignore_index
    ).tolist()


def _good_masks(dataset: SegmentationDataset) -> Iterator[np.ndarray]:
    """Every sample's mask; bad samples raise unless the dataset skips them."""
    for index in range(len(dataset)):
        try:
            yield dataset.load_raw(index).mask
        except SampleError:
            if not dataset.skip_bad_samples:
                raise


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
