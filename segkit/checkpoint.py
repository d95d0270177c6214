"""segkit's own checkpoints: write atomically, read safely, rebuild the model they describe.

A checkpoint is self-describing: the model's build spec, its weights and what
its outputs mean. Reading goes through :mod:`segkit.weights` (``weights_only=True``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkit.files import default_file_mode
from segkit.models import create_model
from segkit.weights import read_file

CHECKPOINT_FORMAT = "segkit-checkpoint-v1"
# What eval, predict and export need besides weights (written by segkit train).
REQUIRED_KEYS = ("model", "state_dict", "meta")
REQUIRED_META = ("class_names", "palette", "mean", "std")
# save_checkpoint's temporary files: tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") adds 8
# random characters.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file size limit, I/O error). The previous
    file at that path, if any, is intact, and no temporary file is left."""

    def __init__(self, message: str, *, path: Path, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: temporary file, flush, fsync, rename.

    An interruption at any point leaves either the previous file or the new one, never a
    half-written checkpoint (a kill -9 may leave a ``.NAME.XXXXXXXX.tmp`` file beside it, which
    :func:`remove_stale_temporaries` deletes). The file gets the permissions of any new file
    (umask), not those of the temporary file.

    Raises:
        CheckpointWriteError: the write failed (no space left, file too large, I/O error); the
            temporary file is removed and the previous file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), default_file_mode())  # mkstemp's 0600 survives the rename
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err) if isinstance(err, Exception) else None
        if cause is None:  # not a write failure (an interrupt, an unpicklable payload)
            raise
        # torch.save reports a failed write as a RuntimeError from its zip writer, raised while
        # handling the OSError: the OSError says what happened.
        raise _write_error(path, cause) from err
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, its cause or its context), if any."""
    for _ in range(8):
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
        if err is None:
            return None
    return None


def _write_error(path: Path, cause: OSError) -> CheckpointWriteError:
    reason = (cause.strerror or str(cause)).lower()
    fix = "check the disk, or choose another --work-dir"
    if cause.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(path.parent).free
            reason += f" ({_human_size(free)} free on that disk)"
        except OSError:
            pass
        fix = "free some space, or choose another --work-dir"
    elif cause.errno == errno.EFBIG:
        reason += " (beyond the process's file size limit, ulimit -f, or the file system's)"
        fix = "raise the limit, or choose another --work-dir"
    previous = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    return CheckpointWriteError(
        f"could not write checkpoint {path}: {reason}; {previous}. To save, {fix}.",
        path=path,
        errno=cause.errno,
    )


def _human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`save_checkpoint` left in ``folder``.

    Call it only while no save into ``folder`` can be running (the trainer holds the run
    folder's lock): a running save's temporary file looks the same.

    Returns:
        The files removed, sorted.
    """
    removed = []
    for candidate in sorted(Path(folder).glob(".*.tmp")):
        if _TEMPORARY.fullmatch(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a segkit checkpoint safely (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file (never a silent random model).
        ValueError: an unsafe pickle, an empty, truncated or corrupt file, an export
            (TorchScript, ONNX) instead of a checkpoint, or a checkpoint without the model
            description, weights and metadata ``segkit train`` writes.
    """
    return checked_checkpoint(read_file(Path(path)), path)


def checked_checkpoint(data: object, path: str | os.PathLike) -> dict[str, Any]:
    """``data`` (a file's contents) if it is a complete segkit checkpoint; ``path`` names the
    file in the errors of :func:`load_checkpoint`."""
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a segkit checkpoint (no 'format': {CHECKPOINT_FORMAT!r}). A "
            "checkpoint of VainF/DeepLabV3Plus-Pytorch, pytorch-deeplab-xception, "
            "PyTorch-Encoding, FastFCN or torchvision converts with `segkit convert FILE --out "
            "X.pt`; other weights load by name with segkit.load_weights or --init-from FILE."
        )
    missing = [key for key in REQUIRED_KEYS if not isinstance(data.get(key), Mapping)]
    if isinstance(data.get("meta"), Mapping):
        missing += [f"meta.{key}" for key in REQUIRED_META if key not in data["meta"]]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}: it was not written by `segkit train` (or was "
            f"edited). Use a checkpoint of a segkit run (checkpoints/best.pt or last.pt)."
        )
    return data


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The checkpoint entries that describe ``model``, written from what it carries: ``model``
    (its build arguments, ``model.config``) and ``meta`` (what its outputs mean,
    ``model.meta``). :func:`load_model` rebuilds the model from them."""
    return {"model": dict(model.config), "meta": dict(model.meta)}


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    The checkpoint's ``model`` entry is the model's build spec (``model.config``) and its
    ``meta`` (class names, palette, normalisation, ignore index) becomes ``model.meta``.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_checkpoint`; also a ``model`` entry
            that does not build, or weights that do not fit the model it describes.
    """
    return model_from_checkpoint(load_checkpoint(path), path, device=device)


def model_from_checkpoint(
    data: Mapping[str, Any], path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> nn.Module:
    """:func:`load_model` for a checkpoint already read (``path`` names it in errors)."""
    try:
        model = create_model(**data["model"], meta=data["meta"])
        model.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0]
        raise ValueError(
            f"{path}: its weights do not fit the model its 'model' entry describes "
            f"({reason[:200]}); the file was edited or written by another version of segkit"
        ) from err
    return model.to(device).eval()
