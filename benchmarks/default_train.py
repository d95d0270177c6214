"""Time `segkit train` with no arguments (the README's `make train`) and report its mIoU.

The target: at most 10 minutes on a 2-core CPU with validation mIoU >= 0.80.

    .venv/bin/python benchmarks/default_train.py [--work-dir DIR] [extra segkit train flags]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    args, extra = parser.parse_known_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="segkit-default-"))
    command = [sys.executable, "-m", "segkit", "train", "--work-dir", str(work_dir), *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"wall time: {seconds / 60:.1f} min for {final['iter']} iterations")
    print(f"final val mIoU: {final['mIoU']:.4f} (best {max(r['mIoU'] for r in records):.4f})")
    print(
        "per-class IoU: "
        + ", ".join(f"{k} {v:.3f}" for k, v in final["per_class_iou"].items() if v is not None)
    )
    ok = seconds <= 600 and final["mIoU"] >= 0.80
    print("target (<= 10 min, mIoU >= 0.80):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
