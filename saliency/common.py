"""Helpers shared by every saliency estimator: working resolution, map normalisation, and the
SLIC superpixel graph that RBD and GMR are built on.

Example::

    from saliency.common import build_superpixel_graph, to_lab, working_image
    small = working_image(image, max_side=300)          # H' x W' x 3 uint8
    graph = build_superpixel_graph(to_lab(small), 200)  # SuperpixelGraph with N nodes
    pixel_map = graph.to_pixels(values)                 # N -> H' x W'
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from skimage.color import rgb2lab
from skimage.segmentation import slic

__all__ = [
    "SuperpixelGraph",
    "build_superpixel_graph",
    "check_image",
    "working_image",
    "resize_map",
    "normalize_map",
    "to_lab",
    "otsu_threshold",
    "BLAS_VARS",
    "single_thread_env",
    "pool_map",
]

T = TypeVar("T")
R = TypeVar("R")

#: the thread-count variables of the numeric libraries (one thread per worker process)
BLAS_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an ``H x W x 3`` uint8 RGB image (raises ValueError otherwise)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for saliency (min side 8)")
    return image


def working_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` (``H x W x 3`` uint8) downscaled so that its longer side is at most ``max_side``
    (bilinear with antialiasing); returned as is when it is already small enough or ``max_side`` is None."""
    image = check_image(image)
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    if max_side < 16:
        raise ValueError(f"max_side must be >= 16, got {max_side}")
    scale = max_side / max(h, w)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0))


