"""Salient-object metrics: max F-beta, adaptive F-beta, MAE and IoU at 0.5.

Conventions (the ones of the common SOD toolboxes, e.g. the Python ``PySODMetrics`` package):

* A prediction is a soft map in ``[0, 1]`` (8-bit files are divided by 255). With
  ``normalize=True`` (the default, as in those toolboxes) each map is first min-max normalised
  (a constant map is left as it is).
* Ground truth is boolean. Pixels outside ``valid`` (e.g. the Pet trimap border) are excluded
  from every metric.
* ``F_beta = (1 + beta^2) P R / (beta^2 P + R)`` with ``beta^2 = 0.3``; 0 where ``P = R = 0``.
  An image with an empty ground truth has recall 0, hence F 0.
* F-beta curve: the map is quantised ``q = round(255 * pred)`` and binarised at the 255
  thresholds ``q >= t``, ``t = 1 .. 255``.
* Averaging: every quantity is computed per image and then averaged over images. **Max F-beta**
  is the maximum over thresholds of the *mean per-image F-beta curve* (one threshold for the
  whole set; PySODMetrics' ``maxFm``). **Adaptive F-beta** binarises each image at
  ``min(2 * mean(pred), 1)`` and averages the per-image F-beta. **MAE** is the mean over images of
  the per-image mean ``|pred - gt|``. **IoU** binarises at 0.5 (``pred >= 0.5``) and averages
  the per-image IoU; an image where both masks are empty has IoU 1.

Example::

    from saliency.metrics import SaliencyMetrics
    meter = SaliencyMetrics()
    meter.update(pred, gt)          # pred H x W float in [0, 1] (or uint8), gt H x W bool
    meter.compute()                 # {"max_fbeta": ..., "adaptive_fbeta": ..., "mae": ..., "iou": ..., "n_images": ...}
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BETA2",
    "prepare_prediction",
    "fbeta",
    "fbeta_curve",
    "adaptive_fbeta",
    "mean_absolute_error",
    "iou_at",
    "SaliencyMetrics",
]

BETA2 = 0.3
N_THRESHOLDS = 255


def prepare_prediction(pred: np.ndarray, normalize: bool = True) -> np.ndarray:
    """``H x W`` prediction (uint8 0..255, or float in ``[0, 1]``) -> float64 in ``[0, 1]``,
    min-max normalised per image when ``normalize`` and the map is not constant."""
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"prediction must be H x W, got shape {pred.shape}")
    if pred.dtype == np.uint8:
        out = pred.astype(np.float64) / 255.0
    elif pred.dtype == bool:
        out = pred.astype(np.float64)
    else:
        out = pred.astype(np.float64)
        if not np.isfinite(out).all():
            raise ValueError("prediction contains NaN or inf")
        if out.size and (out.min() < -1e-6 or out.max() > 1 + 1e-6):
            raise ValueError(f"float prediction must lie in [0, 1], got {out.min():.3g}..{out.max():.3g}")
        out = np.clip(out, 0.0, 1.0)
    if normalize and out.size:
        lo, hi = out.min(), out.max()
        if hi > lo:
            out = (out - lo) / (hi - lo)
    return out


def _check(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    if valid is None:
        return pred.ravel(), gt.ravel()
    valid = np.asarray(valid).astype(bool)
    if valid.shape != gt.shape:
        raise ValueError(f"valid mask {valid.shape} and ground truth {gt.shape} differ in size")
    return pred[valid], gt[valid]


def fbeta(precision: np.ndarray | float, recall: np.ndarray | float, beta2: float = BETA2) -> np.ndarray:
    """Elementwise ``(1 + beta2) P R / (beta2 P + R)``, 0 where ``P = R = 0``."""
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    num = (1 + beta2) * p * r
    den = beta2 * p + r
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def fbeta_curve(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, beta2: float = BETA2) -> np.ndarray:
    """F-beta of one image at the 255 thresholds ``round(255 * pred) >= t``, ``t = 1..255``.

    Args:
        pred: ``H x W`` float in ``[0, 1]`` (already prepared).
        gt: ``H x W`` bool ground truth.
        valid: optional ``H x W`` bool mask of the pixels to count.

    Returns:
        ``255`` F-beta values, index ``t - 1``.
    """
    p, g = _check(np.asarray(pred), gt, valid)
    q = np.rint(np.clip(p, 0, 1) * 255).astype(np.int64)
    fg_hist = np.bincount(q[g], minlength=256)
    all_hist = np.bincount(q, minlength=256)
    # counts of pixels with q >= t, for t = 1..255
    tp = np.cumsum(fg_hist[::-1])[::-1][1:]
    predicted = np.cumsum(all_hist[::-1])[::-1][1:]
    n_fg = int(g.sum())
    precision = tp / np.maximum(predicted, 1)
    recall = tp / max(n_fg, 1)
    return fbeta(precision, recall, beta2)


def _binary_fbeta(binary: np.ndarray, g: np.ndarray, beta2: float) -> float:
    tp = float(np.count_nonzero(binary & g))
    if tp == 0:
        return 0.0
    return float(fbeta(tp / np.count_nonzero(binary), tp / np.count_nonzero(g), beta2))


def adaptive_fbeta(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, beta2: float = BETA2) -> float:
    """F-beta of one image binarised at ``min(2 * mean(pred), 1)`` (``pred >= threshold``)."""
    p, g = _check(np.asarray(pred), gt, valid)
    if p.size == 0:
        return 0.0
    threshold = min(2.0 * float(p.mean()), 1.0)
    return _binary_fbeta(p >= threshold, g, beta2)


def mean_absolute_error(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean ``|pred - gt|`` of one image over the valid pixels."""
    p, g = _check(np.asarray(pred), gt, valid)
    if p.size == 0:
        return 0.0
    return float(np.abs(p - g).mean())


