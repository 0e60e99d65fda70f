"""One home for prototypes, upsampling and normalisation: its pieces agree with each other."""

import pytest
import torch
import torch.nn.functional as F

from maskcontrast.embeddings import (
    mask_prototypes,
    masked_mean_embedding,
    normalised_pixels,
    pixel_sums,
    upsample_embedding,
    upsampled_pixels,
)


def test_the_eval_prototype_equals_the_training_prototype():
    torch.manual_seed(0)
    emb = torch.randn(1, 6, 5, 7, dtype=torch.float64)
    mask = torch.zeros(20, 28, dtype=torch.bool)
    mask[4:12, 3:19] = True
    protos, owner = mask_prototypes(emb, mask[None].long())
    assert owner.tolist() == [[0, 1]]
    torch.testing.assert_close(masked_mean_embedding(emb, mask).double(), protos[0], rtol=1e-5, atol=1e-6)


def test_selected_and_chunked_pixels_equal_the_full_map():
    torch.manual_seed(1)
    emb = torch.randn(1, 4, 3, 5)
    full = upsample_embedding(emb, (12, 20))  # 1 x 4 x 12 x 20, unit norm
    select = torch.zeros(1, 12, 20, dtype=torch.bool)
    select[0, 2:9, 5:17] = True
    picked = torch.nn.functional.normalize(upsampled_pixels(emb, select), dim=1)
    torch.testing.assert_close(picked, full.permute(0, 2, 3, 1)[select], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normalised_pixels(emb, (12, 20)), full[0].reshape(4, -1).T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(20, 30), (4, 6), (3, 5), (9, 2)])
def test_pixel_sums_equal_the_full_map(size):
    # upsampling (also by odd factors), the grid's own size, and a smaller map in one direction
    torch.manual_seed(0)
    emb = torch.randn(1, 10, 4, 6)
    ids = torch.randint(-1, 3, size)
    sums, counts = pixel_sums(emb, ids, 3)
    full = F.normalize(F.interpolate(emb, size=size, mode="bilinear", align_corners=False), dim=1)[0]
    for i in range(3):
        torch.testing.assert_close(sums[i], full[:, ids == i].sum(1), atol=1e-4, rtol=1e-5)
        assert int(counts[i]) == int((ids == i).sum())
