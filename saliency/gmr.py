"""Graph-based manifold ranking (GMR).

C. Yang, L. Zhang, H. Lu, X. Ruan, M.-H. Yang. "Saliency Detection via Graph-Based Manifold
Ranking." CVPR 2013.

Nodes are SLIC superpixels. Each node is connected to its neighbours and to the neighbours of
its neighbours, and all border nodes are connected to each other (the paper's close-loop graph).
Edges weigh ``w_ij = exp(-||c_i - c_j|| / sigma^2)`` with ``sigma^2 = 0.1``; the Lab distances
are divided by their maximum over the graph's edges first, since the paper's ``sigma^2`` is meant
for distances in ``[0, 1]``. The ranking function is ``f = A y`` with ``A = (D - alpha W)^-1``,
``alpha = 0.99``, and the diagonal of ``A`` set to 0 (as the paper does, so a query does not
rank itself).

Stage 1 ranks against the nodes of each border side as background queries; the saliency is
the product of the four complements. Stage 2 thresholds that map at its mean and ranks against
the resulting foreground queries.

Example::

    from saliency.gmr import gmr_saliency
    smap = gmr_saliency(image)   # H x W float32 in [0, 1]
"""

from __future__ import annotations

import numpy as np

from saliency.common import (
    SuperpixelGraph,
    build_superpixel_graph,
    normalize_map,
    resize_map,
    to_lab,
    working_image,
)

__all__ = ["gmr_saliency", "gmr_scores", "ranking_matrix"]


def ranking_matrix(graph: SuperpixelGraph, sigma2: float = 0.1, alpha: float = 0.99) -> np.ndarray:
    """``N x N`` optimal-affinity matrix ``A = (D - alpha W)^-1`` with a zero diagonal."""
    adj = graph.adjacency()
    two_ring = adj | ((adj.astype(np.float32) @ adj.astype(np.float32)) > 0)
    bnd = graph.boundary
    two_ring |= bnd[:, None] & bnd[None, :]
    np.fill_diagonal(two_ring, False)
    diff = graph.lab[:, None, :] - graph.lab[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    scale = dist[two_ring].max() if two_ring.any() else 1.0
    dist = dist / max(scale, 1e-12)
    w = np.where(two_ring, np.exp(-dist / sigma2), 0.0)
    d = np.diag(w.sum(axis=1))
    a = np.linalg.inv(d - alpha * w + 1e-9 * np.eye(graph.n))
    np.fill_diagonal(a, 0.0)
    return a


def _rank(a: np.ndarray, queries: np.ndarray) -> np.ndarray:
    f = a @ queries.astype(np.float64)
    lo, hi = f.min(), f.max()
    return (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)


def gmr_scores(graph: SuperpixelGraph, sigma2: float = 0.1, alpha: float = 0.99) -> np.ndarray:
    """``N`` two-stage manifold-ranking saliency values in ``[0, 1]``."""
    a = ranking_matrix(graph, sigma2, alpha)
    s_bq = np.ones(graph.n)
    for side in graph.sides:
        s_bq *= 1.0 - _rank(a, side)
    s_bq = normalize_map(s_bq).astype(np.float64)
    fg = s_bq >= s_bq.mean()
    if not fg.any():  # a constant map: nothing to rank against
        return s_bq
    return _rank(a, fg)


def gmr_saliency(
    image: np.ndarray,
    n_segments: int = 200,
    max_side: int | None = 300,
    compactness: float = 10.0,
    graph: SuperpixelGraph | None = None,
) -> np.ndarray:
    """GMR saliency of an ``H x W x 3`` uint8 RGB image -> ``H x W`` float32 in ``[0, 1]``.

    Arguments as in :func:`saliency.rbd.rbd_saliency`.
    """
    size = np.asarray(image).shape[:2]
    if graph is None:
        graph = build_superpixel_graph(to_lab(working_image(image, max_side)), n_segments, compactness)
    smap = normalize_map(graph.to_pixels(gmr_scores(graph)))
    return resize_map(smap, size)
