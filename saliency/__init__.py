"""Unsupervised saliency proposals for MaskContrast: classical estimators (RBD, GMR, MB+,
spectral residual), their fusion, a self-trained refiner, the paper's post-processing rule,
and the SOD metrics. No labels and no downloaded weights are needed.

Command-line tools::

    python -m saliency.generate --images DIR --out MASKS --method fused --workers 2
    python -m saliency.refine --images DIR --out RUN --config configs/saliency/refine_cpu.yaml
    python -m saliency.evaluate --pred SOFT --gt GT [--json OUT]

Python API::

    from saliency import fuse, postprocess, rbd_saliency, SaliencyMetrics
    result = fuse(image)                  # image: H x W x 3 uint8 RGB
    mask = postprocess(result.saliency)   # the paper's rule; mask.mask is None when skipped
"""

from saliency.fusion import FusionConfig, FusionResult, fuse, fused_saliency
from saliency.gmr import gmr_saliency
from saliency.mbd import mbd_saliency
from saliency.metrics import SaliencyMetrics
from saliency.postprocess import PostprocessResult, postprocess
from saliency.rbd import rbd_saliency
from saliency.spectral import spectral_residual_saliency

__all__ = [
    "FusionConfig",
    "FusionResult",
    "fuse",
    "fused_saliency",
    "gmr_saliency",
    "mbd_saliency",
    "rbd_saliency",
    "spectral_residual_saliency",
    "SaliencyMetrics",
    "PostprocessResult",
    "postprocess",
]
