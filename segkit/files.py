"""Small file-system helpers shared by everything that writes files."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def default_file_mode() -> int:
    """Permission bits of a new regular file under this process's umask (``0o666 & ~umask``).

    Read from ``/proc/self/status`` where it exists, so the umask is never changed, not even
    for an instant another thread could see.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def check_writable_file(path: Path, example: str = "model.pt") -> None:
    """Fail early, in one line, when ``--out path`` cannot be written as a file.

    Raises:
        ValueError: ``path`` is a folder (the message suggests ``path/example``), a parent is a
            file, or the folder is not writable.
    """
    if path.is_dir():
        raise ValueError(f"--out {path} names a folder; give a file such as {path / example}")
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent  # the first folder that exists is the one to write in
    if not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: the folder {parent} is not writable; choose another --out")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` through ``write(handle)`` on a temporary file beside it, renamed over
    ``path`` when ``write`` returns: a kill or an error leaves the old file or the new one at
    ``path``, never a partial file (and no temporary file after an error). The file gets the
    permissions of any new file (umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as handle:  # mode 0o666 minus umask, like any new file
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_folder(folder: Path, flag: str = "--out") -> None:
    """Create ``folder`` and check that a file can be written in it, before any work.

    Raises:
        ValueError: one line naming ``flag``, the folder and the reason (a file in the way, no
            permission, a read-only file system).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".segkit-probe-{secrets.token_hex(4)}"
        probe.open("xb").close()
        probe.unlink()
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        where = f": {err.filename}" if err.filename and Path(err.filename) != folder else ""
        raise ValueError(
            f"cannot write to {flag} {folder} ({reason}{where}); give another {flag}"
        ) from err
