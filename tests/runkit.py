"""Helpers shared by the test folders: the tiny training run (TINY, train), a segkit subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from segkit.cli import main

TINY = [
    "--model", "deeplabv3plus", "--backbone", "mobilenet_v2",
    "--set", "data.length=16", "--set", "data.val_length=8", "--set", "data.image_size=48",
    "--crop-size", "40",
    "--batch-size", "4", "--workers", "0", "--set", "train.warmup_iters=0",
]  # fmt: skip


def train(work: Path, *extra: str) -> int:
    """``segkit train`` on tiny shapes into ``work``; returns the exit status."""
    return main(["train", *TINY, "--work-dir", str(work), *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def segkit_process(*argv: str, **kwargs) -> subprocess.Popen:
    """``python -m segkit.cli ARGV`` in its own session (process group), output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "segkit", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
        **kwargs,
    )
