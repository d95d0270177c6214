"""Converted models as segkit checkpoints: written to disk, or made in memory when eval,
predict, export or ``--init-from`` are given another project's file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from segkit.checkpoint import CHECKPOINT_FORMAT, checked_checkpoint, save_checkpoint
from segkit.convert.core import convert, is_foreign
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
    data = read_file(Path(path))
    if not is_foreign(data):
        return checked_checkpoint(data, path)
    conversion = convert(data, label=str(path))
    if note is not None:
        note(
            f"{path} is a {conversion.summary()} checkpoint: converted in memory (`segkit "
            f"convert {path} --out FILE.pt` writes it once)"
        )
    return {"format": CHECKPOINT_FORMAT, **checkpoint_payload(conversion)}


def foreign_weights(
    path: str | os.PathLike, *, note: Callable[[str], None] | None = None
) -> dict[str, Tensor] | None:
    """The converted weights (segkit names) when ``path`` is another project's checkpoint,
    with one ``note`` line saying so; ``None`` for any other file (for ``--init-from``)."""
    data = read_file(Path(path))
    if not is_foreign(data):
        return None
    conversion = convert(data, label=str(path))
    if note is not None:
        note(f"{path} is a {conversion.summary()} checkpoint: converted in memory")
    return conversion.model.state_dict()
