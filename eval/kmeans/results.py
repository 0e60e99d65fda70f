"""Scoring K-means clusterings: the confusion of the prototype protocol and the per-seed matching and
scores, and what a fitted clustering keeps (:class:`ClusterFit`)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.metrics import map_confusion, match_clusters, segmentation_scores

__all__ = ["prototype_confusion", "summarize_seeds", "ClusterFit", "array_digest"]


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


@dataclass
class ClusterFit:
    """What applies a fitted clustering to other images: ``centroids`` per seed (``k x d``) and
    the PCA whitening ``proj = (mean (D,), W (D x d))`` (None without)."""

    centroids: list[np.ndarray]
    proj: tuple[np.ndarray, np.ndarray] | None


def array_digest(arrays: Any) -> str:
    """A short digest of the bytes of some arrays (a fitted clustering in a cache identity)."""
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
