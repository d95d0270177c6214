"""What makes CPU inference fast, option by option, in one run (the evidence behind the paths
segkit keeps; ``benchmarks/README.md`` records the results).

For each model (batch 1, 512x512, random weights): the eval model; channels_last alone; BN
folding alone; both (segkit's fast path); the fast path under ``torch.compile`` (Inductor,
compile time printed); bfloat16 with and without channels_last; ONNX Runtime with graph
optimisations off and on; int8 static quantisation with uint8 and int8 activations; int8
dynamic quantisation. All timed in interleaved rounds.

    .venv/bin/python benchmarks/cpu_options.py [--models r50,mnv2] [--rounds 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

import segkit
from segkit.deploy.bench import eager_runner, interleaved_medians, ort_runner
from segkit.deploy.onnx import export
from segkit.deploy.optimize import fast_bf16_cpu, fold_batchnorm

MODELS = {
    "r50": ("DeepLabV3+ ResNet-50 OS16 (separable)", "resnet50"),
    "mnv2": ("DeepLabV3+ MobileNetV2 OS16 (separable)", "mobilenet_v2"),
}


class _Reader:
    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        return None if image is None else {"image": image}


def candidates(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Callable]:
    threads = torch.get_num_threads()
    x = torch.randn(1, 3, 512, 512)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    runners = {
        "eval model": eager_runner(model, x),
        "channels_last only": eager_runner(nhwc_model, nhwc),
        "BN folding only": eager_runner(folded, x),
    }
    fast = segkit.optimize_for_inference(model)
    runners["fast path (both)"] = lambda: fast(x)
    if not args.no_compile:
        compiled = torch.compile(fast.model)
        start = time.perf_counter()
        eager_runner(compiled, nhwc)()
        print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.0f} s")
        runners["fast + torch.compile"] = eager_runner(compiled, nhwc)
    if fast_bf16_cpu():
        bf16 = segkit.optimize_for_inference(model, precision="bf16")
        runners["bf16 fast path"] = lambda: bf16(x)
        plain = segkit.optimize_for_inference(model, precision="bf16", channels_last=False)
        runners["bf16 NCHW"] = lambda: plain(x)
    work = Path(tempfile.mkdtemp(prefix="segkit-cpu-options-"))
    fp32 = work / "fp32.onnx"
    export(model, fp32, static=(512, 512))
    runners["ORT, optimisations off"] = ort_runner(fp32, x, threads, optimise=False)
    runners["ORT fp32"] = ort_runner(fp32, x, threads)
    calibration = [np.random.default_rng(i).standard_normal(x.shape, np.float32) for i in range(4)]
    for name, activations in (("u8", QuantType.QUInt8), ("s8", QuantType.QInt8)):
        path = work / f"static-{name}.onnx"
        quantize_static(
            str(fp32),
            str(path),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activations,
            weight_type=QuantType.QInt8,
        )
        runners[f"ORT int8 static {name}s8"] = ort_runner(path, x, threads)
    dynamic = work / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QUInt8)
    runners["ORT int8 dynamic"] = ort_runner(dynamic, x, threads)
    return runners


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="r50,mnv2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for key in args.models.split(","):
        title, backbone = MODELS[key]
        model = segkit.create_model(
            "deeplabv3plus", backbone=backbone, num_classes=21, output_stride=16, separable=True
        ).eval()
        seconds = interleaved_medians(candidates(model, args), args.rounds, args.warmup)
        base = seconds["eval model"]
        print(f"\n## {title}, 512x512, batch 1, {torch.get_num_threads()} threads")
        print(f"| {'option':<24} | {'ms':>7} | {'x eval':>6} |")
        print(f"|{'-' * 26}|{'-' * 8}:|{'-' * 7}:|")
        for name, value in seconds.items():
            print(f"| {name:<24} | {value * 1e3:>7.1f} | {base / value:>6.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
