"""What a conversion produced: the model, what was found, and how it is reported."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segkit.convert.layout import ConversionError, Found
from segkit.datasets import IMAGENET_MEAN, IMAGENET_STD, fixed_classes, voc_palette
from segkit.models import Segmenter

# The dataset a class count most likely means when --dataset is not given.
DATASET_BY_CLASSES = {21: "voc", 19: "cityscapes"}


@dataclass
class Conversion:
    """The result of :func:`convert`.

    Attributes:
        model: the segkit model, in eval mode, with ``meta`` (class names, palette, mean, std,
            ignore index, and ``converted_from``).
        found: what was detected in the file.
        project: the source project's name, as printed.
        options: the arguments the model was built with.
        tensors: how many tensors were loaded.
        ignored: source tensors dropped on purpose (known to be irrelevant).
    """

    model: Segmenter
    found: Found
    project: str
    options: dict[str, Any]
    tensors: int
    ignored: list[str]

    def report(self) -> str:
        """What was detected, the build options chosen and the load report, as lines."""
        project = self.project
        details = ", ".join(f"{k}: {_show(v)}" for k, v in self.found.details.items())
        options = ", ".join(f"{k}={_show(v)}" for k, v in self.options.items())
        lines = [
            f"detected: {project} ({details})",
            f"segkit model: {options}",
            f"classes: {_classes_line(self.model.meta)}",
            f"loaded {self.tensors} tensors; every tensor of the model filled, every tensor of "
            f"the file used" + (f" except {len(self.ignored)} ignored" if self.ignored else ""),
        ]
        if self.ignored:
            lines.append(f"ignored (not part of the segmentation model): {_names(self.ignored)}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: the project and the model it became."""
        options = self.options
        return (
            f"{self.project} {options['name']} {options['backbone']} "
            f"({options['num_classes']} classes)"
        )


def make_meta(num_classes: int, dataset: str | None, project: str, label: str) -> dict[str, Any]:
    """What the outputs mean: the dataset's classes when its class count fits, else generic."""
    guessed = dataset is None
    name = DATASET_BY_CLASSES.get(num_classes) if guessed else dataset
    classes = fixed_classes(name) if name else None
    if classes is not None and len(classes[0]) != num_classes:
        if not guessed:
            raise ConversionError(
                f"--dataset {name} has {len(classes[0])} classes but the model in {label} has "
                f"{num_classes}; choose a dataset with {num_classes} classes or leave --dataset "
                "out"
            )
        classes = None
    if classes is None:
        names = [f"class_{i}" for i in range(num_classes)]
        palette = voc_palette(num_classes)
        name = None
    else:
        names, palette = classes
    return {
        "class_names": names,
        "palette": [list(color) for color in palette],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "ignore_index": 255,
        "dataset": name,
        "classes_guessed": guessed and name is not None,
        "converted_from": {"project": project, "file": Path(label).name},
    }


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _classes_line(meta: Mapping[str, Any]) -> str:
    count = len(meta["class_names"])
    if meta.get("dataset") is None:
        return f"{count}, named class_0... (give --dataset for names and colours)"
    how = "guessed from the class count; --dataset to choose" if meta["classes_guessed"] else ""
    return f"{count}, {meta['dataset']}" + (f" ({how})" if how else "")
