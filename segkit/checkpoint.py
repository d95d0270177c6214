"""Reading weights safely and loading them by name and shape, with a report.

Every file is read with ``torch.load(..., weights_only=True)`` (or safetensors): a pickle that
would need to run arbitrary code is refused with an explanation, never executed.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

StateDict = Mapping[str, Tensor]
WRAPPER_KEYS = ("state_dict", "model_state", "model", "model_state_dict")
# Prefixes other projects put in front of parameter names: DataParallel/DDP, torchvision and
# DeepLab repositories ("backbone."), PyTorch-Encoding ("pretrained."), smp ("encoder.").
SOURCE_PREFIXES = ("", "backbone.", "pretrained.", "encoder.", "model.", "body.")
# numpy scalars and dtypes are data, not code: checkpoints of popular repositories store their
# best score as a numpy float, which weights_only loading otherwise refuses.
_NUMPY_CORE = getattr(np, "_core", None) or np.core
NUMPY_SAFE_GLOBALS = [
    _NUMPY_CORE.multiarray.scalar,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)),
]


@dataclass
class LoadReport:
    """What :func:`load_weights` did, by parameter/buffer name.

    Attributes:
        source: where the weights came from.
        loaded: target names that received a tensor.
        missing: target names with no tensor of that name in the source.
        unexpected: source names with no counterpart in the target.
        mismatched: ``(name, source_shape, target_shape)`` for names whose shapes differ.
        renamed: how source names were mapped (e.g. a prefix that was stripped), or ``""``.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    renamed: str = ""

    def __str__(self) -> str:
        lines = [
            f"Loaded {len(self.loaded)} tensors from {self.source}"
            + (f" ({self.renamed})" if self.renamed else "")
        ]
        for name, src, dst in self.mismatched:
            lines.append(f"  shape mismatch, skipped: {name}: file {src} vs model {dst}")
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected)):
            if names:
                shown = ", ".join(names[:8]) + (
                    f", ... (+{len(names) - 8})" if len(names) > 8 else ""
                )
                lines.append(f"  {title} ({len(names)}): {shown}")
        return "\n".join(lines)


def read_state_dict(source: str | os.PathLike | StateDict) -> dict[str, Tensor]:
    """Read a state dict from a file (.pth/.pt/.pth.tar/.safetensors) or a mapping.

    Unwraps ``{"state_dict": ...}``, ``{"model_state": ...}``, ``{"model": ...}`` and
    ``{"model_state_dict": ...}`` containers and the ``module.`` prefix of DataParallel/DDP.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is an unsafe pickle, or holds no tensors.
    """
    if isinstance(source, Mapping):
        obj, label = source, "the given state dict"
    else:
        path = Path(source)
        label = str(path)
        obj = _read_file(path)
    state = _unwrap(obj, label)
    return {key.removeprefix("module."): value for key, value in state.items()}


def _read_file(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refused to load {path}: it contains pickled Python objects that are not plain "
            "tensors or containers, and unpickling them could run arbitrary code, so segkit "
            "loads weights only with torch.load(weights_only=True). If you trust the file, "
            "re-save just its state_dict (torch.save(model.state_dict(), 'clean.pth')) in the "
            f"project that wrote it. Details: {str(err).splitlines()[0]}"
        ) from err


def _unwrap(obj: object, label: str) -> Mapping[str, Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], label)
        keys = list(obj)[:10]
        raise ValueError(
            f"No state dict found in {label}: top-level keys are {keys}; expected tensors, or "
            f"one of {list(WRAPPER_KEYS)} holding them."
        )
    raise ValueError(f"No state dict found in {label}: it holds a {type(obj).__name__}.")


def _canonical(name: str) -> str:
    # timm feature extractors flatten "stem.0" into "stem_0": treat "_" and "." alike.
    return name.replace("_", ".")


def _match_names(source: list[str], target: list[str]) -> tuple[dict[str, str], str]:
    """Map target names to source names, trying the prefix conventions of other projects.

    Returns the mapping with the most matches and a description of the renaming used.
    """
    target_set = set(target)
    target_prefixes = ["", *sorted({t.split(".", 1)[0] + "." for t in target if "." in t})]
    best: tuple[int, dict[str, str], str] = (-1, {}, "")
    for strip in SOURCE_PREFIXES:
        for add in target_prefixes:
            renamed = {add + s.removeprefix(strip): s for s in source if s.startswith(strip)}
            mapping = {t: renamed[t] for t in target_set & renamed.keys()}
            by_canon: dict[str, list[str]] = {}
            for name in renamed:
                by_canon.setdefault(_canonical(name), []).append(name)
            for t in target_set - mapping.keys():
                candidates = by_canon.get(_canonical(t), [])
                if len(candidates) == 1:
                    mapping[t] = renamed[candidates[0]]
            if len(mapping) > best[0]:
                parts = [f"stripped '{strip}'" if strip else "", f"added '{add}'" if add else ""]
                best = (len(mapping), mapping, ", ".join(p for p in parts if p))
    return best[1], best[2]


def load_weights(
    target: nn.Module, source: str | os.PathLike | StateDict, *, strict: bool = False
) -> LoadReport:
    """Load every tensor whose name and shape match into ``target``; report the rest.

    Args:
        target: a model or a part of one (e.g. ``model.backbone``).
        source: a path (.pth, .pt, .pth.tar, .safetensors) or a state dict.
        strict: raise if anything is missing, unexpected or of another shape.

    Returns:
        A :class:`LoadReport` listing loaded, missing, unexpected and shape-mismatched names.

    Raises:
        ValueError: nothing matched (loading zero tensors is never a silent success), or
            ``strict`` and the names/shapes differ.
    """
    label = "the given state dict" if isinstance(source, Mapping) else str(source)
    state = read_state_dict(source)
    own = target.state_dict()
    mapping, renamed = _match_names(list(state), list(own))
    report = LoadReport(source=label, renamed=renamed)
    to_load = {}
    for name, tensor in own.items():
        if name not in mapping:
            report.missing.append(name)
            continue
        value = state[mapping[name]]
        if value.shape != tensor.shape:
            report.mismatched.append((name, tuple(value.shape), tuple(tensor.shape)))
            continue
        to_load[name] = value
        report.loaded.append(name)
    used = set(mapping.values())
    report.unexpected = [name for name in state if name not in used]
    if not report.loaded:
        raise ValueError(
            f"No tensor of {label} matches {type(target).__name__} by name and shape "
            f"(file names look like {list(state)[:3]}, model names like {list(own)[:3]}). "
            "Is it a checkpoint of another architecture or backbone?"
        )
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ValueError(f"strict loading failed:\n{report}")
    target.load_state_dict(to_load, strict=False)
    return report


CHECKPOINT_FORMAT = "segkit-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: temporary file, flush, fsync, rename.

    An interruption at any point leaves either the previous file or the new one, never a
    half-written checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a segkit checkpoint safely (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file (never a silent random model).
        ValueError: an unsafe pickle, or not a segkit checkpoint.
    """
    data = _read_file(Path(path))
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a segkit checkpoint (no 'format': {CHECKPOINT_FORMAT!r}). To use "
            "weights from another project, build the model and call segkit.load_weights, or "
            "train with --init-from FILE."
        )
    return data


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    The checkpoint's ``meta`` (class names, palette, normalisation, ignore index) is attached
    as ``model.meta``.
    """
    from segkit.models import create_model

    data = load_checkpoint(path)
    model = create_model(**data["model"])
    model.load_state_dict(data["state_dict"])
    model.meta = dict(data.get("meta", {}))
    return model.to(device).eval()
