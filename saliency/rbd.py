"""Robust background detection (RBD).

W. Zhu, S. Liang, Y. Wei, J. Sun. "Saliency Optimization from Robust Background Detection."
CVPR 2014.

On a SLIC superpixel graph whose edges weigh the Lab distance of adjacent superpixels:

* boundary connectivity ``BndCon(p) = Len_bnd(p) / sqrt(Area(p))`` with the soft spanning area
  ``Area(p) = sum_i exp(-d_geo(p, p_i)^2 / (2 sigma_clr^2))`` and its length along the image
  border ``Len_bnd(p)`` (the same sum over border superpixels), ``d_geo`` the shortest-path
  (geodesic) colour distance; background probability ``w_bg = 1 - exp(-BndCon^2 / (2 sigma_bndcon^2))``;
* background-weighted contrast ``wCtr(p) = sum_i d_app(p, p_i) w_spa(p, p_i) w_bg(p_i)``;
* saliency optimisation: minimise ``sum_i w_bg_i s_i^2 + sum_i w_fg_i (s_i - 1)^2 +
  sum_(i,j) w_ij (s_i - s_j)^2`` over adjacent pairs, ``w_ij = exp(-d_app^2 / (2 sigma_clr^2)) + mu``,
  a linear system solved in closed form.

Parameters are the paper's: ``sigma_clr = 10``, ``sigma_bndcon = 1``, ``sigma_spa = 0.25``, ``mu = 0.1``.

Example::

    from saliency.rbd import rbd_saliency
    smap = rbd_saliency(image)   # H x W float32 in [0, 1]
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from saliency.common import (
    SuperpixelGraph,
    build_superpixel_graph,
    normalize_map,
    resize_map,
    to_lab,
    working_image,
)

__all__ = ["rbd_saliency", "rbd_scores", "boundary_connectivity"]


def _pairwise_lab(graph: SuperpixelGraph) -> np.ndarray:
    """``N x N`` Euclidean distances of the superpixels' mean Lab colours."""
    diff = graph.lab[:, None, :] - graph.lab[None, :, :]
    return np.sqrt((diff**2).sum(-1))


def boundary_connectivity(graph: SuperpixelGraph, d_app: np.ndarray, sigma_clr: float = 10.0) -> np.ndarray:
    """``N`` boundary connectivity values (Zhu et al., Eq. 1-4).

    Args:
        graph: the superpixel graph.
        d_app: ``N x N`` Lab distances between superpixels.
        sigma_clr: the colour scale of the soft spanning area.
    """
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    # csgraph drops explicit zeros, so identical neighbours get a tiny positive weight.
    weights = d_app[i, j] + 1e-6
    csr = csr_matrix((weights, (i, j)), shape=(graph.n, graph.n))
    d_geo = shortest_path(csr, method="D", directed=False)
    d_geo[~np.isfinite(d_geo)] = 1e6  # disconnected components (cannot happen with SLIC, kept safe)
    span = np.exp(-(d_geo**2) / (2 * sigma_clr**2))
    area = span.sum(axis=1)
    len_bnd = span[:, graph.boundary].sum(axis=1)
    return len_bnd / np.sqrt(area)


def rbd_scores(
    graph: SuperpixelGraph,
    sigma_clr: float = 10.0,
    sigma_bndcon: float = 1.0,
    sigma_spa: float = 0.25,
    mu: float = 0.1,
) -> np.ndarray:
    """``N`` optimised saliency values in ``[0, 1]`` for the superpixels of ``graph``."""
    d_app = _pairwise_lab(graph)
    bndcon = boundary_connectivity(graph, d_app, sigma_clr)
    w_bg = 1.0 - np.exp(-(bndcon**2) / (2 * sigma_bndcon**2))
    d_spa2 = ((graph.centers[:, None, :] - graph.centers[None, :, :]) ** 2).sum(-1)
    w_spa = np.exp(-d_spa2 / (2 * sigma_spa**2))
    wctr = (d_app * w_spa * w_bg[None, :]).sum(axis=1)
    w_fg = normalize_map(wctr).astype(np.float64)
    # Smoothness on adjacent pairs, as a graph Laplacian.
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    w_ij = np.exp(-(d_app[i, j] ** 2) / (2 * sigma_clr**2)) + mu
    lap = np.zeros((graph.n, graph.n))
    lap[i, j] = -w_ij
    lap[j, i] = -w_ij
    lap[np.diag_indices(graph.n)] = -lap.sum(axis=1)
    system = lap + np.diag(w_bg + w_fg)
    system[np.diag_indices(graph.n)] += 1e-9
    s = np.linalg.solve(system, w_fg)
    return np.clip(s, 0.0, 1.0)


def rbd_saliency(
    image: np.ndarray,
    n_segments: int = 200,
    max_side: int | None = 300,
    compactness: float = 10.0,
    graph: SuperpixelGraph | None = None,
) -> np.ndarray:
    """RBD saliency of an ``H x W x 3`` uint8 RGB image -> ``H x W`` float32 in ``[0, 1]``.

    Args:
        image: the RGB image.
        n_segments: SLIC superpixels (the paper uses about 200).
        max_side: the image is processed with its longer side at most this (None: full size).
        compactness: SLIC compactness.
        graph: a precomputed superpixel graph of the working image (the fusion shares one
            graph between RBD and GMR); ``n_segments`` and ``compactness`` are then unused.
    """
    size = np.asarray(image).shape[:2]
    if graph is None:
        graph = build_superpixel_graph(to_lab(working_image(image, max_side)), n_segments, compactness)
    smap = normalize_map(graph.to_pixels(rbd_scores(graph)))
    return resize_map(smap, size)
