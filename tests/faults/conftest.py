"""Fixtures of the fault-injection tests."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture
def one_error_line(capsys):
    """The stderr of a failed command: exactly one line, no traceback; returns it."""

    def read() -> str:
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert "Traceback" not in lines[0]
        return lines[0]

    return read


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder nobody can write into, root included (root ignores permission bits,
    so as root the folder is made immutable with ``chattr +i``)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root: {made.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
