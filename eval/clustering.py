"""The clustering maths of the evaluations: PCA whitening, K-means (faiss, torch or scikit-learn) and
nearest-centroid assignment. Cluster-to-class matching lives in :mod:`eval.metrics`.

K-means backends (``backend=``):

* ``faiss``: k-means++ seeding (:func:`kmeans_plus_plus`), then faiss's Lloyd iterations on every
  point; on the GPU when one is visible to faiss. All restarts of all calls in a process share one
  ``faiss.StandardGpuResources`` (:func:`faiss_gpu_resources`): creating it costs hundreds of MB
  of scratch memory and a CUDA stream each time.
* ``torch``: the same seeding, then Lloyd iterations in torch, on CUDA when it is available
  (``device=`` picks). Used when faiss is not installed (``auto``).
* ``sklearn``: ``sklearn.cluster.KMeans``, the reference.
* ``auto`` (the default): ``faiss`` when it imports, else ``torch``.

Example::

    x = np.random.rand(1000, 32).astype("float32")
    mean, w = pca_whitening(x, 16)                 # (32,), 32 x 16
    res = kmeans((x - mean) @ w, 20, seed=1)       # res.centroids: 20 x 16, res.labels: (1000,)
    ids = assign_clusters(torch.from_numpy((x - mean) @ w), torch.from_numpy(res.centroids))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "sample_pixels",
    "KMeansResult",
    "kmeans",
    "kmeans_plus_plus",
    "resolve_backend",
    "faiss_available",
    "faiss_gpu",
    "faiss_gpu_resources",
    "pca_whitening",
    "assign_clusters",
]

log = logging.getLogger("eval.clustering")

#: the values of ``--backend``
BACKENDS = ("auto", "faiss", "torch", "sklearn")

_GPU_RESOURCES: Any = None


@dataclass
class KMeansResult:
    """``centroids``: ``k x d`` float32; ``labels``: ``(n,)`` int64; ``objective``: the sum of
    squared distances of the points to their centroids (scikit-learn's ``inertia_``)."""

    centroids: np.ndarray
    labels: np.ndarray
    objective: float


def faiss_available() -> bool:
    """True when ``import faiss`` works (``sys.modules["faiss"] = None`` makes it fail, as in tests)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu() -> bool:
    """True when faiss imports and sees a GPU."""
    if not faiss_available():
        return False
    import faiss

    return bool(getattr(faiss, "get_num_gpus", lambda: 0)() > 0)


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faiss`` when it imports, else ``torch``; other names are checked and returned.

    Raises:
        ValueError: an unknown backend, or ``faiss`` asked for and not installed (with the fix).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise ValueError(
            "--backend faiss: faiss is not installed (pip install faiss-cpu, or faiss-gpu on CUDA); "
            "use --backend torch or auto"
        )
    return backend


def faiss_gpu_resources() -> Any:
    """The process's one ``faiss.StandardGpuResources``, created on first use and then reused by
    every K-means restart (faiss.Kmeans(gpu=True) would create a new one per call)."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        import faiss

        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 100,
    nredo: int = 10,
    backend: str = "auto",
    gpu: bool | None = None,
    device: str | torch.device | None = None,
) -> KMeansResult:
    """K-means of ``n x d`` points into ``k`` clusters, the best of ``nredo`` restarts.

    Restart ``r`` is seeded with k-means++ from ``np.random.default_rng([seed, r])``, so faiss and
    torch start from the same centroids; their Lloyd iterations then differ only by float
    rounding. faiss uses every point (``max_points_per_centroid = ceil(n / k) + 1``; faiss's
    default of 256 would subsample) and runs on the GPU when ``gpu`` is True or (``gpu=None``)
    when ``faiss.get_num_gpus() > 0``. torch runs on ``device`` (default: CUDA when available).
    ``backend="sklearn"``: ``sklearn.cluster.KMeans(n_init=nredo, max_iter=niter)``.

    Raises:
        ValueError: fewer points than clusters, ``k < 1``, or an unknown / missing backend.

    Example: ``kmeans(np.random.rand(1000, 32).astype("float32"), 20, seed=1).labels.shape == (1000,)``
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"points must be n x d, got shape {x.shape}")
    n, d = x.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"cannot make {k} clusters from {n} points; evaluate more images or use a smaller k")
    backend = resolve_backend(backend)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        skm = KMeans(n_clusters=k, n_init=nredo, max_iter=niter, random_state=seed).fit(x)
        centroids = skm.cluster_centers_.astype(np.float32)
        labels = skm.labels_.astype(np.int64)
    else:
        run = _faiss_restart if backend == "faiss" else _torch_restart
        ctx = _faiss_context(d, gpu) if backend == "faiss" else _torch_device(device)
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for redo in range(max(1, nredo)):
            init = kmeans_plus_plus(x, k, np.random.default_rng([int(seed), redo]))
            cent, lab = run(x, init, niter=niter, seed=int(seed) + redo, ctx=ctx)
            obj = _objective(x, cent, lab)
            if best is None or obj < best[0]:
                best = (obj, cent, lab)
        assert best is not None
        centroids, labels = best[1], best[2]
    return KMeansResult(centroids, labels, _objective(x, centroids, labels))


def _objective(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    diff = x.astype(np.float64) - centroids[labels].astype(np.float64)
    return float(np.einsum("ij,ij->", diff, diff))


def _faiss_context(d: int, gpu: bool | None) -> Any:
    """The flat L2 index that every restart of one :func:`kmeans` call trains with (on the GPU with
    the shared resources)."""
    import faiss

    use_gpu = faiss_gpu() if gpu is None else bool(gpu)
    if use_gpu:
        return faiss.GpuIndexFlatL2(faiss_gpu_resources(), d)
    return faiss.IndexFlatL2(d)


def _faiss_restart(
    x: np.ndarray, init: np.ndarray, *, niter: int, seed: int, ctx: Any
) -> tuple[np.ndarray, np.ndarray]:
    """One faiss Lloyd run from ``init`` (``k x d``); returns ``(centroids, labels)``."""
    import faiss

    n, d = x.shape
    k = init.shape[0]
    cp = faiss.ClusteringParameters()
    cp.niter, cp.nredo, cp.seed, cp.verbose = int(niter), 1, int(seed), False
    cp.max_points_per_centroid, cp.min_points_per_centroid = math.ceil(n / k) + 1, 1
    clus = faiss.Clustering(d, k, cp)
    faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clus.centroids)
    index = ctx
    index.reset()
    clus.train(x, index)
    centroids = faiss.vector_to_array(clus.centroids).astype(np.float32).reshape(k, d)
    index.reset()
    index.add(centroids)
    _, idx = index.search(x, 1)
    return centroids, idx[:, 0].astype(np.int64)


def _torch_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """``n x d`` points, ``k x d`` centroids -> ``(n,)`` nearest ids and their squared distances."""
    c2 = c.square().sum(1)
    ids, dist = [], []
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        d2 = (xs.square().sum(1, keepdim=True) - 2 * xs @ c.T + c2).clamp_min_(0)
        v, i = d2.min(1)
        ids.append(i)
        dist.append(v)
    return torch.cat(ids), torch.cat(dist)


def _torch_restart(
    x: np.ndarray, init: np.ndarray, *, niter: int, seed: int, ctx: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations in torch from ``init`` until the assignment stops changing (at most
    ``niter``). An empty cluster takes the point farthest from its centroid, as faiss splits one."""
    xt = torch.from_numpy(x).to(ctx)
    c = torch.from_numpy(np.ascontiguousarray(init, dtype=np.float32)).to(ctx)
    k, d = c.shape
    prev: torch.Tensor | None = None
    for _ in range(max(1, niter)):
        labels, dist = _nearest(xt, c)
        if prev is not None and torch.equal(labels, prev):
            break
        prev = labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros(k, d, device=ctx, dtype=torch.float64).index_add_(0, labels, xt.double())
        new = (sums / counts.clamp_min(1)[:, None]).float()
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            far = torch.topk(dist, len(empty)).indices
            new[empty] = xt[far]
        c = new
    labels, _ = _nearest(xt, c)
    return c.cpu().numpy(), labels.cpu().numpy().astype(np.int64)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with greedy local trials: each new centre
    is the best of ``2 + ln k`` candidates drawn with probability proportional to the squared
    distance to the nearest chosen centre. ``n x d`` float32 -> ``k x d`` float32."""
    n = x.shape[0]
    x64 = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", x64, x64)
    centers = np.empty((k, x.shape[1]), dtype=np.float64)
    centers[0] = x64[rng.integers(n)]
    closest = np.maximum(sq - 2 * x64 @ centers[0] + centers[0] @ centers[0], 0)
    trials = 2 + int(np.log(k))
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: any point will do
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        d2 = np.maximum(sq[None, :] - 2 * x64[cand] @ x64.T + sq[cand][:, None], 0)
        new_closest = np.minimum(closest[None, :], d2)
        best = int(np.argmin(new_closest.sum(1)))
        centers[c] = x64[cand[best]]
        closest = new_closest[best]
    return centers.astype(np.float32)


def pca_whitening(x: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit PCA whitening (scikit-learn ``PCA(whiten=True, svd_solver="full")``) on ``n x D`` points.

    Returns ``(mean (D,), W (D x d))`` such that ``(x - mean) @ W`` is the whitened ``n x d``
    projection, ``d = min(dim, n, D)``. Directions without variance get weight 0: those whose
    variance is below ``1e-9`` of the largest (float rounding, not data; whitening would blow them
    up to unit variance).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    if dim < 1:
        raise ValueError(f"PCA dimension must be >= 1, got {dim}")
    d = min(dim, x.shape[0], x.shape[1])
    if d < dim:
        log.warning(
            "PCA whitening to %d dimensions instead of %d (only %d points of dimension %d)",
            d,
            dim,
            x.shape[0],
            x.shape[1],
        )
    pca = PCA(n_components=d, whiten=True, svd_solver="full", random_state=seed).fit(x)
    var = pca.explained_variance_
    keep = var > max(1e-24, 1e-9 * float(var.max(initial=0.0)))
    scale = np.sqrt(var)
    w = np.divide(pca.components_.T, scale, out=np.zeros_like(pca.components_.T), where=keep[None, :])
    return pca.mean_.astype(np.float32), w.astype(np.float32)


def assign_clusters(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``N x d`` points, ``k x d`` centroids -> ``(N,)`` int64 nearest-centroid (squared L2) ids."""
    scores = x @ centroids.T - 0.5 * centroids.square().sum(1)
    return scores.argmax(1)


def sample_pixels(n_pixels: int, n_take: int, seed: int, image_index: int) -> np.ndarray:
    """``(min(n_take, n_pixels),)`` sorted flat indices of the pixels an image adds to a fit: all of
    them when ``n_take`` covers the image, else a sample without replacement seeded by
    ``(seed, image_index)`` (the same sample whatever order the images stream in)."""
    if n_take >= n_pixels:
        return np.arange(n_pixels)
    return np.sort(np.random.default_rng([seed, image_index]).choice(n_pixels, size=n_take, replace=False))
