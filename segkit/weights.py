"""Reading weights safely and loading them by name and shape, with a report.

This module depends on nothing else in segkit: models, checkpoints and converters build on it.

Every file is read with ``torch.load(..., weights_only=True)`` (or safetensors): a pickle that
would need to run arbitrary code is refused with an explanation, never executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
        obj = read_file(path)
    state = _unwrap(obj, label)
    return {key.removeprefix("module."): value for key, value in state.items()}


def read_file(path: Path) -> object:
    if not path.is_file():
        if path.is_dir():
            raise ValueError(
                f"{path} is a folder, not a weights file; give a file in it (a segkit run keeps "
                "its checkpoints in checkpoints/best.pt and checkpoints/last.pt)"
            )
        raise FileNotFoundError(f"Weights file not found: {path}")
    # Warnings are held back until the file has loaded: on failure the one-line error says
    # it all (torch warns about TorchScript archives and pickle protocols on the way).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record all; the caller's filters apply on replay
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                data = load_file(path)
            else:
                with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
                    data = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, MemoryError):  # unreadable folder, I/O error: the system's own words
            raise
        except Exception as err:  # the readers raise many types; find out what the file is
            # `from None`: torch's text suggests weights_only=False, which segkit never does.
            raise _unreadable(path, err) from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return data


# What unsafe pickles make torch's weights-only unpickler say (torch/_weights_only_unpickler.py).
_UNSAFE_MARKERS = (
    "was not an allowed global",
    "is blocked",
    "Can only create new object",
    "Can only build",
    "call reduce for unrecognized function",
)
_OTHER_CHECKPOINT = "use the run's other checkpoint (checkpoints/best.pt or last.pt)"


def _unreadable(path: Path, err: Exception) -> ValueError:
    """Why ``path`` could not be read, in one line with the fix (only runs on failure)."""
    size = path.stat().st_size
    if size == 0:
        return ValueError(
            f"{path} is empty (0 bytes): the save or copy was interrupted. Copy it again, or "
            f"{_OTHER_CHECKPOINT}."
        )
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and any(m in text for m in _UNSAFE_MARKERS):
        found = re.search(r"GLOBAL (\S+)", text)
        what = f"such as {found.group(1)}" if found else _detail(err)
        return ValueError(
            f"Refused to load {path}: it contains pickled Python objects that are not plain "
            f"tensors or containers ({what}), and unpickling them could run arbitrary code, so "
            "segkit loads weights only with torch.load(weights_only=True). If you trust the "
            "file, re-save just its state_dict (torch.save(model.state_dict(), 'clean.pth')) in "
            "the project that wrote it."
        )
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        return _unreadable_zip(path, size, err)
    header = int.from_bytes(head[:8], "little")
    if head[8:10] == b'{"' and header < 100_000_000:  # safetensors: length, then JSON header
        if path.suffix != ".safetensors":
            return ValueError(f"{path} is a safetensors file: rename it to end in .safetensors")
        cut = "truncated" if header + 8 > size or "not fully covered" in str(err) else "corrupt"
        return ValueError(
            f"{path} is a {cut} safetensors file ({size} bytes; {_detail(err)}): the save or "
            "copy was interrupted or the file was damaged. Copy it again."
        )
    if head.startswith(b"\x08") and _is_onnx(path):
        return ValueError(
            f"{path} is an ONNX export, not a checkpoint: to evaluate or predict with it use "
            f"`--runtime onnxruntime --onnx {path}` with --checkpoint set to the segkit "
            "checkpoint (.pt written by `segkit train`) it was exported from."
        )
    if head.startswith(b"\x89HDF"):
        return ValueError(
            f"{path} is an HDF5 file (Keras/TensorFlow weights?), which segkit cannot read: "
            "give a PyTorch checkpoint (.pt/.pth) or a .safetensors file."
        )
    kind = "safetensors file" if path.suffix == ".safetensors" else "PyTorch checkpoint"
    return ValueError(
        f"{path} is not a readable {kind}: it is truncated, corrupt or another kind of file "
        f"(first bytes {head[:8].hex(' ')}; {_detail(err)}). Give a checkpoint written by "
        "`segkit train` (RUN/checkpoints/best.pt), a torch.save state dict or a .safetensors "
        "file."
    )


def _unreadable_zip(path: Path, size: int, err: Exception) -> ValueError:
    """A zip archive torch could not read: truncated, TorchScript, damaged or foreign."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return ValueError(
            f"{path} is truncated ({size} bytes; the end of its zip archive is missing): the "
            f"save or copy was interrupted. Copy it again, or {_OTHER_CHECKPOINT}."
        )
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return ValueError(
            f"{path} is a TorchScript export (torch.jit.save, `segkit export --format "
            "torchscript`), not a checkpoint: give --checkpoint the segkit checkpoint (.pt "
            "written by `segkit train`) it was exported from; run the export with torch.jit.load."
        )
    if any(name.endswith("data.pkl") for name in names):
        if path.suffix == ".safetensors":
            return ValueError(f"{path} is a PyTorch (torch.save) file: rename it to end in .pt")
        return ValueError(
            f"{path} is a damaged PyTorch checkpoint ({_detail(err)}). Copy it again, or "
            f"{_OTHER_CHECKPOINT}."
        )
    return ValueError(
        f"{path} is a zip archive but not a PyTorch checkpoint (it holds {names[:3]}): give a "
        "checkpoint written by `segkit train`, a torch.save state dict or a .safetensors file."
    )


def _is_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not installed, or not a protobuf
        return False
    return len(model.graph.node) > 0 and len(model.opset_import) > 0


def _detail(err: Exception) -> str:
    """The reader's own reason, first sentence only, without torch's weights_only advice."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    for line in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line and "weights_only" not in line and not line.startswith("Check the documentation"):
            return f"{type(err).__name__}: {line.split('. ')[0][:160]}"
    return type(err).__name__


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


def weights_fingerprint(source: nn.Module | StateDict) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and bytes of a state dict's tensors.

    The same for a checkpoint's ``state_dict``, the model loaded from it (on any device) and,
    as recorded in their metadata, every file :func:`segkit.export` writes from that model.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
