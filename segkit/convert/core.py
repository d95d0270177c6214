"""The conversion itself: detection over the source modules, the build, the strict load."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor

from segkit.checkpoint import CHECKPOINT_FORMAT
from segkit.convert import encoding, fastfcn, jfzhang95, torchvision_, vainf
from segkit.convert.layout import ConversionError, Found
from segkit.convert.result import Conversion, make_meta
from segkit.models import Segmenter, create_model
from segkit.weights import read_file, read_state_dict

logger = logging.getLogger(__name__)

SOURCES: dict[str, ModuleType] = {
    "vainf": vainf,
    "jfzhang95": jfzhang95,
    "encoding": encoding,
    "fastfcn": fastfcn,
    "torchvision": torchvision_,
}


def convert(
    src: str | os.PathLike | Mapping[str, Any],
    *,
    source: str = "auto",
    dataset: str | None = None,
    label: str | None = None,
    **overrides: Any,
) -> Conversion:
    """Convert another project's checkpoint into a segkit model.

    Args:
        src: the checkpoint file (or an already loaded checkpoint), in its project's own
            container (``{"model_state": ...}``, ``{"state_dict": ...}``, a plain state dict).
        source: ``"auto"`` (detect from key names and shapes) or a key of :data:`SOURCES`.
        dataset: a dataset with a fixed label set (``voc``, ``cityscapes``, ...) whose class
            names and palette the model carries (default: guessed from the class count, else
            ``class_0``... with the VOC colour map).
        **overrides: :func:`segkit.create_model` arguments that replace what was detected or
            the source project's default: what no weight records (``output_stride``,
            ``multi_grid``, ``aspp_rates``), or ``num_classes`` to confirm the count.
        label: how messages name the file (default: its path).

    Raises:
        FileNotFoundError: no such file.
        ConversionError: an unknown layout, a segkit checkpoint, tensors left unfilled or
            unused, or an override that contradicts the weights.
    """
    label = label or _label(src)
    state = _read(src, label)
    found = _find(state, source, label)
    options = dict(found.model)
    _check_num_classes(options, overrides.pop("num_classes", None), label)
    options.update({k: v for k, v in overrides.items() if v is not None})
    module = SOURCES[found.source]
    found = Found(found.source, options, found.details)
    mapping = module.to_segkit(state, found)
    ignore = [re.compile(pattern) for pattern in getattr(module, "IGNORED", ())]
    ignored = sorted(k for k in state if k not in mapping and any(p.match(k) for p in ignore))
    unused = sorted(k for k in state if k not in mapping and k not in ignored)
    tensors = {target: state[key] for key, target in mapping.items()}
    adjust = getattr(module, "adjust", None)
    if adjust is not None:
        adjust(tensors, found)
    meta = make_meta(options["num_classes"], dataset, module.PROJECT, label)
    try:
        model = create_model(**options, meta=meta)
    except ValueError as err:
        raise ConversionError(f"{label}: cannot build the model it holds: {err}") from err
    expected = model.state_dict()
    unused += sorted(key for key, target in mapping.items() if target not in expected)
    _check_fit(expected, tensors, unused, label, module.PROJECT)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return Conversion(model, found, module.PROJECT, options, len(tensors), ignored)


def convert_checkpoint(
    src: str | os.PathLike | Mapping[str, Any], *, source: str = "auto", **overrides: Any
) -> Segmenter:
    """The segkit model (eval mode, with its ``meta``) computing the same function as another
    project's checkpoint; see :func:`convert` for the arguments and errors."""
    return convert(src, source=source, **overrides).model


def detect(state: Mapping[str, Tensor], source: str = "auto", label: str = "the file") -> Found:
    """What a state dict holds, by key names and shapes (see :func:`convert`)."""
    return _find(dict(state), source, label)


