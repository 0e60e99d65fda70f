"""The MaskContrast network: dilated ResNet or ViT + DeepLabv3 (or light) head + embedding and saliency heads."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from maskcontrast.config import BackboneConfig, ModelConfig
from maskcontrast.models.backbone import ResNetBackbone
from maskcontrast.models.vit import ViTBackbone, is_vit_arch

__all__ = [
    "CorrespondenceHead",
    "DeepLabV3Head",
    "LightHead",
    "MaskContrastModel",
    "FeatureOutput",
    "build_backbone",
    "default_aspp_rates",
    "head_kind",
]


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


class LightHead(nn.Sequential):
    """1x1 conv + BN + ReLU, then 3x3 conv + BN + ReLU: ``B x C_in x h x w -> B x 256 x h x w``.

    The default head on a ViT (``model.head=auto``): self-attention already gives every token the
    whole image as context, which is what ASPP adds to a CNN, so a projection and one local conv
    suffice; it costs a fraction of ASPP on 384-768-d tokens.
    """

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = channels


def build_backbone(cfg: BackboneConfig | Any) -> ResNetBackbone | ViTBackbone:
    """A dilated :class:`ResNetBackbone` or a :class:`ViTBackbone` as ``cfg.arch`` says (random init)."""
    if is_vit_arch(cfg.arch):
        vit = cfg.vit
        return ViTBackbone(cfg.arch, vit.img_size, vit.dim, vit.depth, vit.drop_path_rate)
    return ResNetBackbone(cfg.arch, cfg.output_stride)


def head_kind(cfg: ModelConfig | Any) -> str:
    """``deeplab``, ``light`` or ``stego``: ``cfg.head``, where ``auto`` means deeplab on a ResNet,
    light on a ViT."""
    head = str(getattr(cfg, "head", "auto"))
    if head == "auto":
        return "light" if is_vit_arch(cfg.backbone.arch) else "deeplab"
    if head not in ("deeplab", "light", "stego"):
        raise ValueError(f"model.head must be auto, deeplab, light or stego, got {head!r}")
    return head


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


class FeatureOutput(NamedTuple):
    """The network's outputs, as :class:`MaskContrastModel` and :meth:`maskcontrast.FeatureModel.forward`
    return them.

    Attributes:
        features: ``B x F x h x w`` decoder (256-d) or backbone features at feature resolution
            (``h = H / output_stride``).
        embedding: ``B x D x h x w`` pixel embeddings, NOT normalised (a backbone-only model: its
            features).
        saliency: ``B x 1 x h x w`` saliency logits, or None without a saliency head.

    ``MaskContrastModel(x)`` upsamples ``embedding`` and ``saliency`` to the input's ``H x W``
    (``upsample=False`` keeps them at ``h x w``); ``FeatureModel`` never does.
    """

    features: torch.Tensor
    embedding: torch.Tensor
    saliency: torch.Tensor | None


class MaskContrastModel(nn.Module):
    """Dilated ResNet or ViT -> DeepLabv3 or light head -> 1x1 conv embedding (D) and bias-free 1x1
    conv saliency.

    ``forward(x)`` with ``x`` of shape ``B x 3 x H x W`` returns a :class:`FeatureOutput` whose
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
        self.backbone = build_backbone(cfg.backbone)
        self.decoder: nn.Module
        self.embed_head: nn.Module
        head = head_kind(cfg)
        if head == "stego":  # the head sits straight on the backbone features
            if cfg.saliency_head:
                raise ValueError("model.head=stego has no saliency head: set model.saliency_head=false")
            self.decoder = nn.Identity()
            self.embed_head = CorrespondenceHead(self.backbone.out_channels, cfg.embed_dim)
        elif head == "deeplab":
            rates = list(cfg.aspp_rates) if cfg.aspp_rates else default_aspp_rates(self.backbone.output_stride)
            self.decoder = DeepLabV3Head(self.backbone.out_channels, rates, cfg.head_channels)
            self.embed_head = nn.Conv2d(cfg.head_channels, cfg.embed_dim, 1)
        else:
            self.decoder = LightHead(self.backbone.out_channels, cfg.head_channels)
            self.embed_head = nn.Conv2d(cfg.head_channels, cfg.embed_dim, 1)
        self.saliency_head = nn.Conv2d(cfg.head_channels, 1, 1, bias=False) if cfg.saliency_head else None

    @property
    def embed_dim(self) -> int:
        return self.embed_head.out_channels

    def forward(self, x: torch.Tensor, upsample: bool = True) -> FeatureOutput:
        size = x.shape[-2:]
        features = self.decoder(self.backbone(x))
        emb = self.embed_head(features)
        sal = self.saliency_head(features) if self.saliency_head is not None else None
        if upsample:
            emb = F.interpolate(emb, size=size, mode="bilinear", align_corners=False)
            if sal is not None:
                sal = F.interpolate(sal, size=size, mode="bilinear", align_corners=False)
        return FeatureOutput(features, emb, sal)
