"""Post-training int8 quantisation of an exported ONNX model (opt-in, ONNX Runtime).

Static quantisation in the QDQ format: weights int8 per output channel, activations uint8
with ranges calibrated on real images (``onnxruntime.quantization.quantize_static``). uint8
activations with int8 weights is the combination ONNX Runtime runs with VNNI/AMX integer
instructions on x86; int8 activations ran slower (``benchmarks/README.md`` has the numbers).

Quantisation changes the model's answers, so the caller measures how much: :func:`agreement`
compares class maps with the float model on held-out images, and ``segkit eval --runtime
onnxruntime --onnx model.int8.onnx`` gives the mIoU cost on a whole split.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class _Images:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of image tensors."""

    def __init__(self, input_name: str, images: Sequence[Tensor]) -> None:
        self.input_name = input_name
        self.iterator: Iterator[Tensor] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.iterator, None)
        if image is None:
            return None
        return {self.input_name: image.detach().cpu().float().numpy()}


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    images: Sequence[Tensor],
    *,
    input_name: str,
    method: str = "minmax",
) -> None:
    """Write an int8 (QDQ) copy of the float ONNX model ``src`` to ``dst``.

    ``src``'s ``metadata_props`` (the weights fingerprint and ``segkit.meta`` that
    :func:`segkit.export` records) are kept: the int8 file still names its checkpoint.

    Args:
        src: float ONNX model (from :func:`segkit.export`).
        dst: where to write the quantised model.
        images: calibration batches, ``N x 3 x H x W`` normalised like training images.
        input_name: the name of ``src``'s image input (``image`` in :func:`segkit.export`'s
            files; :func:`segkit.deploy.onnx.input_name` reads it from any file), asked for
            rather than read here so that this module need not import the one calling it.
        method: activation range estimate: ``minmax``, ``percentile`` (99.999th) or
            ``entropy``.

    Raises:
        ValueError: an unknown ``method``, or no ``images``.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"Unknown calibration method {method!r}; valid choices: {list(CALIBRATION_METHODS)}"
        )
    if not images:
        raise ValueError("int8 quantisation needs calibration images; none were given")
    root = logging.getLogger()  # the quantiser logs its progress through the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="segkit-quant-") as work:
            prepared = Path(work) / "prepared.onnx"
            # Shape inference and graph clean-up first, as ONNX Runtime recommends for QDQ.
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(dst),
                _Images(input_name, images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[method],
            )
    finally:
        root.setLevel(level)


def agreement(expected: Tensor | np.ndarray, actual: Tensor | np.ndarray) -> float:
    """Share of pixels whose class (argmax over dim 1 of logits) is the same in both."""
    expected, actual = torch.as_tensor(expected), torch.as_tensor(actual)
    if expected.ndim == 4:
        expected, actual = expected.argmax(1), actual.argmax(1)
    return float((expected == actual).float().mean())