def resize_map(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``h x w`` float map to ``size = (H, W)``; float32 output."""
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape == tuple(size):
        return saliency
    out = Image.fromarray(saliency, mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def normalize_map(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalise to ``[0, 1]`` (a constant map becomes all zeros); float32, same shape."""
    saliency = np.asarray(saliency, dtype=np.float32)
    lo, hi = float(saliency.min()), float(saliency.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("saliency map contains NaN or inf")
    if hi - lo < 1e-12:
        return np.zeros_like(saliency)
    return (saliency - lo) / (hi - lo)


def to_lab(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> float32 CIE-Lab (L in 0..100)."""
    return rgb2lab(image).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in ``[0, 1]`` (histogram with ``bins`` bins)."""
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0)
    # the same bins as np.histogram(v, bins, range=(0, 1)), by counting (much faster)
    hist = np.bincount(np.minimum((v * bins).astype(np.int64), bins - 1), minlength=bins).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[1:][int(np.argmax(between))])


@dataclass
class SuperpixelGraph:
    """A SLIC superpixel segmentation and its region-adjacency graph.

    Attributes:
        labels: ``H x W`` int32 superpixel index of every pixel, ``0..N-1``.
        n: the number of superpixels ``N``.
        lab: ``N x 3`` mean CIE-Lab colour of each superpixel.
        centers: ``N x 2`` mean (y, x) position, normalised to ``[0, 1]``.
        sizes: ``N`` pixel counts.
        edges: ``E x 2`` pairs ``i < j`` of 4-adjacent superpixels, each pair once.
        sides: ``4 x N`` bool, superpixel touches the top, bottom, left, right image border.
    """

    labels: np.ndarray
    n: int
    lab: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray
    edges: np.ndarray
    sides: np.ndarray

    @property
    def boundary(self) -> np.ndarray:
        """``N`` bool: the superpixel touches any image border."""
        return self.sides.any(axis=0)

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Per-superpixel ``N`` values -> ``H x W`` float32 map."""
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (self.n,):
            raise ValueError(f"expected {self.n} superpixel values, got shape {values.shape}")
        return values[self.labels]

    def adjacency(self) -> np.ndarray:
        """``N x N`` bool symmetric adjacency (no self loops)."""
        adj = np.zeros((self.n, self.n), dtype=bool)
        adj[self.edges[:, 0], self.edges[:, 1]] = True
        adj[self.edges[:, 1], self.edges[:, 0]] = True
        return adj


def build_superpixel_graph(lab: np.ndarray, n_segments: int, compactness: float = 10.0) -> SuperpixelGraph:
    """SLIC (scikit-image) on a Lab image, then superpixel means and the adjacency graph.

    Args:
        lab: ``H x W x 3`` float CIE-Lab image (see :func:`to_lab`).
        n_segments: the approximate number of superpixels.
        compactness: SLIC's colour/space trade-off (10 is SLIC's default for Lab).
    """
    if n_segments < 2:
        raise ValueError(f"n_segments must be >= 2, got {n_segments}")
    h, w = lab.shape[:2]
    raw = slic(lab, n_segments=n_segments, compactness=compactness, start_label=0, convert2lab=False, channel_axis=-1)
    if raw.min() == 0 and np.bincount(raw.ravel()).all():
        labels = raw.astype(np.int32)  # already 0..N-1 without gaps (the usual case)
    else:
        _, labels = np.unique(raw, return_inverse=True)
        labels = labels.reshape(h, w).astype(np.int32)
    n = int(labels.max()) + 1
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n).astype(np.float64)
    lab_mean = (
        np.stack([np.bincount(flat, lab[..., c].ravel(), minlength=n) for c in range(3)], axis=1) / sizes[:, None]
    )
    yy, xx = np.mgrid[0:h, 0:w]
    cy = np.bincount(flat, yy.ravel() / max(h - 1, 1), minlength=n) / sizes
    cx = np.bincount(flat, xx.ravel() / max(w - 1, 1), minlength=n) / sizes
    pairs = np.concatenate(
        [
            np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], axis=1),
            np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], axis=1),
        ]
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    adj = np.zeros((n, n), dtype=bool)
    adj[pairs[:, 0], pairs[:, 1]] = True
    adj |= adj.T
    edges = np.argwhere(np.triu(adj, 1)).astype(np.int64)  # i < j, sorted
    sides = np.zeros((4, n), dtype=bool)
    sides[0, np.unique(labels[0])] = True
    sides[1, np.unique(labels[-1])] = True
    sides[2, np.unique(labels[:, 0])] = True
    sides[3, np.unique(labels[:, -1])] = True
    return SuperpixelGraph(
        labels=labels,
        n=n,
        lab=lab_mean.astype(np.float64),
        centers=np.stack([cy, cx], axis=1),
        sizes=sizes,
        edges=edges,
        sides=sides,
    )


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------


@contextmanager
def single_thread_env(enabled: bool) -> Iterator[None]:
    """Set the BLAS thread variables to 1 while the block runs (worker processes spawned inside
    inherit them), then restore them. ``enabled=False``: change nothing."""
    saved = {v: os.environ.get(v) for v in BLAS_VARS}
    if enabled:
        for v in BLAS_VARS:
            os.environ[v] = "1"
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def _single_thread_init(initializer: Callable[..., None] | None, initargs: Sequence[Any]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    for var in BLAS_VARS:
        os.environ[var] = "1"
    if initializer is not None:
        initializer(*initargs)
    if "torch" in sys.modules:  # an initializer that built a torch model imported it
        sys.modules["torch"].set_num_threads(1)


def pool_map(
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: Sequence[Any] = (),
    ordered: bool = True,
    chunksize: int = 1,
) -> Iterator[R]:
    """``func`` over ``items``: in this process when ``workers <= 1`` (``initializer(*initargs)``
    first), else in ``workers`` spawned processes, one BLAS/torch thread each, whose per-process
    state ``initializer`` sets up. Results come in order, or as they finish with ``ordered=False``.

    Example::

        for result in pool_map(work, ids, workers=2, initializer=load_dataset, initargs=(root,)):
            ...
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield func(item)
        return
    from maskcontrast.preemption import requested

    with (
        single_thread_env(True),
        mp.get_context("spawn").Pool(workers, _single_thread_init, (initializer, tuple(initargs))) as pool,
    ):
        run = pool.imap if ordered else pool.imap_unordered
        results = run(func, items, chunksize=chunksize)
        while True:  # wait in short slices: a stop request (SIGTERM) ends the wait, the pool is terminated
            try:
                yield results.next(timeout=0.5)
            except StopIteration:
                return
            except mp.TimeoutError:
                if requested() is not None:
                    return
