"""maskcontrast.images: images in, network-ready tensors out."""

import numpy as np
import pytest
import torch

from maskcontrast.images import flatten_images, target_size, to_image_tensor


def test_target_size():
    assert target_size((375, 500), None, 8) == (376, 504)  # 62.5 rounds up
    assert target_size((375, 500), 256, 8) == (256, 344)
    assert target_size((375, 500), (100, 120), 8) == (104, 120)
    assert target_size((3, 3), None, 8) == (8, 8)
    with pytest.raises(ValueError):
        target_size((10, 10), 0, 8)


def test_flatten_images_and_to_image_tensor():
    batch = torch.rand(2, 3, 4, 5)
    items = flatten_images([batch, np.zeros((4, 5, 3), np.uint8)])
    assert len(items) == 3
    assert [tuple(to_image_tensor(im).shape) for im in items] == [(3, 4, 5)] * 3
    one = batch[0]
    assert len(flatten_images(one)) == 1 and flatten_images(one)[0] is one
    with pytest.raises(ValueError, match="empty"):
        flatten_images([])
