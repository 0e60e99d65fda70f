"""Segmentation metrics shared by ``eval.kmeans``, ``eval.linear`` and ``eval.retrieval``.

Everything starts from a confusion matrix ``conf[p, g]`` = number of valid pixels predicted as
``p`` whose ground truth is ``g``, built with one ``np.bincount`` over ``pred * G + gt`` per
image (never one boolean pass per class pair). Rows may be clusters (``P`` of them) or classes.

* :func:`confusion_matrix`: one image (or any arrays) -> ``P x G`` counts, ignore label skipped.
* :func:`hungarian_mapping`: one-to-one cluster -> class assignment maximising the summed IoU.
* :func:`majority_mapping`: each cluster -> its most frequent class (over-clustering).
* :func:`map_confusion`: a ``P x G`` cluster confusion and a mapping -> ``(G + 1) x G`` class
  confusion (the last row collects pixels of unmatched clusters, which count as misses).
* :func:`segmentation_scores`: per-class IoU, mIoU and pixel accuracy of a class confusion.

Example::

    conf = confusion_matrix(pred, gt, num_pred=21, num_gt=21)      # accumulate over images
    mapping = hungarian_mapping(conf)
    scores = segmentation_scores(map_confusion(conf, mapping))
    scores.miou, scores.per_class_iou, scores.pixel_acc
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "confusion_matrix",
    "iou_matrix",
    "hungarian_mapping",
    "majority_mapping",
    "match_clusters",
    "map_confusion",
    "apply_mapping",
    "Scores",
    "segmentation_scores",
    "binary_counts",
    "region_similarity",
    "boundary_map",
    "boundary_f_measure",
]


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    num_pred: int,
    num_gt: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """``num_pred x num_gt`` int64 counts of (prediction, ground truth) pairs.

    Args:
        pred: integer predictions in ``0..num_pred-1``, any shape.
        gt: integer labels of the same shape in ``0..num_gt-1``; ``ignore_index`` is skipped.
        num_pred, num_gt: the numbers of prediction and label values.
        ignore_index: the label value that is not evaluated (None: every label is evaluated).

    Raises:
        ValueError: shapes differ, or a value lies outside its range.

    Example: ``confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 255]), 2, 2)`` is
    ``[[1, 0], [0, 1]]``.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {gt.shape}")
    if num_pred < 1 or num_gt < 1:
        raise ValueError(f"num_pred and num_gt must be positive, got {num_pred}, {num_gt}")
    if ignore_index is not None and 0 <= ignore_index < num_gt:
        raise ValueError(f"ignore_index {ignore_index} is also a class index (num_gt={num_gt})")
    pred = pred.reshape(-1)
    gt = gt.reshape(-1)
    if gt.size == 0:
        return np.zeros((num_pred, num_gt), dtype=np.int64)
    if pred.min() < 0 or pred.max() >= num_pred:
        raise ValueError(f"predictions must lie in 0..{num_pred - 1}, got {pred.min()}..{pred.max()}")
    # Ignored pixels go to an extra label column (num_gt) that is dropped at the end: no boolean
    # compaction, and every pass stays a single vectorised sweep.
    if gt.dtype == np.uint8:
        g = _label_lut(num_gt, ignore_index)[gt]  # invalid values -> -1
        bad = g.min() < 0
    else:
        g = gt.astype(np.int64)
        bad = g.min() < 0 or (g.max() >= num_gt and bool(np.any((g >= num_gt) & (g != ignore_index))))
        if ignore_index is not None:
            g[g == ignore_index] = num_gt
    if bad:
        valid = gt[(gt != ignore_index)] if ignore_index is not None else gt
        raise ValueError(
            f"labels must lie in 0..{num_gt - 1} (or be the ignore value {ignore_index}), got {valid.min()}..{valid.max()}"
        )
    index = np.multiply(pred, num_gt + 1, dtype=np.int64)
    index += g
    counts = np.bincount(index, minlength=num_pred * (num_gt + 1)).reshape(num_pred, num_gt + 1)
    return np.ascontiguousarray(counts[:, :num_gt])


