"""Export a segmenter to ONNX or TorchScript, then run the file and check it against PyTorch.

The format follows the file name (:data:`SUFFIXES`: ``.onnx`` is ONNX; ``.pt``, ``.pth`` and
``.torchscript`` are TorchScript) unless ``format`` is given. The exported graph takes a
normalised ``N x 3 x H x W`` float image and returns the logits ``N x C x H x W`` (or, with
``argmax=True``, the ``N x H x W`` int64 class map). The batch is dynamic; so is the spatial
size unless ``static=(H, W)``. After writing, the file is run (ONNX Runtime for ONNX,
``torch.jit.load`` for TorchScript) on a random batch of 2 at :data:`CHECK_SIZE`, another size
than the :data:`EXAMPLE_SIZE` used for export (both odd, so padding and cropping take their
uneven branches), and the export fails, leaving no file behind, when the relative difference
to PyTorch exceeds ``tolerance``.

The file records which weights it was exported from: ONNX ``metadata_props`` (TorchScript:
extra files) hold ``segkit.weights_fingerprint`` (:func:`segkit.checkpoint.weights_fingerprint`
of the model as given, before batch-norm folding) and ``segkit.meta``, a JSON object with the
class names, palette, normalisation and ignore index of ``model.meta``, the input layout and
the output kind, and (when given) ``inference``, the protocol the checkpoint's run was
validated with (mode, window, stride, scales, flip, crop_size), so the file alone is enough to
predict with (:class:`segkit.Predictor`); ``segkit eval/predict --runtime onnxruntime`` check
the fingerprint against the checkpoint.

``int8=True`` (ONNX only) then quantises the checked float file with ONNX Runtime
(:mod:`segkit.deploy.quantize`), calibrated on ``calibration`` images; a quarter of them (at least
one, when there are two or more) is held out to measure how often the int8 class maps agree
with PyTorch's, and the export fails below ``min_agreement``.

Every ONNX Runtime session of segkit (this check, ``--runtime onnxruntime``, ``segkit bench``)
comes from :func:`ort_session`, and :func:`input_name` reads the name of the image input.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segkit.deploy.optimize import fold_batchnorm
from segkit.deploy.ort import input_name, ort_session
from segkit.files import check_writable_file, default_file_mode
from segkit.models.layers import resize
from segkit.weights import weights_fingerprint

FORMATS = ("onnx", "torchscript")
#: File name suffix -> the format it implies (lower case; the first per format is its usual one).
SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".torchscript": "torchscript",
}
#: Height and width of the example a dynamic-size export is traced with.
EXAMPLE_SIZE = (257, 321)
#: Height and width of the batch-2 random input a dynamic-size file is checked on.
CHECK_SIZE = (193, 259)
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
FINGERPRINT_KEY = "segkit.weights_fingerprint"
META_KEY = "segkit.meta"
META_FIELDS = ("class_names", "palette", "mean", "std", "ignore_index")


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


@dataclass
class ExportReport:
    """Where the file went and how far its outputs are from PyTorch's."""

    path: Path
    format: str
    max_abs_diff: float
    max_rel_diff: float
    int8_agreement: float | None = None
    int8_images: int = 0

    def __str__(self) -> str:
        text = (
            f"wrote {self.path} ({self.format}"
            f"{', int8' if self.int8_agreement is not None else ''}); float graph: max abs diff "
            f"{self.max_abs_diff:.2e}, max rel diff {self.max_rel_diff:.2e} against PyTorch"
        )
        if self.int8_agreement is not None:
            text += (
                f"; int8: {self.int8_agreement:.2%} of pixels get PyTorch's class on "
                f"{self.int8_images} held-out calibration image(s)"
            )
        return text


class _Exported(nn.Module):
    """The graph that is exported: logits only, or the argmax class map."""

    def __init__(self, model: nn.Module, argmax: bool) -> None:
        super().__init__()
        self.model = model
        self.argmax = argmax

    def forward(self, image: Tensor) -> Tensor:
        logits = self.model(image)["out"]
        return logits.argmax(dim=1) if self.argmax else logits


