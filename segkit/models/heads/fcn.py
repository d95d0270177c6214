"""FCN heads: the dilated-FCN head (torchvision / PyTorch-Encoding) and the FCN-8s skip head."""

from __future__ import annotations

from torch import Tensor, nn

from segkit.models.attention import build_attention
from segkit.models.layers import resize


class FCNHead(nn.Sequential):
    """3x3 conv to ``in_channels // 4``, BN, ReLU, (attention), dropout, 1x1 classifier.

    Without attention the layer layout (and so the parameter names ``0.weight`` ... ``4.bias``)
    equals torchvision's ``FCNHead``, so torchvision FCN and auxiliary classifiers load
    unchanged. An attention block is inserted after the conv-BN-ReLU (index 3), which shifts the
    names of the later layers; no torchvision checkpoint has such a block anyway.

    Args:
        in_channels: channels of the feature map read.
        num_classes: output channels.
        in_index: which backbone map to read (``-1``: the deepest; ``-2`` for auxiliary heads).
        dropout: dropout probability before the classifier.
        attention: ``None`` or an attention block name (see
            :func:`~segkit.models.attention.build_attention`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = -1,
        dropout: float = 0.1,
        attention: str | None = None,
    ) -> None:
        inter = in_channels // 4
        layers = [
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
        ]
        block = build_attention(attention, inter)
        if block is not None:
            layers.append(block)
        layers += [nn.Dropout(dropout), nn.Conv2d(inter, num_classes, 1)]
        super().__init__(*layers)
        self.in_index = in_index

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """``features[in_index]``: N x C x h x w -> ``{"out": N x num_classes x h x w}``."""
        return {"out": super().forward(features[self.in_index])}


class FCN8sHead(nn.Module):
    """FCN-32s/16s/8s skip architecture (Long et al. 2015) on the last three backbone maps.

    The deepest map is scored by an :class:`FCNHead`; ``c3`` and ``c2`` by 1x1 convolutions
    initialised to zero, as in the paper, so training starts from the FCN-32s prediction. Scores
    are fused from deep to shallow by upsampling (to the larger of the two sizes) and addition.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        num_classes: int,
        *,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.score_c4 = FCNHead(in_channels[-1], num_classes, dropout=dropout)
        self.score_c3 = nn.Conv2d(in_channels[-2], num_classes, 1)
        self.score_c2 = nn.Conv2d(in_channels[-3], num_classes, 1)
        for skip in (self.score_c3, self.score_c2):
            nn.init.zeros_(skip.weight)
            nn.init.zeros_(skip.bias)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        """Fuse scores of ``features[-1]``, ``[-2]``, ``[-3]``; logits at the finest of them."""
        score = self.score_c4(features)["out"]
        for skip, feature in ((self.score_c3, features[-2]), (self.score_c2, features[-3])):
            skip_score = skip(feature)
            size = max(score.shape[-2:], skip_score.shape[-2:])
            score = resize(score, size, self.align_corners) + resize(
                skip_score, size, self.align_corners
            )
        return {"out": score}
