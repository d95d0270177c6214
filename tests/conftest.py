"""Test-wide settings."""

import os

import torch


def pytest_configure(config) -> None:
    # `pytest -n 2` on a 2-core machine: one intra-op thread per worker process, otherwise the
    # workers' thread pools oversubscribe the cores and tiny ops become 100x slower.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
