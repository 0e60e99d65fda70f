"""K-means evaluation of pixel embeddings: ``python -m eval.kmeans``.

Two protocols (see docs/EVAL.md for the exact definitions):

* ``prototype`` (the paper's): one prototype per image, the mean of the unit embeddings inside
  its object mask (the predicted saliency > 0.5, the ground-truth foreground, or masks from a
  folder), re-normalised. Prototypes are PCA-whitened (scikit-learn ``PCA(whiten=True)``) to
  ``--pca-dim`` dimensions and clustered into ``k - 1`` clusters; the non-salient pixels of every
  image form one more cluster ("background", id 0). All ``k`` clusters are matched to the classes
  with the Hungarian algorithm on the IoU of the confusion over all valid pixels. Mean and std
  over ``--seeds`` K-means seeds.
* ``pixel``: K-means over pixel embeddings, fitted on ``--fit-pixels`` randomly sampled pixels
  (the same number from every image) and applied to every pixel at label resolution; Hungarian
  matching when ``k`` equals the number of classes, majority vote when ``k`` is larger.

K-means (eval/clustering.py) is faiss (GPU index when ``faiss.get_num_gpus() > 0``) with
``max_points_per_centroid`` set so that every point is used and ``nredo`` restarts, or the same
algorithm in torch (``--backend torch``, on CUDA when present; the default ``auto`` takes it when
faiss is not installed); ``--backend sklearn`` is the reference.

Memory grows with the number of prototypes (or sampled pixels), never with the full-resolution
pixels of all images: each image's confusion is accumulated as it streams past.

Example::

    python -m eval.kmeans --checkpoint run/checkpoint.pt --dataset voc --root VOCdevkit --split val --json km.json
    python -m eval.kmeans --checkpoint moco_v2.pth.tar --dataset voc --root VOCdevkit --saliency-source gt
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.arguments import (
    add_dataset_arguments,
    add_model_arguments,
    add_saliency_arguments,
    dataset_from_args,
    model_from_args,
)
from eval.caches import StreamCache, checkpoint_fingerprint
from eval.clustering import (
    BACKENDS,
    KMeansResult,
    assign_clusters,
    faiss_gpu,
    kmeans,
    kmeans_plus_plus,
    pca_whitening,
    resolve_backend,
)
from eval.metrics import apply_mapping, confusion_matrix, map_confusion, match_clusters, segmentation_scores
from eval.outputs import (
    add_output_arguments,
    ensure_new_file,
    quiet_faiss,
    safe_name,
    save_panel,
    vis_folder,
    write_json,
)
from eval.saliency_source import SaliencySource
from eval.stream import iter_model_outputs
from maskcontrast.api import FeatureModel
from maskcontrast.cli import run_main
from maskcontrast.data import DataError, SegmentationDataset
from maskcontrast.data.base import read_id_list
from maskcontrast.embeddings import masked_mean_embedding, normalised_pixels
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.runs import identity_digest
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = [
    "KMeansResult",
    "kmeans",
    "kmeans_plus_plus",
    "pca_whitening",
    "assign_clusters",
    "prototype_confusion",
    "summarize_seeds",
    "PrototypeStats",
    "prototype_pass",
    "run_prototype_protocol",
    "run_pixel_protocol",
    "PrototypeProtocol",
    "PixelProtocol",
    "PROTOCOLS",
    "main",
]

log = logging.getLogger("eval.kmeans")


# ----------------------------------------------------------------------------------------------
# Confusions and seeds (the clustering maths itself is in eval/clustering.py)
# ----------------------------------------------------------------------------------------------


def prototype_confusion(clusters: np.ndarray, fg_hist: np.ndarray, bg_hist: np.ndarray, k: int) -> np.ndarray:
    """``k x C`` confusion of the prototype protocol from per-image class histograms.

    Args:
        clusters: ``(n,)`` foreground cluster of each image in ``0..k-2`` (ignored where the
            image has no salient pixel, its ``fg_hist`` is zero then).
        fg_hist, bg_hist: ``n x C`` counts of valid ground-truth classes inside / outside the
            object mask.
        k: clusters in all; row 0 is the background cluster, row ``1 + c`` foreground cluster ``c``.

    Equals accumulating ``confusion_matrix(where(mask, 1 + cluster, 0), gt)`` over the images,
    without touching a pixel again.
    """
    fg_hist = np.asarray(fg_hist, dtype=np.int64)
    conf = np.zeros((k, fg_hist.shape[1]), dtype=np.int64)
    conf[0] = np.asarray(bg_hist, dtype=np.int64).sum(0)
    np.add.at(conf, 1 + np.asarray(clusters, dtype=np.int64), fg_hist)
    return conf


def summarize_seeds(
    confs: Sequence[np.ndarray],
    seeds: Sequence[int],
    class_names: Sequence[str],
    matching: str,
    objectives: Sequence[float] | None = None,
    mappings: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Match every seed's ``k x C`` confusion, score it, and average over seeds.

    ``mappings``: one cluster -> class mapping per seed fitted elsewhere (``--fit-split``: on
    the fit split); None matches each confusion itself.

    Returns ``{"miou_mean", "miou_std" (sample std, 0 for one seed), "per_class" (mean IoU per
    class over seeds), "pixel_acc" (mean), "pixel_acc_std", "seeds": [{"seed", "miou",
    "pixel_acc", "objective", "mapping"}]}``; IoUs and accuracies are fractions in ``[0, 1]``.
    """
    per_seed, ious = [], []
    for i, (seed, conf) in enumerate(zip(seeds, confs)):
        mapping = match_clusters(conf, matching) if mappings is None else np.asarray(mappings[i], dtype=np.int64)
        scores = segmentation_scores(map_confusion(conf, mapping))
        ious.append(scores.per_class_iou)
        per_seed.append(
            {
                "seed": int(seed),
                "miou": scores.miou,
                "pixel_acc": scores.pixel_acc,
                "objective": None if objectives is None else float(objectives[i]),
                "mapping": mapping.tolist(),
            }
        )
    mious = np.array([s["miou"] for s in per_seed], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent in every seed stays NaN
        per_class = np.nanmean(np.stack(ious), axis=0)
    return {
        "miou_mean": float(mious.mean()),
        "miou_std": float(mious.std(ddof=1)) if len(mious) > 1 else 0.0,
        "per_class": {name: float(v) for name, v in zip(class_names, per_class)},
        "pixel_acc": float(np.mean([s["pixel_acc"] for s in per_seed])),
        "pixel_acc_std": float(np.std([s["pixel_acc"] for s in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0,
        "seeds": per_seed,
    }


# ----------------------------------------------------------------------------------------------
# Prototype protocol
# ----------------------------------------------------------------------------------------------


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


def _label_of(sample: Any, ds: SegmentationDataset) -> np.ndarray:
    if sample.label is None:
        raise DataError(
            f"{ds.files(sample.id).label or sample.id}: no ground-truth label; the evaluation needs labelled images",
            sample_id=sample.id,
        )
    return sample.label


def image_histograms(
    label: np.ndarray, fg: np.ndarray, num_classes: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(C,)`` counts of valid ground-truth classes inside and outside the bool mask ``fg``."""
    valid = label != ignore_index
    fg_counts = np.bincount(label[fg & valid].ravel(), minlength=num_classes)[:num_classes]
    bg_counts = np.bincount(label[~fg & valid].ravel(), minlength=num_classes)[:num_classes]
    return fg_counts.astype(np.int64), bg_counts.astype(np.int64)


def prototype_pass(
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
        label = _label_of(sample, ds)
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


@dataclass
class ClusterFit:
    """What applies a fitted clustering to other images: ``centroids`` per seed (``k x d``) and
    the PCA whitening ``proj = (mean (D,), W (D x d))`` (None without)."""

    centroids: list[np.ndarray]
    proj: tuple[np.ndarray, np.ndarray] | None


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
    stats = prototype_pass(model, ds, source, workers=workers, cache=cache, progress=progress)
    clusters, objectives, fit = fit_prototype_clusters(stats, k, seeds, pca_dim, **km)
    confs = [prototype_confusion(cl, stats.fg_hist, stats.bg_hist, k) for cl in clusters]
    result = summarize_seeds(confs, seeds, ds.info.classes, matching, objectives)
    result.update(n_prototypes=int(stats.has_proto.sum()), n_without_mask=int((~stats.has_proto).sum()))
    result["_fit"] = fit  # taken out by PrototypeProtocol.fit (not JSON)
    return result, stats, clusters


# ----------------------------------------------------------------------------------------------
# Pixel protocol
# ----------------------------------------------------------------------------------------------


def _pixel_sample_index(n_pixels: int, n_take: int, seed: int, image_index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, image_index])
    if n_take >= n_pixels:
        return np.arange(n_pixels)
    return np.sort(rng.choice(n_pixels, size=n_take, replace=False))


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
        idx = torch.from_numpy(_pixel_sample_index(hw[0] * hw[1], per_image, seeds[0], i)).to(out.embedding.device)
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
        settings = dict(cache_settings or {}, centroids=_array_digest(centroids), proj=_array_digest(proj or []))
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
        label = _label_of(sample, ds)
        feats = normalised_pixels(out.embedding, sample.size, proj=proj_t)
        for j, cent in enumerate(cents):
            pred = assign_clusters(feats, cent).cpu().numpy()
            confs[j] += confusion_matrix(pred, label.reshape(-1), k, c, info.ignore_index)
        if cache is not None and cache.due(i + 1):
            cache.save(i + 1, {"confs": [torch.from_numpy(cf) for cf in confs]})
    if cache is not None:
        cache.save(len(ds), {"confs": [torch.from_numpy(cf) for cf in confs]})
    return confs


def _array_digest(arrays: Any) -> str:
    import hashlib

    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


class _Protocol:
    """What both K-means protocols share: the same methods (``check``, ``fit``, ``predict``,
    ``pictures``) and the pictures made from ``predict``."""

    name = ""
    default_matching = "auto"

    def __init__(
        self,
        *,
        k: int,
        seeds: Sequence[int],
        pca_dim: int = 32,
        matching: str | None = None,
        km: dict[str, Any] | None = None,
    ) -> None:
        self.k, self.seeds, self.pca_dim = int(k), list(seeds), int(pca_dim)
        self.matching = matching or self.default_matching
        self.km = dict(km or {})

    def check(self, model: FeatureModel, info: Any) -> None:
        """Raise ``ValueError`` with a fix when the protocol cannot run on this model/dataset."""

    def describe(self) -> dict[str, Any]:
        """What the result JSON records about the protocol."""
        return {"protocol": self.name, "matching": self.matching}

    def fit(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Run the protocol over ``ds`` (resumable with ``cache_dir``); returns the result dict and
        keeps what :meth:`predict` needs (first seed)."""
        raise NotImplementedError

    def predict(self, index: int, sample: Any, out: Any, ds: SegmentationDataset) -> np.ndarray:
        """The ``H x W`` cluster of every pixel of image ``index`` (first seed)."""
        raise NotImplementedError

    def confusions(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> list[np.ndarray]:
        """Apply the clustering fitted by :meth:`fit` to other images (``--fit-split``): one ``k x C``
        confusion per seed; :meth:`predict` then refers to ``ds``."""
        raise NotImplementedError

    def pictures(
        self,
        vis_dir: Path,
        n: int,
        model: FeatureModel,
        ds: SegmentationDataset,
        mapping: np.ndarray,
        vis_ids: Sequence[str] | None = None,
    ) -> int:
        """PNG panels (image | ground truth | prediction) for the first ``n`` images (or the first
        ``n`` of ``vis_ids``), first seed, clusters mapped to classes by ``mapping``."""
        from torch.utils.data import Subset

        vis_dir.mkdir(parents=True, exist_ok=True)
        if vis_ids is not None:
            index = {sample_id: i for i, sample_id in enumerate(ds.ids)}
            missing = [v for v in vis_ids if v not in index]
            if missing:
                raise ValueError(f"--vis-ids: {len(missing)} ids are not in the evaluated images, e.g. {missing[:3]}")
            chosen = [index[v] for v in vis_ids[:n]]
        else:
            chosen = list(range(min(n, len(ds))))
        count = 0
        for j, sample, out in iter_model_outputs(model, Subset(ds, chosen), desc="pictures", progress=False):  # type: ignore[arg-type]
            i = chosen[j]
            pred = apply_mapping(self.predict(i, sample, out, ds), mapping, unmatched=ds.info.ignore_index)
            save_panel(vis_dir / f"{i:04d}_{safe_name(sample.id)}.png", sample.image, sample.label, pred, ds.info)
            count += 1
        return count


class PrototypeProtocol(_Protocol):
    """The paper's protocol: one prototype per image's salient mask, K-means (``k - 1`` clusters) of
    the prototypes; a pixel is its image's cluster inside the mask and background outside."""

    name = "prototype"
    default_matching = "hungarian"

    def __init__(self, source: SaliencySource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.clusters: np.ndarray | None = None

    def check(self, model: FeatureModel, info: Any) -> None:
        self.source.check(model, info)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "saliency_source": self.source.kind}

    def fit(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        cache = StreamCache(cache_dir / "prototypes.pt", dict(settings or {}), save_every) if cache_dir else None
        result, _stats, clusters = run_prototype_protocol(
            model,
            ds,
            self.source,
            k=self.k,
            seeds=self.seeds,
            pca_dim=self.pca_dim,
            matching=self.matching,
            workers=workers,
            cache=cache,
            progress=progress,
            **self.km,
        )
        self.clusters = clusters[0]
        self.fitted = result.pop("_fit")
        return result

    def confusions(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> list[np.ndarray]:
        cache = StreamCache(cache_dir / "prototypes.pt", dict(settings or {}), save_every) if cache_dir else None
        stats = prototype_pass(model, ds, self.source, workers=workers, cache=cache, progress=progress)
        clusters = assign_prototypes(stats, self.fitted)
        self.clusters = clusters[0]
        return [prototype_confusion(cl, stats.fg_hist, stats.bg_hist, self.k) for cl in clusters]

    def predict(self, index: int, sample: Any, out: Any, ds: SegmentationDataset) -> np.ndarray:
        if self.clusters is None:
            raise RuntimeError("fit the protocol first")
        fg = self.source.foreground(sample, out, ds.info, ds).cpu().numpy()
        return np.where(fg, 1 + self.clusters[index], 0)


class PixelProtocol(_Protocol):
    """Pixel K-means: fit on a per-image random sample of pixels, assign every pixel."""

    name = "pixel"

    def __init__(self, *, fit_pixels: int = 100_000, first_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fit_pixels, self.first_seed = int(fit_pixels), int(first_seed)
        self.centroids: np.ndarray | None = None
        self.proj: tuple[np.ndarray, np.ndarray] | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "saliency_source": None}

    def fit(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        cache1 = None
        settings = dict(settings or {})
        if cache_dir:
            settings.update(fit_pixels=self.fit_pixels, first_seed=self.first_seed)
            cache1 = StreamCache(cache_dir / "pixel_pass1.pt", settings, save_every)
        result, cents, proj = run_pixel_protocol(
            model,
            ds,
            k=self.k,
            seeds=self.seeds,
            fit_pixels=self.fit_pixels,
            pca_dim=self.pca_dim,
            matching=self.matching,
            workers=workers,
            cache1=cache1,
            cache2_dir=cache_dir,
            cache_settings=settings,
            progress=progress,
            **self.km,
        )
        self.centroids, self.proj = cents[0], proj
        self.fitted = ClusterFit(cents, proj)
        return result

    def confusions(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> list[np.ndarray]:
        cache = StreamCache(cache_dir / "pixel_pass2.pt", dict(settings or {}), save_every) if cache_dir else None
        return pixel_confusions(model, ds, self.fitted, self.k, workers=workers, cache=cache, progress=progress)

    def predict(self, index: int, sample: Any, out: Any, ds: SegmentationDataset) -> np.ndarray:
        if self.centroids is None:
            raise RuntimeError("fit the protocol first")
        device = out.embedding.device
        h, w = sample.size
        proj_t = (
            (torch.from_numpy(self.proj[0]).to(device), torch.from_numpy(self.proj[1]).to(device))
            if self.proj
            else None
        )
        feats = normalised_pixels(out.embedding, (h, w), proj=proj_t)
        return assign_clusters(feats, torch.from_numpy(self.centroids).to(device)).cpu().numpy().reshape(h, w)


#: the protocols by their ``--protocol`` name
PROTOCOLS: dict[str, type[_Protocol]] = {"prototype": PrototypeProtocol, "pixel": PixelProtocol}


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.kmeans",
        description="K-means + Hungarian evaluation of a checkpoint's pixel embeddings (docs/EVAL.md).",
    )
    add_model_arguments(p)
    add_dataset_arguments(p)
    add_saliency_arguments(p)
    g = p.add_argument_group("clustering")
    g.add_argument(
        "--protocol",
        default="prototype",
        choices=("prototype", "pixel"),
        help="prototype: the paper's (one prototype per image, k-1 clusters + background); "
        "pixel: K-means over pixel embeddings (default: prototype)",
    )
    g.add_argument(
        "--k",
        type=int,
        default=None,
        help="number of clusters, background included for the prototype "
        "protocol (default: the number of classes, e.g. 21 on VOC)",
    )
    g.add_argument("--seeds", type=int, default=5, help="K-means runs with seeds first-seed.. (default 5)")
    g.add_argument("--first-seed", type=int, default=0, help="seed of the first K-means run (default 0)")
    g.add_argument(
        "--pca-dim", type=int, default=32, help="PCA-whitening dimension before K-means; 0 = off (default 32)"
    )
    g.add_argument("--niter", type=int, default=100, help="K-means iterations per restart (default 100)")
    g.add_argument("--nredo", type=int, default=10, help="K-means restarts, the best objective is kept (default 10)")
    g.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="K-means implementation: auto = faiss when installed, else torch (on CUDA when present); "
        "sklearn = the reference (default auto)",
    )
    g.add_argument(
        "--fit-pixels",
        type=int,
        default=100_000,
        help="pixel protocol: pixels sampled (evenly over images) to fit K-means (default 100000)",
    )
    g.add_argument(
        "--fit-split",
        default=None,
        help="fit the clustering and the cluster -> class matching on this split and score --split "
        "with them (e.g. --fit-split train --split val). Default: fit and score on the same "
        "images, the paper's protocol (docs/EVAL.md)",
    )
    g.add_argument(
        "--matching",
        default=None,
        choices=("auto", "hungarian", "majority"),
        help="cluster -> class mapping (default: hungarian for prototype; auto for pixel = hungarian "
        "when k <= classes, majority vote when k > classes)",
    )
    o = add_output_arguments(p, vis="write N pictures (image | ground truth | prediction)")
    o.add_argument(
        "--vis-ids",
        default=None,
        help="text file of image ids: picture the first --vis of these (default: the first --vis images)",
    )
    o.add_argument(
        "--cache", default=None, help="folder for resumable per-image results (re-runs with other k/seeds reuse them)"
    )
    o.add_argument("--save-every", type=int, default=100, help="cache every N images (default 100)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    quiet_faiss()
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.k is not None and args.k < 2:  # checked before any model is loaded or image is run
        raise ValueError(f"--k must be >= 2 (clusters, background included for the prototype protocol), got {args.k}")
    ensure_new_file(args.json, args.overwrite)
    vis_dir = vis_folder(args)
    masks = args.saliency_dir if args.saliency_source == "folder" else None
    if args.saliency_source == "folder" and not masks:
        raise ValueError("--saliency-source folder needs --saliency-dir DIR")
    model = model_from_args(args)
    ds = dataset_from_args(args, masks=masks)
    ds_fit = dataset_from_args(args, split=args.fit_split, masks=masks) if args.fit_split else None
    if ds_fit is not None and ds_fit.split == ds.split and ds_fit.ids == ds.ids:
        raise ValueError(
            f"--fit-split {args.fit_split} is the scored split itself; leave --fit-split out for the "
            "paper's protocol, or pass another split"
        )
    info = ds.info
    if info.num_classes == 0:
        raise ValueError(f"dataset '{args.dataset}' has no labels; K-means evaluation needs ground truth")
    k = args.k if args.k is not None else info.num_classes
    fit_ds = ds_fit if ds_fit is not None else ds
    if args.protocol == "prototype" and k - 1 > len(fit_ds):
        raise ValueError(
            f"--k {k} needs at least {k - 1} images (one prototype per image), and {args.dataset} "
            f"has {len(fit_ds)} here; use a smaller --k or more images"
        )
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    km = {"niter": args.niter, "nredo": args.nredo, "backend": resolve_backend(args.backend)}
    settings = {
        "checkpoint": checkpoint_fingerprint(args.checkpoint, getattr(args, "init_key", "teacher")),
        "output_stride": args.output_stride,
        "size": args.size,
        "dataset": args.dataset,
        "root": str(ds.root),
        "split": ds.split,
        "dataset_args": parse_key_values(args.dataset_arg),
        "ids": ds.ids,
        "protocol": args.protocol,
    }
    cache_dir = Path(args.cache) if args.cache else None
    progress = not args.no_progress
    log.info("K-means backend: %s", km["backend"])
    log.info(
        "evaluating %s on %s/%s (%d images, %d classes), %s protocol, k=%d",
        args.checkpoint,
        args.dataset,
        ds.split,
        len(ds),
        info.num_classes,
        args.protocol,
        k,
    )
    common = {"k": k, "seeds": seeds, "pca_dim": args.pca_dim, "matching": args.matching, "km": km}
    protocol: _Protocol
    if args.protocol == "prototype":
        protocol = PrototypeProtocol(SaliencySource(args.saliency_source, args.saliency_threshold), **common)
        settings.update(saliency=[args.saliency_source, args.saliency_dir, args.saliency_threshold])
    else:
        protocol = PixelProtocol(fit_pixels=args.fit_pixels, first_seed=args.first_seed, **common)
    protocol.check(model, info)
    if ds_fit is None:
        result = protocol.fit(
            model,
            ds,
            workers=args.workers,
            cache_dir=cache_dir,
            settings=settings,
            save_every=args.save_every,
            progress=progress,
        )
    else:
        result = fit_on_other_split(
            protocol,
            model,
            ds_fit,
            ds,
            workers=args.workers,
            cache_dir=cache_dir,
            settings=settings,
            save_every=args.save_every,
            progress=progress,
        )
    result = {
        **result,
        "protocol": args.protocol,
        "k": k,
        "n_images": len(ds),
        "dataset": args.dataset,
        "split": ds.split,
        "fit_split": ds_fit.split if ds_fit is not None else ds.split,
        "fitted_on": "the scored images (the paper's protocol)"
        if ds_fit is None
        else f"split {ds_fit.split} ({len(ds_fit)} images): clustering and matching, scored on {ds.split}",
        "checkpoint": str(args.checkpoint),
        "layout": model.layout,
        "saliency_source": protocol.describe()["saliency_source"],
        "matching": protocol.matching,
        "pca_dim": args.pca_dim,
        "kmeans": {**km, "gpu": _kmeans_on_gpu(km["backend"])},
        "size": args.size,
        "units": "fractions in [0, 1]",
        "peak_rss_mib": peak_rss_mib(),
    }
    log.info(
        "%s protocol, k=%d, %d images: mIoU %.2f +- %.2f %% over %d seeds, pixel accuracy %.2f %%",
        args.protocol,
        k,
        len(ds),
        100 * result["miou_mean"],
        100 * result["miou_std"],
        len(seeds),
        100 * result["pixel_acc"],
    )
    if args.json:
        write_json(args.json, result)
        print(f"wrote results to {args.json}")
    if vis_dir is not None:
        mapping = np.asarray(result["seeds"][0]["mapping"])
        n = protocol.pictures(
            vis_dir, args.vis, model, ds, mapping, vis_ids=read_id_list(Path(args.vis_ids)) if args.vis_ids else None
        )
        print(f"wrote {n} pictures to {vis_dir}")
    if not args.json:
        print(f"mIoU {100 * result['miou_mean']:.2f} +- {100 * result['miou_std']:.2f} (no --json: nothing written)")
    return result


def fit_on_other_split(
    protocol: _Protocol,
    model: FeatureModel,
    ds_fit: SegmentationDataset,
    ds: SegmentationDataset,
    *,
    workers: int = 0,
    cache_dir: Path | None = None,
    settings: dict[str, Any] | None = None,
    save_every: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """``--fit-split``: fit the clustering (PCA, K-means per seed) and each seed's cluster -> class
    matching on ``ds_fit``, then score ``ds`` with both, unchanged. Nothing of ``ds`` is seen
    before it is scored. The result has the scores of ``ds`` and, under ``"fit"``, those of the
    fit split (matched on itself, as the paper's protocol would score it)."""
    settings = dict(settings or {})
    fit_settings = {**settings, "split": ds_fit.split, "ids": ds_fit.ids}
    fit_result = protocol.fit(
        model,
        ds_fit,
        workers=workers,
        cache_dir=cache_dir / "fit" if cache_dir else None,
        settings=fit_settings,
        save_every=save_every,
        progress=progress,
    )
    fitted = getattr(protocol, "fitted", None)
    eval_settings = {
        **settings,
        "fit_split": ds_fit.split,
        "fit_ids": identity_digest(ds_fit.ids),
        "fit": _array_digest(fitted.centroids) if fitted is not None else None,
    }
    confs = protocol.confusions(
        model,
        ds,
        workers=workers,
        cache_dir=cache_dir / "scored" if cache_dir else None,
        settings=eval_settings,
        save_every=save_every,
        progress=progress,
    )
    mappings = [np.asarray(s["mapping"]) for s in fit_result["seeds"]]
    result = summarize_seeds(
        confs,
        protocol.seeds,
        ds.info.classes,
        protocol.matching,
        [s["objective"] for s in fit_result["seeds"]],
        mappings=mappings,
    )
    result["fit"] = {
        "split": ds_fit.split,
        "n_images": len(ds_fit),
        "miou_mean": fit_result["miou_mean"],
        "miou_std": fit_result["miou_std"],
        "pixel_acc": fit_result["pixel_acc"],
        **{k: v for k, v in fit_result.items() if k in ("n_prototypes", "n_without_mask", "fit_pixels")},
    }
    return result


def _kmeans_on_gpu(backend: str) -> bool:
    if backend == "faiss":
        return faiss_gpu()
    return backend == "torch" and torch.cuda.is_available()


if __name__ == "__main__":
    run_main(main, "eval.kmeans")
