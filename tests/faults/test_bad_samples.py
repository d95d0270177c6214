"""Loader faults: a sample that fails late is one clean SampleError; stop signals spare workers."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.datasets import SampleError, build_dataset
from segkit.engine.data import make_loader

needs_sigwaitinfo = pytest.mark.skipif(
    not hasattr(signal, "sigwaitinfo"), reason="workers keep torch's SIGTERM handling here"
)


def folder_dataset(root: Path, count: int = 8):
    """``count`` 16x16 samples of 3 classes in the folder layout."""
    for sub in ("images/train", "masks/train"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / "train" / f"s{i}.png")
        Image.fromarray(np.full((16, 16), i % 3, np.uint8)).save(root / "masks/train" / f"s{i}.png")
    return build_dataset("folder", root=root, num_classes=3)


def first_error(loader) -> SampleError:
    """The SampleError raised while iterating ``loader``, without its traceback (whose frames
    would keep the loader and its worker processes alive until a garbage collection)."""
    try:
        for _ in loader:
            pass
    except SampleError as err:
        return err.with_traceback(None)
    raise AssertionError("the loader raised no SampleError")


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "two-procs"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "val"])
def test_late_bad_sample_is_one_clean_sample_error(tmp_path, workers, train):
    dataset = folder_dataset(tmp_path)
    bad = tmp_path / "images" / "train" / "s5.png"
    bad.write_bytes(bad.read_bytes()[:40])  # damaged after construction (and any pre-flight)
    error = first_error(make_loader(dataset, batch_size=2, workers=workers, seed=0, train=train))
    assert type(error) is SampleError and error.problem.kind == "undecodable"
    assert error.problem.path == str(bad) and str(bad) in str(error)
    with pytest.raises(SampleError) as direct:
        dataset.load_raw(5)
    assert error.problem == direct.value.problem and str(error) == str(direct.value)
    text = str(error)
    assert "Traceback" not in text and "DataLoader worker" not in text and "\n" not in text
    assert error.__cause__ is None and error.__context__ is None


def test_clean_batches_are_plain_tensors(tmp_path):
    dataset = folder_dataset(tmp_path, count=4)
    images, masks = next(iter(make_loader(dataset, batch_size=2, workers=0, seed=0, train=False)))
    assert images.shape == (2, 3, 16, 16) and masks[1, 0, 0] == 1


@needs_sigwaitinfo
def test_loader_workers_survive_stop_signals(tmp_path):
    dataset = folder_dataset(tmp_path, count=16)
    loader = make_loader(dataset, batch_size=1, workers=2, seed=0, train=True)
    batches = iter(loader)
    first = [next(batches), next(batches)]  # one from each worker: both ran worker_init_fn
    workers = list(batches._workers)
    signums = [int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)]
    pids = [worker.pid for worker in workers]
    sender = f"import os\nfor pid in {pids}:\n for signum in {signums}: os.kill(pid, signum)"
    subprocess.run([sys.executable, "-c", sender], check=True)  # another process, as Slurm
    rest = list(batches)  # each worker loads several more samples after the signals
    assert len(first) + len(rest) == 16
    assert all(worker.is_alive() for worker in workers)
    # The main process's own SIGTERM (multiprocessing's terminate) still stops a worker.
    workers[0].terminate()
    workers[0].join(timeout=60)
    assert workers[0].exitcode == 0


LEAKED_LOADER = """
from segkit.datasets import build_dataset
from segkit.engine.data import make_loader
dataset = build_dataset("shapes", split="val", length=8, image_size=32)
loader = make_loader(dataset, batch_size=2, workers=2, seed=0, train=True)
batches = iter(loader)
next(batches)
print("exiting with live workers")
"""


@needs_sigwaitinfo
def test_process_exits_with_live_loader_workers():
    # At exit multiprocessing terminates daemonic children with SIGTERM, then joins them: a
    # worker ignoring that SIGTERM would hang the exit forever.
    done = subprocess.run(
        [sys.executable, "-c", LEAKED_LOADER], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "exiting with live workers" in done.stdout
