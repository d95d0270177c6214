"""Segment images from Python with a trained model: :class:`Predictor`.

    >>> predictor = segkit.Predictor("runs/voc/checkpoints/best.pt")  # or "model.onnx"
    >>> mask = predictor("photo.jpg")  # H x W uint8 class indices
    >>> result = predictor.predict(image)  # result.mask, result.probs (C x H x W float32)

A predictor runs exactly what ``segkit predict`` runs (that command is a thin layer over this
class): the image is read and converted to RGB by the rule of :mod:`segkit.datasets.io`,
normalised with the model's mean and std, and passed through
:func:`~segkit.engine.inference.predict_logits` with the inference protocol (whole image or
sliding window, scales, flip) the checkpoint's run was validated with, unless given.

Sources: a segkit checkpoint, another project's checkpoint that :mod:`segkit.convert` knows
(converted in memory), an ONNX file written by ``segkit export`` (``.onnx``: its metadata
holds the classes, palette, normalisation and protocol, so the file alone is enough), or a
model object (``x -> {"out": logits}``, in eval mode, with ``meta`` for the normalisation).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from segkit.config import Config, with_eval_defaults
from segkit.convert import open_model
from segkit.datasets.io import pil_to_rgb8, read_image, to_rgb8
from segkit.deploy.optimize import optimize_for_inference
from segkit.engine.device import resolve_device
from segkit.engine.evaluate import inference_options
from segkit.engine.inference import predict_logits

logger = logging.getLogger(__name__)

#: One image: a file, a PIL image, an ``H x W x 3`` array (``uint8``; other types and band
#: counts follow the file rule), or a normalised ``3 x H x W`` float tensor.
ImageLike = str | os.PathLike | Image.Image | np.ndarray | Tensor
#: The protocol keys a predictor takes and an ONNX file records (besides ``crop_size``).
PROTOCOL_KEYS = ("mode", "window", "stride", "scales", "flip")


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns for one image.

    Attributes:
        mask: ``H x W`` class indices, ``uint8`` (``int64`` for a model of over 256 classes).
        probs: ``C x H x W`` float32 class probabilities: the softmax of the logits averaged
            over the protocol's passes (its argmax is ``mask``).
    """

    mask: np.ndarray
    probs: np.ndarray


