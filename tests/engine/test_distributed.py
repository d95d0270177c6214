"""DistributedDataParallel on the CPU (Gloo): 2 processes x batch B == 1 process x batch 2B."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from segkit.config import Config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(work_dir: Path, batch_size: int) -> dict:
    return {
        "model": {"name": "deeplabv3plus", "backbone": "mobilenet_v2", "aux": True},
        # No scale jitter and a crop equal to the image: no padded (ignored) pixels, so every
        # process averages its loss over the same number of pixels.
        "data": {"length": 8, "val_length": 8, "image_size": 48, "crop_size": 48,
                 "scale_range": None, "workers": 0},
        "train": {"iters": 3, "batch_size": batch_size, "val_interval": 3, "freeze_bn": True,
                  "optimizer": "sgd", "lr": 0.05, "warmup_iters": 0, "device": "cpu",
                  # Dice is a ratio of sums over the batch: the processes must sum globally.
                  "loss": "ce+dice"},
        "work_dir": str(work_dir),
    }  # fmt: skip


def _worker(rank: int, world: int, port: int, config: dict, result: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from segkit.engine import distributed
    from segkit.engine.train import Trainer

    trainer = Trainer(Config.from_dict(config))
    for module in trainer.model.modules():  # dropout draws differ per process: switch it off
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    record = trainer.run()
    if rank == 0:
        torch.save({"state": trainer.model.state_dict(), "mIoU": record["mIoU"]}, result)
    distributed.cleanup()


def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path) -> None:
    single = tmp_path / "single.pt"
    mp.spawn(_worker, args=(1, _free_port(), _config(tmp_path / "a", 4), str(single)), nprocs=1)
    double = tmp_path / "double.pt"
    mp.spawn(_worker, args=(2, _free_port(), _config(tmp_path / "b", 2), str(double)), nprocs=2)

    a = torch.load(single, weights_only=True)
    b = torch.load(double, weights_only=True)
    for key, value in a["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["state"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    # Validation metrics are reduced over both processes' shards of the val split.
    assert abs(a["mIoU"] - b["mIoU"]) < 1e-6
    # Only rank 0 wrote the run folder's files, once.
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 1
