"""`segkit bench` prints a row per runtime with consistent numbers, against the better of two
measured ceilings, and warns about rows whose timing rounds disagree."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch

import segkit
from segkit.cli import bench as bench_cli
from segkit.cli import main
from segkit.deploy import bench
from segkit.deploy.optimize import fast_bf16_cpu

# timm's ResNet-18: the ONNX exporter traces it in a third of MobileNetV2's time.
TINY = ["bench", "--model", "fcn", "--backbone", "timm:resnet18", "--size", "64", "--batch", "2"]


def _consistent(images_per_second: float, median_ms: float) -> bool:
    """2 images per median step, up to the printed rounding of the median (0.05 ms)."""
    return abs(images_per_second * median_ms / 1e3 - 2) / 2 < 0.06 / median_ms + 0.01


def _table(out: str) -> tuple[str, dict[str, list[str]], list[str]]:
    """The lines above the table, the rows by runtime and the warning lines of `segkit bench`'s
    output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("runtime"))
    warnings = [line for line in lines if line.startswith("warning:")]
    rows = {
        line[:13].strip(): line[13:].split()
        for line in lines[start + 1 :]
        if not line.startswith("warning:")
    }
    return "\n".join(lines[:start]), rows, warnings


def _small_ceiling(monkeypatch) -> None:
    """The real measurements, on less work: the table's consistency does not depend on it."""
    monkeypatch.setattr(bench, "matmul_gflops", functools.partial(bench.matmul_gflops, size=256))
    monkeypatch.setattr(bench, "conv_gflops", functools.partial(bench.conv_gflops, channels=32))


def test_bench_rows(capsys, monkeypatch) -> None:
    _small_ceiling(monkeypatch)
    argv = [*TINY, "--repeats", "2", "--warmup", "1", "--train"]
    assert main(argv) == 0
    header, rows, _ = _table(capsys.readouterr().out)
    assert re.search(r"fp32 ceiling \d+ GFLOP/s \((conv|matmul); matmul \d+, channels-last", header)
    expected = {"eval model", "fast path", "onnxruntime", "ort int8", "train step"}
    if fast_bf16_cpu():
        expected.add("fast bf16")
    assert set(rows) == expected
    for name in expected - {"train step"}:
        median, p90, images = (float(v) for v in rows[name][:3])
        assert 0 < median <= p90
        assert _consistent(images, median)
    assert float(rows["train step"][0]) > 0


def test_bench_trains_deeplab_at_batch_one(capsys, monkeypatch) -> None:
    # The ASPP image-pooling BatchNorm sees one value per channel at batch 1.
    _small_ceiling(monkeypatch)
    argv = ["bench", "--model", "deeplabv3plus", "--backbone", "mobilenet_v2", "--size", "64",
            "--batch", "1", "--repeats", "1", "--warmup", "1", "--train", "--no-onnx"]  # fmt: skip
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train step")]
    assert len(rows) == 1 and float(rows[0][13:].split()[0]) > 0


def test_ceiling_is_the_better_of_matmul_and_conv(monkeypatch) -> None:
    for matmul, conv, source in ((120.0, 250.0, "conv"), (300.0, 250.0, "matmul")):
        monkeypatch.setattr(bench, "matmul_gflops", lambda repeats, rate=matmul: rate)
        monkeypatch.setattr(bench, "conv_gflops", lambda repeats, rate=conv: rate)
        ceiling = bench.fp32_ceiling()
        assert (ceiling.matmul, ceiling.conv) == (matmul, conv)
        assert ceiling.rate == max(matmul, conv) and ceiling.source == source
        assert f"ceiling {max(matmul, conv):.0f} GFLOP/s ({source}; " in str(ceiling)
        assert f"matmul {matmul:.0f}, channels-last conv {conv:.0f}" in str(ceiling)


def test_measured_rates_are_positive() -> None:
    assert 0 < bench.matmul_gflops(size=64, repeats=1) < math.inf
    assert 0 < bench.conv_gflops(channels=8, size=8, batch=1, repeats=1) < math.inf


