"""Datasets and loaders for a run, with reproducible order and augmentation.

Every training draw is a pair ``(index, seed)``: the sampler derives both from
``(run seed, epoch, position in the epoch's permutation)`` and the dataset wrapper runs the
random transforms under that seed. A sample therefore gets the same augmentation whatever the
number of DataLoader workers or processes, which makes ``--resume`` exact and lets N processes
with batch B reproduce one process with batch N x B.

A sample that fails to load (:class:`~segkit.datasets.SampleError`) reaches the main process as
that one error, not wrapped in a DataLoader worker traceback, and workers leave the stop signals
that a whole process group receives (Slurm, ``timeout``, Ctrl-C) to the main process, which
decides when to stop, saves a checkpoint and exits.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import statistics
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from segkit.config import Config, component_values
from segkit.datasets import (
    JointTransform,
    Problem,
    SampleError,
    SegmentationDataset,
    build_dataset,
    build_eval_transforms,
    build_train_transforms,
)


class SeededSampler(Sampler[tuple[int, int]]):
    """Per-epoch permutation (or sequential order), sharded over ranks, resumable.

    Args:
        length: dataset size.
        seed: run seed.
        shuffle: permute each epoch (training) or keep file order (validation).
        rank: this process's rank; ranks take every ``world``-th position.
        world: number of processes.
        drop_last: drop the tail so every rank gets the same count (training).
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` draws of this rank."""
        self.epoch, self.start = epoch, start

    def _positions(self) -> range:
        total = self.length - self.length % self.world if self.drop_last else self.length
        return range(self.rank, total, self.world)

    def __len__(self) -> int:
        return len(self._positions())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.shuffle:
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        seeds = torch.randint(0, 2**62, (self.length,), generator=generator)
        positions = self._positions()[self.start :]
        return ((int(order[p]), int(seeds[p])) for p in positions)


@dataclass(frozen=True)
class SampleFailure:
    """A sample that raised :class:`SampleError`, passed on as data (picklable).

    Raised in a worker, the error would reach the main process wrapped in the worker's
    traceback; as data it goes through the collate function and the loader raises it again.
    """

    problem: Problem

    def error(self) -> SampleError:
        """The original error: same kind, path, message, values and hint."""
        p = self.problem
        return SampleError(p.kind, p.path, p.message, p.values, p.hint)


class SeededDataset(Dataset):
    """Runs ``dataset[index]`` under a given seed, leaving the global RNG untouched.

    A :class:`SampleError` is returned as a :class:`SampleFailure` (see :class:`SampleLoader`).
    """

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(
        self, item: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor] | SampleFailure:
        index, seed = item
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        except SampleError as err:
            return SampleFailure(err.problem)


def collate_samples(items: list[Any]) -> Any:
    """``default_collate``, or the first :class:`SampleFailure` of the batch as is."""
    failure = next((item for item in items if isinstance(item, SampleFailure)), None)
    return failure if failure is not None else default_collate(items)


def ignore_stop_signals(worker_id: int, *, main_pid: int) -> None:
    """``worker_init_fn``: SIGTERM, SIGINT and SIGHUP are left to the main process ``main_pid``.

    Slurm, ``timeout`` and Ctrl-C signal every process of the group at once; a worker they
    killed would crash the main process ("DataLoader worker ... killed by signal") before it
    saved its checkpoint. SIGINT and SIGHUP are ignored. SIGTERM cannot simply be ignored: the
    main process itself stops workers with it (``Process.terminate`` when a worker does not
    quit at shutdown, and for every daemonic child at interpreter exit, which otherwise waits
    forever), so it is blocked and a thread takes it: from ``main_pid`` the worker exits, as
    torch's own handler does; from anyone else it is dropped. Without ``signal.sigwaitinfo``
    (macOS, Windows) SIGTERM keeps torch's handling.
    """
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):  # no SIGHUP on Windows
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    # Blocked here, in the worker's only thread so far: threads started later inherit the mask,
    # so no thread can receive SIGTERM but the one waiting for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_take_sigterm, args=(main_pid,), daemon=True).start()


def _take_sigterm(main_pid: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == main_pid:
            os._exit(0)


class SampleLoader(DataLoader):
    """A DataLoader whose iterators raise a batch's :class:`SampleFailure` as its SampleError."""

    def __iter__(self) -> _RaisingIterator:
        return _RaisingIterator(super().__iter__())


class _RaisingIterator:
    """Wraps a DataLoader iterator; other attributes (``_workers``...) pass through."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self._inner = inner

    def __iter__(self) -> _RaisingIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self._inner)
        if isinstance(batch, SampleFailure):
            raise batch.error()
        return batch

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self._inner, name)


CROP_MULTIPLE, MIN_CROP, MAX_CROP = 8, 32, 512  # an unset crop: see crop_from_sizes
SIZE_SAMPLES = 64  # training images whose sizes decide an unset crop


def build_datasets(config: Config) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training and validation datasets of a run, with their transforms (an unset
    ``data.crop_size`` is chosen from the training images: :func:`crop_from_sizes`)."""
    train = build_train_split(config)
    config = with_crop(config, train)
    train.transform = train_transforms(config)
    return train, build_val_dataset(config)


def build_train_split(config: Config) -> SegmentationDataset:
    """The training split without its augmentation (set ``transform`` before drawing)."""
    data = config.data
    return build_dataset(
        data.dataset, root=data.root, split=data.train_split, **configured_dataset_options(config)
    )


def with_crop(config: Config, train_set: SegmentationDataset) -> Config:
    """``config``, or a copy with ``data.crop_size`` chosen from ``train_set``'s images."""
    if config.data.crop_size is not None:
        return config
    config = copy.deepcopy(config)
    config.data.crop_size, _ = crop_from_sizes(image_sizes(train_set))
    return config


def train_transforms(config: Config) -> JointTransform:
    """The training augmentation of a run (scale, pad, crop, flip, jitter, normalise), as
    ``config.data`` sets it; also what ``segkit doctor --show`` draws."""
    data = config.data
    return build_train_transforms(
        data.crop_size,
        scale_range=tuple(data.scale_range) if data.scale_range else None,
        hflip=data.hflip,
        color_jitter=tuple(data.color_jitter) if data.color_jitter else None,
        mean=data.mean,
        std=data.std,
        ignore_index=config.train.ignore_index,
    )


def build_val_dataset(config: Config, split: str | None = None) -> SegmentationDataset:
    """The evaluation dataset (``--crop-val`` resizes and centre-crops to the crop size)."""
    data = config.data
    crop = data.crop_size if data.crop_val else None
    transform = build_eval_transforms(
        crop_size=crop,
        resize=crop,
        mean=data.mean,
        std=data.std,
        ignore_index=config.train.ignore_index,
    )
    options = configured_dataset_options(config)
    options.pop("length", None)  # data.length sizes the training split; val_length this one
    if data.val_length is not None:
        options["length"] = data.val_length
    return build_dataset(
        data.dataset, root=data.root, split=split or data.val_split, transform=transform, **options
    )


def configured_dataset_options(config: Config) -> dict[str, Any]:
    """The dataset's own options that are set (see :mod:`segkit.options`)."""
    data = config.data
    options = component_values(data)
    if data.skip_bad_samples:
        options["skip_bad_samples"] = True
    return options


def batches_per_epoch(size: int, *, batch_size: int, world: int = 1) -> int:
    """Training batches each process draws per epoch of ``size`` samples: every process gets
    ``size // world`` positions and the incomplete last batch is dropped (as :func:`make_loader`
    does)."""
    return (size // world) // batch_size


def make_loader(
    dataset: SegmentationDataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    train: bool,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """A loader over ``(index, seed)`` draws; call ``loader.sampler.set_epoch`` per epoch.

    A sample's :class:`SampleError` is raised by the loader's iterator in the main process, with
    its kind, path and message, whatever ``workers``; workers leave SIGTERM, SIGINT and SIGHUP
    to the main process (see :func:`ignore_stop_signals`).
    """
    sampler = SeededSampler(
        len(dataset), seed=seed, shuffle=train, rank=rank, world=world, drop_last=train
    )
    if train and len(sampler) < batch_size:
        raise ValueError(
            f"the training split has {len(dataset)} samples ({len(sampler)} per process), "
            f"fewer than one batch of {batch_size}: lower --batch-size or add data"
        )
    return SampleLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=functools.partial(ignore_stop_signals, main_pid=os.getpid()),
        drop_last=train,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # A private generator: creating iterators must not consume the global RNG.
        generator=torch.Generator(),
    )


def image_sizes(dataset: SegmentationDataset, count: int = SIZE_SAMPLES) -> list[tuple[int, int]]:
    """``(width, height)`` of up to ``count`` training images spread over the split (only the
    file headers are read; generated samples are made). An unreadable file is passed over: the
    run's pre-flight check names it (or skips it with ``--skip-bad-samples``)."""
    length = len(dataset)
    picks = sorted({i * length // count for i in range(count)}) if length > count else range(length)
    sizes = []
    for index in picks:
        image_path, _ = dataset.sample_paths(index)
        try:
            if image_path is not None:
                with Image.open(image_path) as image:
                    sizes.append(image.size)
            else:
                height, width = dataset.load_raw(index).image.shape[:2]
                sizes.append((width, height))
        except (OSError, SampleError):
            continue
    return sizes


def crop_from_sizes(sizes: list[tuple[int, int]]) -> tuple[int, str]:
    """The crop side for images of these sizes: their median short side rounded down to a
    multiple of 8 (exact below 32), between 32 and 512, and the reason in words."""
    if not sizes:
        return MAX_CROP, "no training images to measure"
    short = int(statistics.median(min(w, h) for w, h in sizes))
    crop = short if short < MIN_CROP else short - short % CROP_MULTIPLE
    crop = min(MAX_CROP, crop)
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    spread = f"{min(widths)}-{max(widths)} x {min(heights)}-{max(heights)}"
    return crop, f"training images {spread} px, median short side {short}"
