"""Any timm model with ``features_only`` as a backbone."""

from __future__ import annotations

import timm
from torch import Tensor

from segkit.models.backbones.base import Backbone


class TimmBackbone(Backbone):
    """Any timm model with ``features_only``: its last four feature levels.

    ``output_stride`` is passed to timm, which dilates the models that support it; 32 means the
    model as designed. Parameter names are timm's feature-extractor names (top-level ``.`` of
    flattened sequentials become ``_``); :func:`segkit.load_weights` matches both spellings.
    """

    def __init__(self, name: str, output_stride: int, **timm_kwargs: object) -> None:
        super().__init__()
        if name not in timm.list_models():
            close = timm.list_models(f"*{name}*")[:10]
            raise ValueError(
                f"Unknown timm model {name!r}. Similar timm models: {close or 'none'}; "
                "see timm.list_models() for all."
            )
        kwargs = dict(timm_kwargs, features_only=True, pretrained=False)
        kwargs["out_indices"] = (-4, -3, -2, -1)  # the last four levels, strides 4..32
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.body = timm.create_model(name, **kwargs)
        except (TypeError, AssertionError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"timm model {name!r} cannot be built as a 4-level feature extractor with "
                f"output_stride={output_stride} ({err}). Try output_stride=32 (no dilation) or "
                "another timm model."
            ) from err
        self.channels = tuple(self.body.feature_info.channels())
        self.reductions = tuple(self.body.feature_info.reduction())
        self.output_stride = self.reductions[-1]
        if self.output_stride != output_stride:
            raise ValueError(
                f"timm model {name!r} gives output stride {self.output_stride}, not the "
                f"{output_stride} asked for: it does not support dilation. Use "
                f"output_stride={self.output_stride}."
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))