def export(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    argmax: bool = False,
    static: tuple[int, int] | None = None,
    tolerance: float = 1e-3,
    int8: bool = False,
    calibration: Sequence[Tensor] = (),
    calibration_method: str = "minmax",
    min_agreement: float = 0.9,
    inference: Mapping[str, Any] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` and verify the file (see the module docstring).

    Args:
        model: a segmenter (``x -> {"out": logits, ...}``); it is copied, not modified.
        path: the file to write; its suffix gives the format (:func:`resolve_format`).
        format: ``"onnx"`` or ``"torchscript"``, for a file name without a known suffix.
        argmax: output the ``N x H x W`` class map instead of the logits.
        static: fixed ``(height, width)`` of the input; dynamic size when not given.
        tolerance: largest relative difference to PyTorch the written file may show.
        int8: quantise the checked ONNX file (weights and activations, ONNX Runtime).
        calibration: ``1 x 3 x H x W`` normalised images for ``int8`` (resized to ``static``
            when it is given).
        calibration_method: ``minmax``, ``percentile`` or ``entropy`` (int8 only).
        min_agreement: least share of held-out pixels the int8 model must classify as PyTorch.
        inference: the inference protocol to record (``mode``, ``window``, ``stride``,
            ``scales``, ``flip``, ``crop_size``: :func:`segkit.predictor.checkpoint_protocol`).

    Returns:
        Where the file went and how far its outputs are from PyTorch's.

    Raises:
        ValueError: unknown or contradicting format, or int8 without ONNX or calibration images.
        ExportError: the exporter failed (its message names the operator), the outputs of
            the file differ from PyTorch's by more than ``tolerance`` (relative), or the int8
            class maps agree with PyTorch's on fewer than ``min_agreement`` of the pixels.
    """
    path = Path(path)
    check_output_path(path, format or "onnx")  # first: a folder has no suffix to go by
    format = resolve_format(path, format)
    if int8 and format != "onnx":
        raise ValueError("int8 quantisation is for ONNX exports (write a .onnx file)")
    if int8 and not calibration:
        raise ValueError("int8 quantisation needs calibration images; none were given")
    identity = export_metadata(model, argmax=argmax, static=static, inference=inference)
    net = copy.deepcopy(model).cpu().eval()
    fold_batchnorm(net)
    wrapped = _Exported(net, argmax).eval()
    example = torch.randn(1, 3, *(static or EXAMPLE_SIZE))
    check = torch.randn(2, 3, *(static or CHECK_SIZE))  # batch 2: the batch stays dynamic
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if format == "onnx":
            # metadata_props: the int8 quantiser copies them to its output.
            _to_onnx(wrapped, example, tmp, dynamic=static is None, metadata=identity)
        else:
            _to_torchscript(wrapped, example, tmp, identity)
        report = _check(wrapped, tmp, path, format, check, argmax, tolerance)
        if int8:
            _quantize(wrapped, tmp, report, calibration, static, calibration_method)
            if report.int8_agreement < min_agreement:
                raise ExportError(
                    f"the int8 model gives PyTorch's class on only {report.int8_agreement:.1%} "
                    f"of the held-out pixels (< {min_agreement:.0%}); try more calibration "
                    "images, --calibration-method percentile, or keep the float model"
                )
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would survive the rename
        os.replace(tmp, path)
        return report
    finally:
        tmp.unlink(missing_ok=True)


def resolve_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The export format for a file at ``path``: ``format`` when given, else its suffix's.

    Raises:
        ValueError: ``format`` is unknown, contradicts a known suffix of ``path``, or is not
            given and the suffix is not one of :data:`SUFFIXES`.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; valid choices: {list(FORMATS)}")
    implied = SUFFIXES.get(path.suffix.lower())
    if format is None:
        if implied is None:
            choices = ", ".join(f"{suffix} ({name})" for suffix, name in SUFFIXES.items())
            raise ValueError(
                f"cannot tell the export format from --out {path}: name a file ending in "
                f"{choices}, or choose the format with --format"
            )
        return implied
    if implied not in (None, format):
        usual = next(suffix for suffix, name in SUFFIXES.items() if name == format)
        raise ValueError(
            f"--format {format} contradicts --out {path}, whose suffix {path.suffix} means "
            f"{implied}; drop --format or write to {path.with_suffix(usual)}"
        )
    return format


def _check(
    wrapped: nn.Module,
    tmp: Path,
    path: Path,
    format: str,
    check: Tensor,
    argmax: bool,
    tolerance: float,
) -> ExportReport:
    """Run the written file ``tmp`` on ``check`` and compare it with PyTorch.

    Raises:
        ExportError: the relative difference exceeds ``tolerance``.
    """
    if format == "onnx":
        (actual,) = _run_onnx(tmp, check)
    else:
        with torch.no_grad():
            actual = torch.jit.load(str(tmp))(check).numpy()
    with torch.no_grad():
        expected = wrapped(check).numpy()
    report = _compare(path, format, actual, expected, argmax)
    if report.max_rel_diff > tolerance:
        raise ExportError(
            f"the exported {format} model differs from PyTorch: max relative difference "
            f"{report.max_rel_diff:.2e} > {tolerance:.0e} on an input of size "
            f"{tuple(check.shape)}. Try --static HxW."
        )
    return report


def _quantize(
    wrapped: nn.Module,
    path: Path,
    report: ExportReport,
    calibration: Sequence[Tensor],
    static: tuple[int, int] | None,
    method: str,
) -> None:
    """Replace the float ONNX file at ``path`` by its int8 version; fill in the agreement."""
    from segkit.deploy.quantize import agreement, quantize_int8

    images = [x if static is None else resize(x, static) for x in calibration]
    held_out = max(1, len(images) // 4) if len(images) >= 2 else 0
    calibrate = images[: len(images) - held_out]
    checks = images[len(images) - held_out :] or images
    quantized = path.with_name(path.name + ".int8")
    try:
        quantize_int8(path, quantized, calibrate, input_name=input_name(path), method=method)
        os.replace(quantized, path)
    finally:
        quantized.unlink(missing_ok=True)
    with torch.no_grad():
        expected = [wrapped(image) for image in checks]
    scores = map(agreement, expected, _run_onnx(path, *checks))
    report.int8_agreement = float(np.mean(list(scores)))
    report.int8_images = len(checks)


def _to_onnx(
    module: nn.Module, example: Tensor, path: Path, *, dynamic: bool, metadata: dict[str, str]
) -> None:
    dim = torch.export.Dim
    dims = {"image": {0: dim("batch", max=256)}}
    if dynamic:
        dims["image"].update({2: dim("height"), 3: dim("width")})
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=["image"],
                output_names=["output"],
                dynamic_shapes=dims,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(
            f"torch.onnx could not export this model: {_root_cause(err)}. Fixed-size export "
            "(--static HxW) avoids most dynamic-shape limits; an operator without an ONNX "
            "function needs another layer in the model."
        ) from err
    program.model.metadata_props.update(metadata)
    program.save(str(path))


def _root_cause(err: BaseException) -> str:
    """The innermost error's first line (for a missing operator: "No ONNX function found for
    <OpOverload(op='prims.bessel_i1', ...)>"), without the exporter's terminal colours."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines()
    text = ANSI_COLOUR.sub("", lines[0] if lines else "")
    return f"{type(err).__name__}: {text}"


def _to_torchscript(
    module: nn.Module, example: Tensor, path: Path, identity: dict[str, str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings are checked by running the file
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(path), _extra_files=identity)


def check_output_path(path: Path, format: str = "onnx") -> None:
    """:func:`segkit.files.check_writable_file` with an example file name for ``format``."""
    check_writable_file(path, "model.onnx" if format == "onnx" else "model.pt")


def export_metadata(
    model: nn.Module,
    *,
    argmax: bool,
    static: tuple[int, int] | None,
    inference: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """``{FINGERPRINT_KEY: sha256, META_KEY: JSON}``: what an exported file records (the JSON
    holds :data:`META_FIELDS` of ``model.meta``, ``model``, ``input``, ``output`` and, when
    given, ``inference``)."""
    meta = getattr(model, "meta", None) or {}
    height, width = static or ("H", "W")
    info = {key: meta[key] for key in META_FIELDS if key in meta}
    info["model"] = getattr(model, "config", None) or type(model).__name__
    info["input"] = {
        "name": "image",
        "shape": ["N", 3, height, width],
        "dtype": "float32",
        "normalised": "(rgb / 255 - mean) / std",
    }
    info["output"] = {
        "name": "output",
        "kind": "argmax" if argmax else "logits",
        "shape": ["N", height, width] if argmax else ["N", "C", height, width],
        "dtype": "int64" if argmax else "float32",
    }
    if inference is not None:
        info["inference"] = dict(inference)
    return {
        FINGERPRINT_KEY: weights_fingerprint(model),
        META_KEY: json.dumps(info, default=str),
    }


def _run_onnx(path: Path, *images: Tensor) -> list[np.ndarray]:
    session = ort_session(path)
    name = input_name(session)
    return [session.run(None, {name: image.numpy()})[0] for image in images]


def _compare(
    path: Path, format: str, actual: np.ndarray, expected: np.ndarray, argmax: bool
) -> ExportReport:
    if actual.shape != expected.shape:
        raise ExportError(
            f"the exported {format} model returned shape {actual.shape}, PyTorch "
            f"{expected.shape}: sizes were fixed during export; try --static HxW"
        )
    if argmax:  # class maps: the share of pixels whose class differs
        differ = float((actual != expected).mean())
        return ExportReport(path, format, differ, differ)
    diff = np.abs(actual.astype(np.float64) - expected)
    scale = max(float(np.abs(expected).max()), 1e-12)
    return ExportReport(path, format, float(diff.max()), float(diff.max()) / scale)
