"""The math of both objectives, as small pure functions with shapes in their docstrings.

MaskContrast (Van Gansbeke et al., ICCV 2021), generalised to several objects per image:

* :func:`mask_prototypes`: one prototype per (image, object id): the sum of the L2-normalised key
  embeddings inside the object's mask, L2-normalised again.
* :func:`pixel_prototype_logits`: every query pixel that lies on an object which has a prototype
  is compared with all prototypes of the (global) batch and the memory bank, divided by T; its
  label is the index of its own prototype.
* :func:`enet_class_weights`: ``w_c = 1 / log(1.02 + p_c)`` with ``p_c`` the share of class ``c``
  among the labels of the batch.
* :func:`weighted_cross_entropy`: ``sum_i w_{y_i} CE_i / sum_i w_{y_i}``.
* :func:`balanced_bce`: binary cross-entropy whose positive and negative pixels are weighted by
  the share of the other side.

MoCo v2: :func:`info_nce_logits` and :func:`info_nce_loss`.

Example::

    protos, owner = mask_prototypes(F.normalize(key_emb, dim=1), key_mask)   # P x D, P x 2
    q, pix_label = query_pixels(F.normalize(query_emb, dim=1), query_mask, owner)
    logits = pixel_prototype_logits(q, protos, queue, temperature=0.5)       # N x (P + K)
    loss = weighted_cross_entropy(logits, pix_label, enet_class_weights(pix_label, logits.shape[1]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "mask_prototypes",
    "query_pixels",
    "pixel_prototype_logits",
    "enet_class_weights",
    "weighted_cross_entropy",
    "balanced_bce",
    "info_nce_logits",
    "info_nce_loss",
    "topk_accuracy",
]


def mask_prototypes(embedding: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One L2-normalised prototype per object of every image.

    Args:
        embedding: ``B x D x H x W`` L2-normalised (over D) pixel embeddings.
        mask: ``B x H x W`` integer object ids, 0 = background, 1..n = objects.

    Returns:
        ``(prototypes, owner)``: ``P x D`` unit vectors, one per (image, object id) that has at
        least one pixel, ordered by image then object id; and ``P x 2`` long ``(image, object id)``.
        ``P = 0`` gives empty tensors.

    Example::

        protos, owner = mask_prototypes(F.normalize(emb, dim=1), mask)
    """
    if embedding.dim() != 4 or mask.dim() != 3 or embedding.shape[0] != mask.shape[0]:
        raise ValueError(f"expected embedding B x D x H x W and mask B x H x W, got {tuple(embedding.shape)} "
                         f"and {tuple(mask.shape)}")  # fmt: skip
    if embedding.shape[2:] != mask.shape[1:]:
        raise ValueError(f"embedding size {tuple(embedding.shape[2:])} != mask size {tuple(mask.shape[1:])}")
    b, d = embedding.shape[:2]
    mask = mask.long()
    n_ids = int(mask.max().item()) + 1 if mask.numel() else 1
    fg = mask > 0  # B x H x W
    seg = (mask + torch.arange(b, device=mask.device).view(b, 1, 1) * n_ids)[fg]  # N_fg global segment ids
    emb = embedding.permute(0, 2, 3, 1)[fg]  # N_fg x D, gathered without copying the whole map
    sums = embedding.new_zeros(b * n_ids, d).index_add_(0, seg, emb)
    flat_seg = seg
    counts = torch.bincount(flat_seg, minlength=b * n_ids)
    present = torch.nonzero(counts > 0).squeeze(1)
    owner = torch.stack([present // n_ids, present % n_ids], dim=1)
    return F.normalize(sums[present], dim=1), owner


def query_pixels(
    embedding: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor, image_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query pixels that take part in the contrast, and their labels.

    A pixel takes part when it lies on an object (``mask > 0``) that has a prototype in ``owner``
    (an object can leave the key view while it stays in the query view).

    Args:
        embedding: ``B x D x H x W`` L2-normalised query embeddings.
        mask: ``B x H x W`` object ids of the query view.
        owner: ``P x 2`` ``(image, object id)`` of every prototype, image indices global over ranks.
        image_offset: the global index of this process's first image (``rank * B`` under DDP).

    Returns:
        ``(q, labels)``: ``N x D`` embeddings and ``N`` long indices into the prototypes.
    """
    b = embedding.shape[0]
    mask = mask.long()
    n_ids = (
        int(max(int(mask.max().item()) if mask.numel() else 0, int(owner[:, 1].max().item()) if len(owner) else 0)) + 1
    )
    lut = torch.full((b * n_ids,), -1, dtype=torch.long, device=mask.device)
    local = (owner[:, 0] >= image_offset) & (owner[:, 0] < image_offset + b)
    idx = torch.nonzero(local).squeeze(1)
    lut[(owner[idx, 0] - image_offset) * n_ids + owner[idx, 1]] = idx
    fg = mask > 0
    labels = lut[(mask + torch.arange(b, device=mask.device).view(b, 1, 1) * n_ids)[fg]]  # N_fg
    keep = labels >= 0
    q = embedding.permute(0, 2, 3, 1)[fg]  # N_fg x D, gathered without copying the whole map
    if not bool(keep.all()):
        q, labels = q[keep], labels[keep]
    return q, labels


def pixel_prototype_logits(
    query: torch.Tensor, prototypes: torch.Tensor, queue: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Similarities of pixels to the batch prototypes and the memory bank, divided by T.

    Args:
        query: ``N x D`` L2-normalised pixel embeddings.
        prototypes: ``P x D`` L2-normalised prototypes of the (global) batch.
        queue: ``K x D`` L2-normalised earlier prototypes, or None.
        temperature: T > 0.

    Returns:
        ``N x (P + K)`` logits; column ``j < P`` is prototype ``j``, column ``P + k`` is queue entry ``k``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    keys = prototypes if queue is None or len(queue) == 0 else torch.cat([prototypes, queue.to(prototypes.dtype)])
    return query @ (keys.t() / temperature)  # scale the few keys, not the N x (P + K) logits


def enet_class_weights(labels: torch.Tensor, num_classes: int, c: float = 1.02) -> torch.Tensor:
    """ENet class weights ``w_k = 1 / log(c + p_k)``, ``p_k`` = share of label ``k`` in ``labels``.

    Args:
        labels: ``N`` long in ``0..num_classes-1``.
        num_classes: C.

    Returns:
        ``C`` float weights (classes absent from ``labels`` get ``1 / log(c)``).
    """
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].float()
    p = counts / counts.sum().clamp(min=1.0)
    return 1.0 / torch.log(c + p)


class _WeightedCrossEntropy(torch.autograd.Function):
    """``sum_i r_i (logsumexp(x_i) - x_{i, y_i}) / sum_i r_i`` with a fused backward: the gradient
    ``r_i / R * (softmax(x_i) - onehot(y_i))`` is built in place in one ``N x C`` buffer (the
    autograd graph of ``F.cross_entropy`` needs several; this matters for the ~10^5 pixels x
    (P + K) prototypes of a MaskContrast batch)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lse = torch.logsumexp(logits, dim=1)
        picked = logits.gather(1, labels.view(-1, 1)).squeeze(1)
        total = row_weights.sum()
        ctx.save_for_backward(logits, lse, labels, row_weights, total)
        return ((lse - picked) * row_weights).sum() / total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        logits, lse, labels, row_weights, total = ctx.saved_tensors
        g = (logits - lse.unsqueeze(1)).exp_()
        g[torch.arange(len(labels), device=labels.device), labels] -= 1.0
        g.mul_((row_weights * (grad / total)).unsqueeze(1))
        return g, None, None


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted mean cross-entropy ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` (plain mean without
    weights); the value and gradient of ``F.cross_entropy(logits, labels, weight=weights)``,
    computed with less memory traffic.

    Args:
        logits: ``N x C``; labels: ``N`` long; weights: ``C`` or None.

    Returns:
        A scalar; 0 (with a graph to ``logits``) when ``N = 0``.
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    row_weights = torch.ones_like(labels, dtype=logits.dtype) if weights is None else weights.to(logits.dtype)[labels]
    return _WeightedCrossEntropy.apply(logits, labels, row_weights)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Balanced binary cross-entropy (HED style), averaged over all pixels.

    ``L = -(1/N) [ beta * sum_{pos} log s(x) + (1 - beta) * sum_{neg} log(1 - s(x)) ]`` with
    ``beta = N_neg / N`` and ``s`` the sigmoid.

    Args:
        logits: ``B x 1 x H x W`` or ``B x H x W`` saliency logits.
        target: same number of elements, 1 = salient, 0 = background.
    """
    x = logits.reshape(-1).float()
    t = target.reshape(-1).to(x.dtype)
    if x.shape != t.shape:
        raise ValueError(f"logits ({logits.numel()}) and target ({target.numel()}) differ in size")
    n = x.numel()
    beta = (n - t.sum()) / max(n, 1)
    # log s(x) = -softplus(-x), log(1 - s(x)) = -softplus(x)
    loss_pos = (t * F.softplus(-x)).sum()
    loss_neg = ((1 - t) * F.softplus(x)).sum()
    return (beta * loss_pos + (1 - beta) * loss_neg) / max(n, 1)


def info_nce_logits(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo logits: the positive ``q . k`` first, then ``q . queue``, all divided by T.

    Args:
        query: ``B x D`` and key: ``B x D`` L2-normalised; queue: ``K x D`` L2-normalised.

    Returns:
        ``(logits B x (1 + K), labels B)`` with all labels 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pos = (query * key).sum(dim=1, keepdim=True)
    neg = query @ queue.to(query.dtype).t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return logits, torch.zeros(len(query), dtype=torch.long, device=query.device)


def info_nce_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-log( exp(q.k/T) / (exp(q.k/T) + sum_j exp(q.n_j/T)) )`` averaged over the batch."""
    logits, labels = info_nce_logits(query, key, queue, temperature)
    return F.cross_entropy(logits.float(), labels)


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5), max_rows: int = 0
) -> list[torch.Tensor]:
    """Share of rows whose label is among the ``k`` highest logits (ties count in the label's favour).

    Args:
        logits: ``N x C``; labels: ``N``.
        max_rows: > 0: estimate from every ``ceil(N / max_rows)``-th row only (a cheap metric for
            the hundreds of thousands of pixels of a MaskContrast batch).

    Returns:
        One scalar tensor per ``k`` (0 when ``N = 0``).
    """
    if labels.numel() == 0:
        return [logits.new_zeros(()) for _ in ks]
    if max_rows > 0 and len(labels) > max_rows:
        step = -(-len(labels) // max_rows)
        logits, labels = logits[::step], labels[::step]
    with torch.no_grad():
        own = logits.gather(1, labels.view(-1, 1))
        rank = (logits > own).sum(dim=1)  # how many classes beat the label
        return [(rank < k).float().mean() for k in ks]
