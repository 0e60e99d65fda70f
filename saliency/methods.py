"""The estimator registry used by the command-line tools.

Example::

    from saliency.methods import build_estimator
    estimate = build_estimator("fused")
    out = estimate(image)       # Estimate(saliency H x W float32 in [0, 1], confidence, flagged, agreement)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from saliency.fusion import FusionConfig, fuse
from saliency.gmr import gmr_saliency
from saliency.mbd import mbd_saliency
from saliency.rbd import rbd_saliency
from saliency.spectral import spectral_residual_saliency

__all__ = ["METHODS", "CLASSICAL", "Estimate", "build_estimator", "estimator_params"]

CLASSICAL: dict[str, Callable[..., np.ndarray]] = {
    "rbd": rbd_saliency,
    "gmr": gmr_saliency,
    "mbd": mbd_saliency,
    "spectral": spectral_residual_saliency,
}
METHODS = (*CLASSICAL, "fused", "refined")


@dataclass
class Estimate:
    """One image's estimate: ``saliency`` ``H x W`` float32 in ``[0, 1]``; ``confidence``
    ``H x W`` bool or None; ``flagged``/``agreement`` from the fusion (False/None otherwise)."""

    saliency: np.ndarray
    confidence: np.ndarray | None = None
    flagged: bool = False
    agreement: float | None = None


def estimator_params(method: str, fusion: FusionConfig | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """The parameters that define ``method``'s output (stored in the output manifest)."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method '{method}'; choose one of {list(METHODS)}")
    if method == "fused":
        return dataclasses.asdict(fusion or FusionConfig())
    if method == "refined":
        if not checkpoint:
            raise ValueError("method 'refined' needs --checkpoint (a file written by python -m saliency.refine)")
        return {"checkpoint": str(checkpoint)}
    return {}


def build_estimator(
    method: str,
    fusion: FusionConfig | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
) -> Callable[[np.ndarray], Estimate]:
    """A callable ``image (H x W x 3 uint8) -> Estimate`` for ``method`` (see :data:`METHODS`)."""
    estimator_params(method, fusion, checkpoint)  # validates
    if method in CLASSICAL:
        fn = CLASSICAL[method]
        return lambda image: Estimate(saliency=fn(image))
    if method == "fused":
        cfg = fusion or FusionConfig()

        def run_fused(image: np.ndarray) -> Estimate:
            r = fuse(image, cfg)
            return Estimate(r.saliency, r.confidence, r.flagged, r.agreement)

        return run_fused
    from saliency.refine import RefinerPredictor  # torch is only imported when needed

    predictor = RefinerPredictor(str(checkpoint), device=device)
    return lambda image: Estimate(saliency=predictor(image))
