"""The inference fast path: a copy of a model prepared to run, not to train.

:func:`optimize_for_inference` puts the copy in eval mode, folds every BatchNorm into the
convolution that feeds it (``torch.nn.utils.fusion.fuse_conv_bn_eval``), removes dropout, uses
the ``channels_last`` memory format (faster convolutions with oneDNN and cuDNN) and runs under
``torch.inference_mode``; ``compile=True`` adds ``torch.compile`` on CUDA.
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

DROPOUTS = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)


class InferenceModel(nn.Module):
    """Same call contract as the wrapped segmenter (``x -> {"out": logits}``), inference only."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.config = getattr(model, "config", {})
        self.meta = getattr(model, "meta", {})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return {key: value.contiguous() for key, value in self.model(x).items()}


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each BatchNorm2d into the Conv2d registered right before it; returns the count.

    A conv and a BN that are consecutive children of one parent are the conv-BN pair of every
    backbone and head here (``nn.Sequential`` blocks, torchvision's ``convN``/``bnN``, timm's
    ``conv``/``bn``). The BN is replaced by ``nn.Identity`` (or by the activation a timm
    ``BatchNormAct2d`` carries). Eval mode only.
    """
    folded = 0
    for parent in list(module.modules()):
        for (_, conv), (bn_name, bn) in pairwise(list(parent.named_children())):
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
    model: nn.Module, *, channels_last: bool = True, compile: bool = False
) -> InferenceModel:
    """A copy of ``model`` prepared for inference (the original is not modified).

    Args:
        model: a segmenter (``x -> {"out": ...}``).
        channels_last: use the NHWC memory format.
        compile: wrap with ``torch.compile`` when running on CUDA (ignored on the CPU).

    Returns:
        An :class:`InferenceModel` whose outputs equal the eval-mode model's up to float error.
    """
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    for parent in list(fast.modules()):
        for name, child in parent.named_children():
            if isinstance(child, DROPOUTS):
                setattr(parent, name, nn.Identity())
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    wrapped = InferenceModel(fast, channels_last)
    on_cuda = any(p.is_cuda for p in fast.parameters())
    if compile and on_cuda:
        wrapped.model = torch.compile(fast)
    return wrapped
