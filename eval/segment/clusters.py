"""The fitted clustering of ``eval.segment`` (what ``clusters.pt`` holds), fitting it on images and
labelling images with it: the Python API (:func:`fit_clusters`, :func:`segment_images`) and the
per-image steps that the command line shares.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.clustering import assign_clusters, kmeans, pca_whitening, resolve_backend, sample_pixels
from maskcontrast.api import FeatureModel, FeatureOutput, upsample_saliency
from maskcontrast.embeddings import masked_mean_embedding, normalised_pixels
from maskcontrast.images import flatten_images
from maskcontrast.utils import atomic_save

__all__ = [
    "CLUSTERS_FORMAT",
    "PROTOCOLS",
    "MAX_K",
    "ClustersError",
    "Clusters",
    "Segment",
    "model_identity",
    "size_key",
    "size_text",
    "check_k",
    "model_foreground",
    "fit_points",
    "fit_from_points",
    "label_prototype",
    "label_pixels",
    "label_output",
    "fit_clusters",
    "segment_images",
]

CLUSTERS_FORMAT = "maskcontrast.clusters/1"
PROTOCOLS = ("prototype", "pixel")
#: the largest K: label PNGs hold one byte per pixel and 0 is the background
MAX_K = 255


class ClustersError(ValueError):
    """A ``clusters.pt`` that cannot be used here (another model, size or protocol, or not a
    clustering at all); the message names the file and what to do."""


# ----------------------------------------------------------------------------------------------
# The fitted clustering
# ----------------------------------------------------------------------------------------------


def size_key(size: Any) -> list[int] | None:
    """A network input size (None, an int shorter side, or ``(H, W)``) as stored: None or a list."""
    if size is None:
        return None
    if isinstance(size, int):
        return [int(size)]
    return [int(s) for s in size]


def model_identity(model: Any) -> str:
    """A digest of the model's weights (the same for a checkpoint and its ONNX / TorchScript export)."""
    digest = getattr(model, "weights_digest", None)
    if isinstance(digest, str) and digest:
        return digest
    cached = getattr(model, "_segment_weights_digest", None)
    if cached:
        return cached
    from maskcontrast.export import weights_digest

    digest = weights_digest(model.net)
    with contextlib.suppress(AttributeError):  # a duck-typed model that takes no attributes
        model._segment_weights_digest = digest
    return digest


