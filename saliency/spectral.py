"""Spectral residual saliency (a cheap, weak cue).

X. Hou, L. Zhang. "Saliency Detection: A Spectral Residual Approach." CVPR 2007.

The grey image is shrunk to ``width`` pixels; the log amplitude spectrum minus its local
(3 x 3) average is the spectral residual; transformed back with the original phase and squared,
it is smoothed with a Gaussian (the paper: 64 px wide, sigma 8 on the full-size map; here the
sigma is given in pixels of the small map).

Example::

    from saliency.spectral import spectral_residual_saliency
    smap = spectral_residual_saliency(image)   # H x W float32 in [0, 1]
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from saliency.common import check_image, normalize_map, resize_map

__all__ = ["spectral_residual_saliency"]


def spectral_residual_saliency(image: np.ndarray, width: int = 64, sigma: float = 2.5) -> np.ndarray:
    """Spectral residual saliency of an ``H x W x 3`` uint8 RGB image -> ``H x W`` float32 in ``[0, 1]``.

    Args:
        image: the RGB image.
        width: the width of the analysed thumbnail (the paper uses 64).
        sigma: Gaussian smoothing of the thumbnail-sized map, in thumbnail pixels.
    """
    image = check_image(image)
    if width < 8:
        raise ValueError(f"width must be >= 8, got {width}")
    h, w = image.shape[:2]
    small_h = max(8, round(h * width / w))
    grey = np.asarray(Image.fromarray(image).convert("L").resize((width, small_h), Image.BILINEAR), dtype=np.float64)
    spectrum = np.fft.fft2(grey / 255.0)
    log_amp = np.log(np.abs(spectrum) + 1e-8)
    phase = np.angle(spectrum)
    residual = log_amp - ndimage.uniform_filter(log_amp, size=3, mode="wrap")
    smap = np.abs(np.fft.ifft2(np.exp(residual + 1j * phase))) ** 2
    smap = ndimage.gaussian_filter(smap, sigma)
    return resize_map(normalize_map(smap), (h, w))