def _planted(per_round: dict[str, list[float]]):
    """An `interleaved_rounds` that times nothing: each runtime gets the per-round medians
    given for it (by name; 10 ms in every round for the others), three calls a round."""

    def fake(runners, rounds, repeats, warmup=0):
        times = {}
        for name in runners:
            medians = per_round.get(name, [0.010] * rounds)
            times[name] = [[m * 0.99, m, m * 1.01] for m in medians]
        return times

    return fake


def test_of_peak_and_warnings_follow_the_planted_numbers(capsys, monkeypatch) -> None:
    monkeypatch.setattr(bench, "matmul_gflops", lambda repeats: 100.0)
    monkeypatch.setattr(bench, "conv_gflops", lambda repeats: 250.0)
    # fast path: medians 10, 15 and 10 ms, a 50% spread; the other rows agree.
    monkeypatch.setattr(
        bench_cli, "interleaved_rounds", _planted({"fast path": [0.01, 0.015, 0.01]})
    )
    assert main([*TINY, "--no-onnx"]) == 0
    header, rows, warnings = _table(capsys.readouterr().out)
    assert "fp32 ceiling 250 GFLOP/s (conv; matmul 100, channels-last conv 250)" in header
    with torch.device("meta"):
        model = segkit.create_model("fcn", backbone=TINY[4], num_classes=21).eval()
        gflops = bench.forward_gflops(model, torch.empty(2, 3, 64, 64))
    median, p90, _, rate, of_peak = rows["eval model"]
    assert (float(median), float(p90)) == (10.0, 10.1)  # of the nine planted calls
    assert float(rate) == pytest.approx(gflops / 0.010, abs=0.05)
    assert float(of_peak.rstrip("%")) == pytest.approx(100 * gflops / 0.010 / 250, abs=0.5)
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: fast path: ") and "differ by 50%" in warnings[0]
    assert "more --repeats" in warnings[0]

    assert main([*TINY, "--no-onnx", "--max-spread", "0.6"]) == 0  # a wider margin: no warning
    assert _table(capsys.readouterr().out)[2] == []
    monkeypatch.setattr(bench_cli, "interleaved_rounds", _planted({}))  # all rounds agree
    assert main([*TINY, "--no-onnx"]) == 0
    assert _table(capsys.readouterr().out)[2] == []


def test_round_spread_and_warnings() -> None:
    assert bench.round_spread([[1.0, 5.0, 1.2], [1.1]]) == pytest.approx(0.1 / 1.15)
    assert bench.round_spread([[1.0, 2.0]]) == 0.0  # one round: nothing to disagree with
    with pytest.raises(ValueError, match="empty round"):
        bench.round_spread([[1.0], []])
    times = {"steady": [[1.0], [1.05], [1.0]], "unsteady": [[1.0], [1.3], [1.0]]}
    (line,) = bench.spread_warnings(times, max_spread=0.1)
    assert line.startswith("warning: unsteady: the medians of its 3 rounds differ by 30%")
    assert bench.spread_warnings(times, max_spread=0.35) == []
    assert bench.spread_warnings(times) == [line]  # MAX_SPREAD is 10%


def test_rounds_interleave_the_runners_and_split_the_repeats() -> None:
    calls: list[str] = []
    runners = {name: functools.partial(calls.append, name) for name in ("a", "b")}
    times = bench.interleaved_rounds(runners, rounds=3, repeats=10, warmup=2)
    assert [len(values) for values in times["a"]] == [4, 3, 3]
    assert [len(values) for values in times["b"]] == [4, 3, 3]
    assert calls == ["a"] * 2 + ["b"] * 2 + (["a"] * 4 + ["b"] * 4) + (["a"] * 3 + ["b"] * 3) * 2
    assert [len(v) for v in bench.interleaved_rounds(runners, rounds=3, repeats=2)["a"]] == [1, 1]
    assert set(bench.interleaved_medians(runners, count=3)) == {"a", "b"}
    with pytest.raises(ValueError, match="must be >= 1, got 0 and 2"):
        bench.interleaved_rounds(runners, rounds=0, repeats=2)
