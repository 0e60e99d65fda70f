"""eval.linear.features: the probe's feature cache."""

import numpy as np
import pytest
from PIL import Image

from eval.linear.features import cache_features
from maskcontrast import images
from maskcontrast.api import FeatureModel
from maskcontrast.data import DataError, build_dataset
from maskcontrast.models import ResNetBackbone


def test_the_cache_refuses_an_image_too_large_for_the_network_by_name(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(photos / "a.png")
    Image.fromarray(np.full((4, 200, 3), 90, np.uint8)).save(photos / "b_strip.png")
    ds = build_dataset("image_folder", photos)
    model = FeatureModel(ResNetBackbone("resnet18", output_stride=8), batch_size=1)
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 32 * 1600 - 1)  # the strip at size 32: 32 x 1,600
    with pytest.raises(DataError, match=r"b_strip\.png: the image \(4 x 200\) resized to shorter side 32"):
        cache_features(model, ds, tmp_path / "cache", 32, with_label=False, progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["a.pt"]  # the image before it is kept
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 32 * 1600)
    cache_features(model, ds, tmp_path / "cache", 32, with_label=False, progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.pt", "b_strip.pt"]
