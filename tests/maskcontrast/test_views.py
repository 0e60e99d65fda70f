"""Paired views: crop boxes, the mask-area constraint, skipping, determinism, device-side augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from maskcontrast.config import AugmentConfig
from maskcontrast.data import DataError, build_dataset, write_mask
from maskcontrast.data.views import (
    EpochBatchSampler,
    PairedViewDataset,
    ViewSampler,
    _integral,
    crop_grid,
    mask_coverage,
    sample_crop_box,
)

PLAIN = AugmentConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """10 images: red objects on a dark background (mask = red pixels); im8 has an empty mask, im9 none."""
    root = tmp_path_factory.mktemp("views")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        img = np.zeros((30, 40, 3), np.uint8)
        img[..., 2] = rng.integers(0, 60, (30, 40))
        mask = np.zeros((30, 40), np.uint8)
        if i < 8:
            y, x = rng.integers(0, 15), rng.integers(0, 20)
            mask[y : y + 12, x : x + 16] = 1 + i % 2
            img[mask > 0] = (255, 0, 0)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        if i < 9:
            write_mask(root / "masks" / f"im{i}.png", mask)
    return root


def dataset(folder, **kw):
    ds = build_dataset("image_folder", folder / "images", masks=folder / "masks")
    return PairedViewDataset([ds], **{"image_size": 24, "augment": PLAIN, **kw})


def test_crop_boxes_fit_and_follow_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, w, h = sample_crop_box(rng, 30, 50, (0.2, 1.0), (0.75, 4 / 3))
        assert x0 >= 0 and y0 >= 0 and x0 + w <= 50 and y0 + h <= 30
        assert 0.15 * 1500 <= w * h <= 1500
    assert sample_crop_box(rng, 10, 100, (0.9, 1.0), (1.0, 1.0), tries=0) == (45, 0, 10, 10)  # centred fallback


def test_mask_coverage_matches_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, (17, 23)).astype(np.uint8)
    ii = _integral(mask)
    for _ in range(50):
        x0, y0, w, h = sample_crop_box(rng, 17, 23)
        assert mask_coverage(ii, (x0, y0, w, h)) == pytest.approx((mask[y0 : y0 + h, x0 : x0 + w] > 0).mean())


def test_items_are_deterministic_and_skip_unusable_images(folder):
    ds = dataset(folder)
    assert len(ds) == 9  # im9 has no mask file and is left out
    a, b = ds[(0, 3)], ds[(0, 3)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[(1, 3)]["boxes"], a["boxes"])  # another epoch, other crops
    assert a["image"].shape == (36, 36, 3) and a["mask"].shape == (36, 36)  # longer side 1.5 x 24
    item = ds[(0, 8)]  # the empty mask is skipped, another image is drawn and counted
    assert int(item["skipped"]) >= 1 and item["mask"].max() > 0


def test_views_respect_the_mask_area_and_align_with_images(folder):
    aug = AugmentConfig(color_jitter_p=0, grayscale_p=0, crop_scale=[0.1, 1.0], min_mask_area=0.05, max_mask_area=0.95)
    ds = dataset(folder, augment=aug)
    batch = default_collate([ds[(e, i)] for e in range(3) for i in range(8)])
    views = ViewSampler(aug, 24)(batch)
    assert views.query.shape == (24, 3, 24, 24) and views.key_mask.shape == (24, 24, 24)
    for m in (views.query_mask, views.key_mask):
        cover = (m > 0).float().mean(dim=(1, 2))
        assert cover.min() >= 0.03 and cover.max() <= 0.97  # the constraint holds on the resampled masks too
    mean, std = torch.tensor(aug.mean).view(1, 3, 1, 1), torch.tensor(aug.std).view(1, 3, 1, 1)
    rgb = views.query * std + mean
    red = (rgb[:, 0] > 0.6) & (rgb[:, 2] < 0.4)
    agree = (red == (views.query_mask > 0)).float().mean()
    assert agree > 0.97  # image and mask are cropped/flipped together
    assert int(batch["redraws"].sum()) >= 0


def test_dataset_without_masks_is_a_clear_error(folder, tmp_path):
    ds = build_dataset("image_folder", folder / "images")
    with pytest.raises(DataError, match="masks"):
        PairedViewDataset([ds], image_size=24)
    moco = PairedViewDataset([ds], image_size=24, need_mask=False)  # MoCo needs none
    item = moco[(0, 9)]
    assert item["mask"].numel() == 0 and int(item["skipped"]) == 0
    with pytest.raises(DataError, match="mask file"):
        PairedViewDataset([build_dataset("image_folder", folder / "images", masks=tmp_path)], image_size=24)


def test_crop_grid_identity_and_flip():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    full = torch.tensor([[0.0, 0.0, 4.0, 4.0, 0.0]])
    out = torch.nn.functional.grid_sample(img, crop_grid(full, 4, 4), align_corners=False)
    assert torch.allclose(out, img)
    flipped = torch.nn.functional.grid_sample(
        img, crop_grid(full + torch.tensor([0, 0, 0, 0, 1.0]), 4, 4), align_corners=False
    )
    assert torch.allclose(flipped, img.flip(-1))


def test_view_sampler_color_ops_and_normalisation():
    aug = AugmentConfig(blur_p=1.0)
    vs = ViewSampler(aug, 32)
    assert len(vs.color) == 3
    batch = {
        "image": torch.full((2, 48, 48, 3), 128, dtype=torch.uint8),
        "mask": torch.zeros(0, 0),
        "boxes": torch.tensor([[0, 0, 48, 48, 0.0]] * 4).view(2, 2, 5),
    }
    views = ViewSampler(PLAIN, 32)(batch)
    expected = (128 / 255 - torch.tensor(aug.mean)) / torch.tensor(aug.std)
    assert torch.allclose(views.query[0, :, 5, 5], expected, atol=1e-5) and views.query_mask is None


def test_epoch_batch_sampler_partitions_ranks_and_resumes():
    r0 = list(EpochBatchSampler(10, 2, seed=1, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(10, 2, seed=1, rank=1, world_size=2))
    assert len(r0) == len(r1) == 2
    idx = [i for b in r0 + r1 for _, i in b]
    assert len(set(idx)) == 8
    s = EpochBatchSampler(10, 2, seed=1, rank=0, world_size=2)
    s.set_epoch(0, start_batch=1)
    assert list(s) == r0[1:]
    s.set_epoch(1)
    assert list(s) != r0 and all(e == 1 for b in s for e, _ in b)
    with pytest.raises(ValueError, match="batch"):
        EpochBatchSampler(3, 2, world_size=2)
