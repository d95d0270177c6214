"""Bring trained models in from other projects, with the same outputs.

``convert_checkpoint(src)`` reads a checkpoint written by another project's own code, finds
from its key names and tensor shapes which project, architecture, backbone, depth, class count
and heads it holds (:func:`detect`), builds the segkit model with the options that compute the
same function, renames (and, where the layouts differ by a permutation, reorders) its tensors
into that model and loads them strictly: every tensor of the model must be filled and every
tensor of the file used, except those known to be irrelevant (an ImageNet ``fc`` kept beside a
backbone), which are listed.

One module per source project holds what segkit knows about its layout:

- ``PROJECT``: the project's name, as printed.
- ``detect(state) -> Found | str``: the model the file holds, or one line on why it is not
  this project's layout.
- ``to_segkit(state, found) -> {source key: segkit key}`` for every tensor it places.
- ``IGNORED``: regular expressions of source keys that are dropped on purpose.
- optionally ``adjust(tensors, found, inverse=False)``: value changes after renaming (a
  permutation of input channels); ``inverse`` undoes them (the tests' round trips).

Nothing here runs another project's code: the layouts are facts recorded from their files.
"""

from segkit.convert.checkpoints import (
    checkpoint_payload,
    foreign_weights,
    open_checkpoint,
    open_model,
    write_checkpoint,
)
from segkit.convert.core import (
    SOURCES,
    convert,
    convert_checkpoint,
    detect,
    foreign_source,
)
from segkit.convert.layout import ConversionError, Found, regex_mapping
from segkit.convert.result import Conversion

__all__ = [
    "SOURCES",
    "Conversion",
    "ConversionError",
    "Found",
    "checkpoint_payload",
    "convert",
    "convert_checkpoint",
    "detect",
    "foreign_source",
    "foreign_weights",
    "open_checkpoint",
    "open_model",
    "regex_mapping",
    "write_checkpoint",
]
