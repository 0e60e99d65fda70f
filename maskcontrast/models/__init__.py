"""Networks and checkpoint loading.

Example::

    from maskcontrast.config import ModelConfig
    from maskcontrast.models import build_model
    cfg = ModelConfig()
    cfg.backbone.arch, cfg.backbone.init = "resnet50", "moco_v2_800ep_pretrain.pth.tar"
    model = build_model(cfg)  # MaskContrastModel with MoCo v2 backbone weights
"""

from __future__ import annotations

import logging

import torchvision

from maskcontrast.config import ModelConfig
from maskcontrast.models.backbone import ARCHS, ResNetBackbone, dilate_layer
from maskcontrast.models.checkpoint import (
    CheckpointError,
    backbone_state_dict,
    detect_layout,
    infer_resnet_arch,
    load_backbone_weights,
    model_checkpoint,
    model_config_from_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from maskcontrast.models.segmenter import DeepLabV3Head, MaskContrastModel, ModelOutput, default_aspp_rates

__all__ = [
    "ARCHS", "ResNetBackbone", "dilate_layer", "DeepLabV3Head", "MaskContrastModel", "ModelOutput",
    "default_aspp_rates", "build_model", "init_backbone", "CheckpointError", "backbone_state_dict", "detect_layout",
    "infer_resnet_arch", "load_backbone_weights", "model_checkpoint", "model_config_from_checkpoint",
    "model_from_checkpoint", "read_checkpoint",
]  # fmt: skip

log = logging.getLogger(__name__)


def init_backbone(backbone: ResNetBackbone, init: str) -> str:
    """Initialise ``backbone`` as ``init`` says: ``random``, ``torchvision`` (torchvision's
    ImageNet weights through its download cache) or a checkpoint path of any known layout.
    Returns the layout used."""
    if init in ("random", "", None):
        return "random"
    if init == "torchvision":
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
    return load_backbone_weights(backbone, init)


def build_model(cfg: ModelConfig) -> MaskContrastModel:
    """A :class:`MaskContrastModel` with its backbone initialised from ``cfg.backbone.init``."""
    model = MaskContrastModel(cfg)
    init_backbone(model.backbone, cfg.backbone.init)
    return model
