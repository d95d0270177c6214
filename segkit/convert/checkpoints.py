"""Converted models as segkit checkpoints: written to disk, or made in memory when eval,
predict, export or ``--init-from`` are given another project's file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segkit.checkpoint import (
    CHECKPOINT_FORMAT,
    checked_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from segkit.convert.core import convert, foreign_source
from segkit.convert.result import Conversion
from segkit.weights import read_file


def checkpoint_payload(conversion: Conversion) -> dict[str, Any]:
    """The entries of a segkit checkpoint for a converted model (what ``segkit train`` writes,
    minus training state): build spec, metadata, weights, and a run configuration whose model
    section and, when known, dataset match it (what eval/predict/export read)."""
    model = conversion.model
    spec = {k: v for k, v in model.config.items() if k != "num_classes"}
    meta = model.meta
    data: dict[str, Any] = {"mean": meta["mean"], "std": meta["std"]}
    if meta.get("dataset"):
        data["dataset"] = meta["dataset"]
    return {
        "model": dict(model.config),
        "meta": dict(meta),
        "state_dict": model.state_dict(),
        "config": {"model": spec, "data": data, "train": {"ignore_index": meta["ignore_index"]}},
    }


def write_checkpoint(conversion: Conversion, path: str | os.PathLike) -> None:
    """Write the converted model as a segkit checkpoint, atomically (nothing on failure)."""
    save_checkpoint(path, checkpoint_payload(conversion))


def open_checkpoint(
    path: str | os.PathLike, *, note: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """A checkpoint as :func:`segkit.checkpoint.load_checkpoint` returns it; another project's
    file is converted in memory first and ``note`` gets one line saying so.

    Raises:
        FileNotFoundError, ValueError: see :func:`~segkit.checkpoint.load_checkpoint`; a file
            that is neither a segkit checkpoint nor a known layout gets segkit's own message.
    """
    data, conversion = _read_converting(
        path, note, f" (`segkit convert {path} --out FILE.pt` writes it once)"
    )
    if conversion is None:
        return checked_checkpoint(data, path)
    return {"format": CHECKPOINT_FORMAT, **checkpoint_payload(conversion)}


def open_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    note: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], nn.Module]:
    """:func:`open_checkpoint` and the model it describes (eval mode, on ``device``)."""
    checkpoint = open_checkpoint(path, note=note)
    return checkpoint, model_from_checkpoint(checkpoint, path, device=device)


def foreign_weights(
    path: str | os.PathLike, *, note: Callable[[str], None] | None = None
) -> dict[str, Tensor] | None:
    """The converted weights (segkit names) when ``path`` is another project's checkpoint,
    with one ``note`` line saying so; ``None`` for any other file (for ``--init-from``)."""
    _, conversion = _read_converting(path, note)
    return None if conversion is None else conversion.model.state_dict()


def _read_converting(
    path: str | os.PathLike, note: Callable[[str], None] | None, hint: str = ""
) -> tuple[object, Conversion | None]:
    """The file's contents and, when it is another project's checkpoint, its conversion
    (detected once: the conversion uses the layout found)."""
    data = read_file(Path(path))
    source = foreign_source(data)
    if source is None:
        return data, None
    conversion = convert(data, source=source, label=str(path))
    if note is not None:
        note(f"{path} is a {conversion.summary()} checkpoint: converted in memory{hint}")
    return data, conversion