@functools.lru_cache(maxsize=64)
def _label_lut(num_gt: int, ignore_index: int | None) -> np.ndarray:
    """uint8 label value -> column: ``0..num_gt-1`` stay, the ignore value -> ``num_gt``, others -> -1."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[: min(num_gt, 256)] = np.arange(min(num_gt, 256))
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = num_gt
    lut.flags.writeable = False
    return lut


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """``P x G`` IoU of every (cluster, class) pair: ``conf / (row sum + column sum - conf)``
    (0 where both are empty)."""
    conf = np.asarray(conf, dtype=np.float64)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    return np.divide(conf, union, out=np.zeros_like(conf), where=union > 0)


def hungarian_mapping(conf: np.ndarray) -> np.ndarray:
    """One-to-one assignment of clusters (rows) to classes (columns) that maximises the summed IoU.

    Args:
        conf: ``P x G`` cluster/class confusion over all evaluated pixels.

    Returns:
        ``(P,)`` int64 class per cluster; ``-1`` for clusters left without a class when ``P > G``.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2:
        raise ValueError(f"conf must be 2-D, got shape {conf.shape}")
    rows, cols = linear_sum_assignment(iou_matrix(conf), maximize=True)
    mapping = np.full(conf.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def majority_mapping(conf: np.ndarray) -> np.ndarray:
    """Each cluster (row) -> the class (column) holding most of its pixels; ``-1`` for empty
    clusters. Several clusters may map to one class (over-clustering)."""
    conf = np.asarray(conf)
    if conf.ndim != 2:
        raise ValueError(f"conf must be 2-D, got shape {conf.shape}")
    mapping = conf.argmax(1).astype(np.int64)
    mapping[conf.sum(1) == 0] = -1
    return mapping


def match_clusters(conf: np.ndarray, method: str = "auto") -> np.ndarray:
    """``hungarian``, ``majority``, or ``auto`` (Hungarian when ``P <= G``, majority vote when
    there are more clusters than classes)."""
    if method == "auto":
        method = "hungarian" if conf.shape[0] <= conf.shape[1] else "majority"
    if method == "hungarian":
        return hungarian_mapping(conf)
    if method == "majority":
        return majority_mapping(conf)
    raise ValueError(f"matching must be auto, hungarian or majority, got {method!r}")


def map_confusion(conf: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """``P x G`` cluster confusion -> ``(G + 1) x G`` class confusion under ``mapping``.

    Row ``g`` sums the clusters mapped to class ``g``; the last row holds the pixels of clusters
    mapped to ``-1``: they are nobody's prediction, so they count as misses of their true class.
    """
    conf = np.asarray(conf)
    mapping = np.asarray(mapping, dtype=np.int64)
    p, g = conf.shape
    if mapping.shape != (p,):
        raise ValueError(f"mapping must have one entry per row ({p}), got shape {mapping.shape}")
    if mapping.max(initial=-1) >= g or mapping.min(initial=0) < -1:
        raise ValueError(f"mapping values must lie in -1..{g - 1}")
    out = np.zeros((g + 1, g), dtype=conf.dtype)
    np.add.at(out, np.where(mapping < 0, g, mapping), conf)
    return out


def apply_mapping(pred: np.ndarray, mapping: np.ndarray, unmatched: int = 255) -> np.ndarray:
    """Cluster ids -> class ids (``unmatched`` for clusters mapped to ``-1``), e.g. for pictures."""
    lut = np.where(np.asarray(mapping) < 0, unmatched, mapping)
    return lut[np.asarray(pred)]


class Scores(NamedTuple):
    """Scores of a class confusion.

    Attributes:
        miou: mean IoU over the classes present in the ground truth or the prediction (fraction).
        per_class_iou: ``(G,)`` IoU per class; NaN for a class with no pixel in either.
        pixel_acc: correctly classified valid pixels / valid pixels.
    """

    miou: float
    per_class_iou: np.ndarray
    pixel_acc: float


def segmentation_scores(conf: np.ndarray) -> Scores:
    """IoU per class, mIoU and pixel accuracy of a ``R x G`` class confusion, ``R >= G``.

    Rows ``0..G-1`` are predicted classes, extra rows (see :func:`map_confusion`) are pixels
    predicted as no class. ``IoU_g = TP / (TP + FP + FN)`` with ``TP = conf[g, g]``,
    ``TP + FP = conf[g].sum()`` and ``TP + FN = conf[:, g].sum()``. mIoU is the mean over classes
    whose IoU is defined (a class absent from both prediction and ground truth is skipped).

    Example: ``segmentation_scores(np.array([[2, 1], [0, 1]])).miou == (2/3 + 1/2) / 2``.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] < conf.shape[1]:
        raise ValueError(f"expected an R x G class confusion with R >= G, got shape {conf.shape}")
    g = conf.shape[1]
    tp = np.diag(conf[:g, :g])
    union = conf[:g].sum(1) + conf.sum(0) - tp
    iou = np.divide(tp, union, out=np.full(g, np.nan), where=union > 0)
    total = conf.sum()
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return Scores(miou, iou, float(tp.sum() / total) if total > 0 else float("nan"))


# ----------------------------------------------------------------------------------------------
# Binary masks: few-shot counts, and the DAVIS region (J) and contour (F) measures
# ----------------------------------------------------------------------------------------------


def binary_counts(pred: Any, gt: Any, valid: Any | None = None) -> np.ndarray:
    """``(tp, fp, fn, tn)`` int64 of a binary prediction over the ``valid`` pixels.

    ``pred``, ``gt``, ``valid``: bool arrays of one shape (numpy or torch; ``valid=None``: all).
    Example: ``binary_counts([1, 1, 0, 0], [1, 0, 1, 0])`` is ``[1, 1, 1, 1]``.
    """
    import torch

    if isinstance(pred, torch.Tensor):  # counted on the tensor's device
        v = torch.ones_like(pred, dtype=torch.bool) if valid is None else valid.bool()
        p, g = pred.bool() & v, gt.bool() & v
        tp, npred, ngt, nv = torch.stack([(p & g).sum(), p.sum(), g.sum(), v.sum()]).tolist()
        return np.array([tp, npred - tp, ngt - tp, nv - npred - ngt + tp], dtype=np.int64)
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    v = np.ones_like(pred) if valid is None else np.asarray(valid, dtype=bool)
    p, g = pred & v, gt & v
    tp, npred, ngt, nv = int((p & g).sum()), int(p.sum()), int(g.sum()), int(v.sum())
    return np.array([tp, npred - tp, ngt - tp, nv - npred - ngt + tp], dtype=np.int64)


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS region similarity J: ``|pred & gt| / |pred | gt|`` over the non-void pixels; 1 when
    both masks are empty. ``H x W`` bool arrays."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        pred, gt = pred & keep, gt & keep
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else int((pred & gt).sum()) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of a binary mask, as DAVIS defines it: a pixel is on the boundary
    when it differs from its right, lower or lower-right neighbour (pixels outside the image do
    not count). ``H x W`` bool -> ``H x W`` bool.

    Example: a 2 x 2 square at rows/cols 1..2 of a 4 x 4 zero mask has boundary pixels
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2): the square's right and
    lower edges and the background pixels just above / left of it.
    """
    m = np.asarray(mask, dtype=bool)
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]
    b[:-1, :] |= m[:-1, :] != m[1:, :]
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]
    return b


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS contour accuracy F: the F-measure of boundary precision and recall with a tolerance.

    The tolerance is ``ceil(bound_th * diagonal)`` pixels when ``bound_th < 1`` (DAVIS: 0.008 of
    the image diagonal, 8 px at 854 x 480), else ``bound_th`` pixels. A predicted boundary pixel
    is correct when a ground-truth boundary pixel lies within the tolerance (Euclidean distance,
    i.e. dilation by a disk), and vice versa for recall: ``P = |B_pred & dil(B_gt)| / |B_pred|``,
    ``R = |B_gt & dil(B_pred)| / |B_gt|``, ``F = 2 P R / (P + R)`` (0 when ``P + R = 0``).
    Empty boundaries: both empty gives F = 1; only the prediction empty gives P = 1, R = 0;
    only the ground truth empty gives P = 0, R = 1 (so F = 0).
    """
    from scipy.ndimage import distance_transform_edt

    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    h, w = pred.shape
    tol = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    bp, bg = boundary_map(pred), boundary_map(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    near_gt = distance_transform_edt(~bg) <= tol
    near_pred = distance_transform_edt(~bp) <= tol
    precision = int((bp & near_gt).sum()) / n_p
    recall = int((bg & near_pred).sum()) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
