"""Options are declared once, by the component that takes them.

A head builder or a dataset class declares each of its options as a keyword-only parameter:
the type hint is the option's type, the default its default and the docstring's ``Args:`` entry
its help text. :func:`component_options` reads them back, so the run configuration
(:mod:`segkit.config`), ``--set``, the YAML recipes and the command-line flags all offer a new
option as soon as a component declares it, with nothing to list by hand elsewhere.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.values import type_options

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^(\s*)(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


@dataclass(frozen=True)
class Option:
    """One option as its components declare it.

    Attributes:
        name: the keyword (``aspp_channels``).
        hint: the type a configuration value is converted to (``int``, ``list[int] | None``).
        help: the docstring's description.
        defaults: each declaring component's default (``{"deeplabv3": 256, ...}``).
    """

    name: str
    hint: Any
    help: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Help text naming who takes the option and its defaults, e.g. ``deeplabv3,
        deeplabv3plus: width of the ASPP branches (default: 256)``."""
        values: dict[str, list[str]] = {}
        for owner, default in self.defaults.items():
            values.setdefault(show_value(default), []).append(owner)
        if len(values) == 1:
            (shown,) = values
            default = f"default: {shown}"
        else:
            default = "defaults: " + "; ".join(f"{v} ({', '.join(o)})" for v, o in values.items())
        text = plain(self.help)
        if "default" not in text:
            text = f"{text.rstrip('.')} ({default})"
        return f"{', '.join(self.defaults)}: {text}"


def docstring_args(obj: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring as ``{name: description}``."""
    lines = inspect.getdoc(obj).splitlines() if inspect.getdoc(obj) else []
    args: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        if _ARGS_HEADER.match(line):
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if line.strip() and not line.startswith(" "):
            inside = False  # the next section (Returns:, Raises:, ...)
            continue
        match = _ARG_LINE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent = len(match.group(1))
            current = match.group(2).lstrip("*")
            args[current] = match.group(3).strip()
        elif current is not None and line.strip():
            args[current] = f"{args[current]} {line.strip()}".strip()
    return args


def component_options(
    component: Callable[..., Any], owner: str, *, skip: Iterable[str] = ()
) -> dict[str, Option]:
    """The keyword-only parameters of ``component`` (a function or a class) as options.

    Raises:
        TypeError: a parameter without a type hint or without an ``Args:`` description (a
            component's mistake, caught by the tests that build every registered component).
    """
    target = component.__init__ if inspect.isclass(component) else component
    hints = typing.get_type_hints(target)
    docs = docstring_args(component) | docstring_args(target)
    options = {}
    for param in inspect.signature(component).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name in skip:
            continue
        if param.name not in hints or not docs.get(param.name):
            raise TypeError(
                f"{owner}: option {param.name!r} needs a type hint and an Args: description in "
                f"the docstring of {component.__qualname__}"
            )
        hint = config_type(hints[param.name])
        options[param.name] = Option(param.name, hint, docs[param.name], {owner: param.default})
    return options


def merge_options(groups: Iterable[dict[str, Option]]) -> dict[str, Option]:
    """One :class:`Option` per name over several components; defaults are kept per component.

    Raises:
        TypeError: two components give one option name different types.
    """
    merged: dict[str, Option] = {}
    for group in groups:
        for name, option in group.items():
            known = merged.get(name)
            if known is None:
                merged[name] = option
                continue
            if known.hint != option.hint:
                raise TypeError(
                    f"option {name!r} has type {known.hint} in {list(known.defaults)} but "
                    f"{option.hint} in {list(option.defaults)}: give it one type"
                )
            merged[name] = Option(name, known.hint, known.help, known.defaults | option.defaults)
    return merged


def config_type(hint: Any) -> Any:
    """The type a configuration value of ``hint`` is stored as: paths become ``str``,
    sequences and tuples ``list``; ``None`` is always allowed (it means "the default")."""
    options = type_options(hint)
    converted: list[Any] = []
    for option in options:
        origin = typing.get_origin(option)
        if option in (Path, os.PathLike) or origin is os.PathLike:
            option = str
        elif origin in (tuple, list, collections.abc.Sequence):
            args = [a for a in typing.get_args(option) if a is not Ellipsis]
            option = list[args[0]] if args else list
        if option not in converted:
            converted.append(option)
    if type(None) not in converted:
        converted.append(type(None))
    result = converted[0]
    for option in converted[1:]:
        result = result | option
    return result


def plain(text: str) -> str:
    """Docstring markup as plain text: ``:func:`~a.b.c``` -> ``c``, double backticks dropped."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "")


def show_value(value: Any) -> str:
    """A value as help text shows it: ``none``, ``on``/``off``, ``a,b`` for a list."""
    if value is None or (isinstance(value, list | tuple) and not value):
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)
