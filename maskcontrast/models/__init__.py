"""Networks and checkpoint loading.

Example::

    from maskcontrast.config import ModelConfig
    from maskcontrast.models import build_model
    cfg = ModelConfig()
    cfg.backbone.arch, cfg.backbone.init = "resnet50", "moco_v2_800ep_pretrain.pth.tar"
    model = build_model(cfg)  # MaskContrastModel with MoCo v2 backbone weights

    cfg.backbone.arch, cfg.backbone.init = "vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth"
    model = build_model(cfg)  # ViT-S/14 (DINOv2 weights, 518 px position embedding interpolated) + light head
"""

from __future__ import annotations

import logging

import torchvision

from maskcontrast.config import ModelConfig
from maskcontrast.models.backbone import ARCHS, ResNetBackbone, dilate_layer
from maskcontrast.models.checkpoint import (
    IGNORABLE,
    LAYOUTS,
    CheckpointError,
    backbone_state_dict,
    detect_layout,
    extract_backbone,
    infer_backbone_arch,
    infer_resnet_arch,
    read_checkpoint,
)
from maskcontrast.models.loading import (
    LoadReport,
    load_backbone,
    load_backbone_weights,
    model_checkpoint,
    model_config_from_checkpoint,
    model_from_checkpoint,
)
from maskcontrast.models.segmenter import (
    DeepLabV3Head,
    FeatureOutput,
    LightHead,
    MaskContrastModel,
    build_backbone,
    default_aspp_rates,
    head_kind,
)
from maskcontrast.models.vit import VIT_SPECS, ViTBackbone, ViTSpec, ViTTokens, infer_vit_spec, is_vit_arch

__all__ = [
    "ARCHS",
    "ResNetBackbone",
    "dilate_layer",
    "DeepLabV3Head",
    "MaskContrastModel",
    "FeatureOutput",
    "default_aspp_rates",
    "build_model",
    "init_backbone",
    "CheckpointError",
    "backbone_state_dict",
    "detect_layout",
    "infer_resnet_arch",
    "load_backbone_weights",
    "model_checkpoint",
    "model_config_from_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "IGNORABLE",
    "LAYOUTS",
    "LoadReport",
    "extract_backbone",
    "infer_backbone_arch",
    "load_backbone",
    "LightHead",
    "build_backbone",
    "head_kind",
    "VIT_SPECS",
    "ViTBackbone",
    "ViTSpec",
    "ViTTokens",
    "infer_vit_spec",
    "is_vit_arch",
]

log = logging.getLogger(__name__)


def init_backbone(backbone: ResNetBackbone | ViTBackbone, init: str, init_key: str = "teacher") -> str:
    """Initialise ``backbone`` as ``init`` says: ``random``, ``torchvision`` (torchvision's
    ImageNet weights through its download cache; ResNets only) or a checkpoint path of any known
    layout (``init_key``: the network of a full DINO checkpoint). Returns the layout used."""
    if init in ("random", "", None):
        return "random"
    if init == "torchvision":
        if isinstance(backbone, ViTBackbone):
            raise CheckpointError("backbone.init=torchvision is for ResNets; pass a ViT checkpoint file instead")
        builder = ARCHS[backbone.arch][0]
        try:
            weights = torchvision.models.get_model_weights(builder).DEFAULT
            sd = weights.get_state_dict(progress=False)
        except Exception as err:
            raise CheckpointError(
                f"backbone.init=torchvision: could not fetch torchvision's {backbone.arch} weights ({err}); "
                "download them elsewhere and pass the file path as backbone.init"
            ) from err
        return load_backbone_weights(backbone, {"state_dict": sd})
    return load_backbone_weights(backbone, init, init_key)


def build_model(cfg: ModelConfig) -> MaskContrastModel:
    """A :class:`MaskContrastModel` with its backbone initialised from ``cfg.backbone.init``."""
    model = MaskContrastModel(cfg)
    init_backbone(model.backbone, cfg.backbone.init, getattr(cfg.backbone, "init_key", "teacher"))
    return model
