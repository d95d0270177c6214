"""Inference: whole-image or sliding-window, with optional multi-scale and flip averaging.

:func:`predict_logits` is shared by ``segkit eval``, ``segkit predict`` and validation during
training, so all three score exactly the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit.models.layers import resize

MODES = ("whole", "slide")


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, the last window flush with the border."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def _forward(model: nn.Module, x: Tensor, num_classes: int | None) -> Tensor:
    """``model(x)["out"]`` as float32, checked against the model contract."""
    logits = model(x)["out"]
    expected_c = logits.shape[1] if num_classes is None else num_classes
    expected = (x.shape[0], expected_c, *x.shape[-2:])
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"model returned logits of shape {tuple(logits.shape)} for input "
            f"{tuple(x.shape)}; expected {expected} (N x num_classes x H x W at the input size)"
        )
    return logits.float()


def _slide(
    model: nn.Module,
    x: Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int | None,
) -> Tensor:
    """Sliding-window logits ``N x C x H x W`` of ``x`` (``N x 3 x H x W``).

    Windows overlap by ``window - stride``; overlapping logits are averaged with a count map.
    An image smaller than the window is zero-padded (zero is the mean after normalisation) at
    the bottom/right and the padding is cropped off the result.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = max(window[0] - height, 0), max(window[1] - width, 0)
    x = F.pad(x, (0, pad_w, 0, pad_h))
    padded_h, padded_w = x.shape[-2:]
    logits: Tensor | None = None
    count = x.new_zeros(1, 1, padded_h, padded_w)
    # One window position at a time (for the whole batch) keeps memory at one window's worth.
    for top in _window_starts(padded_h, window[0], stride[0]):
        for left in _window_starts(padded_w, window[1], stride[1]):
            rows, cols = slice(top, top + window[0]), slice(left, left + window[1])
            out = _forward(model, x[:, :, rows, cols], num_classes)
            if logits is None:
                logits = out.new_zeros(x.shape[0], out.shape[1], padded_h, padded_w)
            logits[:, :, rows, cols] += out
            count[:, :, rows, cols] += 1
    assert logits is not None  # at least one window always runs
    return (logits / count)[:, :, :height, :width]


def _check_options(
    mode: str,
    window: int | tuple[int, int] | None,
    stride: int | tuple[int, int] | None,
    scales: Sequence[float],
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Validate the options; for ``slide`` return ``(window, stride)`` as pairs."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; valid modes: {', '.join(MODES)}")
    if len(scales) == 0 or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")
    if mode == "whole":
        return None
    if window is None:
        raise ValueError("mode='slide' needs a window size, e.g. window=512 (or (512, 1024))")
    win = _pair(window, "window")
    # Default step 2/3 of the window (mmsegmentation's 512/341 recipes), at least one pixel.
    step = _pair(stride, "stride") if stride is not None else tuple(max(1, 2 * w // 3) for w in win)
    if step[0] > win[0] or step[1] > win[1]:
        raise ValueError(f"stride {step} larger than window {win} would leave pixels uncovered")
    return win, step


def predict_logits(
    model: nn.Module,
    images: Tensor,
    *,
    mode: str = "whole",
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    num_classes: int | None = None,
) -> Tensor:
    """Logits of ``model`` on ``images``, averaged over scales and flips.

    For each scale ``s`` the batch is resized bilinearly to ``round(H*s) x round(W*s)``, run
    whole or window by window, and its logits resized back to ``H x W``; with ``flip`` the
    horizontally mirrored input is run as well and its logits mirrored back. The result is the
    mean over all ``len(scales) * (1 + flip)`` passes. (Seed 001 sums instead of averaging,
    which gives the same argmax; the mean keeps the logits' scale independent of the number of
    passes.) The model should be in eval mode; no autograd graph is built.

    Args:
        model: called as ``model(x)["out"]``, returning ``N x C x h x w`` logits for an input
            ``N x 3 x h x w``.
        images: normalised images ``N x 3 x H x W``.
        mode: ``"whole"`` (one forward per pass) or ``"slide"`` (overlapping windows whose
            logits are averaged; images smaller than the window are zero-padded).
        window: window size for ``slide``, an int or ``(height, width)``.
        stride: step between windows; defaults to two thirds of the window.
        scales: positive resize factors.
        flip: also run the horizontally flipped input.
        num_classes: if given, the model's output channel count is checked against it.

    Returns:
        float32 logits ``N x C x H x W`` on the images' device.

    Raises:
        ValueError: for an unknown mode, ``slide`` without ``window``, non-positive scales, or a
            model whose output does not match the contract.
    """
    slide = _check_options(mode, window, stride, scales)
    if images.dim() != 4:
        raise ValueError(f"images must be N x 3 x H x W, got shape {tuple(images.shape)}")
    runs = [
        (scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))
    ]
    with torch.no_grad():
        # A running sum (sum() over a generator) holds one pass's logits at a time.
        total = sum(_one_pass(model, images, s, f, slide, num_classes) for s, f in runs)
    return total / len(runs)


def _one_pass(
    model: nn.Module,
    images: Tensor,
    scale: float,
    flipped: bool,
    slide: tuple[tuple[int, int], tuple[int, int]] | None,
    num_classes: int | None,
) -> Tensor:
    """Logits ``N x C x H x W`` of one (scale, flip) pass, back at the images' size."""
    height, width = images.shape[-2:]
    # int(v + 0.5) rounds halves up, unlike Python's round() (banker's rounding).
    size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
    x = resize(images, size)
    x = x.flip(-1) if flipped else x
    logits = (
        _forward(model, x, num_classes) if slide is None else _slide(model, x, *slide, num_classes)
    )
    logits = logits.flip(-1) if flipped else logits
    return resize(logits, (height, width))


def predict_mask(model: nn.Module, images: Tensor, **options: Any) -> Tensor:
    """Class indices ``N x H x W`` (int64): the argmax of :func:`predict_logits`, which takes
    the same keyword ``options``."""
    return predict_logits(model, images, **options).argmax(dim=1)
