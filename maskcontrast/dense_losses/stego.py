"""STEGO (Hamilton et al., "Unsupervised Semantic Segmentation by Distilling Feature Correspondences", ICLR 2022).

A small head on a frozen backbone is trained so that its codes correlate where the frozen features
correlate: for two images ``a, b`` with frozen features ``f`` and codes ``s``,
``L = - mean_{p, q} (F_pq - b) max(S_pq, 0)`` with ``F_pq = cos(f_a[p], f_b[q])``,
``S_pq = cos(s_a[p], s_b[q])`` and a shift ``b`` per kind of pair (an image with itself, with a
nearest neighbour, with a random image). A higher shift pushes more pairs apart.

Example::

    loss = stego_correspondence_loss(feat_a, feat_b, code_a, code_b, shift=0.18)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_correlation", "stego_correspondence_loss"]


def feature_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every location of ``a`` with every location of ``b``.

    Args:
        a: ``B x C x P``; b: ``B x C x Q`` (flattened locations).

    Returns:
        ``B x P x Q``.
    """
    return torch.einsum("bcp,bcq->bpq", F.normalize(a, dim=1), F.normalize(b, dim=1))


def stego_correspondence_loss(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    code_a: torch.Tensor,
    code_b: torch.Tensor,
    shift: float,
    pointwise: bool = True,
) -> torch.Tensor:
    """STEGO's correspondence loss for one kind of pair.

    Args:
        feat_a, feat_b: ``B x C x P`` and ``B x C x Q`` frozen features (no gradient flows into them).
        code_a, code_b: ``B x D x P`` and ``B x D x Q`` head outputs.
        shift: ``b``.
        pointwise: centre ``F`` per query location over ``b``'s locations, keeping its global mean
            (STEGO's "pointwise" option: what matters is which ``q`` are more similar to ``p``).

    Returns:
        0-d loss ``- mean (F - shift) * max(S, 0)``.
    """
    with torch.no_grad():
        fd = feature_correlation(feat_a, feat_b)
        if pointwise:
            mean = fd.mean()
            fd = fd - fd.mean(dim=2, keepdim=True) + mean
    cd = feature_correlation(code_a, code_b)
    return -((fd - shift) * cd.clamp(min=0)).mean()
