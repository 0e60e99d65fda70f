"""Dilated torchvision ResNets (output stride 8 or 16) that return layer4 features."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["ARCHS", "ResNetBackbone", "dilate_layer"]

#: arch -> (torchvision builder, output channels of layer4)
ARCHS: dict[str, tuple] = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
    "resnet101": (torchvision.models.resnet101, 2048),
}


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    if conv.kernel_size == (3, 3):
        conv.dilation = (dilation, dilation)
        conv.padding = (dilation, dilation)


def dilate_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn the stride of a ResNet stage into dilation, in place.

    The first block keeps ``previous_dilation`` on its strided conv (as torchvision's
    ``replace_stride_with_dilation`` does for Bottlenecks); every later 3x3 conv uses
    ``dilation``. Works for BasicBlock (ResNet-18/34), which torchvision refuses to dilate.
    """
    for i, block in enumerate(layer):
        if isinstance(block, Bottleneck):
            block.conv2.stride = (1, 1)
            _set_dilation(block.conv2, previous_dilation if i == 0 else dilation)
        elif isinstance(block, BasicBlock):
            block.conv1.stride = (1, 1)
            _set_dilation(block.conv1, previous_dilation if i == 0 else dilation)
            _set_dilation(block.conv2, dilation)
        else:  # pragma: no cover - only torchvision ResNets are built here
            raise TypeError(f"unexpected block type {type(block).__name__}")
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class ResNetBackbone(nn.Module):
    """conv1 .. layer4 of a torchvision ResNet, with layer3/layer4 dilated for output stride 8
    (layer3 dilation 2, layer4 dilation 4) or layer4 dilated for output stride 16.

    Input ``B x 3 x H x W``; output ``B x C x H/os x W/os`` with ``C = out_channels``
    (512 for ResNet-18/34, 2048 for ResNet-50/101). Parameter names equal torchvision's
    (``conv1.weight``, ``layer1.0.conv1.weight``, ...), so torchvision and MoCo state dicts load
    directly; there is no ``fc``.
    """

    def __init__(self, arch: str = "resnet50", output_stride: int = 8) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone arch '{arch}'; choose one of {sorted(ARCHS)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        builder, self.out_channels = ARCHS[arch]
        net = builder(weights=None)
        self.arch = arch
        self.output_stride = output_stride
        if output_stride == 8:
            dilate_layer(net.layer3, 1, 2)
            dilate_layer(net.layer4, 2, 4)
        elif output_stride == 16:
            dilate_layer(net.layer4, 1, 2)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def stem_and_early_layers(self) -> list[nn.Module]:
        """conv1 .. layer2: the part frozen by the supervised-saliency recipe."""
        return [self.conv1, self.bn1, self.layer1, self.layer2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