def checkpoint_protocol(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The inference protocol of a checkpoint's run: ``mode``, ``window``, ``stride``,
    ``scales``, ``flip`` of its ``eval`` section and ``crop_size``, the window ``slide``
    defaults to (what ``segkit export`` records in an ONNX file)."""
    config = Config.from_dict(checkpoint.get("config", {}))
    options = inference_options(config.eval)
    return {**options, "scales": list(options["scales"]), "crop_size": config.data.crop_size}


class Predictor:
    """A model ready to segment images (see the module docstring).

    Args:
        source: a checkpoint file, an ``.onnx`` file, or a model object.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device`` (ONNX files run on
            the CPU; results come back the same).
        mode, window, stride, scales, flip: the inference protocol (``segkit predict``'s
            ``--mode``, ...); each defaults to the source's recorded one (whole image, scale 1,
            no flip for a model object). An ONNX file exported at a fixed size runs window by
            window at that size unless ``mode`` or ``window`` is given.
        precision, compile: the torch fast path (:func:`~segkit.optimize_for_inference`) for
            a checkpoint.
        meta: for a model object without ``meta``: ``mean`` and ``std`` (required),
            ``class_names`` and ``palette``.
        note: receives one line when a checkpoint of another project is converted (default:
            logged at INFO level).

    Raises:
        FileNotFoundError, ValueError: an unreadable source, options that do not fit it, or a
            model in training mode.
    """

    def __init__(
        self,
        source: str | os.PathLike | Callable[[Tensor], dict[str, Tensor]],
        *,
        device: str | torch.device = "cpu",
        mode: str | None = None,
        window: int | None = None,
        stride: int | None = None,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
        precision: str = "fp32",
        compile: bool = False,
        meta: Mapping[str, Any] | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        given = {"mode": mode, "window": window, "stride": stride, "scales": scales, "flip": flip}
        given = {key: value for key, value in given.items() if value is not None}
        loaded = _load(source, self.device, precision, compile, meta, note)
        self.runner, self.meta, recorded, static, self.runtime = loaded
        missing = [key for key in ("mean", "std") if key not in self.meta]
        if missing:
            raise ValueError(
                f"the model records no {' and '.join(missing)} to normalise images with; pass "
                "meta={'mean': [...], 'std': [...]} (0-1 RGB scale)"
            )
        #: Keyword arguments of :func:`~segkit.engine.inference.predict_logits`.
        self.options = _protocol(recorded, given, static)
        self._mean = torch.tensor(self.meta["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.meta["std"], device=self.device).view(1, 3, 1, 1)

    @property
    def class_names(self) -> list[str]:
        """One name per class (``"0"``, ``"1"``, ... when the source records none)."""
        names = self.meta.get("class_names")
        return list(names) if names else [str(i) for i in range(len(self.palette))]

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """One RGB colour per class (empty when the source records none)."""
        return [tuple(int(v) for v in colour) for colour in self.meta.get("palette", [])]

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """Class-index masks: one ``H x W`` array for one image, a list for a list of images
        or an ``N x 3 x H x W`` tensor (see :class:`Prediction` for the dtype)."""
        masks = [_mask(logits) for x in self._inputs(images) for logits in self._logits(x)]
        return masks if _is_batch(images) else masks[0]

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        """Masks and probabilities: one :class:`Prediction` per image (a list for a batch)."""
        results = [
            Prediction(_mask(logits), torch.softmax(logits, dim=0).cpu().numpy())
            for x in self._inputs(images)
            for logits in self._logits(x)
        ]
        return results if _is_batch(images) else results[0]

    def normalise(self, image: np.ndarray) -> Tensor:
        """``H x W x 3`` uint8 RGB -> the model input ``1 x 3 x H x W`` on the device."""
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255
        return (x - self._mean) / self._std

    def _logits(self, x: Tensor) -> Tensor:
        """Logits ``N x C x H x W`` of a normalised batch by the protocol."""
        count = len(self.meta.get("class_names", [])) or None
        return predict_logits(self.runner, x, num_classes=count, **self.options)

    def _inputs(self, images: ImageLike | Sequence[ImageLike]) -> Iterator[Tensor]:
        """Normalised ``N x 3 x H x W`` batches, one at a time (a list is read lazily)."""
        if isinstance(images, Tensor):
            if images.dim() not in (3, 4) or images.shape[-3] != 3:
                raise ValueError(
                    f"a tensor input must be a normalised 3 x H x W image or N x 3 x H x W "
                    f"batch, got shape {tuple(images.shape)}"
                )
            yield (images[None] if images.dim() == 3 else images).to(self.device).float()
        elif _is_batch(images):
            if not images:
                raise ValueError("no image given: the list is empty")
            for image in images:
                if isinstance(image, (list, tuple)) or _is_batch(image):
                    raise ValueError("a batch holds images, not batches: flatten the list")
                yield from self._inputs(image)
        else:
            yield self.normalise(as_rgb(images))

    def __repr__(self) -> str:
        protocol = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return (
            f"Predictor({len(self.class_names)} classes, {self.runtime} on {self.device}, "
            f"{protocol})"
        )


def _load(
    source: str | os.PathLike | Callable[[Tensor], dict[str, Tensor]],
    device: torch.device,
    precision: str,
    compile: bool,
    meta: Mapping[str, Any] | None,
    note: Callable[[str], None] | None,
) -> tuple[Any, dict[str, Any], dict[str, Any], tuple[int, int] | None, str]:
    """The runner, ``meta``, recorded protocol, fixed input size and runtime of a source."""
    if not isinstance(source, (str, os.PathLike)):
        if _training(source):
            raise ValueError("the model is in training mode; call model.eval() first")
        given = meta if meta is not None else getattr(source, "meta", None) or {}
        return source, dict(given), {}, None, "torch"
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        if precision != "fp32" or compile:
            raise ValueError(
                "precision and compile apply to checkpoints; an ONNX file runs as it was "
                "exported (see `segkit export --int8`)"
            )
        return (*_open_onnx(path), "onnxruntime")
    checkpoint, model = open_model(path, device=device, note=note or logger.info)
    runner = optimize_for_inference(model, precision=precision, compile=compile)
    return runner, dict(model.meta), checkpoint_protocol(checkpoint), None, "torch"


def as_rgb(image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """One image as ``H x W x 3`` uint8 RGB by the rule of :mod:`segkit.datasets.io`.

    Raises:
        SampleError: an unreadable file.
        ValueError: an array that is not ``H x W`` or ``H x W x C``, or another type.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb8(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] > 4:
            raise ValueError(
                f"the array of shape {image.shape} looks like C x H x W; pass H x W x C "
                "(np.transpose(image, (1, 2, 0)))"
            )
        return to_rgb8(image)
    raise ValueError(
        f"cannot predict on a {type(image).__name__}: give a file path, a PIL image, an "
        "H x W x 3 NumPy array, a normalised torch tensor, or a list of these"
    )


