"""Segment by example: foreground / background mask-mean prototypes of support images, and the
cosine similarity of every query pixel to them (used by :meth:`maskcontrast.FeatureModel.segment_like`
and ``python -m eval.oneshot``).

Definitions (``e_p`` is a pixel's embedding as :meth:`~maskcontrast.FeatureModel.embed` defines it
at input resolution: the raw embedding upsampled bilinearly, then L2-normalised):

* a support shot's foreground prototype is ``normalize(sum_{p in fg} e_p)``, its background
  prototype ``normalize(sum_{p in bg} e_p)`` (ignored pixels take part in neither): the
  prototype of :func:`maskcontrast.embeddings.mask_prototypes` and ``eval.kmeans``, computed by
  :func:`maskcontrast.embeddings.pixel_sums` without making the upsampled map;
* several shots: ``normalize(mean of the shots' unit prototypes)`` (:func:`combine_shots`);
* a query pixel's score is ``s = cos(f, fg) - cos(f, bg)``, computed on the L2-normalised
  embedding at **feature** resolution and upsampled bilinearly to the image size (as saliency
  logits are); its soft foreground map is ``sigmoid(s / temperature)``, and its mask is
  ``soft > threshold`` (default 0.5, i.e. the nearer prototype wins).

Example::

    fg, bg = support_prototypes(out.embedding, as_support_mask(mask, (h, w)))     # (D,), (D,) or None
    soft = foreground_probability(prototype_score(query_out.embedding, fg, bg), (H, W))  # H x W
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskcontrast.data.record import IGNORE_INDEX  # the mask value of ignored pixels (neither fg nor bg)
from maskcontrast.embeddings import pixel_sums
from maskcontrast.losses import check_temperature

__all__ = [
    "DEFAULT_TEMPERATURE",
    "as_support_mask",
    "support_prototypes",
    "combine_shots",
    "prototype_score",
    "foreground_probability",
]

#: temperature of the soft map ``sigmoid((cos_fg - cos_bg) / T)``
DEFAULT_TEMPERATURE = 0.1


def as_support_mask(mask: Any, hw: tuple[int, int], index: int = 0) -> torch.Tensor:
    """A support mask as an ``H x W`` int64 tensor of pixel ids: 1 = foreground, 0 = background,
    -1 = ignored (the ids :func:`pixel_sums` takes).

    Args:
        mask: ``H x W`` bool, or integers (numpy array, tensor or PIL image): 0 = background,
            255 = ignored, any other value = foreground.
        hw: the support image's ``(H, W)``; the mask must have that size.
        index: the shot's position, for messages.

    Raises:
        ValueError: a wrong shape, or no foreground pixel.
    """
    from PIL import Image

    if isinstance(mask, Image.Image):
        mask = np.asarray(mask)
    t = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2 or tuple(t.shape) != tuple(hw):
        raise ValueError(
            f"support mask {index} has shape {tuple(t.shape)}, but its image is {hw[0]} x {hw[1]} "
            "(H x W); give one H x W mask per support image"
        )
    t = t.cpu()
    if t.dtype == torch.bool:
        fg, ignore = t, torch.zeros_like(t)
    else:
        t = t.long()
        ignore = t == IGNORE_INDEX
        fg = (t != 0) & ~ignore
    if not bool(fg.any()):
        raise ValueError(
            f"support mask {index} has no foreground pixel; mark the region to segment with "
            "nonzero values (0 = background, 255 = ignored)"
        )
    out = fg.long()
    out[ignore] = -1
    return out


def support_prototypes(embedding: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The foreground and background prototypes of one support shot.

    Args:
        embedding: ``1 x D x h x w`` raw embeddings at feature resolution.
        mask: ``H x W`` int64 from :func:`as_support_mask` (1 = foreground, 0 = background, -1 = ignored).

    Returns:
        ``(fg, bg)``: ``(D,)`` unit vectors; ``bg`` is None when the mask has no background pixel.
    """
    sums, counts = pixel_sums(embedding, mask, 2)
    if int(counts[1]) == 0:
        raise ValueError("the support mask has no foreground pixel")
    return F.normalize(sums[1], dim=0), F.normalize(sums[0], dim=0) if int(counts[0]) > 0 else None


def combine_shots(prototypes: Sequence[torch.Tensor]) -> torch.Tensor:
    """``K`` unit ``(D,)`` prototypes -> ``normalize(mean)``, ``(D,)``."""
    if not prototypes:
        raise ValueError("no prototypes to combine")
    return F.normalize(torch.stack(list(prototypes)).mean(0), dim=0)


def prototype_score(embedding: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """``cos(e, fg) - cos(e, bg)`` of every feature-resolution pixel.

    Args:
        embedding: ``B x D x h x w`` raw embeddings (normalised here).
        fg, bg: ``(D,)`` or ``E x D`` unit prototypes (``E`` prototype pairs scored at once).

    Returns:
        ``B x 1 x h x w`` (or ``B x E x h x w``) scores in ``[-2, 2]``.
    """
    diff = (fg - bg).to(embedding.device, torch.float32)
    diff = diff[None] if diff.ndim == 1 else diff
    return torch.einsum("bdhw,ed->behw", F.normalize(embedding.float(), dim=1), diff)


def foreground_probability(
    score: torch.Tensor, size: tuple[int, int], temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """``B x E x h x w`` scores -> ``B x E x H x W`` soft foreground maps ``sigmoid(upsample(score) / T)``
    (bilinear, ``align_corners=False``)."""
    check_temperature(temperature, "temperature")
    if tuple(score.shape[-2:]) != tuple(size):
        score = F.interpolate(score, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.sigmoid(score / temperature)
