"""Minimum barrier distance saliency (MB+).

J. Zhang, S. Sclaroff, Z. Lin, X. Shen, B. Price, R. Mech. "Minimum Barrier Salient Object
Detection at 80 FPS." ICCV 2015.

* FastMBD: the minimum barrier distance of every pixel to the image border (the seeds),
  approximated by alternating forward and backward raster scans; for a neighbour ``y`` of
  ``x`` the barrier through ``y`` is ``max(U(y), I(x)) - min(L(y), I(x))``, where ``U``/``L``
  are the highest/lowest value on ``y``'s current best path. Computed on each Lab channel and
  summed. The scans are sequential by nature and run in numba.
* Image boundary contrast (the "+" of MB+): for each border strip (width ``r``), the
  Mahalanobis colour distance of every pixel to the strip's colour distribution; the four maps
  are combined as ``sum - max`` so that one border touching the object does not spoil the map.
* Post-processing: morphological smoothing by reconstruction (kernel ``alpha * sqrt(mean S)``),
  a centre bias, and contrast enhancement with a sigmoid ``1 / (1 + exp(-b (S - t)))`` centred
  at Otsu's threshold ``t`` (``b = 10``).

Example::

    from saliency.mbd import mbd_saliency
    smap = mbd_saliency(image)   # H x W float32 in [0, 1]
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

from saliency.common import normalize_map, otsu_threshold, resize_map, to_lab, working_image

__all__ = ["mbd_saliency", "fast_mbd", "boundary_contrast", "reconstruct"]


@numba.njit(cache=True, nogil=True)
def _fast_mbd(img: np.ndarray, n_passes: int) -> np.ndarray:  # pragma: no cover - numba compiled
    h, w = img.shape
    dist = np.full((h, w), np.inf)
    upper = img.copy()
    lower = img.copy()
    for y in range(h):
        dist[y, 0] = 0.0
        dist[y, w - 1] = 0.0
    for x in range(w):
        dist[0, x] = 0.0
        dist[h - 1, x] = 0.0
    for p in range(n_passes):
        if p % 2 == 0:
            for y in range(1, h - 1):
                for x in range(1, w - 1):
                    v = img[y, x]
                    for dy, dx in ((-1, 0), (0, -1)):
                        yy, xx = y + dy, x + dx
                        u = max(upper[yy, xx], v)
                        lo = min(lower[yy, xx], v)
                        if u - lo < dist[y, x]:
                            dist[y, x] = u - lo
                            upper[y, x] = u
                            lower[y, x] = lo
        else:
            for y in range(h - 2, 0, -1):
                for x in range(w - 2, 0, -1):
                    v = img[y, x]
                    for dy, dx in ((1, 0), (0, 1)):
                        yy, xx = y + dy, x + dx
                        u = max(upper[yy, xx], v)
                        lo = min(lower[yy, xx], v)
                        if u - lo < dist[y, x]:
                            dist[y, x] = u - lo
                            upper[y, x] = u
                            lower[y, x] = lo
    return dist


@numba.njit(cache=True, nogil=True)
def _reconstruct_dilation(marker: np.ndarray, mask: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    # Vincent's hybrid algorithm (IEEE TIP 1993): two raster scans, then a FIFO propagation.
    h, w = mask.shape
    j = np.minimum(marker, mask)
    for y in range(h):
        for x in range(w):
            v = j[y, x]
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and j[yy, xx] > v:
                    v = j[yy, xx]
            j[y, x] = min(v, mask[y, x])
    # circular FIFO; a pixel is queued at most once at a time, so h * w slots always suffice
    size = h * w
    queue = np.empty(size, dtype=np.int64)
    queued = np.zeros(size, dtype=np.bool_)
    head = 0
    count = 0
    for y in range(h - 1, -1, -1):
        for x in range(w - 1, -1, -1):
            v = j[y, x]
            for dy, dx in ((1, 1), (1, 0), (1, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and j[yy, xx] > v:
                    v = j[yy, xx]
            j[y, x] = min(v, mask[y, x])
            for dy, dx in ((1, 1), (1, 0), (1, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and j[yy, xx] < j[y, x] and j[yy, xx] < mask[yy, xx]:
                    p = y * w + x
                    queue[(head + count) % size] = p
                    queued[p] = True
                    count += 1
                    break
    while count > 0:
        p = queue[head]
        head = (head + 1) % size
        count -= 1
        queued[p] = False
        y, x = p // w, p % w
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                inside = (dy != 0 or dx != 0) and 0 <= yy < h and 0 <= xx < w
                if inside and j[yy, xx] < j[y, x] and mask[yy, xx] != j[yy, xx]:
                    j[yy, xx] = min(j[y, x], mask[yy, xx])
                    q = yy * w + xx
                    if not queued[q]:
                        queue[(head + count) % size] = q
                        queued[q] = True
                        count += 1
    return j


def reconstruct(marker: np.ndarray, mask: np.ndarray, method: str = "dilation") -> np.ndarray:
    """Greyscale morphological reconstruction (8-connectivity) of ``marker`` under (``dilation``)
    or over (``erosion``) ``mask``; both ``H x W``. Same result as ``skimage.morphology.reconstruction``."""
    marker = np.ascontiguousarray(marker, dtype=np.float64)
    mask = np.ascontiguousarray(mask, dtype=np.float64)
    if marker.shape != mask.shape or marker.ndim != 2:
        raise ValueError(f"marker and mask must be equal H x W arrays, got {marker.shape} and {mask.shape}")
    if method == "dilation":
        return _reconstruct_dilation(marker, mask)
    if method == "erosion":
        return -_reconstruct_dilation(-marker, -mask)
    raise ValueError(f"method must be 'dilation' or 'erosion', got {method!r}")


def fast_mbd(channel: np.ndarray, n_passes: int = 3) -> np.ndarray:
    """FastMBD distance transform of one ``H x W`` channel to the image border; ``H x W`` float64."""
    channel = np.ascontiguousarray(channel, dtype=np.float64)
    if channel.ndim != 2:
        raise ValueError(f"expected an H x W channel, got shape {channel.shape}")
    if n_passes < 1:
        raise ValueError(f"n_passes must be >= 1, got {n_passes}")
    return _fast_mbd(channel, n_passes)


def boundary_contrast(lab: np.ndarray, border: int = 15) -> np.ndarray:
    """Image boundary contrast map (``H x W`` float64, in ``[0, 1]``) of a Lab image."""
    h, w = lab.shape[:2]
    r = max(1, min(border, h // 4, w // 4))
    strips = (lab[:r].reshape(-1, 3), lab[-r:].reshape(-1, 3), lab[:, :r].reshape(-1, 3), lab[:, -r:].reshape(-1, 3))
    flat = lab.reshape(-1, 3).astype(np.float64)
    maps = []
    for strip in strips:
        mean = strip.mean(axis=0)
        cov = np.cov(strip.T.astype(np.float64)) + 1e-3 * np.eye(3) * max(1.0, float(strip.var()))
        inv = np.linalg.inv(cov)
        d = flat - mean
        m = np.sqrt(np.maximum(((d @ inv) * d).sum(axis=1), 0.0))
        maps.append(m / max(m.max(), 1e-12))
    stack = np.stack(maps)
    return normalize_map((stack.sum(axis=0) - stack.max(axis=0)).reshape(h, w)).astype(np.float64)


def _smooth_by_reconstruction(s: np.ndarray, alpha: float) -> np.ndarray:
    k = round(alpha * np.sqrt(max(float(s.mean()), 0.0)))
    if k < 2:
        return s
    seed = ndimage.grey_erosion(s, size=(k, k))
    s = reconstruct(seed, s, method="dilation")
    seed = ndimage.grey_dilation(s, size=(k, k))
    return reconstruct(seed, s, method="erosion")


def mbd_saliency(
    image: np.ndarray,
    max_side: int | None = 300,
    n_passes: int = 3,
    border: int = 15,
    alpha: float = 50.0,
    centre_bias: bool = True,
    enhance_b: float = 10.0,
    lab: np.ndarray | None = None,
) -> np.ndarray:
    """MB+ saliency of an ``H x W x 3`` uint8 RGB image -> ``H x W`` float32 in ``[0, 1]``.

    Args:
        image: the RGB image.
        max_side: processing size (the paper resizes to 300 px).
        n_passes: raster-scan passes (forward, backward, forward, ...).
        border: width in pixels of the border strips of the boundary contrast.
        alpha: the smoothing kernel is ``alpha * sqrt(mean saliency)`` pixels.
        centre_bias: multiply by a map that falls off linearly from the image centre.
        enhance_b: slope of the contrast-enhancing sigmoid (0 disables it).
        lab: the Lab conversion of ``image`` when the caller has it already (then ``max_side``
            is unused and the map has the size of ``image``).
    """
    size = np.asarray(image).shape[:2]
    if lab is None:
        lab = to_lab(working_image(image, max_side))
    elif lab.shape[:2] != size:
        raise ValueError(f"lab {lab.shape[:2]} and image {size} differ in size")
    lab = np.asarray(lab, dtype=np.float64)
    mbd = sum(fast_mbd(lab[..., c], n_passes) for c in range(3))
    s = normalize_map(mbd).astype(np.float64) + boundary_contrast(lab, border)
    s = normalize_map(s).astype(np.float64)
    s = _smooth_by_reconstruction(s, alpha)
    if centre_bias:
        h, w = s.shape
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2) / np.sqrt(2)
        s = s * (1.0 - r)
    s = normalize_map(s).astype(np.float64)
    if enhance_b > 0:
        t = otsu_threshold(s)
        s = 1.0 / (1.0 + np.exp(-enhance_b * (s - t)))
    return resize_map(normalize_map(s), size)
