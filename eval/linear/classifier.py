"""The probe itself, a 1x1 convolution on frozen features, and the optional dense CRF."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval.linear.config import CRFConfig

__all__ = ["LinearClassifier", "crf_available", "dense_crf"]


class LinearClassifier(nn.Module):
    """A 1x1 convolution ``B x F x h x w -> B x C x h x w``; ``forward(x, size)`` upsamples the
    logits bilinearly to ``size``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        logits = self.conv(x)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


def crf_available() -> tuple[bool, str]:
    """``(True, "")`` when ``pydensecrf`` (installed by ``pip install pydensecrf2``) imports."""
    try:
        import pydensecrf.densecrf
        import pydensecrf.utils  # noqa: F401  (checked for availability only)
    except Exception as err:  # ImportError, or a broken build
        return False, f"pydensecrf is not importable ({type(err).__name__}: {err}); pip install pydensecrf2"
    return True, ""


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Fully connected CRF (Krähenbühl & Koltun 2011) on ``C x H x W`` softmax probabilities of
    an ``H x W x 3`` uint8 image; returns the refined ``H x W`` labels."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    # pydensecrf needs a writeable buffer: the image is copied (datasets give read-only arrays)
    crf.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy,
        srgb=cfg.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C"),
        compat=cfg.bilateral_compat,
    )
    q = np.asarray(crf.inference(cfg.iterations)).reshape(c, h, w)
    return q.argmax(0)
