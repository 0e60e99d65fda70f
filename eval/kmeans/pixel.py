"""The pixel protocol: K-means fitted on a per-image random sample of pixel embeddings, then every
pixel assigned to its nearest cluster in a second pass."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.caches import StreamCache
from eval.clustering import assign_clusters, kmeans, pca_whitening, sample_pixels
from eval.kmeans.results import ClusterFit, array_digest, summarize_seeds
from eval.metrics import confusion_matrix
from eval.stream import iter_model_outputs, require_label
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.embeddings import normalised_pixels

__all__ = ["run_pixel_protocol", "pixel_confusions"]

log = logging.getLogger("eval.kmeans")


def run_pixel_protocol(
    model: FeatureModel,
    ds: SegmentationDataset,
    *,
    k: int,
    seeds: Sequence[int],
    fit_pixels: int = 100_000,
    pca_dim: int = 32,
    matching: str = "auto",
    workers: int = 0,
    cache1: StreamCache | None = None,
    cache2_dir: Path | None = None,
    cache_settings: dict[str, Any] | None = None,
    progress: bool = True,
    **km: Any,
) -> tuple[dict[str, Any], list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Pixel K-means: fit on a per-image random sample, assign every pixel in a second pass.

    Returns (result dict, centroids per seed, PCA ``(mean, W)`` or None).
    """
    info = ds.info
    if fit_pixels < k:
        raise ValueError(f"--fit-pixels ({fit_pixels}) must be at least k ({k})")
    per_image = max(1, math.ceil(fit_pixels / len(ds)))
    # pass 1: the fit sample
    done, state = cache1.load() if cache1 is not None else (0, None)
    chunks: list[np.ndarray] = [state["x"].numpy()] if state else []
    for i, sample, out in iter_model_outputs(
        model, ds, workers=workers, start=done, desc="pixel sample", progress=progress
    ):
        hw = sample.size
        idx = torch.from_numpy(sample_pixels(hw[0] * hw[1], per_image, seeds[0], i)).to(out.embedding.device)
        chunks.append(normalised_pixels(out.embedding, hw, idx).cpu().numpy())
        if cache1 is not None and cache1.due(i + 1):
            cache1.save(i + 1, {"x": torch.from_numpy(np.concatenate(chunks))})
    x = np.concatenate(chunks).astype(np.float32)
    if cache1 is not None:
        cache1.save(len(ds), {"x": torch.from_numpy(x)})
    log.info("pixel protocol: fitting on %d pixels (%d per image) of dimension %d", len(x), per_image, x.shape[1])
    proj = pca_whitening(x, pca_dim) if pca_dim > 0 else None
    xf = (x - proj[0]) @ proj[1] if proj is not None else x
    results = [kmeans(xf, k, seed=s, **km) for s in seeds]
    centroids = [r.centroids for r in results]
    # pass 2: every pixel
    cache2 = None
    if cache2_dir is not None:
        settings = dict(cache_settings or {}, centroids=array_digest(centroids), proj=array_digest(proj or []))
        cache2 = StreamCache(cache2_dir / "pixel_pass2.pt", settings, every=cache1.every if cache1 else 100)
    confs = pixel_confusions(
        model, ds, ClusterFit(centroids, proj), k, workers=workers, cache=cache2, progress=progress
    )
    result = summarize_seeds(confs, seeds, info.classes, matching, [r.objective for r in results])
    result.update(fit_pixels=len(x), fit_pixels_per_image=per_image)
    return result, centroids, proj


def pixel_confusions(
    model: FeatureModel,
    ds: SegmentationDataset,
    fit: ClusterFit,
    k: int,
    *,
    workers: int = 0,
    cache: StreamCache | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Assign every pixel of ``ds`` to the fitted clusters: one ``k x C`` confusion per seed (resumable)."""
    info = ds.info
    c = info.num_classes
    device = model.device
    cents = [torch.from_numpy(cc).to(device) for cc in fit.centroids]
    proj = fit.proj
    proj_t = (torch.from_numpy(proj[0]).to(device), torch.from_numpy(proj[1]).to(device)) if proj is not None else None
    done, state = cache.load() if cache is not None else (0, None)
    confs = [cf.numpy() for cf in state["confs"]] if state else [np.zeros((k, c), np.int64) for _ in cents]
    for i, sample, out in iter_model_outputs(
        model, ds, workers=workers, start=done, desc="pixel assign", progress=progress
    ):
        label = require_label(sample, "the evaluation", ds)
        feats = normalised_pixels(out.embedding, sample.size, proj=proj_t)
        for j, cent in enumerate(cents):
            pred = assign_clusters(feats, cent).cpu().numpy()
            confs[j] += confusion_matrix(pred, label.reshape(-1), k, c, info.ignore_index)
        if cache is not None and cache.due(i + 1):
            cache.save(i + 1, {"confs": [torch.from_numpy(cf) for cf in confs]})
    if cache is not None:
        cache.save(len(ds), {"confs": [torch.from_numpy(cf) for cf in confs]})
    return confs
