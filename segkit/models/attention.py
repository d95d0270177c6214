"""Attention blocks that reweight a feature map: PSA, squeeze-and-excitation and CBAM.

Every block maps ``N x C x H x W`` to a tensor of the same shape and has no batch-statistics
layer, so it behaves the same at batch size 1 in training mode. Heads take an
``attention: str | None`` option and build the block with :func:`build_attention`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import SqueezeExcitation


def _squeeze_width(channels: int, reduction: int) -> int:
    # A floor of 8 keeps the bottleneck meaningful on narrow maps (e.g. 48 low-level channels).
    return max(channels // reduction, 8)


class PolarizedSelfAttention(nn.Module):
    """Polarized self-attention, parallel layout (Liu et al. 2021, "PSA_p").

    Channel-only branch (a ``C x 1 x 1`` gate)::

        q = softmax_HW(Wq x)            Wq: 1x1 conv C -> 1, softmax over the H*W positions
        v = Wv x                        Wv: 1x1 conv C -> C/2
        z = Wz (v @ q^T)                Wz: 1x1 conv C/2 -> C
        gate_ch = sigmoid(LayerNorm_C(z))

    Spatial-only branch (a ``1 x H x W`` gate)::

        q = softmax_C/2(GAP(Wq' x))     Wq': 1x1 conv C -> C/2, global average pool, softmax
                                        over the C/2 channels
        v = Wv' x                       Wv': 1x1 conv C -> C/2
        gate_sp = sigmoid(reshape_HxW(q @ v))

    Output: ``x * gate_ch + x * gate_sp`` (the two branches summed).

    How this differs from the official ``PSA_p`` code that road-extraction variants copy:

    - Spatial branch: that code applies the softmax to the product ``q @ v`` over the H*W
      positions and then a sigmoid. Softmax values are about ``1 / (H*W)``, so the sigmoid
      gives ~0.5 everywhere: the spatial gate is nearly constant and carries almost no spatial
      information. The paper applies the softmax to the pooled query over its C/2 channels and
      only the sigmoid to the product, which is what is implemented here.
    - Spatial branch: that code turns the pooled ``N x C/2 x 1`` query into ``N x 1 x C/2`` with
      ``reshape`` where a transpose is meant. Because the pooled axis has size 1 both give the
      same numbers, but only by accident; here it is an explicit transpose.
    - Channel branch: the paper normalises ``Wz``'s output with a LayerNorm over the C channels
      before the sigmoid; that code omits it. It is included here.

    Args:
        channels: C, channels of the input (at least 2).

    Raises:
        ValueError: ``channels < 2``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"PolarizedSelfAttention needs at least 2 channels, got {channels}")
        inner = channels // 2
        # No biases: a bias on the softmax query would be a constant shift (no effect), and the
        # official code uses none on the other projections either.
        self.channel_query = nn.Conv2d(channels, 1, 1, bias=False)
        self.channel_value = nn.Conv2d(channels, inner, 1, bias=False)
        self.channel_up = nn.Conv2d(inner, channels, 1, bias=False)
        self.channel_norm = nn.LayerNorm(channels)
        self.spatial_query = nn.Conv2d(channels, inner, 1, bias=False)
        self.spatial_value = nn.Conv2d(channels, inner, 1, bias=False)
        # Kaiming-normal (fan in) as the authors initialise the projections: PyTorch's default
        # is smaller and would start both softmaxes close to uniform.
        for conv in (
            self.channel_query,
            self.channel_value,
            self.spatial_query,
            self.spatial_value,
        ):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")

    def channel_gate(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> channel weights ``N x C x 1 x 1`` in (0, 1)."""
        query = self.channel_query(x).flatten(2).softmax(dim=-1)  # N x 1 x HW
        value = self.channel_value(x).flatten(2)  # N x C/2 x HW
        context = torch.bmm(value, query.transpose(1, 2))  # N x C/2 x 1
        weights = self.channel_up(context.unsqueeze(-1)).flatten(1)  # N x C
        return torch.sigmoid(self.channel_norm(weights))[..., None, None]

    def spatial_gate(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> spatial weights ``N x 1 x H x W`` in (0, 1)."""
        height, width = x.shape[-2:]
        query = self.spatial_query(x).mean(dim=(2, 3)).softmax(dim=-1)  # N x C/2
        value = self.spatial_value(x).flatten(2)  # N x C/2 x HW
        context = torch.bmm(query.unsqueeze(1), value)  # N x 1 x HW
        return torch.sigmoid(context).unflatten(2, (height, width))

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> ``N x C x H x W``."""
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel, then spatial gate.

    Channel gate: a shared MLP (1x1 convs ``C -> C/reduction -> C``) on the global average and
    global max pools, summed, sigmoid. Spatial gate: the channel-wise mean and max of the
    reweighted map, a ``kernel_size`` conv to one channel, sigmoid.

    Args:
        channels: C, channels of the input.
        reduction: bottleneck ratio of the channel MLP.
        kernel_size: size of the spatial convolution (odd).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = _squeeze_width(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> ``N x C x H x W``."""
        pooled = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(pooled)
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(descriptor))


def squeeze_excitation(channels: int, reduction: int = 16) -> SqueezeExcitation:
    """Squeeze-and-excitation (Hu et al. 2018), torchvision's block: a channel gate only."""
    return SqueezeExcitation(channels, _squeeze_width(channels, reduction))


ATTENTIONS: dict[str, Callable[[int], nn.Module]] = {
    "psa": PolarizedSelfAttention,
    "se": squeeze_excitation,
    "cbam": CBAM,
}


def check_attention(name: str | None) -> None:
    """Raise ``ValueError`` unless ``name`` is ``None`` or one of :data:`ATTENTIONS`."""
    if name is not None and name not in ATTENTIONS:
        raise ValueError(
            f"Unknown attention {name!r}. Valid choices: {list(ATTENTIONS)}, or None for no "
            "attention block."
        )


def build_attention(name: str | None, channels: int) -> nn.Module | None:
    """The attention block ``name`` for a ``channels``-wide map, or ``None`` for ``None``.

    Returning ``None`` (not an identity) lets ``nn.Sequential`` heads leave the block out, so
    their parameter names stay torchvision's when no attention is asked for.

    Raises:
        ValueError: unknown ``name``.
    """
    check_attention(name)
    return None if name is None else ATTENTIONS[name](channels)


def attention_or_identity(name: str | None, channels: int) -> nn.Module:
    """:func:`build_attention`, with ``nn.Identity`` (no parameters) standing in for ``None``."""
    block = build_attention(name, channels)
    return nn.Identity() if block is None else block
