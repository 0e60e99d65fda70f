"""The prototype protocol (the paper's): one prototype per image's object mask, K-means of the
PCA-whitened prototypes, and its confusion without a second look at the pixels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eval.caches import StreamCache
from eval.clustering import assign_clusters, kmeans, pca_whitening
from eval.kmeans.results import ClusterFit, prototype_confusion, summarize_seeds
from eval.saliency_source import SaliencySource
from eval.stream import iter_model_outputs, require_label
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.embeddings import masked_mean_embedding

__all__ = [
    "PrototypeStats",
    "image_histograms",
    "collect_image_prototypes",
    "cluster_prototypes",
    "fit_prototype_clusters",
    "assign_prototypes",
    "run_prototype_protocol",
]

log = logging.getLogger("eval.kmeans")


@dataclass
class PrototypeStats:
    """What the prototype protocol keeps per image (nothing at pixel resolution).

    Attributes:
        ids: image ids. prototypes: ``n x D`` float32 (zeros where ``has_proto`` is False).
        has_proto: ``(n,)`` bool, False for images without a salient pixel.
        fg_hist, bg_hist: ``n x C`` int64 valid ground-truth class counts inside / outside the mask.
    """

    ids: list[str]
    prototypes: np.ndarray
    has_proto: np.ndarray
    fg_hist: np.ndarray
    bg_hist: np.ndarray


def image_histograms(
    label: np.ndarray, fg: np.ndarray, num_classes: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(C,)`` counts of valid ground-truth classes inside and outside the bool mask ``fg``."""
    valid = label != ignore_index
    fg_counts = np.bincount(label[fg & valid].ravel(), minlength=num_classes)[:num_classes]
    bg_counts = np.bincount(label[~fg & valid].ravel(), minlength=num_classes)[:num_classes]
    return fg_counts.astype(np.int64), bg_counts.astype(np.int64)


def collect_image_prototypes(
    model: FeatureModel,
    ds: SegmentationDataset,
    source: SaliencySource,
    *,
    workers: int = 0,
    cache: StreamCache | None = None,
    progress: bool = True,
) -> PrototypeStats:
    """Stream the dataset once: a prototype and two class histograms per image (resumable)."""
    info = ds.info
    c = info.num_classes
    done, state = cache.load() if cache is not None else (0, None)
    protos: list[np.ndarray] = list(state["protos"].numpy()) if state else []
    has: list[bool] = state["has"].tolist() if state else []
    fg_h: list[np.ndarray] = list(state["fg"].numpy()) if state else []
    bg_h: list[np.ndarray] = list(state["bg"].numpy()) if state else []
    dim = model.embed_dim

    def snapshot() -> dict[str, Any]:
        return {
            "protos": torch.from_numpy(np.stack(protos).astype(np.float32)) if protos else torch.zeros(0, dim),
            "has": torch.tensor(has, dtype=torch.bool),
            "fg": torch.from_numpy(np.stack(fg_h)) if fg_h else torch.zeros(0, c, dtype=torch.int64),
            "bg": torch.from_numpy(np.stack(bg_h)) if bg_h else torch.zeros(0, c, dtype=torch.int64),
        }

    for i, sample, out in iter_model_outputs(
        model, ds, workers=workers, start=done, desc="prototypes", progress=progress
    ):
        label = require_label(sample, "the evaluation", ds)
        fg = source.foreground(sample, out, info, ds)
        proto = masked_mean_embedding(out.embedding, fg)
        protos.append(proto.cpu().numpy() if proto is not None else np.zeros(dim, np.float32))
        has.append(proto is not None)
        f, b = image_histograms(label, fg.cpu().numpy(), c, info.ignore_index)
        fg_h.append(f)
        bg_h.append(b)
        if cache is not None and cache.due(i + 1):
            cache.save(i + 1, snapshot())
    if cache is not None:
        cache.save(len(ds), snapshot())
    snap = snapshot()
    return PrototypeStats(
        list(ds.ids), snap["protos"].numpy(), snap["has"].numpy(), snap["fg"].numpy(), snap["bg"].numpy()
    )


def cluster_prototypes(
    stats: PrototypeStats, k: int, seeds: Sequence[int], pca_dim: int, **km: Any
) -> tuple[list[np.ndarray], list[float]]:
    """K-means (``k - 1`` clusters) of the PCA-whitened prototypes, once per seed.

    Returns per seed the ``(n,)`` cluster of every image (0 for images without a prototype, whose
    foreground histogram is empty anyway) and the K-means objective.
    """
    clusters, objectives, _fits = fit_prototype_clusters(stats, k, seeds, pca_dim, **km)
    return clusters, objectives


def fit_prototype_clusters(
    stats: PrototypeStats, k: int, seeds: Sequence[int], pca_dim: int, **km: Any
) -> tuple[list[np.ndarray], list[float], ClusterFit]:
    """:func:`cluster_prototypes`, also returning the fit (:class:`ClusterFit`)."""
    x = stats.prototypes[stats.has_proto]
    if k < 2:
        raise ValueError(f"the prototype protocol needs k >= 2 (k - 1 object clusters + background), got {k}")
    if len(x) < k - 1:
        raise ValueError(
            f"{k - 1} object clusters need at least {k - 1} images with a salient region, got "
            f"{len(x)}; evaluate more images or use a smaller --k"
        )
    proj = pca_whitening(x, pca_dim) if pca_dim > 0 else None
    if proj is not None:
        x = (x - proj[0]) @ proj[1]
    clusters, objectives, cents = [], [], []
    for seed in seeds:
        res = kmeans(x, k - 1, seed=seed, **km)
        full = np.zeros(len(stats.ids), dtype=np.int64)
        full[stats.has_proto] = res.labels
        clusters.append(full)
        objectives.append(res.objective)
        cents.append(res.centroids)
    return clusters, objectives, ClusterFit(cents, proj)


def assign_prototypes(stats: PrototypeStats, fit: ClusterFit) -> list[np.ndarray]:
    """Per seed, the ``(n,)`` nearest fitted cluster of every image's prototype (0 without one)."""
    x = stats.prototypes[stats.has_proto]
    if fit.proj is not None:
        x = (x - fit.proj[0]) @ fit.proj[1]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = []
    for cent in fit.centroids:
        full = np.zeros(len(stats.ids), dtype=np.int64)
        if len(xt):
            full[stats.has_proto] = assign_clusters(xt, torch.from_numpy(cent)).numpy()
        out.append(full)
    return out


def run_prototype_protocol(
    model: FeatureModel,
    ds: SegmentationDataset,
    source: SaliencySource,
    *,
    k: int,
    seeds: Sequence[int],
    pca_dim: int = 32,
    matching: str = "hungarian",
    workers: int = 0,
    cache: StreamCache | None = None,
    progress: bool = True,
    **km: Any,
) -> tuple[dict[str, Any], PrototypeStats, list[np.ndarray]]:
    """The paper's protocol end to end. Returns (result dict, per-image stats, clusters per seed)."""
    stats = collect_image_prototypes(model, ds, source, workers=workers, cache=cache, progress=progress)
    clusters, objectives, fit = fit_prototype_clusters(stats, k, seeds, pca_dim, **km)
    confs = [prototype_confusion(cl, stats.fg_hist, stats.bg_hist, k) for cl in clusters]
    result = summarize_seeds(confs, seeds, ds.info.classes, matching, objectives)
    result.update(n_prototypes=int(stats.has_proto.sum()), n_without_mask=int((~stats.has_proto).sum()))
    result["_fit"] = fit  # taken out by PrototypeProtocol.fit (not JSON)
    return result, stats, clusters
