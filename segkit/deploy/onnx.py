"""Export a segmenter to ONNX or TorchScript, then run the file and check it against PyTorch.

The exported graph takes a normalised ``N x 3 x H x W`` float image and returns the logits
``N x C x H x W`` (or, with ``argmax=True``, the ``N x H x W`` int64 class map). The batch
is dynamic; so is the spatial size unless ``static=(H, W)``. After writing, the file is run
(ONNX Runtime for ONNX, ``torch.jit.load`` for TorchScript) on a random input of another size
than the one used for export, and the export fails, leaving no file behind, when the relative
difference to PyTorch exceeds ``tolerance``.

The file records which weights it was exported from: ONNX ``metadata_props`` (TorchScript:
extra files) hold ``segkit.weights_fingerprint`` (:func:`segkit.checkpoint.weights_fingerprint`
of the model as given, before batch-norm folding) and ``segkit.meta``, a JSON object with the
class names, palette, normalisation and ignore index of ``model.meta``, the input layout and
the output kind; ``segkit eval/predict --runtime onnxruntime`` check the fingerprint against
the checkpoint.

``int8=True`` (ONNX only) then quantises the checked float file with ONNX Runtime
(:mod:`segkit.deploy.quantize`), calibrated on ``calibration`` images; a quarter of them (at least
one, when there are two or more) is held out to measure how often the int8 class maps agree
with PyTorch's, and the export fails below ``min_agreement``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from segkit.deploy.optimize import fold_batchnorm
from segkit.files import default_file_mode
from segkit.models.layers import resize
from segkit.weights import weights_fingerprint

FORMATS = ("onnx", "torchscript")
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
    format: str = "onnx",
    argmax: bool = False,
    static: tuple[int, int] | None = None,
    tolerance: float = 1e-3,
    int8: bool = False,
    calibration: Sequence[Tensor] = (),
    calibration_method: str = "minmax",
    min_agreement: float = 0.9,
) -> ExportReport:
    """Export ``model`` to ``path`` and verify the file (see the module docstring).

    Args:
        calibration: ``1 x 3 x H x W`` normalised images for ``int8`` (resized to ``static``
            when it is given).

    Raises:
        ValueError: unknown format, or int8 without ONNX or calibration images.
        ExportError: the exporter failed (its message names the operator), the outputs of
            the file differ from PyTorch's by more than ``tolerance`` (relative), or the int8
            class maps agree with PyTorch's on fewer than ``min_agreement`` of the pixels.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; valid choices: {list(FORMATS)}")
    if int8 and format != "onnx":
        raise ValueError("int8 quantisation is for ONNX exports (use --format onnx)")
    if int8 and not calibration:
        raise ValueError("int8 quantisation needs calibration images; none were given")
    path = Path(path)
    check_output_path(path, format)
    identity = export_metadata(model, argmax=argmax, static=static)
    net = copy.deepcopy(model).cpu().eval()
    fold_batchnorm(net)
    wrapped = _Exported(net, argmax).eval()
    size = static or (257, 321)
    example = torch.randn(1, 3, *size)
    check = torch.randn(2, 3, *(static or (193, 259)))  # batch 2: the batch stays dynamic
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if format == "onnx":
            # metadata_props: the int8 quantiser copies them to its output.
            _to_onnx(wrapped, example, tmp, dynamic=static is None, metadata=identity)
            (actual,) = _run_onnx(tmp, check)
        else:
            _to_torchscript(wrapped, example, tmp, identity)
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
        quantize_int8(path, quantized, calibrate, method=method)
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
    """Fail early, in one line, when ``path`` cannot be written as a file.

    Raises:
        ValueError: ``path`` is a folder, a parent is a file, or the folder is not writable.
    """
    if path.is_dir():
        example = path / ("model.onnx" if format == "onnx" else "model.pt")
        raise ValueError(f"--out {path} names a folder; give a file such as {example}")
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent  # the first folder that exists is the one to write in
    if not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: the folder {parent} is not writable; choose another --out")


def export_metadata(
    model: nn.Module, *, argmax: bool, static: tuple[int, int] | None
) -> dict[str, str]:
    """``{FINGERPRINT_KEY: sha256, META_KEY: JSON}``: what an exported file records."""
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
    return {
        FINGERPRINT_KEY: weights_fingerprint(model),
        META_KEY: json.dumps(info, default=str),
    }


def _run_onnx(path: Path, *images: Tensor) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
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


class OnnxRuntimeModel:
    """An exported ONNX file behind the segmenter call contract (``x -> {"out": logits}``), so
    ``segkit eval`` and ``segkit predict`` measure the deployment runtime itself.

    The file must output logits (exported without ``--argmax``). A file exported with
    ``--static HxW`` takes only that size: use ``--mode slide --window HxW`` with it.
    """

    training = False

    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own error types: InvalidProtobuf, Fail, ...
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"{path} is not an ONNX model ONNX Runtime can load ({reason[:200]}); give "
                "--onnx the file written by `segkit export`"
            ) from err
        self.input_name = self.session.get_inputs()[0].name
        #: ``metadata_props`` of the file (see :func:`export_metadata`).
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        (out,) = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})
        if out.ndim != 4:
            raise ValueError(
                f"the ONNX file returns shape {out.shape}, not N x C x H x W logits; export it "
                "without --argmax to evaluate or predict with it"
            )
        return {"out": torch.from_numpy(out).to(x.device)}

    def eval(self) -> OnnxRuntimeModel:
        return self

    def train(self, mode: bool = True) -> OnnxRuntimeModel:
        return self
