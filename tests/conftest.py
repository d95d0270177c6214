"""Test-wide settings."""

import os

import pytest
import torch


def pytest_configure(config) -> None:
    # `pytest -n 2` on a 2-core machine: one intra-op thread per worker process, otherwise the
    # workers' thread pools oversubscribe the cores and tiny ops become 100x slower.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch) -> None:
    """Every test gets its own segkit cache folder (label pre-flight results), never ~/.cache."""
    monkeypatch.setenv("SEGKIT_CACHE", str(tmp_path_factory.mktemp("segkit-cache")))
