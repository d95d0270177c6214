"""The label pre-flight check on a VOC-sized dataset: cold, warm, and against a full read.

Builds ``--count`` samples once in the folder layout under ``--data`` (default under /tmp): 500x375
palette PNG masks holding a few of 21 classes inside a 255 border, as VOC's, with small JPEG
images of the same size. Then, in interleaved rounds, it times:

- cold: :func:`segkit.datasets.preflight.preflight` with an empty cache (every mask decoded,
  every image header read);
- warm: the same again with the cache the cold run wrote (stats only, no file read);
- full read: ``segkit doctor``'s :func:`~segkit.datasets.doctor.scan_dataset`, which decodes
  every image and mask, the peer the cold check replaces.

"Cold" means no pre-flight cache, not a cold disk: the files are in the OS page cache.

    .venv/bin/python benchmarks/preflight.py [--count 10000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.datasets import FolderDataset, build_dataset
from segkit.datasets.doctor import scan_dataset
from segkit.datasets.palettes import voc_palette
from segkit.datasets.preflight import preflight
from segkit.deploy.bench import interleaved_medians

WIDTH, HEIGHT, VARIANTS = 500, 375, 32


def build(root: Path, count: int) -> None:
    """``count`` samples in ``root/{images,masks}/train``, unless a previous run made them."""
    done = root / f".complete-{count}"
    if done.is_file():
        return
    images, masks = root / "images" / "train", root / "masks" / "train"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    mask_bytes, image_bytes = [], []
    for _ in range(VARIANTS):  # distinct files to write, so encoding stays out of the build time
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        for cls in rng.choice(np.arange(1, 21), size=3, replace=False):
            y, x = rng.integers(0, HEIGHT - 100), rng.integers(0, WIDTH - 100)
            mask[y : y + rng.integers(40, 100), x : x + rng.integers(40, 100)] = cls
        mask[:4], mask[-4:], mask[:, :4], mask[:, -4:] = 255, 255, 255, 255
        png = Image.fromarray(mask, mode="P")
        png.putpalette([v for color in voc_palette() for v in color])
        mask_bytes.append(_encode(png, "PNG"))
        image = np.full((HEIGHT, WIDTH, 3), rng.integers(0, 256, 3), np.uint8)
        image_bytes.append(_encode(Image.fromarray(image), "JPEG"))
    for i in range(count):
        (masks / f"{i:06d}.png").write_bytes(mask_bytes[i % VARIANTS])
        (images / f"{i:06d}.jpg").write_bytes(image_bytes[i % VARIANTS])
    done.write_text("")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000, help="samples (default 10000)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "segkit-preflight-bench",
        help="where the samples are built once (default: /tmp/segkit-preflight-bench)",
    )
    parser.add_argument("--workers", type=int, default=2, help="reader threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    root = args.data / str(args.count)
    start = time.perf_counter()
    build(root, args.count)
    print(f"data: {root} ({time.perf_counter() - start:.1f} s to build or find)")
    dataset = build_dataset("folder", root=root, num_classes=21)
    assert isinstance(dataset, FolderDataset) and len(dataset) == args.count
    with tempfile.TemporaryDirectory() as scratch:
        warm_cache = Path(scratch) / "warm"
        preflight(dataset, skip_bad=False, cache_dir=warm_cache, workers=args.workers)
        cold_runs = iter(range(args.rounds))

        def cold() -> None:  # a fresh, empty cache folder each round
            cache = Path(scratch) / f"cold-{next(cold_runs)}"
            report = preflight(dataset, skip_bad=False, cache_dir=cache, workers=args.workers)
            assert report.from_cache == 0 and not report.bad

        def warm() -> None:
            report = preflight(dataset, skip_bad=False, cache_dir=warm_cache, workers=args.workers)
            assert report.from_cache == args.count

        def full_read() -> None:
            assert not scan_dataset(dataset, workers=args.workers).problems

        medians = interleaved_medians(
            {"cold": cold, "warm": warm, "full read": full_read}, args.rounds
        )
    print(
        f"{args.count} masks {WIDTH}x{HEIGHT}, {args.workers} threads, {args.rounds} rounds "
        f"(medians), {os.cpu_count()} CPUs"
    )
    print(f"{'path':<10} {'s':>8} {'ms / 1000 masks':>16} {'vs full read':>13}")
    for name, seconds in medians.items():
        per_thousand = 1000 * seconds / (args.count / 1000)
        ratio = medians["full read"] / seconds
        print(f"{name:<10} {seconds:>8.3f} {per_thousand:>16.1f} {ratio:>11.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
