"""The MaskContrast network: dilated ResNet + DeepLabv3 head + embedding and saliency heads."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from maskcontrast.config import ModelConfig
from maskcontrast.models.backbone import ResNetBackbone

__all__ = ["CorrespondenceHead", "DeepLabV3Head", "MaskContrastModel", "ModelOutput", "default_aspp_rates"]


def default_aspp_rates(output_stride: int) -> list[int]:
    """12/24/36 at output stride 8, 6/12/18 at 16 (DeepLabv3)."""
    return [12, 24, 36] if output_stride == 8 else [6, 12, 18]


class DeepLabV3Head(nn.Sequential):
    """torchvision's ASPP (1x1, three atrous 3x3, image pooling; 256 channels each, projected to
    256) followed by a 3x3 conv + BN + ReLU: ``B x C_in x h x w -> B x 256 x h x w``."""

    def __init__(self, in_channels: int, rates: list[int], channels: int = 256) -> None:
        super().__init__(
            ASPP(in_channels, rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = channels


class CorrespondenceHead(nn.Module):
    """STEGO's head: a linear 1x1 conv plus a nonlinear branch (1x1 conv, ReLU, 1x1 conv), summed:
    ``B x C x h x w -> B x D x h x w``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv2d(in_channels, out_channels, 1)
        self.nonlinear = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(in_channels, out_channels, 1)
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.nonlinear(x)


class ModelOutput(NamedTuple):
    """What :class:`MaskContrastModel` returns.

    Attributes:
        embedding: ``B x D x H x W`` pixel embeddings (not normalised).
        saliency: ``B x 1 x H x W`` saliency logits, or None without a saliency head.
        features: ``B x 256 x h x w`` decoder features at feature resolution (``h = H / os``).
    """

    embedding: torch.Tensor
    saliency: torch.Tensor | None
    features: torch.Tensor


class MaskContrastModel(nn.Module):
    """Dilated ResNet -> DeepLabv3 head -> 1x1 conv embedding (D) and bias-free 1x1 conv saliency.

    ``forward(x)`` with ``x`` of shape ``B x 3 x H x W`` returns a :class:`ModelOutput` whose
    embedding and saliency are bilinearly upsampled to ``H x W`` (pass ``upsample=False`` to keep
    them at feature resolution).

    Example::

        model = MaskContrastModel(ModelConfig())
        out = model(torch.randn(2, 3, 224, 224))
        out.embedding.shape   # (2, 32, 224, 224)
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else ModelConfig()
        self.cfg = cfg
        self.backbone = ResNetBackbone(cfg.backbone.arch, cfg.backbone.output_stride)
        head = getattr(cfg, "head", "deeplab")
        if head == "stego":  # the head sits straight on the backbone features
            if cfg.saliency_head:
                raise ValueError("model.head=stego has no saliency head: set model.saliency_head=false")
            self.decoder: nn.Module = nn.Identity()
            self.embed_head: nn.Module = CorrespondenceHead(self.backbone.out_channels, cfg.embed_dim)
        elif head == "deeplab":
            rates = list(cfg.aspp_rates) if cfg.aspp_rates else default_aspp_rates(cfg.backbone.output_stride)
            self.decoder = DeepLabV3Head(self.backbone.out_channels, rates, cfg.head_channels)
            self.embed_head = nn.Conv2d(cfg.head_channels, cfg.embed_dim, 1)
        else:
            raise ValueError(f"model.head must be deeplab or stego, got {head!r}")
        self.saliency_head = nn.Conv2d(cfg.head_channels, 1, 1, bias=False) if cfg.saliency_head else None

    @property
    def embed_dim(self) -> int:
        return self.embed_head.out_channels

    def forward(self, x: torch.Tensor, upsample: bool = True) -> ModelOutput:
        size = x.shape[-2:]
        features = self.decoder(self.backbone(x))
        emb = self.embed_head(features)
        sal = self.saliency_head(features) if self.saliency_head is not None else None
        if upsample:
            emb = F.interpolate(emb, size=size, mode="bilinear", align_corners=False)
            if sal is not None:
                sal = F.interpolate(sal, size=size, mode="bilinear", align_corners=False)
        return ModelOutput(emb, sal, features)
