"""A synthetic image set with exact object masks and known object kinds, made on the fly.

Each image has a random background (noise around a random colour) and one or two objects. An
object's *kind* is defined by its shape and its texture, never by its colour (random per object):

=====  ========  ==================
kind   shape     texture
=====  ========  ==================
1      disc      horizontal stripes
2      square    vertical stripes
3      triangle  checkerboard
4      cross     flat (no texture)
=====  ========  ==================

It is what the learning test of every dense objective trains on (``tests/maskcontrast/objectives/test_learning.py``),
and what the docs' screenshots are drawn from (no shared image is ever committed).

Example::

    write_shapes_folder("/tmp/shapes", n=64, size=64)
    # /tmp/shapes/images/s000.png ..., /tmp/shapes/masks/s000.png (0 = background, 1..2 = objects),
    # /tmp/shapes/kinds/s000.png (0 = background, 1..4 = object kind)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["KINDS", "ShapesImage", "shapes_image", "write_shapes_folder"]

#: kind id -> (shape, texture)
KINDS = {1: ("disc", "hstripes"), 2: ("square", "vstripes"), 3: ("triangle", "checker"), 4: ("cross", "flat")}


@dataclass
class ShapesImage:
    """One synthetic image: ``image`` H x W x 3 uint8, ``objects`` H x W uint8 (0, 1..n),
    ``kinds`` H x W uint8 (0, kind of each object pixel)."""

    image: np.ndarray
    objects: np.ndarray
    kinds: np.ndarray


def _shape_mask(shape: str, size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        arm = max(1, r // 3)
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, size: int, period: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    if texture == "hstripes":
        return ((yy // period) % 2).astype(np.float32)
    if texture == "vstripes":
        return ((xx // period) % 2).astype(np.float32)
    if texture == "checker":
        return (((yy // period) + (xx // period)) % 2).astype(np.float32)
    return np.zeros((size, size), np.float32)


def shapes_image(rng: np.random.Generator, size: int = 64, max_objects: int = 2) -> ShapesImage:
    """One image of ``size x size`` with 1..``max_objects`` objects of random kinds (non-overlapping
    centres; a later object may cover part of an earlier one, and the masks say so exactly)."""
    base = rng.integers(0, 256, 3)
    image = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255)
    objects = np.zeros((size, size), np.uint8)
    kinds = np.zeros((size, size), np.uint8)
    n = int(rng.integers(1, max_objects + 1))
    for obj in range(n):
        kind = int(rng.integers(1, len(KINDS) + 1))
        shape, texture = KINDS[kind]
        r = int(rng.integers(size // 6, size // 4 + 1))
        cy, cx = (int(rng.integers(r, size - r)) for _ in range(2))
        m = _shape_mask(shape, size, cy, cx, r)
        colour = rng.integers(0, 256, 3).astype(np.float32)
        dark = colour * 0.35
        tex = _texture(texture, size, max(2, size // 16))[..., None]
        image[m] = (colour * (1 - tex) + dark * tex)[m]
        objects[m] = obj + 1
        kinds[m] = kind
    return ShapesImage(image.astype(np.uint8), objects, kinds)


def write_shapes_folder(root: str | Path, n: int = 64, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` images to ``<root>/images/sNNN.png`` with their object masks in ``<root>/masks``
    (the layout of ``saliency.generate``: 0 = background, 1..n = objects) and their kinds in
    ``<root>/kinds``. Returns ``root``."""
    root = Path(root)
    for sub in ("images", "masks", "kinds"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        s = shapes_image(rng, size)
        name = f"s{i:03d}.png"
        Image.fromarray(s.image).save(root / "images" / name)
        Image.fromarray(s.objects).save(root / "masks" / name)
        Image.fromarray(s.kinds).save(root / "kinds" / name)
    return root
