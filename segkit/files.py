"""Small file-system helpers shared by everything that writes files."""

from __future__ import annotations

import os
from pathlib import Path


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
