"""DenseCL (Wang et al., "Dense Contrastive Learning for Self-Supervised Visual Pre-Training", CVPR 2021).

Beside MoCo v2's global loss, every location of the query view's dense projection is contrasted:
its positive is the key view's dense projection at the location whose *backbone* feature is the
most similar (cosine, :func:`dense_correspondence`), its negatives a queue of dense keys
(:func:`densecl_dense_loss`). The total is ``(1 - lambda) L_global + lambda L_dense``, lambda = 0.5.

Example::

    idx = dense_correspondence(backbone_q.flatten(2), backbone_k.flatten(2))     # B x N
    loss, logits = densecl_dense_loss(dense_q, dense_k, idx, queue, temperature=0.2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dense_correspondence", "densecl_dense_loss"]


def dense_correspondence(q_feat: torch.Tensor, k_feat: torch.Tensor) -> torch.Tensor:
    """For each query location, the key location of highest cosine similarity.

    Args:
        q_feat: ``B x C x N`` backbone features of the query view (flattened locations).
        k_feat: ``B x C x M`` of the key view.

    Returns:
        ``B x N`` long indices into ``M``.
    """
    sim = torch.einsum("bcn,bcm->bnm", F.normalize(q_feat, dim=1), F.normalize(k_feat, dim=1))
    return sim.argmax(dim=2)


def densecl_dense_loss(
    q: torch.Tensor, k: torch.Tensor, index: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense InfoNCE: each query location against its matched key location and a queue of negatives.

    Args:
        q: ``B x d x N`` L2-normalised (over ``d``) dense query projections.
        k: ``B x d x M`` normalised dense key projections (no gradient needed).
        index: ``B x N`` the matched key location of each query location.
        queue: ``K x d`` normalised negative keys.

    Returns:
        ``(loss, logits)``: the mean over the ``B N`` locations of
        ``-log exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.queue_j/T))`` and the ``BN x (1 + K)``
        logits (positive in column 0).
    """
    positive = k.gather(2, index[:, None, :].expand(-1, k.shape[1], -1))  # B x d x N
    l_pos = (q * positive).sum(dim=1)  # B x N
    l_neg = torch.einsum("bdn,kd->bnk", q, queue)  # B x N x K
    logits = torch.cat([l_pos.unsqueeze(-1), l_neg], dim=-1).flatten(0, 1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels), logits
