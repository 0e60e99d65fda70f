"""The refiner network (ResNet trunk, light decoder), its input normalisation and flip-averaged maps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskcontrast.config import IMAGENET_MEAN, IMAGENET_STD
from maskcontrast.models import ResNetBackbone
from saliency.refine.config import RefinerNetConfig

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class RefinerNet(nn.Module):
    """ResNet trunk + decoder: ``B x 3 x H x W`` (ImageNet-normalised) -> ``B x 1 x H x W`` logits.

    The decoder projects layer4 (stride ``output_stride``) and layer2 (stride 8) to
    ``decoder_channels`` ``c``, adds them at stride 8, upsamples to layer1 (stride 4),
    concatenates layer1's projection, and applies two 3x3 convs. Without ``stem_skip`` a 1x1 conv
    then predicts at stride 4. With it, the result (``c / 2`` channels) is upsampled to the stem
    (conv1, stride 2), concatenated with the stem's projection (``c / 4``), and a 3x3 conv and a
    1x1 conv predict at stride 2. The logits are upsampled (bilinear) to the input size.

    Example::

        net = RefinerNet(RefinerNetConfig())
        logits = net(torch.randn(2, 3, 128, 128))   # 2 x 1 x 128 x 128
    """

    def __init__(self, cfg: RefinerNetConfig) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(cfg.arch, cfg.output_stride)
        expansion = 4 if self.backbone.out_channels == 2048 else 1
        c = cfg.decoder_channels
        if c < 8:
            raise ValueError(f"model.decoder_channels must be >= 8, got {c}")
        self.proj4 = _conv_bn_relu(self.backbone.out_channels, c, 1)
        self.proj2 = _conv_bn_relu(128 * expansion, c, 1)
        self.proj1 = _conv_bn_relu(64 * expansion, c // 2, 1)
        self.stem_skip = bool(cfg.stem_skip)
        if self.stem_skip:
            self.head = nn.Sequential(_conv_bn_relu(c + c // 2, c, 3), _conv_bn_relu(c, c // 2, 3))
            self.proj0 = _conv_bn_relu(64, c // 4, 1)
            self.fine = nn.Sequential(_conv_bn_relu(c // 2 + c // 4, c // 4, 3), nn.Conv2d(c // 4, 1, 1))
        else:  # the version-1 decoder (stride 4)
            self.head = nn.Sequential(_conv_bn_relu(c + c // 2, c, 3), _conv_bn_relu(c, c, 3), nn.Conv2d(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        size = x.shape[-2:]
        f0 = b.relu(b.bn1(b.conv1(x)))
        f1 = b.layer1(b.maxpool(f0))
        f2 = b.layer2(f1)
        f4 = b.layer4(b.layer3(f2))
        h = self.proj2(f2) + F.interpolate(self.proj4(f4), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        h = F.interpolate(h, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(torch.cat([h, self.proj1(f1)], dim=1))
        if self.stem_skip:
            out = F.interpolate(out, size=f0.shape[-2:], mode="bilinear", align_corners=False)
            out = self.fine(torch.cat([out, self.proj0(f0)], dim=1))
        # the last upsampling in fp32 (bf16 interpolation is slow on CPUs and rounds the logits)
        with torch.autocast(x.device.type, enabled=False):
            return F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """``B x H x W x 3`` uint8 -> ``B x 3 x H x W`` float, ImageNet mean/std."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def flip_average(net: RefinerNet, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``B x 3 x H x W`` -> ``B x 1 x H x W`` mean of the sigmoid maps of ``x`` and its mirror image."""
    x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, dtype):
        p = torch.sigmoid(net(x)) + torch.sigmoid(net(x.flip(-1))).flip(-1)
    return p.float() / 2
