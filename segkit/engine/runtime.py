"""Pieces of a training run that are not the loop itself: device, model, modes, signals."""

from __future__ import annotations

import contextlib
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
    """``runs/<dataset>_<model>_<backbone>_<time>``, suffixed ``_2``, ``_3``... if it exists."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    name = f"{config.data.dataset}_{config.model.name}_{config.model.backbone}_{stamp}"
    base = Path("runs") / name.replace(":", "-").replace("/", "-")
    folder, number = base, 1
    while folder.exists():
        number += 1
        folder = base.with_name(f"{base.name}_{number}")
    return folder


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold NaN or infinity."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return []
    names = []
    for key, value in items:
        names += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return names


def set_train_mode(model: nn.Module, *, backbone_frozen: bool, freeze_bn: bool) -> None:
    """Train mode, except BatchNorm statistics that are frozen (frozen backbone, --freeze-bn)."""
    model.train()
    if backbone_frozen:
        model.backbone.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """SIGINT/SIGTERM/SIGHUP handler: the run finishes its iteration, saves last.pt and exits
    with status 128 + signal. A second signal stops at once, without saving (the checkpoint
    on disk is intact: saves are atomic)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                return

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            self.restore()
            print(f"\n{signal.Signals(signum).name} again: stopping now, not saving", flush=True)
            raise SystemExit(128 + signum)
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while DataLoader workers are forked, so a worker
    is never killed by a group-wide signal before its ``worker_init_fn`` ignores them; signals
    that arrive meanwhile are delivered (to :class:`StopRequest`) on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
