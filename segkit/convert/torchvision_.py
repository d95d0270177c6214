"""torchvision's segmentation models: ``fcn_resnet50/101`` and ``deeplabv3_resnet50/101``.

Layout (torchvision ``models/segmentation``): ``backbone.*`` is the ResNet without ``fc``, at
output stride 8 (layer3 and layer4 dilated); ``classifier.*`` is ``FCNHead`` (``0`` a 3x3 conv
to 512 ... ``4`` the 1x1 classifier) or ``DeepLabHead`` (``0`` the ASPP, rates 12/24/36, ``1``
a 3x3 conv, ``4`` the classifier); ``aux_classifier.*`` an ``FCNHead`` on layer3. segkit's
models use the same names, so the mapping is the identity.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from segkit.convert.layout import Found, out_channels, resnet_depth

PROJECT = "torchvision"
IGNORED = (r"backbone\.fc\..*",)


def detect(state: Mapping[str, Tensor]) -> Found | str:
    """``fcn`` or ``deeplabv3`` on ResNet-50/101 in torchvision's names."""
    if "backbone.conv1.weight" not in state or state["backbone.conv1.weight"].dim() != 4:
        return "no backbone.conv1.weight (torchvision's ResNet stem)"
    if "classifier.4.weight" not in state:
        return "no classifier.4.weight (the classifier of FCNHead / DeepLabHead)"
    depth = resnet_depth(state, "backbone.layer3.")
    if depth is None:
        return "backbone.layer3 has neither 6 nor 23 blocks (ResNet-50/101)"
    name = "deeplabv3" if "classifier.0.convs.0.0.weight" in state else "fcn"
    if name == "fcn" and "classifier.0.weight" not in state:
        return "classifier.0 is neither FCNHead's conv nor DeepLabHead's ASPP"
    aux = "aux_classifier.4.weight" in state
    classes = out_channels(state, "classifier.4.weight")
    model = {
        "name": name,
        "backbone": f"resnet{depth}",
        "num_classes": classes,
        "output_stride": 8,
        "aux": aux,
    }
    details = {"model": name, "backbone": f"ResNet-{depth}", "classes": classes, "aux": aux}
    return Found("torchvision", model, details)


def to_segkit(state: Mapping[str, Tensor], found: Found) -> dict[str, str]:
    """The same names, without the ImageNet ``fc`` some files keep."""
    return {key: key for key in state if not key.startswith("backbone.fc.")}