def foreign_source(data: object) -> str | None:
    """The key of :data:`SOURCES` whose layout a loaded file has, or ``None`` for a segkit
    checkpoint or any other file."""
    if not isinstance(data, Mapping) or data.get("format") == CHECKPOINT_FORMAT:
        return None
    try:
        return _find(read_state_dict(data), "auto", "the file").source
    except (ValueError, TypeError):
        return None


def _label(src: object) -> str:
    return str(src) if isinstance(src, str | os.PathLike) else "the given checkpoint"


def _read(src: str | os.PathLike | Mapping[str, Any], label: str) -> dict[str, Tensor]:
    data = src if isinstance(src, Mapping) else read_file(Path(src))
    if isinstance(data, Mapping) and data.get("format") == CHECKPOINT_FORMAT:
        raise ConversionError(
            f"{label} is already a segkit checkpoint; use it as it is (segkit eval/predict/"
            "export --checkpoint, segkit.load_model)"
        )
    try:
        return read_state_dict(data)
    except ValueError as err:
        raise ConversionError(f"{label}: {err}") from err


def _find(state: dict[str, Tensor], source: str, label: str) -> Found:
    if source != "auto":
        if source not in SOURCES:
            raise ConversionError(
                f"unknown source {source!r}; choose auto or one of {list(SOURCES)}"
            )
        found = SOURCES[source].detect(state)
        if isinstance(found, str):
            raise ConversionError(
                f"{label} is not a {SOURCES[source].PROJECT} checkpoint: {found}. Try --from auto."
            )
        return found
    reasons, matches = {}, []
    for name, module in SOURCES.items():
        found = module.detect(state)
        if isinstance(found, str):
            reasons[name] = found
        else:
            matches.append(found)
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = [m.source for m in matches]
        raise ConversionError(
            f"{label} matches the layouts of {names}; choose one with --from {'|'.join(names)}"
        )
    tried = "; ".join(f"{SOURCES[n].PROJECT} ({n}): {why}" for n, why in reasons.items())
    raise ConversionError(
        f"{label} matches no known layout. It holds {_looks_like(state)}. Layouts tried: "
        f"{tried}. Weights of a plain backbone or of another project load with --init-from "
        "or segkit.load_weights (by name and shape)."
    )


def _looks_like(state: Mapping[str, Tensor]) -> str:
    """A short description of a state dict: size, top-level prefixes, a few keys."""
    prefixes: dict[str, int] = {}
    for key in state:
        top = key.split(".", 1)[0]
        prefixes[top] = prefixes.get(top, 0) + 1
    tops = ", ".join(f"{p}.* ({n})" for p, n in list(prefixes.items())[:8])
    first = ", ".join(list(state)[:3])
    return f"{len(state)} tensors under {tops or 'no names'} (first: {first or 'none'})"


def _check_num_classes(options: dict[str, Any], asked: int | None, label: str) -> None:
    if asked is not None and asked != options["num_classes"]:
        raise ConversionError(
            f"--num-classes {asked}, but the classifier in {label} has {options['num_classes']} "
            "outputs; leave --num-classes out (it is read from the weights), or fine-tune to "
            "another class count with `segkit train --init-from` on the converted file"
        )


def _check_fit(
    expected: Mapping[str, Tensor],
    tensors: Mapping[str, Tensor],
    unused: list[str],
    label: str,
    project: str,
) -> None:
    """Every tensor of the model filled with one of the right shape, every source tensor used."""
    missing = [k for k in expected if k not in tensors]
    mismatched = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if unused:
        problems.append(f"{len(unused)} tensors of the file have no place: {_names(unused)}")
    if missing:
        problems.append(f"{len(missing)} tensors of the model stay unfilled: {_names(missing)}")
    if mismatched:
        problems.append(f"shapes differ (file vs model): {_names(mismatched)}")
    if problems:
        raise ConversionError(
            f"{label} does not convert exactly as a {project} checkpoint: "
            + "; ".join(problems)
            + ". Nothing was written. Check --from, or report the file's layout."
        )


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")
