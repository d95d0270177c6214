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
