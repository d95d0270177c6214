"""``pretrained_backbone=True``: ImageNet weights through torchvision's or timm's downloader.

segkit never needs the network: the normal way is a local file (``pretrained_backbone=PATH``).
Downloading is offered for convenience and fails with an actionable message when offline.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import timm
import torchvision
from torch import Tensor

from segkit.models.backbones import backbone_entry


def download_backbone_weights(backbone: str) -> dict[str, Tensor]:
    """Download ImageNet weights for ``backbone`` (its :data:`~segkit.models.backbones.BACKBONES`
    ``source``) and return them as a state dict.

    Raises:
        RuntimeError: the download failed (e.g. no network), naming the local-file alternative.
    """
    entry = backbone_entry(backbone)
    library, _, name = entry.source.partition(":")
    hint = f"{library}'s {entry.weights}"
    if library == "torchvision":
        fetch = getattr(torchvision.models, name).IMAGENET1K_V1.get_state_dict
        kwargs: dict[str, bool] = {"progress": False}
        host = "download.pytorch.org"
    else:

        def fetch() -> dict[str, Tensor]:
            return timm.create_model(name, pretrained=True).state_dict()

        kwargs = {}
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        # Fail fast: the hub clients otherwise retry with back-off for most of a minute.
        socket.create_connection((host, 443), timeout=5).close()
        return fetch(**kwargs)
    except Exception as err:  # network, DNS, HTTP and hub errors all mean the same here
        raise RuntimeError(
            f"Could not download ImageNet weights for backbone {backbone!r} ({type(err).__name__}: "
            f"{err}). segkit does not need the network: copy {hint} onto this machine and pass "
            "its path, e.g. pretrained_backbone='/path/to/weights.pth' "
            "(CLI: --pretrained-backbone PATH)."
        ) from err
