"""maskcontrast.images: images in, network-ready tensors out."""

import numpy as np
import pytest
import torch

from maskcontrast import images
from maskcontrast.images import InputTooLargeError, flatten_images, target_size, to_image_tensor


def test_target_size():
    assert target_size((375, 500), None, 8) == (376, 504)  # 62.5 rounds up
    assert target_size((375, 500), 256, 8) == (256, 344)
    assert target_size((375, 500), (100, 120), 8) == (104, 120)
    assert target_size((3, 3), None, 8) == (8, 8)
    with pytest.raises(ValueError):
        target_size((10, 10), 0, 8)


def test_a_network_input_over_the_limit_is_refused_with_both_sizes(monkeypatch):
    # a 2 x 3,000 strip at shorter side 512 would be 512 x 768,000: over any sane limit (and 24 GiB)
    with pytest.raises(InputTooLargeError, match=r"\(2 x 3000\) resized to shorter side 512 .* 512 x 768000 ="):
        target_size((2, 3000), 512, 8)
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 256 * 344)
    assert target_size((375, 500), 256, 8) == (256, 344)  # exactly at the limit
    with pytest.raises(
        InputTooLargeError, match=r"at its own size .* 376 x 504 = 189,504 pixels, over the limit of 88,064"
    ):
        target_size((375, 500), None, 8)
    with pytest.raises(InputTooLargeError, match=r"MASKCONTRAST_MAX_INPUT_PIXELS.*--size H W"):
        target_size((375, 500), (300, 300), 8)


def test_the_input_limit_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MASKCONTRAST_MAX_INPUT_PIXELS", "1e6")
    assert images._max_input_pixels() == 1_000_000
    monkeypatch.setenv("MASKCONTRAST_MAX_INPUT_PIXELS", "lots")
    with pytest.raises(ValueError, match="MASKCONTRAST_MAX_INPUT_PIXELS must be a positive pixel count, got 'lots'"):
        images._max_input_pixels()


def test_the_model_names_the_file_whose_input_is_too_large(tmp_path, monkeypatch):
    from PIL import Image

    from maskcontrast.api import FeatureModel
    from maskcontrast.models import ResNetBackbone

    path = tmp_path / "strip.png"
    Image.fromarray(np.zeros((4, 200, 3), np.uint8)).save(path)
    model = FeatureModel(ResNetBackbone("resnet18", output_stride=8), size=32)
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 32 * 1600 - 1)
    with pytest.raises(InputTooLargeError, match=r"strip\.png: the image \(4 x 200\) resized to shorter side 32"):
        model.embed(path)
    with pytest.raises(InputTooLargeError, match=r"^image 1 of the input: "):
        model.embed([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 200, 3), np.uint8)])


def test_flatten_images_and_to_image_tensor():
    batch = torch.rand(2, 3, 4, 5)
    items = flatten_images([batch, np.zeros((4, 5, 3), np.uint8)])
    assert len(items) == 3
    assert [tuple(to_image_tensor(im).shape) for im in items] == [(3, 4, 5)] * 3
    one = batch[0]
    assert len(flatten_images(one)) == 1 and flatten_images(one)[0] is one
    with pytest.raises(ValueError, match="empty"):
        flatten_images([])
