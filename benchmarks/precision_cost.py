"""The accuracy cost of the opt-in reduced-precision paths, measured on a trained checkpoint.

For one checkpoint it evaluates (``segkit eval``, the checkpoint's validation split):
float32 PyTorch (the fast path), bfloat16 PyTorch, the float32 ONNX export under ONNX Runtime,
and int8 ONNX exports calibrated with each ``--calibration-method``; it prints mIoU and the
change against float32.

    .venv/bin/python benchmarks/default_train.py --work-dir runs/shapes
    .venv/bin/python benchmarks/precision_cost.py runs/shapes/checkpoints/best.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def segkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "segkit", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--calibration-images", default="32")
    parser.add_argument("--methods", default="minmax,percentile,entropy")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segkit-precision-"))
    rows: dict[str, float] = {}

    def evaluate(name: str, *extra: str) -> None:
        out = work / f"{name}.json"
        segkit("eval", "--checkpoint", args.checkpoint, "--json", str(out), *extra)
        rows[name] = json.loads(out.read_text())["mIoU"]

    evaluate("torch fp32")
    evaluate("torch bf16", "--precision", "bf16")
    float_onnx = work / "model.onnx"
    segkit("export", "--checkpoint", args.checkpoint, "--out", str(float_onnx))
    evaluate("onnxruntime fp32", "--runtime", "onnxruntime", "--onnx", str(float_onnx))
    for method in args.methods.split(","):
        path = work / f"model.int8.{method}.onnx"
        segkit("export", "--checkpoint", args.checkpoint, "--out", str(path), "--int8",
               "--calibration-images", args.calibration_images, "--calibration-method", method,
               "--min-agreement", "0")  # fmt: skip
        evaluate(f"ort int8 {method}", "--runtime", "onnxruntime", "--onnx", str(path))
    reference = rows["torch fp32"]
    print(f"{args.checkpoint}: validation mIoU by precision")
    print(f"{'path':<22}{'mIoU':>8}{'change':>9}")
    for name, miou in rows.items():
        print(f"{name:<22}{miou:>8.4f}{miou - reference:>+9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