def iou_at(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, threshold: float = 0.5) -> float:
    """IoU of ``pred >= threshold`` with the ground truth for one image (1 when both are empty)."""
    p, g = _check(np.asarray(pred), gt, valid)
    b = p >= threshold
    union = np.count_nonzero(b | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(b & g) / union)


class SaliencyMetrics:
    """Accumulates per-image metrics and averages them (see the module doc for the conventions).

    Args:
        normalize: min-max normalise every prediction (the toolboxes' default).
        beta2: ``beta^2`` of the F-measure.
    """

    def __init__(self, normalize: bool = True, beta2: float = BETA2) -> None:
        if beta2 <= 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        self.normalize = normalize
        self.beta2 = beta2
        self._curves: list[np.ndarray] = []
        self._adaptive: list[float] = []
        self._mae: list[float] = []
        self._iou: list[float] = []
        self.ids: list[str] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, sample_id: str = "") -> dict:
        """Add one image; returns its own metrics (``fbeta_max`` is that image's best F-beta)."""
        p = prepare_prediction(pred, self.normalize)
        curve = fbeta_curve(p, gt, valid, self.beta2)
        item = {
            "fbeta_max": float(curve.max()),
            "adaptive_fbeta": adaptive_fbeta(p, gt, valid, self.beta2),
            "mae": mean_absolute_error(p, gt, valid),
            "iou": iou_at(p, gt, valid),
        }
        self._curves.append(curve)
        self._adaptive.append(item["adaptive_fbeta"])
        self._mae.append(item["mae"])
        self._iou.append(item["iou"])
        self.ids.append(sample_id)
        return item

    def __len__(self) -> int:
        return len(self._curves)

    def compute(self) -> dict:
        """``{"max_fbeta", "max_fbeta_threshold" (0..1), "adaptive_fbeta", "mae", "iou", "n_images"}``."""
        if not self._curves:
            raise ValueError("no images were added to the metrics")
        mean_curve = np.mean(np.stack(self._curves), axis=0)
        best = int(np.argmax(mean_curve))
        return {
            "max_fbeta": float(mean_curve[best]),
            "max_fbeta_threshold": (best + 1) / 255.0,
            "adaptive_fbeta": float(np.mean(self._adaptive)),
            "mae": float(np.mean(self._mae)),
            "iou": float(np.mean(self._iou)),
            "n_images": len(self._curves),
        }
