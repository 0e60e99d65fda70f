"""Region masks that need no saliency: Felzenszwalb segments and a fixed grid (DetCon's cheap masks).

A region mask has the layout of an object mask (``H x W`` uint8 ids) but covers the whole image:
every pixel belongs to one region ``1..n`` (``n <= 255``). DetCon contrasts the mask-pooled
features of these regions across two views; the view sampler crops the mask with each view, so
both views carry the same ids.

* :func:`grid_regions`: an ``n x n`` grid of equal cells, ids ``1..n*n`` row by row.
* :func:`felzenszwalb_regions`: scikit-image's graph-based segmentation (Felzenszwalb &
  Huttenlocher 2004), with the ids re-numbered by first appearance and the smallest segments
  merged into their largest neighbour until at most ``max_regions`` remain.
* :class:`RegionMaker`: one of them for a training image, cached on disk (one PNG per image under a
  folder named by the method and its parameters), so the segmentation runs once per image.

Example::

    maker = RegionMaker("felzenszwalb", cache_dir="~/.cache/maskcontrast/regions")
    ids = maker(image, key="msrc/1_1_s")          # H x W uint8, 1..n
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maskcontrast.data.record import DataError

__all__ = ["MASK_SOURCES", "grid_regions", "felzenszwalb_regions", "RegionMaker"]

log = logging.getLogger(__name__)

#: where the masks of a training run come from (``data.mask_source``)
MASK_SOURCES = ("masks", "felzenszwalb", "grid")


def grid_regions(height: int, width: int, cells: int) -> np.ndarray:
    """A ``cells x cells`` grid: ``height x width`` uint8 ids ``1..cells**2`` (row-major).

    Raises:
        ValueError: ``cells`` outside ``1..15`` (ids must fit in uint8).
    """
    if not 1 <= cells <= 15:
        raise ValueError(f"data.regions.grid_cells must be in 1..15, got {cells}")
    rows = np.minimum(np.arange(height) * cells // max(height, 1), cells - 1)
    cols = np.minimum(np.arange(width) * cells // max(width, 1), cells - 1)
    return (rows[:, None] * cells + cols[None, :] + 1).astype(np.uint8)


def _merge_small(labels: np.ndarray, max_regions: int) -> np.ndarray:
    """Merge the smallest segments into their most-bordering neighbour until ``max_regions`` remain.

    ``labels``: ``H x W`` int ids ``0..n-1`` (consecutive). Returns ids ``0..m-1``, ``m <= max_regions``.
    """
    labels = labels.astype(np.int64)
    while True:
        n = int(labels.max()) + 1
        if n <= max_regions:
            return labels
        sizes = np.bincount(labels.ravel(), minlength=n)
        small = int(np.argmin(sizes))
        region = labels == small
        # the neighbour sharing the longest border (4-connectivity)
        border = np.zeros_like(region)
        border[1:] |= region[:-1]
        border[:-1] |= region[1:]
        border[:, 1:] |= region[:, :-1]
        border[:, :-1] |= region[:, 1:]
        border &= ~region
        cand = np.bincount(labels[border], minlength=n)
        target = int(np.argmax(cand)) if cand.sum() else int(np.argmax(np.where(np.arange(n) == small, -1, sizes)))
        labels[region] = target
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(region.shape)


def felzenszwalb_regions(
    image: np.ndarray, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50, max_regions: int = 32
) -> np.ndarray:
    """Felzenszwalb segments of an ``H x W x 3`` uint8 image: ``H x W`` uint8 ids ``1..n``, ``n <= max_regions``.

    ``scale``, ``sigma`` and ``min_size`` are scikit-image's (larger ``scale``: larger segments);
    ``min_size`` is in pixels of the image given, so it scales with the image's size.
    """
    from skimage.segmentation import felzenszwalb

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"felzenszwalb_regions expects H x W x 3, got shape {image.shape}")
    if not 1 <= max_regions <= 255:
        raise ValueError(f"data.regions.max_regions must be in 1..255, got {max_regions}")
    seg = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    _, seg = np.unique(seg, return_inverse=True)
    seg = _merge_small(seg.reshape(image.shape[:2]), max_regions)
    return (seg + 1).astype(np.uint8)


@dataclass
class RegionMaker:
    """Makes the region mask of a training image, cached on disk.

    Args:
        method: ``felzenszwalb`` or ``grid``.
        grid_cells: cells per side of the grid.
        scale, sigma, min_size, max_regions: Felzenszwalb parameters (:func:`felzenszwalb_regions`).
        cache_dir: root of the cache; None keeps nothing on disk. Masks go to
            ``<cache_dir>/<method>-<parameter hash>/<key hash>.png``.
    """

    method: str = "felzenszwalb"
    grid_cells: int = 4
    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 50
    max_regions: int = 32
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("felzenszwalb", "grid"):
            raise ValueError(f"data.mask_source must be one of {MASK_SOURCES}, got {self.method!r}")
        if self.method == "grid":
            grid_regions(1, 1, self.grid_cells)  # validates grid_cells
        elif not 1 <= self.max_regions <= 255:
            raise ValueError(f"data.regions.max_regions must be in 1..255, got {self.max_regions}")

    @property
    def folder(self) -> Path | None:
        if self.cache_dir is None or self.method == "grid":
            return None
        params = f"{self.scale}-{self.sigma}-{self.min_size}-{self.max_regions}"
        return Path(self.cache_dir).expanduser() / f"felzenszwalb-{hashlib.sha1(params.encode()).hexdigest()[:10]}"

    def __call__(self, image: np.ndarray, key: str = "") -> np.ndarray:
        """The ``H x W`` uint8 region ids of ``image`` (``H x W x 3`` uint8); ``key`` names it in the cache.

        Raises:
            DataError: the segmentation yields no region (an empty image).
        """
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise DataError(f"image '{key}' is empty ({h} x {w}); data.mask_source={self.method} has no region in it")
        if self.method == "grid":
            return grid_regions(h, w, self.grid_cells)
        folder = self.folder
        path = None
        if folder is not None:
            path = folder / f"{hashlib.sha1(f'{key}:{h}x{w}'.encode()).hexdigest()}.png"
            if path.is_file():
                try:
                    cached = np.asarray(Image.open(path))
                    if cached.shape == (h, w):
                        return cached
                except OSError:
                    log.warning("region cache file %s is unreadable; recomputing it", path)
        ids = felzenszwalb_regions(image, self.scale, self.sigma, self.min_size, self.max_regions)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{np.random.randint(1 << 30)}.png")
            Image.fromarray(ids).save(tmp)
            tmp.replace(path)  # atomic: a reader never sees half a file
        return ids
