"""Base networks the search space is derived from.

Each entry builds a plain torch module; the space and the supernet find its coupled channels by tracing it, so a
new torchvision CNN needs only a line here.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from jcw.errors import JcwError
from jcw.models.torchvision_import import torchvision
from jcw.models.weights import load_backbone, pretrained_state_dict, read_weights_file

tvm = torchvision.models
Conv2dNormActivation = torchvision.ops.misc.Conv2dNormActivation

# (expansion, out channels, repeats, first stride), for 28-32 px inputs: a 28 px stem, then 14 -> 7.
# Downsampling in the first block keeps training near 600 img/s on 2 cores (about 4x a 28 px first stage).
TINY_MBV2_SETTING = [[1, 16, 1, 2], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 2, 1]]
SMALL_MBV2_SETTING = [[1, 16, 1, 2], [6, 32, 2, 1], [6, 64, 3, 2], [6, 96, 2, 1]]


def _reduced_mbv2(setting: list[list[int]], head: int, num_classes: int, in_channels: int,
                  stem_stride: int = 1, stem_takes_first_stride: bool = True) -> nn.Module:
    """A reduced MobileNetV2 for small images: a 3x3 stem, two block resolutions, a narrow head.

    Built from torchvision's MobileNetV2 so that it has the same block structure as the ImageNet model. A stride-2
    stem takes over the first block's downsampling (unless told not to, for images twice the side), so the blocks
    see the same resolutions either way.
    """
    if stem_stride == 2 and stem_takes_first_stride:
        setting = [[t, c, n, 1 if i == 0 else s] for i, (t, c, n, s) in enumerate(setting)]
    model = tvm.MobileNetV2(num_classes=num_classes, inverted_residual_setting=setting)
    model.features[0] = Conv2dNormActivation(in_channels, 32, stride=stem_stride, norm_layer=nn.BatchNorm2d,
                                             activation_layer=nn.ReLU6)
    model.features[-1] = Conv2dNormActivation(setting[-1][1], head, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                              activation_layer=nn.ReLU6)
    model.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(head, num_classes))
    model.last_channel = head
    return model


def mbv2_tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Reduced MobileNetV2, 24/32/64 channels and a 256-wide head: 0.15 M parameters."""
    return _reduced_mbv2(TINY_MBV2_SETTING, 256, num_classes, in_channels)


def mbv2_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Reduced MobileNetV2, 32/64/96 channels and a 384-wide head: 0.35 M parameters, about 1.6x mbv2_tiny's cost."""
    return _reduced_mbv2(SMALL_MBV2_SETTING, 384, num_classes, in_channels)


def mbv2_small_s2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """mbv2_small with a stride-2 stem: on 3-channel images (fashion-mnist-rgb, CIFAR), the stem that TFLite's XNNPACK
    starts its sparse subgraph at, so that the 1x1 convs' density genes can pay on phones (jcw/xnnpack.py)."""
    return _reduced_mbv2(SMALL_MBV2_SETTING, 384, num_classes, in_channels, stem_stride=2)


def mbv2_small_56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """mbv2_small for 56 px 3-channel images (Fashion-MNIST resized, `--input 56`): a stride-2 stem, where XNNPACK
    starts its sparse subgraph, and the first block's stride kept, so that every block sees the resolutions (14 and
    7 px) and costs what it does in mbv2_small on 28 px images. mbv2_small_s2 instead runs its stem and first block at
    14 px, which cost it about a point of top-1 (benchmarks/RESULTS.md section 12)."""
    return _reduced_mbv2(SMALL_MBV2_SETTING, 384, num_classes, in_channels, stem_stride=2,
                         stem_takes_first_stride=False)


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        if in_channels != 3:
            raise JcwError(f"{name} takes 3-channel images; use an RGB dataset or the mbv2_tiny model")
        return getattr(tvm, name)(weights=None, num_classes=num_classes)

    build.__doc__ = f"torchvision {name} in the ImageNet layout."
    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mbv2_tiny": mbv2_tiny,
    "mbv2_small": mbv2_small,
    "mbv2_small_s2": mbv2_small_s2,
    "mbv2_small_56": mbv2_small_56,
    **{name: _torchvision(name) for name in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet18",
                                             "resnet34", "resnet50")},
}
PRETRAINED = {"mobilenet_v2": tvm.MobileNet_V2_Weights, "mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights,
              "mobilenet_v3_small": tvm.MobileNet_V3_Small_Weights, "resnet18": tvm.ResNet18_Weights,
              "resnet34": tvm.ResNet34_Weights, "resnet50": tvm.ResNet50_Weights}  # torchvision's weights API


def create_model(name: str, num_classes: int, in_channels: int, pretrained: bool = False,
                 weights: str | None = None) -> nn.Module:
    """A base network; `pretrained` starts it from ImageNet weights, `weights` from a local file, each with a head
    of `num_classes` outputs."""
    if name not in MODELS:
        raise JcwError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if pretrained and weights:
        raise JcwError("--pretrained and --weights both name starting weights; pass one")
    if pretrained and name not in PRETRAINED:
        raise JcwError(f"{name} has no pretrained weights; pretrained models: {', '.join(PRETRAINED)}; or pass "
                       f"--weights FILE")
    model = MODELS[name](num_classes=num_classes, in_channels=in_channels)
    if pretrained:
        load_backbone(model, pretrained_state_dict(name, PRETRAINED[name]), f"--pretrained {name}")
    elif weights:
        load_backbone(model, read_weights_file(weights), f"--weights {weights}")
    return model
