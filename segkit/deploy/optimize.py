"""The inference fast path: a copy of a model prepared to run, not to train.

:func:`optimize_for_inference` puts the copy in eval mode, folds every BatchNorm into the
convolution that feeds it (``torch.nn.utils.fusion.fuse_conv_bn_eval``), removes dropout, uses
the ``channels_last`` memory format (faster convolutions with oneDNN and cuDNN) and runs under
``torch.inference_mode``; ``compile=True`` adds ``torch.compile`` (Inductor), opt-in because
its first call compiles (again for each new input size) and, on the CPU, needs a C++ compiler;
what it costs and gains over the eager fast path is measured in ``benchmarks/README.md``.

``precision="bf16"`` (or ``"fp16"`` on CUDA) runs the folded weights in half precision, an
opt-in that trades accuracy for speed: on CPUs with AMX or AVX512-BF16 (Intel Sapphire Rapids
and later, AMD Zen 4) oneDNN runs bfloat16 convolutions natively, faster than float32.
Inputs are cast on the way in and logits come back as float32. Measure its mIoU cost with
``segkit eval --precision bf16`` before deploying it (``benchmarks/README.md`` has numbers).
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

DROPOUTS = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fast_bf16_cpu() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX)."""
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return bool(native)


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use on the CPU, if there is one."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype for ``precision`` on ``device``; raises for combinations that cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; valid choices: {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not fast_bf16_cpu():
        warnings.warn(
            "this CPU has no native bfloat16 (AVX512-BF16/AMX): bf16 will be slower than fp32",
            stacklevel=3,
        )
    return PRECISIONS[precision]


class InferenceModel(nn.Module):
    """Same call contract as the wrapped segmenter (``x -> {"out": logits}``), inference only."""

    def __init__(
        self, model: nn.Module, channels_last: bool, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.dtype = dtype
        self.config = getattr(model, "config", {})
        self.meta = getattr(model, "meta", {})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        with torch.inference_mode():
            x = x.to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.model(x)
            return {key: value.contiguous().float() for key, value in out.items()}


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each BatchNorm2d into the Conv2d registered right before it; returns the count.

    A conv and a BN that are consecutive children of one parent are the conv-BN pair of every
    backbone and head here (``nn.Sequential`` blocks, torchvision's ``convN``/``bnN``, timm's
    ``conv``/``bn``); a BN right after an ``nn.Sequential`` that ends with a conv (timm's deep
    stem ``conv1``, then ``bn1``) folds into that conv. The BN is replaced by ``nn.Identity``
    (or by the activation a timm ``BatchNormAct2d`` carries). Eval mode only.
    """
    folded = 0
    for parent in list(module.modules()):
        for (_, before), (bn_name, bn) in pairwise(list(parent.named_children())):
            conv = before[-1] if isinstance(before, nn.Sequential) and len(before) else before
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.num_features == conv.out_channels
            ):
                fused = fuse_conv_bn_eval(conv, bn)
                conv.weight, conv.bias = fused.weight, fused.bias
                # timm's BatchNormAct2d carries its activation as children: keep those.
                rest = list(bn.children())
                setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
                folded += 1
    return folded


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    compile: bool = False,
    precision: str = "fp32",
) -> InferenceModel:
    """A copy of ``model`` prepared for inference (the original is not modified).

    Args:
        model: a segmenter (``x -> {"out": ...}``).
        channels_last: use the NHWC memory format.
        compile: wrap with ``torch.compile`` (CPU: needs ``g++``/``clang++`` or ``$CXX``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only) weights and activations.

    Returns:
        An :class:`InferenceModel` whose outputs equal the eval-mode model's up to float error
        (fp32) or up to the rounding of the chosen half precision.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = resolve_precision(precision, device)
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    for parent in list(fast.modules()):
        for name, child in parent.named_children():
            if isinstance(child, DROPOUTS):
                setattr(parent, name, nn.Identity())
    fast = fast.to(dtype)  # after folding: the fold itself runs in float32
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    wrapped = InferenceModel(fast, channels_last, dtype)
    if compile:
        if device.type == "cpu" and not cpp_compiler():
            raise ValueError(
                "torch.compile on the CPU needs a C++ compiler (g++ or clang++, or set CXX); "
                "install one or run without compile"
            )
        wrapped.model = torch.compile(fast)
    return wrapped
