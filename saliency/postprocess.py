"""The paper's rule that turns a soft saliency map into an object mask.

MaskContrast (Van Gansbeke et al., ICCV 2021, Sec. 3.1 / appendix): threshold the saliency at
0.5, remove connected components smaller than 1 % of the image, and skip the image when what
is left covers less than 1 % of it. Components are 8-connected. With ``multi_object`` every
kept component gets its own id ``1..n`` (largest first); otherwise the mask is 0/1.

Example::

    from saliency.postprocess import postprocess
    result = postprocess(soft)          # soft: H x W float in [0, 1]
    if result.mask is None:
        print("skipped:", result.reason)
    else:
        write_mask(path, result.mask * 255)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PostprocessResult", "postprocess"]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class PostprocessResult:
    """Attributes:
    mask: ``H x W`` uint8, 0 = background and 1 (or ``1..n`` with ``multi_object``) = object;
        None when the image is skipped.
    reason: why the image was skipped (None when kept).
    coverage: the fraction of the image covered by the kept mask.
    n_objects: the number of kept components.
    n_dropped: the number of components removed for being too small.
    """

    mask: np.ndarray | None
    reason: str | None
    coverage: float
    n_objects: int
    n_dropped: int


def postprocess(
    saliency: np.ndarray,
    threshold: float = 0.5,
    min_component: float = 0.01,
    min_coverage: float = 0.01,
    multi_object: bool = False,
) -> PostprocessResult:
    """Apply the paper's rule to one ``H x W`` soft map in ``[0, 1]``.

    Args:
        saliency: the soft map (float in ``[0, 1]``; uint8 maps are divided by 255).
        threshold: foreground where ``saliency >= threshold`` (paper: 0.5).
        min_component: drop 8-connected components smaller than this fraction of the image (0.01).
        min_coverage: skip the image when the kept mask covers less than this fraction (0.01).
        multi_object: label kept components ``1..n`` (largest first) instead of 1.
    """
    s = np.asarray(saliency)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"saliency must be a non-empty H x W map, got shape {s.shape}")
    if s.dtype == np.uint8:
        s = s.astype(np.float32) / 255.0
    for name, value in (("threshold", threshold), ("min_component", min_component), ("min_coverage", min_coverage)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    area = s.size
    fg = s >= threshold
    labels, n = ndimage.label(fg, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = sizes >= min_component * area
    n_kept = int(keep.sum())
    order = np.argsort(-sizes, kind="stable")
    new_id = np.zeros(n + 1, dtype=np.int64)
    next_id = 1
    for idx in order:
        if keep[idx]:
            new_id[idx + 1] = next_id if multi_object else 1
            next_id += 1
    mask = new_id[labels]
    coverage = float(sizes[keep].sum() / area) if n else 0.0
    dropped = n - n_kept
    if coverage < min_coverage:
        reason = f"mask covers {100 * coverage:.2f}% of the image (< {100 * min_coverage:g}%)"
        return PostprocessResult(None, reason, coverage, n_kept, dropped)
    if n_kept > 255:  # cannot happen with min_component >= 1/255, guarded for odd settings
        raise ValueError(f"{n_kept} objects do not fit an 8-bit mask; raise min_component")
    return PostprocessResult(mask.astype(np.uint8), None, coverage, n_kept, dropped)
