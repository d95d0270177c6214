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

from segkit.models.backbones import HRNETS, TIMM_PREFIX

TORCHVISION_WEIGHTS = {
    "resnet50": ("ResNet50_Weights", "resnet50-0676ba61.pth"),
    "resnet101": ("ResNet101_Weights", "resnet101-63fe2227.pth"),
    "mobilenet_v2": ("MobileNet_V2_Weights", "mobilenet_v2-b0353104.pth"),
}


def download_backbone_weights(backbone: str) -> dict[str, Tensor]:
    """Download ImageNet weights for ``backbone`` and return them as a state dict.

    Raises:
        RuntimeError: the download failed (e.g. no network), naming the local-file alternative.
    """
    if backbone in TORCHVISION_WEIGHTS:
        enum_name, file_name = TORCHVISION_WEIGHTS[backbone]
        hint = f"torchvision's {file_name}"
        fetch = getattr(torchvision.models, enum_name).IMAGENET1K_V1.get_state_dict
        kwargs = {"progress": False}
        host = "download.pytorch.org"
    else:
        timm_name = HRNETS.get(backbone, backbone.removeprefix(TIMM_PREFIX))
        hint = f"the timm checkpoint of {timm_name!r}"

        def fetch() -> dict[str, Tensor]:
            return timm.create_model(timm_name, pretrained=True).state_dict()

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
