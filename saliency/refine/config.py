"""The refiner's config schema, its checks and its checkpoint format constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from maskcontrast.config_checks import ConfigError, bounded, check_values, checks
from saliency.fusion import FusionConfig

FORMAT = "maskcontrast-saliency-refiner"
#: the refiner's precision settings (``auto``: bfloat16 where the device computes it natively)
PRECISIONS = ("auto", "bf16", "fp32")
#: how the output combines the network's map with the classical ones (see RefineConfig.combine)
COMBINES = ("fusion", "blend")
#: the checkpoint format: 2 added stem_skip, fused_weight, unconfident_weight, precision; 3 added align_mean, combine
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)


@dataclass
class RefinerNetConfig:
    """The refiner network: a torchvision ResNet trunk and a light decoder."""

    # resnet18 | resnet34 | resnet50 | resnet101
    arch: str = "resnet18"
    # 8, 16 or 32 (32: no dilation, the cheapest)
    output_stride: int = bounded(32, choices=(8, 16, 32))
    decoder_channels: int = bounded(64, ge=8)
    # also merge the stem's features at stride 2 (sharper boundaries)
    stem_skip: bool = True
    # random | torchvision | path to a MoCo / torchvision / maskcontrast checkpoint
    init: str = "random"


@dataclass
class RefineConfig:
    """Everything ``python -m saliency.refine`` needs besides the image sources."""

    model: RefinerNetConfig = field(default_factory=RefinerNetConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    input_size: int = bounded(192, ge=32)
    rounds: int = bounded(3, ge=1)
    epochs_per_round: int = bounded(3, ge=1)
    # >= 2: batch norm
    batch_size: int = bounded(16, ge=2)
    # AdamW, cosine over all rounds
    lr: float = bounded(1e-3, gt=0.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    # moving average of predictions: a <- m a + (1 - m) prediction
    target_momentum: float = bounded(0.5, ge=0.0, lt=1.0)
    # next targets: w * fused + (1 - w) * a (0: the average alone)
    target_anchor: float = bounded(0.5, ge=0.0, lt=1.0)
    # confident where |t - 0.5| >= margin (rounds after the first)
    margin: float = bounded(0.25, ge=0.0, lt=0.5)
    # loss weight of the unconfident pixels (soft targets); 0: confident only
    unconfident_weight: float = bounded(0.5, ge=0.0, le=1.0)
    # combine=blend: (1 - w) * network + w * fused map (0: the network alone)
    fused_weight: float = bounded(0.5, ge=0.0, le=1.0)
    # shift each prediction's logits so its mean equals its fused map's (stops drift)
    align_mean: bool = True
    # fusion: the network joins the classical fusion as one more estimator | blend
    combine: str = bounded("fusion", choices=COMBINES)
    # inference: mean of the maps at these x input_size (non-empty)
    tta_scales: list[float] = field(default_factory=lambda: [1.0], metadata=checks(ge=0.1, le=4.0, each=True))
    # auto (bf16 where native) | bf16 | fp32
    precision: str = bounded("auto", choices=PRECISIONS)
    # random-resized-crop area range lower bound
    scale_min: float = bounded(0.6, gt=0.0, le=1.0)
    color_jitter: float = bounded(0.2, ge=0.0)
    # 0: all images
    max_images: int = bounded(0, ge=0)
    # processes for the pseudo-labels
    workers: int = bounded(2, ge=0)
    # torch threads (0: torch's default)
    threads: int = bounded(0, ge=0)
    device: str = "auto"
    seed: int = 0


def validate(cfg: Any) -> None:
    """Check a refiner config against the bounds its schema declares (:func:`bounded`).

    ``cfg``: a :class:`RefineConfig` or a config built from it (``load_config``, merged overrides).

    Raises:
        ConfigError: the first value out of range; the message names the key.
    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    check_values(node, source="refiner config")
    if len(node.tta_scales) == 0:
        raise ConfigError("refiner config: key 'tta_scales' must be a non-empty list of factors in [0.1, 4], got []")
