"""Values from YAML, flags and ``--set`` converted to a field's type and checked against the
limits and choices the field declares (:func:`segkit.config.option`)."""

from __future__ import annotations

import contextlib
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``hint`` or raise ValueError naming ``key``.

    Text (from a flag or ``--set``) is taken as is for string fields and read as YAML
    otherwise, so ``0.01``, ``[1, 2, 4]``, ``1,2,4``, ``true`` and ``null`` all work.
    """
    options = type_options(hint)
    if isinstance(value, str) and value.strip() in ("null", "~", ""):
        value = None
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{key} cannot be null; expected {_describe(hint)}")
    candidates = [value]
    if isinstance(value, str):
        with contextlib.suppress(yaml.YAMLError):
            candidates.append(yaml.safe_load(value))
    # Text is taken as a string only when no other type reads it ("true" for ``str | bool``
    # is a bool, "1,2" for ``list[float] | str`` a list, "auto" a string).
    options = tuple(sorted(options, key=lambda option: option is str))
    for candidate in candidates:
        for option in options:
            converted = _try(candidate, option)
            if converted is not _FAIL:
                return converted
    raise ValueError(f"{key}: {value!r} is not a valid {_describe(hint)}")


_FAIL = object()


def _try(value: Any, option: Any) -> Any:
    origin = typing.get_origin(option)
    if origin is list:
        (item_type,) = typing.get_args(option)
        if isinstance(value, str) and "," in value and not value.lstrip().startswith("["):
            value = value.split(",")  # "1,2,4"; each item is converted below
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            return _FAIL
        items = [_try(v.strip() if isinstance(v, str) else v, item_type) for v in value]
        return _FAIL if any(i is _FAIL for i in items) else items
    if option is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        return _FAIL
    if option is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool):
            return _FAIL
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        return _FAIL
    if option is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as text
            try:
                return float(value)
            except ValueError:
                return _FAIL
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _FAIL
        return float(value)
    if option is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. a folder named 2012
        return value if isinstance(value, str) else _FAIL
    return _FAIL


def choices_of(metadata: Any) -> Sequence[str] | None:
    """The valid values a field declares (its ``choices``, called when it is a function)."""
    choices = metadata.get("choices")
    return choices() if callable(choices) else choices


def check_choices(value: Any, choices: Sequence[str] | None, key: str) -> None:
    if value is None or choices is None or value in choices:
        return
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    section, _, name = key.rpartition(".")
    noun = (section if name == "name" else name).replace("_", " ")
    raise ValueError(f"Unknown {noun} {value!r} ({key}).{hint} Valid choices: {list(choices)}")


def check_limits(value: Any, limits: dict[str, Any], key: str) -> None:
    """Raise ValueError naming ``key`` when ``value`` breaks one of its field's limits."""
    if value is None or not limits:
        return
    problems = []
    if "length" in limits and len(value) != limits["length"]:
        problems.append(f"needs {limits['length']} values, got {len(value)}")
    if "items_above" in limits and any(v <= limits["items_above"] for v in value):
        problems.append(f"every value must be > {limits['items_above']}")
    if "min" in limits and value < limits["min"]:
        problems.append(f"must be >= {limits['min']}")
    if "max" in limits and value > limits["max"]:
        problems.append(f"must be <= {limits['max']}")
    if "above" in limits and value <= limits["above"]:
        problems.append(f"must be > {limits['above']}")
    if problems:
        raise ValueError(f"{key}={value!r}: {'; '.join(problems)}")


def type_options(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: ``int | None`` -> ``(int, NoneType)``, ``int`` -> ``(int,)``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return typing.get_args(hint) if union else (hint,)


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")
