"""The model: backbone -> (neck) -> decode head (+ auxiliary head), logits at the input size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from segkit.models.backbones import Backbone
from segkit.models.layers import resize


class Segmenter(nn.Module):
    """A segmentation model.

    ``forward(x: N x 3 x H x W)`` returns a dict: ``"out"``, logits ``N x num_classes x H x W``
    at the input's own size (bilinear upsampling of the head's logits); in training mode also
    ``"aux"`` (auxiliary head logits, same shape) when the model has one and ``"se"``
    (``N x num_classes`` class-presence logits) when the head predicts them.

    Attribute names follow torchvision (``backbone``, ``classifier``, ``aux_classifier``) so its
    segmentation state dicts load by name.

    Args:
        backbone: returns the feature list ``[c1, c2, c3, c4]``.
        classifier: decode head, ``features -> {"out": logits, "se"?: logits}``.
        aux_classifier: optional auxiliary head with the same contract.
        neck: optional module ``features -> features`` between backbone and heads (e.g. JPU).
        config: the arguments :func:`segkit.create_model` was called with, so a checkpoint can
            rebuild the model (``create_model(**model.config)``).
        meta: what the outputs mean: ``class_names``, ``palette``, ``mean``, ``std``,
            ``ignore_index`` (empty when unknown); checkpoints and exports carry it.
        align_corners: the final resize to the input size uses ``align_corners=True``.
    """

    def __init__(
        self,
        backbone: Backbone,
        classifier: nn.Module,
        aux_classifier: nn.Module | None = None,
        neck: nn.Module | None = None,
        config: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.config: dict[str, Any] = dict(config or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        if self.neck is not None:
            features = self.neck(features)
        head = self.classifier(features)
        result = {"out": resize(head["out"], size, self.align_corners)}
        if self.training:
            if self.aux_classifier is not None:
                aux = self.aux_classifier(features)["out"]
                result["aux"] = resize(aux, size, self.align_corners)
            if "se" in head:
                result["se"] = head["se"]
        return result
