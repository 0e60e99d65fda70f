"""Segment by example: foreground / background mask-mean prototypes of support images, and the
cosine similarity of every query pixel to them (used by :meth:`maskcontrast.FeatureModel.segment_like`
and ``python -m eval.oneshot``).

Definitions (``e_p`` is a pixel's embedding as :meth:`~maskcontrast.FeatureModel.embed` defines it
at input resolution: the raw embedding upsampled bilinearly, then L2-normalised):

* a support shot's foreground prototype is ``normalize(sum_{p in fg} e_p)``, its background
  prototype ``normalize(sum_{p in bg} e_p)`` (ignored pixels take part in neither): the
  prototype of :func:`maskcontrast.losses.mask_prototypes` and ``eval.kmeans``, computed by
  :func:`pixel_sums` without making the upsampled map;
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

from maskcontrast.losses import _source_index

__all__ = [
    "DEFAULT_TEMPERATURE",
    "as_support_mask",
    "pixel_sums",
    "support_prototypes",
    "combine_shots",
    "prototype_score",
    "foreground_probability",
]

#: temperature of the soft map ``sigmoid((cos_fg - cos_bg) / T)``
DEFAULT_TEMPERATURE = 0.1
#: the mask value that marks ignored pixels (neither foreground nor background)
IGNORE = 255


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
        raise ValueError(f"support mask {index} has shape {tuple(t.shape)}, but its image is {hw[0]} x {hw[1]} "
                         "(H x W); give one H x W mask per support image")  # fmt: skip
    t = t.cpu()
    if t.dtype == torch.bool:
        fg, ignore = t, torch.zeros_like(t)
    else:
        t = t.long()
        ignore = t == IGNORE
        fg = (t != 0) & ~ignore
    if not bool(fg.any()):
        raise ValueError(f"support mask {index} has no foreground pixel; mark the region to segment with "
                         "nonzero values (0 = background, 255 = ignored)")  # fmt: skip
    out = fg.long()
    out[ignore] = -1
    return out


def pixel_sums(embedding: torch.Tensor, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-id sums of the unit input-resolution embeddings, and pixel counts.

    ``e_p`` = the raw embedding upsampled bilinearly (``align_corners=False``, torch's rule) to the
    size of ``ids``, then L2-normalised: what :meth:`~maskcontrast.FeatureModel.embed` returns.
    The upsampled map is never made. Each ``e_p`` blends four grid cells with weights ``w_pk``,
    so ``|up(e)_p|^2 = sum_kl w_pk w_pl <e_k, e_l>`` comes from ten dot-product maps of
    neighbouring cells, and ``sum_p a_p e_p = sum_k e_k (sum_p a_p w_pk / |up(e)_p|)`` scatters the
    pixel weights back onto the grid: the cost grows with ``H x W`` and with ``D x h x w``, never
    with ``D x H x W`` (2048-d backbone features at 854 x 480 stay cheap).

    Args:
        embedding: ``1 x D x h x w`` raw embeddings.
        ids: ``H x W`` int64 in ``0..n-1``, -1 = skipped.

    Returns:
        ``(sums n x D, counts (n,))``, float32 and int64, on the embedding's device. The prototype
        of id ``i`` is ``normalize(sums[i])``.
    """
    e = embedding[0].float()
    d, h, w = e.shape
    ids = ids.to(e.device)
    big_h, big_w = int(ids.shape[0]), int(ids.shape[1])
    y0, y1, ly = (t.to(e.device) for t in _source_index(big_h, h, e.device))
    x0, x1, lx = (t.to(e.device) for t in _source_index(big_w, w, e.device))
    ly, lx = ly.float()[:, None], lx.float()[None, :]
    wts = ((1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx)  # taps (y0,x0) (y0,x1) (y1,x0) (y1,x1)
    # dot products of each cell with its right / lower / diagonal neighbours (edges replicated,
    # as the clamped taps are)
    ep = F.pad(e[None], (0, 1, 0, 1), mode="replicate")[0]
    c00, c01, c10, c11 = ep[:, :-1, :-1], ep[:, :-1, 1:], ep[:, 1:, :-1], ep[:, 1:, 1:]

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(0)[y0][:, x0]  # h x w -> H x W at each pixel's top-left cell

    a, b, c, dd = wts
    sq = (a * a * dot(c00, c00) + b * b * dot(c01, c01) + c * c * dot(c10, c10) + dd * dd * dot(c11, c11)
          + 2 * (a * b * dot(c00, c01) + c * dd * dot(c10, c11) + a * c * dot(c00, c10) + b * dd * dot(c01, c11)
                 + a * dd * dot(c00, c11) + b * c * dot(c01, c10)))  # fmt: skip
    inv = sq.clamp_min(0).sqrt().clamp_min(1e-12).reciprocal()
    keep = ids >= 0
    idx = ids[keep]
    cells = torch.zeros(n * h * w, device=e.device)
    for wt, ys, xs in ((a, y0, x0), (b, y0, x1), (c, y1, x0), (dd, y1, x1)):
        k = (ys[:, None] * w + xs[None, :]).expand(big_h, big_w)
        cells.index_add_(0, idx * (h * w) + k[keep], (wt * inv).expand(big_h, big_w)[keep])
    sums = cells.view(n, h * w) @ e.reshape(d, h * w).T
    return sums, torch.bincount(idx, minlength=n)[:n]


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
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if tuple(score.shape[-2:]) != tuple(size):
        score = F.interpolate(score, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.sigmoid(score / temperature)
