import torch

from maskcontrast.config import ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.models import build_model


def test_model_shapes():
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "embed_dim=8"])
    out = build_model(cfg)(torch.randn(2, 3, 64, 64))
    assert out.embedding.shape == (2, 8, 64, 64)
    assert out.saliency.shape == (2, 1, 64, 64)
    assert out.features.shape == (2, 256, 8, 8)
