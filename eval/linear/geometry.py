"""Joint geometric augmentation of an image, its label and its feature maps (pure functions).

A random view (:class:`AffineParams`: flip, rotation, scale and a crop window) is drawn once per
image (:func:`sample_affine`) and applied with one continuous transform (:func:`affine_grid`) to
every map of the image, whatever its resolution, so they stay aligned: the image (bilinear, zero
padding), the label (nearest, padding becomes the ignore label) and a feature map at any stride.

Example::

    p = sample_affine(np.random.default_rng(0), (480, 640), 512, ProbeAugmentConfig())
    view, target = warp_image(image, p, 512), warp_label(label, p, 512)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from eval.linear.config import ProbeAugmentConfig
from maskcontrast.data import IGNORE_INDEX

__all__ = ["AffineParams", "sample_affine", "affine_grid", "warp_image", "warp_label", "warp_features"]


class AffineParams(NamedTuple):
    """A random view of an image: ``scale`` (crop pixels per image pixel), ``angle`` (degrees,
    about the image centre), horizontal ``flip``, and the crop's top-left ``(x0, y0)`` in the
    scaled image (negative or beyond the edge: padding)."""

    scale: float
    angle: float
    flip: bool
    x0: float
    y0: float


def sample_affine(
    rng: np.random.Generator, hw: tuple[int, int], crop: int, aug: ProbeAugmentConfig, base_scale: float = 1.0
) -> AffineParams:
    """Draw flip/rotation/scale and a uniformly placed ``crop x crop`` window for an ``H x W`` image.

    The window lies inside the scaled image where it fits; otherwise the image lies inside the
    window at a random place (the rest is padding).
    """
    if aug.scale_min <= 0 or aug.scale_max < aug.scale_min:
        raise ValueError(
            f"augment scale range must satisfy 0 < scale_min <= scale_max, got {aug.scale_min}..{aug.scale_max}"
        )
    s = base_scale * float(rng.uniform(aug.scale_min, aug.scale_max))
    angle = float(rng.uniform(-aug.rotate_degrees, aug.rotate_degrees)) if aug.rotate_degrees > 0 else 0.0
    flip = bool(aug.flip and rng.random() < 0.5)
    sh, sw = hw[0] * s, hw[1] * s
    x0 = float(rng.uniform(min(0.0, sw - crop), max(0.0, sw - crop)))
    y0 = float(rng.uniform(min(0.0, sh - crop), max(0.0, sh - crop)))
    return AffineParams(s, angle, flip, x0, y0)


def affine_grid(p: AffineParams, in_hw: tuple[int, int], crop: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """``1 x h_out x w_out x 2`` sampling grid (``grid_sample``, ``align_corners=False``) of the
    view ``p`` of an input covering ``in_hw`` pixels, sampled at ``out_hw`` points over the crop.

    All maps of one image (the image, its label, its feature map at any stride) are warped with
    the same continuous transform: crop point -> scaled image -> rotated about the centre ->
    flipped -> input, so they stay aligned whatever their resolution.
    """
    h, w = in_hw
    ys = (torch.arange(out_hw[0], dtype=torch.float64) + 0.5) * (crop / out_hw[0]) + p.y0
    xs = (torch.arange(out_hw[1], dtype=torch.float64) + 0.5) * (crop / out_hw[1]) + p.x0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cx, cy = w * p.scale / 2, h * p.scale / 2
    a = math.radians(p.angle)
    dx, dy = gx - cx, gy - cy
    rx = cx + math.cos(a) * dx + math.sin(a) * dy
    ry = cy - math.sin(a) * dx + math.cos(a) * dy
    if p.flip:
        rx = w * p.scale - rx
    nx = 2 * (rx / p.scale) / w - 1
    ny = 2 * (ry / p.scale) / h - 1
    return torch.stack([nx, ny], -1).float()[None]


def warp_image(image: torch.Tensor, p: AffineParams, crop: int) -> torch.Tensor:
    """``1 x C x H x W`` (normalised) image -> ``1 x C x crop x crop``, bilinear, zero padding
    (= the mean colour after ImageNet normalisation)."""
    grid = affine_grid(p, tuple(image.shape[-2:]), crop, (crop, crop)).to(image.device)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_label(label: torch.Tensor, p: AffineParams, crop: int, in_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """``H x W`` int label -> ``crop x crop`` int64, nearest; padding becomes 255 (ignore)."""
    hw = in_hw or tuple(label.shape[-2:])
    grid = affine_grid(p, hw, crop, (crop, crop)).to(label.device)
    shifted = (label.float() + 1)[None, None]
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    out = out.round().long() - 1
    out[out < 0] = IGNORE_INDEX
    return out


def warp_features(feats: torch.Tensor, p: AffineParams, in_hw: tuple[int, int], crop: int, stride: int) -> torch.Tensor:
    """``1 x F x h x w`` features of an ``in_hw`` image -> ``1 x F x ceil(crop/stride)^2``, bilinear."""
    n = math.ceil(crop / stride)
    grid = affine_grid(p, in_hw, crop, (n, n)).to(feats.device)
    return F.grid_sample(feats.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