@dataclass
class Clusters:
    """A fitted clustering: what ``clusters.pt`` holds.

    Attributes:
        protocol: ``prototype`` or ``pixel``.
        k: object clusters; labels are ``1..k`` (0 = background).
        centroids: ``k x d`` float32 in the whitened space.
        pca_mean, pca_w: ``(D,)`` and ``D x d`` (None without PCA): ``(x - mean) @ W``.
        model_id: :func:`model_identity` of the model it was fitted with.
        size: the network input size (None = native, ``[n]`` = shorter side, ``[H, W]``).
        saliency: the object-mask source of the prototype protocol (``model`` or ``folder``), None
            for ``pixel``; ``threshold``: on the model's saliency.
        embed_dim: ``D``. info: seed, objective, numbers of points and images, the model's file.
    """

    protocol: str
    k: int
    centroids: np.ndarray
    pca_mean: np.ndarray | None
    pca_w: np.ndarray | None
    model_id: str
    size: list[int] | None
    saliency: str | None = "model"
    threshold: float = 0.5
    embed_dim: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """A ``torch.load(..., weights_only=True)``-readable dict."""
        t = torch.from_numpy
        return {
            "format": CLUSTERS_FORMAT,
            "protocol": self.protocol,
            "k": int(self.k),
            "centroids": t(np.ascontiguousarray(self.centroids, dtype=np.float32)),
            "pca_mean": None if self.pca_mean is None else t(np.ascontiguousarray(self.pca_mean, dtype=np.float32)),
            "pca_w": None if self.pca_w is None else t(np.ascontiguousarray(self.pca_w, dtype=np.float32)),
            "model_id": self.model_id,
            "size": self.size,
            "saliency": self.saliency,
            "threshold": float(self.threshold),
            "embed_dim": int(self.embed_dim),
            "info": dict(self.info),
        }

    def save(self, path: str | Path) -> None:
        """Write ``clusters.pt`` atomically."""
        atomic_save(self.state(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Clusters:
        """Read a ``clusters.pt`` (weights-only).

        Raises:
            ClustersError: a missing or unreadable file, or one that is not a clustering.
        """
        path = Path(path)
        if not path.is_file():
            raise ClustersError(f"--clusters {path}: file not found; pass the clusters.pt an eval.segment run wrote")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ClustersError(f"--clusters {path}: unreadable ({type(err).__name__}: {err})") from err
        if not isinstance(state, dict) or state.get("format") != CLUSTERS_FORMAT:
            raise ClustersError(
                f"--clusters {path}: not a clustering written by eval.segment (format "
                f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                f"expected {CLUSTERS_FORMAT})"
            )

        def arr(v: Any) -> np.ndarray | None:
            return None if v is None else v.numpy()

        return cls(
            state["protocol"],
            int(state["k"]),
            state["centroids"].numpy(),
            arr(state["pca_mean"]),
            arr(state["pca_w"]),
            state["model_id"],
            state["size"],
            state["saliency"],
            float(state["threshold"]),
            int(state["embed_dim"]),
            dict(state.get("info") or {}),
        )

    def check(self, model: Any, source: str = "the clustering") -> None:
        """Raise :class:`ClustersError` when this clustering was fitted on another model or input size."""
        mine = model_identity(model)
        if self.model_id != mine:
            fitted = self.info.get("model_file") or "another model"
            raise ClustersError(
                f"{source} was fitted on another checkpoint ({fitted}, weights {self.model_id}); this model's weights "
                f"are {mine}. Fit the clusters with this checkpoint (eval.segment without --clusters)"
            )
        if self.size != size_key(model.size):
            fix = f"--size {' '.join(map(str, self.size))}" if self.size else "--size 0 (native resolution)"
            raise ClustersError(
                f"{source} was fitted at input size {size_text(self.size)}, and the model runs at "
                f"{size_text(size_key(model.size))}; pass {fix} (or leave --size out: it follows the clusters)"
            )
        if self.embed_dim and self.embed_dim != model.embed_dim:
            raise ClustersError(f"{source}: {self.embed_dim}-d embeddings, the model gives {model.embed_dim}-d")

    def apply(self, model: FeatureModel, images: Any, *, masks: Any = None) -> Any:
        """:func:`segment_images` with this clustering (what ``model.segment(images, clusters)`` calls)."""
        return segment_images(model, images, self, masks=masks)

    def projection(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.pca_mean is None or self.pca_w is None:
            return None
        return torch.from_numpy(self.pca_mean).to(device), torch.from_numpy(self.pca_w).to(device)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``N x D`` unit embeddings -> ``N x d`` whitened points."""
        proj = self.projection(x.device)
        return x if proj is None else (x - proj[0]) @ proj[1]

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``N x d`` whitened points -> ``(N,)`` cluster ``0..k-1`` and squared distance to it."""
        cent = torch.from_numpy(self.centroids).to(x.device)
        ids = assign_clusters(x, cent)
        return ids, (x - cent[ids]).square().sum(1)


def size_text(size: list[int] | None) -> str:
    if size is None:
        return "native resolution"
    return f"shorter side {size[0]}" if len(size) == 1 else f"{size[0]} x {size[1]}"


# ----------------------------------------------------------------------------------------------
# Per image: object mask, fit points, labels
# ----------------------------------------------------------------------------------------------


def model_foreground(out: FeatureOutput, hw: tuple[int, int], threshold: float) -> torch.Tensor:
    """``H x W`` bool: the model's saliency probability above ``threshold`` at the image's size."""
    if out.saliency is None:
        raise ValueError("the model has no saliency head; pass --saliency-source folder --masks DIR")
    return upsample_saliency(out.saliency, hw)[0, 0] > threshold


def fit_points(
    protocol: str,
    out: FeatureOutput,
    hw: tuple[int, int],
    fg: torch.Tensor | None,
    *,
    per_image: int,
    seed: int,
    index: int,
) -> np.ndarray:
    """What one image adds to the fit: its prototype (``1 x D``; ``0 x D`` without an object) or
    ``per_image`` sampled unit pixel embeddings (``n x D``), float32."""
    if protocol == "prototype":
        assert fg is not None
        proto = masked_mean_embedding(out.embedding, fg)
        return np.zeros((0, out.embedding.shape[1]), np.float32) if proto is None else proto.cpu().numpy()[None]
    idx = torch.from_numpy(sample_pixels(hw[0] * hw[1], per_image, seed, index)).to(out.embedding.device)
    return normalised_pixels(out.embedding, hw, idx).cpu().numpy().astype(np.float32)


def fit_from_points(
    x: np.ndarray,
    k: int,
    protocol: str,
    *,
    pca_dim: int = 32,
    seed: int = 0,
    nredo: int = 10,
    niter: int = 100,
    backend: str = "auto",
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, float]:
    """PCA whitening and K-means of ``n x D`` fit points. Returns ``(centroids k x d, (mean, W)
    or None, objective)``.

    Raises:
        ValueError: ``k`` outside ``1..255`` or more clusters than points (naming ``--k``).
    """
    check_k(k)
    what = "object prototypes (images with a salient region)" if protocol == "prototype" else "sampled pixels"
    if len(x) < k:
        raise ValueError(f"--k {k} is more than the {len(x)} {what}; use --k {max(1, len(x))} or less, or more images")
    proj = pca_whitening(x, pca_dim, seed) if pca_dim > 0 else None
    xf = (x - proj[0]) @ proj[1] if proj is not None else x
    res = kmeans(np.ascontiguousarray(xf, dtype=np.float32), k, seed=seed, nredo=nredo, niter=niter, backend=backend)
    return res.centroids, proj, res.objective


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"--k must lie in 1..{MAX_K} (object clusters; label 0 is the background), got {k}")


@dataclass
class Segment:
    """One segment of one image: its cluster (``1..k``), squared distance to the centroid, pixels."""

    cluster: int
    distance: float
    pixels: int


def label_prototype(clusters: Clusters, proto: torch.Tensor | None, fg: np.ndarray) -> tuple[np.ndarray, list[Segment]]:
    """Prototype protocol: ``H x W`` uint8 labels (``1 + c`` inside the mask, 0 outside) from the
    image's ``(D,)`` prototype (None: no object) and its ``H x W`` bool mask."""
    labels = np.zeros(fg.shape, np.uint8)
    if proto is None or not fg.any():
        return labels, []
    ids, dist = clusters.nearest(clusters.project(proto.float()[None]))
    c = int(ids[0]) + 1
    labels[fg] = c
    return labels, [Segment(c, float(dist[0]), int(fg.sum()))]


def label_pixels(clusters: Clusters, out: FeatureOutput, hw: tuple[int, int]) -> tuple[np.ndarray, list[Segment]]:
    """Pixel protocol: every pixel's nearest centroid (``1 + c``) as ``H x W`` uint8; a segment per
    cluster present, its distance that of the mean of its whitened pixels."""
    feats = normalised_pixels(out.embedding, hw, proj=clusters.projection(out.embedding.device))
    ids, _ = clusters.nearest(feats)
    k = clusters.k
    counts = torch.bincount(ids, minlength=k)
    sums = torch.zeros(k, feats.shape[1], device=feats.device).index_add_(0, ids, feats)
    means = sums / counts.clamp_min(1)[:, None]
    dist = (means - torch.from_numpy(clusters.centroids).to(feats.device)).square().sum(1)
    segs = [Segment(c + 1, float(dist[c]), int(counts[c])) for c in torch.nonzero(counts).flatten().tolist()]
    return (ids + 1).to(torch.uint8).cpu().numpy().reshape(hw), segs


def label_output(
    clusters: Clusters, out: FeatureOutput, hw: tuple[int, int], fg: torch.Tensor | None
) -> tuple[np.ndarray, list[Segment]]:
    """Labels and segments of one image from its network output (and object mask for ``prototype``)."""
    if clusters.protocol == "pixel":
        return label_pixels(clusters, out, hw)
    assert fg is not None
    return label_prototype(clusters, masked_mean_embedding(out.embedding, fg), fg.cpu().numpy())


# ----------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------


def _api_masks(masks: Any, n: int) -> list[Any] | None:
    if masks is None:
        return None
    items = list(masks) if isinstance(masks, (list, tuple)) or getattr(masks, "ndim", 2) == 3 else [masks]
    if len(items) != n:
        raise ValueError(f"{n} images but {len(items)} masks; give one object mask per image")
    return items


def _api_foreground(
    masks: list[Any] | None, i: int, out: FeatureOutput, hw: tuple[int, int], threshold: float, device: torch.device
) -> torch.Tensor:
    if masks is None:
        return model_foreground(out, hw, threshold)
    m = torch.as_tensor(np.asarray(masks[i])).to(device)
    if tuple(m.shape) != tuple(hw):
        raise ValueError(f"mask {i} is {tuple(m.shape)}, its image {hw}; give masks at the images' size (H x W)")
    return m > 0


def fit_clusters(
    model: FeatureModel,
    images: Any,
    k: int,
    protocol: str = "prototype",
    *,
    masks: Any = None,
    threshold: float = 0.5,
    pca_dim: int = 32,
    seed: int = 0,
    nredo: int = 10,
    niter: int = 100,
    backend: str = "auto",
    fit_pixels: int = 100_000,
) -> Clusters:
    """Fit ``k`` clusters on images, as ``python -m eval.segment`` does (same numbers, same defaults).

    Args:
        model: a :class:`~maskcontrast.FeatureModel` (its ``size`` is the input size; the CLI's
            default is ``size=512``). images: anything :meth:`FeatureModel.embed` accepts.
        k: object clusters (labels ``1..k``; 0 = background). protocol: ``prototype`` or ``pixel``.
        masks: object masks (``H x W`` per image, nonzero = object) instead of the model's saliency
            (the CLI's ``--saliency-source folder``); ``threshold``: on the model's saliency.
        pca_dim, seed, nredo, niter, backend, fit_pixels: as the CLI's flags.

    Returns:
        :class:`Clusters`, e.g. ``clusters.centroids.shape == (k, min(pca_dim, D))``.

    Example::

        model = maskcontrast.load_model("last.pt", size=512)
        clusters = fit_clusters(model, ["a.jpg", "b.jpg", "c.jpg"], k=2)
        labels = model.segment(["d.jpg"], clusters)          # 1 x H x W int64, 0 = background
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be prototype or pixel, got {protocol!r}")
    check_k(k)
    items = flatten_images(images)
    mask_list = _api_masks(masks, len(items))
    per_image = max(1, math.ceil(fit_pixels / len(items)))
    chunks = []
    for i, out, hw in model.run(items):
        fg = (
            _api_foreground(mask_list, i, out, hw, threshold, out.embedding.device) if protocol == "prototype" else None
        )
        chunks.append(fit_points(protocol, out, hw, fg, per_image=per_image, seed=seed, index=i))
    x = np.concatenate(chunks).astype(np.float32)
    centroids, proj, objective = fit_from_points(
        x, k, protocol, pca_dim=pca_dim, seed=seed, nredo=nredo, niter=niter, backend=backend
    )
    return Clusters(
        protocol,
        k,
        centroids,
        proj[0] if proj else None,
        proj[1] if proj else None,
        model_identity(model),
        size_key(model.size),
        ("model" if mask_list is None else "folder") if protocol == "prototype" else None,
        threshold,
        int(model.embed_dim),
        {
            "seed": seed,
            "objective": objective,
            "n_points": len(x),
            "n_images": len(items),
            "model_file": getattr(model, "source", ""),
            "backend": resolve_backend(backend),
        },
    )


def segment_images(model: FeatureModel, images: Any, clusters: Clusters, *, masks: Any = None) -> Any:
    """Label every pixel of every image with a fitted clustering (``model.segment(images, clusters)``).

    Args:
        model: the model the clusters were fitted with (same weights and input size).
        images: anything :meth:`FeatureModel.embed` accepts. clusters: :class:`Clusters`
            (:func:`fit_clusters`, or ``Clusters.load("clusters.pt")`` from the CLI).
        masks: object masks (``H x W`` per image) for clusters fitted with a masks folder.

    Returns:
        ``B x H x W`` int64 labels at the images' size, 0 = background and ``1..k`` the clusters
        (a list of ``H_i x W_i`` tensors when the sizes differ): what the CLI's label PNGs hold.

    Raises:
        ClustersError: clusters fitted on another model or input size.

    Example::

        clusters = Clusters.load("seg/clusters.pt")
        labels = model.segment([img_a, img_b], clusters)   # 2 x H x W when both are H x W
    """
    clusters.check(model)
    items = flatten_images(images)
    mask_list = _api_masks(masks, len(items))
    if clusters.protocol == "prototype" and clusters.saliency == "folder" and mask_list is None:
        raise ValueError("these clusters were fitted with object masks from a folder; pass masks=[...] as well")
    results = []
    for i, out, hw in model.run(items):
        fg = None
        if clusters.protocol == "prototype":
            fg = _api_foreground(mask_list, i, out, hw, clusters.threshold, out.embedding.device)
        labels, _ = label_output(clusters, out, hw, fg)
        results.append(torch.from_numpy(labels.astype(np.int64)))
    if all(r.shape == results[0].shape for r in results):
        return torch.stack(results)
    return results
