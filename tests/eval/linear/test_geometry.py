"""The joint flip/rotation/scale/crop of images, labels and feature maps."""

import numpy as np
import torch

from eval.linear.config import ProbeAugmentConfig
from eval.linear.geometry import AffineParams, affine_grid, sample_affine, warp_features, warp_image, warp_label


def test_identity_view_keeps_image_and_label():
    img = torch.rand(1, 3, 16, 16)
    lab = torch.randint(0, 5, (16, 16))
    p = AffineParams(1.0, 0.0, False, 0.0, 0.0)
    torch.testing.assert_close(warp_image(img, p, 16), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp_label(lab, p, 16), lab)


def test_flip_and_padding():
    lab = torch.arange(16).reshape(4, 4)
    flipped = warp_label(lab, AffineParams(1.0, 0.0, True, 0.0, 0.0), 4)
    torch.testing.assert_close(flipped, lab.flip(1))
    # a crop larger than the image: the outside is ignore (255)
    padded = warp_label(lab, AffineParams(1.0, 0.0, False, 0.0, 0.0), 6)
    torch.testing.assert_close(padded[:4, :4], lab)
    assert (padded[4:] == 255).all() and (padded[:, 4:] == 255).all()


def test_features_and_labels_stay_aligned():
    # a feature map that equals the label at stride 4 must land where the label lands
    rng = np.random.default_rng(0)
    lab = torch.zeros(64, 64, dtype=torch.long)
    lab[16:48, 8:40] = 1
    feats = lab[2::4, 2::4].float()[None, None]  # 16 x 16 "features"
    aug = ProbeAugmentConfig(crop_size=48, scale_min=0.8, scale_max=1.2, rotate_degrees=5, flip=True)
    for _ in range(5):
        p = sample_affine(rng, (64, 64), 48, aug)
        wl = warp_label(lab, p, 48)
        wf = warp_features(feats, p, (64, 64), 48, 4)[0, 0]
        sub = wl[2::4, 2::4]
        valid = (sub != 255) & ((wf - 0.5).abs() > 0.25)
        agree = ((wf[valid] > 0.5).long() == sub[valid]).float().mean()
        assert agree > 0.95


def test_affine_grid_identity_is_pixel_centres():
    grid = affine_grid(AffineParams(1.0, 0.0, False, 0.0, 0.0), (4, 8), 4, (4, 4))
    assert grid.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(grid[0, 0, :, 0].numpy(), [-7 / 8, -5 / 8, -3 / 8, -1 / 8])
    np.testing.assert_allclose(grid[0, :, 0, 1].numpy(), [-3 / 4, -1 / 4, 1 / 4, 3 / 4])