def _training(model: object) -> bool:
    """Whether a layer of ``model`` that acts otherwise in training (batch norm, dropout) is in
    training mode."""
    if not isinstance(model, nn.Module):
        return bool(getattr(model, "training", False))
    moded = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return any(layer.training for layer in model.modules() if isinstance(layer, moded))


def _is_batch(images: object) -> bool:
    if isinstance(images, Tensor):
        return images.dim() == 4
    return isinstance(images, (list, tuple))


def _mask(logits: Tensor) -> np.ndarray:
    """``C x H x W`` logits -> ``H x W`` class indices (uint8 up to 256 classes)."""
    mask = logits.argmax(dim=0)
    return (mask.to(torch.uint8) if logits.shape[0] <= 256 else mask).cpu().numpy()


def _protocol(
    recorded: Mapping[str, Any], given: Mapping[str, Any], static: tuple[int, int] | None
) -> dict[str, Any]:
    """:func:`predict_logits` options: ``given`` over ``recorded``, checked as the config's
    ``eval`` section (choices, limits), ``slide``'s window defaulting to the recorded crop
    size, and a fixed-size file's window to its size."""
    config = Config()
    values = {f"eval.{key}": recorded[key] for key in PROTOCOL_KEYS if recorded.get(key)}
    values.update({f"eval.{key}": value for key, value in given.items()})
    config.update(values)
    if recorded.get("crop_size"):
        config.update({"data.crop_size": recorded["crop_size"]})
        with_eval_defaults(config)
    options = inference_options(config.eval)
    if static is not None and "window" not in given:
        options["window"] = static
        options["stride"] = given.get("stride")
        options["mode"] = given.get("mode", "slide")
    return options


def _open_onnx(path: Path) -> tuple[Any, dict[str, Any], dict[str, Any], tuple[int, int] | None]:
    """An exported file: its runner, ``meta`` (classes, palette, normalisation), recorded
    protocol and fixed input size (``None`` when dynamic)."""
    from segkit.deploy.onnx import META_KEY
    from segkit.deploy.ort import OnnxRuntimeModel

    runner = OnnxRuntimeModel(path)
    try:
        info = json.loads(runner.metadata.get(META_KEY, "{}"))
    except ValueError as err:
        raise ValueError(f"{path}: its {META_KEY} metadata is not JSON ({err})") from err
    if info.get("output", {}).get("kind", "logits") != "logits":
        raise ValueError(
            f"{path} outputs class indices (exported with --argmax), not logits; export it "
            "without --argmax to predict with it"
        )
    meta = {key: info[key] for key in ("class_names", "palette", "mean", "std") if key in info}
    if "ignore_index" in info:
        meta["ignore_index"] = info["ignore_index"]
    height, width = info.get("input", {}).get("shape", ["N", 3, "H", "W"])[2:]
    static = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    if "mean" not in meta:
        raise ValueError(
            f"{path} records no normalisation (segkit.meta): it was not written by `segkit "
            "export`; export the checkpoint again, or pass the model with meta= instead"
        )
    return runner, meta, dict(info.get("inference", {})), static
