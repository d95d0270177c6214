"""`segkit bench` prints a row per runtime with consistent numbers."""

from __future__ import annotations

from segkit.cli import main


def _consistent(images_per_second: float, median_ms: float) -> bool:
    """2 images per median step, up to the printed rounding of the median (0.05 ms)."""
    return abs(images_per_second * median_ms / 1e3 - 2) / 2 < 0.06 / median_ms + 0.01


def test_bench_rows(capsys) -> None:
    argv = ["bench", "--model", "fcn", "--backbone", "mobilenet_v2", "--size", "64",
            "--batch", "2", "--repeats", "2", "--warmup", "1", "--train"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("runtime"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert {"eval", "fast", "onnxruntime", "train"} <= set(rows)
    for name in ("eval", "fast"):  # "eval model", "fast path": two-word names
        median, p90, images = (float(v) for v in rows[name][2:5])
        assert 0 < median <= p90
        assert _consistent(images, median)
    median, _, images, _ = (float(v) for v in rows["onnxruntime"][1:5])
    assert _consistent(images, median)
    assert float(rows["train"][2]) > 0


def test_bench_train_needs_two_images(capsys) -> None:
    assert main(["bench", "--model", "fcn", "--backbone", "mobilenet_v2", "--train"]) == 2
    assert "--batch 2 or more" in capsys.readouterr().err
