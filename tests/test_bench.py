"""`segkit bench` prints a row per runtime with consistent numbers."""

from __future__ import annotations

from segkit.cli import main
from segkit.deploy.optimize import fast_bf16_cpu


def _consistent(images_per_second: float, median_ms: float) -> bool:
    """2 images per median step, up to the printed rounding of the median (0.05 ms)."""
    return abs(images_per_second * median_ms / 1e3 - 2) / 2 < 0.06 / median_ms + 0.01


def test_bench_rows(capsys) -> None:
    argv = ["bench", "--model", "fcn", "--backbone", "mobilenet_v2", "--size", "64",
            "--batch", "2", "--repeats", "2", "--warmup", "1", "--train"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("runtime"))
    rows = {line[:13].strip(): line[13:].split() for line in lines[header + 1 :]}
    expected = {"eval model", "fast path", "onnxruntime", "ort int8", "train step"}
    if fast_bf16_cpu():
        expected.add("fast bf16")
    assert set(rows) == expected
    for name in expected - {"train step"}:
        median, p90, images = (float(v) for v in rows[name][:3])
        assert 0 < median <= p90
        assert _consistent(images, median)
    assert float(rows["train step"][0]) > 0


def test_bench_trains_deeplab_at_batch_one(capsys) -> None:
    # The ASPP image-pooling BatchNorm sees one value per channel at batch 1.
    argv = ["bench", "--model", "deeplabv3plus", "--backbone", "mobilenet_v2", "--size", "64",
            "--batch", "1", "--repeats", "1", "--warmup", "1", "--train", "--no-onnx"]  # fmt: skip
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train step")]
    assert len(rows) == 1 and float(rows[0][13:].split()[0]) > 0
