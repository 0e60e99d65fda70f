"""DetCon (Hénaff et al., "Efficient Visual Pretraining with Contrastive Detection", ICCV 2021).

Both views of an image carry the same region ids (the view sampler crops the mask with each view).
A step samples up to ``R`` regions per image that appear in both views (:func:`sample_regions`),
averages the feature map over each region at feature resolution (:func:`region_pool`), projects
the pooled vectors and contrasts them across views (:func:`region_contrastive_loss`): a region's
positive is the same region in the other view; its negatives are every other region of the batch
in both views (of every process under DDP).

Example::

    ids, valid, dropped = sample_regions(views.query_mask, views.key_mask, per_image=16)
    pooled_q, valid_q = region_pool(feat_q, views.query_mask, ids, valid)     # B x R x C
    pooled_k, valid_k = region_pool(feat_k, views.key_mask, ids, valid)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MAX_REGION_ID", "sample_regions", "region_pool", "region_contrastive_loss"]

#: region ids are uint8 mask values
MAX_REGION_ID = 255


def sample_regions(
    query_mask: torch.Tensor, key_mask: torch.Tensor, per_image: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``per_image`` region ids per image, drawn uniformly among the ids present in both views.

    Uses torch's global generator (the trainer seeds it every step).

    Args:
        query_mask, key_mask: ``B x H x W`` long ids in ``0..255`` of the two views.
        per_image: ``R``, the regions kept per image.

    Returns:
        ``(ids, valid, dropped)``: ``B x R`` long ids, ``B x R`` bool (False where the image has
        fewer than ``R`` shared regions), and a 0-d float tensor counting the regions present in
        one view only (they vanished from the other view's crop).
    """
    b = query_mask.shape[0]
    n = MAX_REGION_ID + 1
    ones = torch.ones_like(query_mask.view(b, -1), dtype=torch.float32)
    in_q = torch.zeros(b, n, device=query_mask.device).scatter_add_(1, query_mask.view(b, -1), ones) > 0
    in_k = torch.zeros(b, n, device=key_mask.device).scatter_add_(1, key_mask.view(b, -1), ones) > 0
    both = in_q & in_k
    score = torch.rand(b, n, device=query_mask.device).masked_fill_(~both, -1.0)
    top, ids = score.topk(min(per_image, n), dim=1)
    return ids, top >= 0, (in_q ^ in_k).sum().float()


def region_pool(
    features: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the feature map over each region, the region's mask downsampled by area.

    Args:
        features: ``B x C x h x w``.
        mask: ``B x H x W`` long ids (``H, W`` multiples of ``h, w`` give exact area pooling).
        ids: ``B x R`` region ids; valid: ``B x R`` bool.

    Returns:
        ``(pooled, valid)``: ``B x R x C`` (zeros for invalid regions) and ``B x R`` bool, False
        also where a region has no area left at feature resolution.
    """
    onehot = (mask[:, None] == ids[:, :, None, None]) & valid[:, :, None, None]
    weights = F.adaptive_avg_pool2d(onehot.to(features.dtype), features.shape[-2:])  # B x R x h x w
    area = weights.sum(dim=(2, 3))
    pooled = torch.einsum("bchw,brhw->brc", features, weights) / area.clamp_min(1e-12).unsqueeze(-1)
    return pooled, valid & (area > 0)


def region_contrastive_loss(
    q: torch.Tensor,
    k_other: torch.Tensor,
    k_same: torch.Tensor,
    row_valid: torch.Tensor,
    col_valid: torch.Tensor,
    temperature: float,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DetCon's loss for one direction (view a -> view b), mean over the valid rows.

    Row ``i`` of ``q`` (a region in view a) is classified among every valid column of ``k_other``
    (view b; the positive is column ``offset + i``, the same region) and every valid column of
    ``k_same`` (view a) except column ``offset + i`` itself:
    ``-log exp(q_i.kb_{o+i}/T) / (sum_j exp(q_i.kb_j/T) + sum_{j != o+i} exp(q_i.ka_j/T))``.

    Args:
        q: ``N x d`` L2-normalised regions of this process in view a.
        k_other: ``M x d`` normalised regions of every process in view b (``M >= offset + N``).
        k_same: ``M x d`` the same in view a.
        row_valid: ``N`` bool; col_valid: ``M`` bool (invalid regions are neither rows nor columns).
        offset: where this process's regions start among the ``M`` columns.

    Returns:
        ``(loss, logits, labels)``: a 0-d loss (0 when no row is valid), the ``N x 2M`` logits and
        the ``N`` positive columns (for accuracy).
    """
    n = q.shape[0]
    labels = torch.arange(n, device=q.device) + offset
    logits_other = (q @ k_other.t()) / temperature
    logits_same = (q @ k_same.t()) / temperature
    neg_inf = torch.finfo(logits_other.dtype).min
    logits_other = logits_other.masked_fill(~col_valid[None, :], neg_inf)
    self_col = F.one_hot(labels, k_same.shape[0]).bool()
    logits_same = logits_same.masked_fill(~col_valid[None, :] | self_col, neg_inf)
    logits = torch.cat([logits_other, logits_same], dim=1)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    w = row_valid.to(per_row.dtype)
    loss = (per_row * w).sum() / w.sum().clamp_min(1.0)
    return loss, logits, labels
