"""`segkit models`: the table's numbers are the models' real parameter counts and FLOPs."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import segkit
from segkit.cli import main


def _rows(text: str) -> dict[tuple[str, str, int], tuple[float, float]]:
    rows = {}
    for line in text.splitlines()[1:]:
        name, backbone, stride, params, gflops = line.split()
        rows[(name, backbone, int(stride))] = (float(params), float(gflops))
    return rows


def test_table_matches_a_real_forward_and_shows_jpu_savings(capsys) -> None:
    argv = ["models", "--model", "fcn", "--backbone", "resnet50", "--output-stride", "8"]
    assert main([*argv, "--size", "64", "--num-classes", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    model = segkit.create_model("fcn", backbone="resnet50", num_classes=3, output_stride=8)
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, 64, 64))
    params, gflops = rows[("fcn", "resnet50", 8)]
    assert params == round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    assert abs(gflops - counter.get_total_flops() / 1e9) < 0.05
    _, jpu_gflops = rows[("fcn+jpu", "resnet50", 32)]
    assert jpu_gflops < 0.8 * gflops


def test_smoke_runs_each_model(capsys) -> None:
    assert main(["models", "--smoke", "--backbone", "mobilenet_v2", "--output-stride", "16"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok (") == len(segkit.list_models())
