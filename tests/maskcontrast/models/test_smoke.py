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


def test_the_network_and_the_api_return_one_output_type():
    from maskcontrast.api import FeatureModel
    from maskcontrast.models import FeatureOutput

    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "embed_dim=8"])
    net = build_model(cfg).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        raw = net(x, upsample=False)
    wrapped = FeatureModel(net)(x)
    assert type(raw) is FeatureOutput and type(wrapped) is FeatureOutput
    assert FeatureOutput._fields == ("features", "embedding", "saliency")
    assert torch.allclose(raw.embedding, wrapped.embedding) and torch.allclose(raw.features, wrapped.features)
