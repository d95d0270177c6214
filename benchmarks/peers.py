"""segkit against the implementations a user would pick instead, in one run on one machine.

Inference, batch 1 at 512x512 (random weights; speed does not depend on them):
  * DeepLabV3+ ResNet-50 OS16 vs ``segmentation_models_pytorch.DeepLabV3Plus("resnet50")``;
  * DeepLabV3 ResNet-50 OS8 vs ``torchvision.models.segmentation.deeplabv3_resnet50`` (segkit
    loads the torchvision weights and the script checks the outputs agree);
  * DeepLabV3+ MobileNetV2 OS16 vs smp.
smp's DeepLabV3+ uses atrous separable convolutions in ASPP and decoder, so segkit's rows use
``separable=True``; GFLOPs of both are printed. segkit's paths: the eval model, the fast path
(fp32), the fast path under ``torch.compile`` (when a C++ compiler is there), ONNX Runtime
(fp32), and the opt-in reduced precisions: the fast path in bfloat16
(when the CPU has native bf16) and ONNX Runtime int8 (their accuracy cost is measured by
``benchmarks/precision_cost.py``).

Training, DeepLabV3+ MobileNetV2 at 256x256, batch 8: smp in a plain loop (SGD, cross-entropy)
vs segkit's ``Trainer.step`` (the same step ``segkit train`` runs, with its LR scheduler and
loss), in fp32 and with ``--amp`` (bfloat16 autocast on the CPU).

All candidates of a row are timed in interleaved rounds, so load from other processes hits
them alike; the table gives medians, ratios against the peer, and GFLOP/s as a share of the
float32 ceiling measured before and after the row (``segkit.deploy.bench.fp32_ceiling``: the
better of a matrix multiply and a channels-last convolution); a candidate whose rounds disagree
by more than ``MAX_SPREAD`` gets a warning under the table.

    pip install -e .[bench]
    .venv/bin/python benchmarks/peers.py [--threads 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
import torchvision

import segkit
from segkit.config import Config
from segkit.deploy.bench import (
    Ceiling,
    eager_runner,
    forward_gflops,
    fp32_ceiling,
    interleaved_medians,
    interleaved_rounds,
    onnx_runner,
    pooled,
    spread_warnings,
)
from segkit.deploy.optimize import cpp_compiler, fast_bf16_cpu
from segkit.engine.train import Trainer

SIZE, CLASSES = 512, 21


def inference_row(
    title: str, peer_name: str, peer: torch.nn.Module, ours: torch.nn.Module, args
) -> None:
    x = torch.randn(1, 3, SIZE, SIZE)
    threads = torch.get_num_threads()
    peer.eval(), ours.eval()
    runners = {
        f"{peer_name} eager": eager_runner(peer, x),
        "segkit eval model": eager_runner(ours, x),
    }
    fast = segkit.optimize_for_inference(ours)
    runners["segkit fast fp32"] = lambda: fast(x)
    if cpp_compiler():
        compiled = segkit.optimize_for_inference(ours, compile=True)
        compiled(x)  # compile outside the timed rounds
        runners["segkit fast compiled"] = lambda: compiled(x)
    runners["segkit ORT fp32"] = onnx_runner(ours, x, threads)
    if fast_bf16_cpu():
        fast_bf16 = segkit.optimize_for_inference(ours, precision="bf16")
        runners["segkit fast bf16"] = lambda: fast_bf16(x)
    runners["segkit ORT int8"] = onnx_runner(ours, x, threads, int8=True)
    before = fp32_ceiling()
    times = interleaved_rounds(runners, args.rounds, args.rounds, args.warmup)
    after = fp32_ceiling()  # before and after: the machine drifts
    ceiling = Ceiling((before.matmul + after.matmul) / 2, (before.conv + after.conv) / 2)
    seconds = {name: statistics.median(pooled(rounds)) for name, rounds in times.items()}
    work = {f"{peer_name} eager": forward_gflops(peer, x)}
    ours_gflops = forward_gflops(ours, x)
    print(f"\n## {title}, {SIZE}x{SIZE}, batch 1")
    print(
        f"GFLOPs per image: {peer_name} {work[f'{peer_name} eager']:.1f}, segkit "
        f"{ours_gflops:.1f}; {ceiling}"
    )
    print(
        f"| {'path':<20} | {'ms':>7} | {'x peer':>6} | {'GFLOP/s':>7} | {'of fp32 ceiling':>15} |"
    )
    print(f"|{'-' * 22}|{'-' * 8}:|{'-' * 7}:|{'-' * 8}:|{'-' * 16}:|")
    reference = seconds[f"{peer_name} eager"]
    for name, value in seconds.items():
        rate = work.get(name, ours_gflops) / value
        print(
            f"| {name:<20} | {value * 1e3:>7.1f} | {reference / value:>6.2f} | {rate:>7.0f} "
            f"| {rate / ceiling.rate:>15.0%} |"
        )
    for line in spread_warnings(times, flag="--rounds"):
        print(line)


def smp_row(title: str, backbone: str, args) -> None:
    """smp's DeepLabV3+ (separable ASPP and decoder) vs segkit's with ``separable=True``."""
    peer = smp.DeepLabV3Plus(backbone, encoder_weights=None, classes=CLASSES)
    ours = segkit.create_model(
        "deeplabv3plus", backbone=backbone, num_classes=CLASSES, output_stride=16, separable=True
    )
    inference_row(title, "smp", peer, ours, args)


def trainer_step(amp: bool, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    config = Config()
    config.update(
        {
            "model.name": "deeplabv3plus",
            "model.backbone": "mobilenet_v2",
            "model.separable": True,
            "model.aux": False,
            "data.dataset": "shapes",
            "data.length": 16,
            "data.val_length": 2,
            "data.workers": 0,
            "train.batch_size": x.shape[0],
            "train.optimizer": "sgd",
            "train.loss": "ce",
            "train.amp": amp,
            "train.device": "cpu",
            "work_dir": tempfile.mkdtemp(prefix="segkit-peers-"),
        }
    )
    trainer = Trainer(config)
    trainer.model.train()
    counter = iter(range(10**9))
    return lambda: trainer.step(x, y, next(counter))


def training_row(args) -> None:
    torch.manual_seed(0)
    classes = 6  # segkit's Trainer builds its model for the shapes dataset's classes
    x = torch.randn(8, 3, 256, 256)
    y = torch.randint(0, classes, (8, 256, 256))
    peer = smp.DeepLabV3Plus("mobilenet_v2", encoder_weights=None, classes=classes).train()
    optimizer = torch.optim.SGD(peer.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def peer_step() -> None:
        loss = torch.nn.functional.cross_entropy(peer(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    runners = {"smp plain loop": peer_step, "segkit Trainer.step": trainer_step(False, x, y)}
    if fast_bf16_cpu():
        runners["segkit --amp (bf16)"] = trainer_step(True, x, y)
    seconds = interleaved_medians(runners, args.rounds, args.warmup)
    print("\n## Training step, DeepLabV3+ MobileNetV2 OS16, 256x256, batch 8")
    print(f"| {'path':<19} | {'ms':>7} | {'img/s':>6} | {'x peer':>6} |")
    print(f"|{'-' * 21}|{'-' * 8}:|{'-' * 7}:|{'-' * 7}:|")
    reference = seconds["smp plain loop"]
    for name, value in seconds.items():
        speed = f"{8 / value:>6.1f} | {reference / value:>6.2f}"
        print(f"| {name:<19} | {value * 1e3:>7.1f} | {speed} |")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model")]
        names = [name for name in names if not name.isdigit()]  # "model : 143" is a number
        return f"{names[0]} ({len(names)} logical CPUs)"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=["r50", "tv", "mnv2", "train"], action="append")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only or ["r50", "tv", "mnv2", "train"])
    print(
        f"# segkit vs peers, {time.strftime('%Y-%m-%d')}, {cpu_name()}, "
        f"{torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, smp {smp.__version__}, native bf16: {fast_bf16_cpu()}"
    )
    if "r50" in only:
        smp_row("DeepLabV3+ ResNet-50 OS16", "resnet50", args)
    if "tv" in only:
        peer = torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=False
        ).eval()
        ours = segkit.create_model(
            "deeplabv3", backbone="resnet50", num_classes=CLASSES, output_stride=8
        ).eval()
        segkit.load_weights(ours, peer.state_dict(), strict=True)
        x = torch.randn(1, 3, 128, 128)
        with torch.no_grad():
            torch.testing.assert_close(ours(x)["out"], peer(x)["out"], rtol=1e-4, atol=1e-4)
        inference_row("DeepLabV3 ResNet-50 OS8", "torchvision", peer, ours, args)
    if "mnv2" in only:
        smp_row("DeepLabV3+ MobileNetV2 OS16", "mobilenet_v2", args)
    if "train" in only:
        training_row(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
