"""The math of both objectives, as small pure functions with shapes in their docstrings.

MaskContrast (Van Gansbeke et al., ICCV 2021), generalised to several objects per image:

* prototypes and upsampling live in :mod:`maskcontrast.embeddings` (:func:`mask_prototypes`:
  one prototype per (image, object id), the sum of the L2-normalised key embeddings inside the
  object's mask, L2-normalised again; :func:`upsampled_pixels`: the bilinearly upsampled
  embeddings at chosen pixels only).
* :func:`pixel_prototype_logits`: every query pixel that lies on an object which has a prototype
  is compared with all prototypes of the (global) batch and the memory bank, divided by T; its
  label is the index of its own prototype.
* :func:`pixel_contrastive_loss`: the ENet-weighted cross-entropy of those logits, computed in
  row chunks without ever holding the ``N x (P + K)`` logits (the same value and gradient as
  a class-weighted cross-entropy of :func:`pixel_prototype_logits`, which the tests hold as reference).
* :func:`enet_class_weights`: ``w_c = 1 / log(1.02 + p_c)`` with ``p_c`` the share of class ``c``
  among the labels of the batch.
* :func:`balanced_bce`: binary cross-entropy whose positive and negative pixels are weighted by
  the share of the other side.

MoCo v2: :func:`info_nce_logits` and :func:`info_nce_loss`.

Example::

    # key_emb, query_emb: B x D x h x w at feature resolution; masks: B x H x W at input resolution
    protos, owner = mask_prototypes(key_emb, key_mask)                       # P x D, P x 2
    q_raw, pix_label = query_pixels(query_emb, query_mask, owner)            # N x D, N
    q = F.normalize(q_raw, dim=1)
    weights = enet_class_weights(pix_label, len(protos) + len(queue))
    loss = pixel_contrastive_loss(q, protos, queue, pix_label, 0.5, weights)
    # the same, with the N x (P + K) logits held in memory:
    logits = pixel_prototype_logits(q, protos, queue, temperature=0.5)
    loss = F.cross_entropy(logits, pix_label, weight=weights)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskcontrast.embeddings import upsampled_pixels

__all__ = [
    "CLASS_WEIGHTINGS",
    "full_precision",
    "query_pixels",
    "pixel_prototype_logits",
    "pixel_contrastive_loss",
    "contrastive_chunk_rows",
    "maskcontrast_pixel_loss",
    "enet_class_weights",
    "balanced_bce",
    "info_nce_logits",
    "info_nce_loss",
    "topk_accuracy",
]


#: the class weightings of the MaskContrast pixel loss (:func:`maskcontrast_pixel_loss`)
CLASS_WEIGHTINGS = ("enet", "none")


def check_temperature(value: float, key: str = "objective.temperature") -> float:
    """``value`` as a float, or a ValueError naming ``key`` when it is not > 0 (the one check of every
    contrastive temperature)."""
    if not float(value) > 0:
        raise ValueError(f"{key} must be > 0, got {value}")
    return float(value)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 (e.g. from autocast) -> fp32; fp32 and fp64 stay as they are. The loss math
    runs in at least fp32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def query_pixels(
    embedding: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor, image_offset: int = 0, n_ids: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query pixels that take part in the contrast, and their labels.

    A pixel takes part when it lies on an object (``mask > 0``) that has a prototype in ``owner``
    (an object can leave the key view while it stays in the query view).

    Args:
        embedding: ``B x D x h x w`` query embeddings, ``h <= H``, ``w <= W`` (bilinearly
            upsampled to the mask's size at the chosen pixels only).
        mask: ``B x H x W`` object ids of the query view.
        owner: ``P x 2`` ``(image, object id)`` of every prototype, image indices global over ranks.
        image_offset: the global index of this process's first image (``rank * B`` under DDP).
        n_ids: more than every object id of ``mask`` and of this process's prototypes (None:
            computed, one host sync).

    Returns:
        ``(q, labels)``: ``N x D`` embeddings (not normalised) and ``N`` long indices into the
        prototypes, in (image, row, column) order.
    """
    b = mask.shape[0]
    mask = mask.long()
    if n_ids is None:
        tops = ([mask.max()] if mask.numel() else []) + ([owner[:, 1].max()] if len(owner) else [])
        n_ids = int(torch.stack(tops).max().item()) + 1 if tops else 1  # one host sync
    # prototype j -> its (image, object) slot; prototypes of other processes go to a spare last slot
    lut = torch.full((b * n_ids + 1,), -1, dtype=torch.long, device=mask.device)
    local = (owner[:, 0] >= image_offset) & (owner[:, 0] < image_offset + b)
    slot = torch.where(local, (owner[:, 0] - image_offset) * n_ids + owner[:, 1], b * n_ids)
    lut[slot] = torch.arange(len(owner), device=mask.device)
    lut = lut[: b * n_ids]
    pixel_label = lut[mask + torch.arange(b, device=mask.device).view(b, 1, 1) * n_ids]  # B x H x W, -1 = out
    select = pixel_label >= 0
    return upsampled_pixels(embedding, select), pixel_label[select]


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


class _PixelContrastiveCE(torch.autograd.Function):
    """``sum_i r_i (logsumexp_j(q_i . k_j) - q_i . k_{y_i}) / sum_i r_i``, computed ``chunk`` rows at a
    time: the forward keeps only the ``N`` log-sum-exps, the backward recomputes each chunk's logits
    and turns them into ``r_i / R * (softmax - onehot)`` in place. Peak extra memory is
    ``chunk x C`` instead of several ``N x C`` buffers, which on a CPU also saves the page faults
    of allocating them every step."""

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        keys: torch.Tensor,
        labels: torch.Tensor,
        row_weights: torch.Tensor,  # type: ignore[override]
        chunk: int,
    ) -> torch.Tensor:
        n = q.shape[0]
        kt = keys.t()
        lse = q.new_empty(n)
        for s in range(0, n, chunk):
            torch.logsumexp(q[s : s + chunk] @ kt, dim=1, out=lse[s : s + chunk])
        picked = (q * keys.index_select(0, labels)).sum(dim=1)
        total = row_weights.sum()
        ctx.save_for_backward(q, keys, labels, row_weights, lse, total)
        ctx.chunk = chunk
        return ((lse - picked) * row_weights).sum() / total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, keys, labels, row_weights, lse, total = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = row_weights * (grad / total)  # N
        kt = keys.t()
        grad_q = torch.empty_like(q) if need_q else None
        grad_k = torch.zeros_like(keys) if need_k else None
        for s in range(0, q.shape[0], ctx.chunk):
            rows = slice(s, s + ctx.chunk)
            g = torch.addmm(lse[rows].neg().unsqueeze(1), q[rows], kt).exp_()  # softmax of the chunk
            g.mul_(scale[rows].unsqueeze(1))
            if need_q:
                torch.mm(g, keys, out=grad_q[rows])  # type: ignore[index]
            if need_k:
                grad_k.addmm_(g.t(), q[rows])  # type: ignore[union-attr]
        # the one-hot part: - r_i / R at (i, y_i)
        if need_q:
            grad_q.sub_(keys.index_select(0, labels) * scale.unsqueeze(1))  # type: ignore[union-attr]
        if need_k:
            grad_k.index_add_(0, labels, q * scale.unsqueeze(1), alpha=-1.0)  # type: ignore[union-attr]
        return grad_q, grad_k, None, None, None


def pixel_contrastive_loss(
    query: torch.Tensor,
    prototypes: torch.Tensor,
    queue: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    class_weights: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """The MaskContrast pixel loss: class-weighted cross-entropy of every pixel against the batch
    prototypes and the memory bank, without holding the ``N x (P + K)`` logits.

    Same value and gradients as ``F.cross_entropy(pixel_prototype_logits(query, prototypes, queue,
    temperature), labels, weight=class_weights)``, computed in float32 (float64 stays float64).

    Args:
        query: ``N x D`` L2-normalised pixel embeddings.
        prototypes: ``P x D`` and queue: ``K x D`` (or None) L2-normalised keys.
        labels: ``N`` long in ``0..P-1``.
        temperature: T > 0.
        class_weights: ``P + K`` weights (e.g. :func:`enet_class_weights`) or None for a plain mean.
        chunk_rows: pixels per chunk (memory ``chunk_rows x (P + K)``); None:
            :func:`contrastive_chunk_rows` (4,096 on a CPU, sized by the free memory on CUDA).

    Returns:
        A scalar; 0 (with a graph to ``query``) when ``N = 0``.

    Example::

        w = enet_class_weights(labels, len(protos) + len(queue))
        loss = pixel_contrastive_loss(F.normalize(q, dim=1), protos, queue, labels, 0.5, w)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if labels.numel() == 0:
        return query.sum() * 0.0
    query = full_precision(query)
    keys = prototypes if queue is None or len(queue) == 0 else torch.cat([prototypes, queue.to(prototypes.dtype)])
    if chunk_rows is None:
        chunk_rows = contrastive_chunk_rows(len(keys), query.device, query.element_size())
    keys = keys.to(query.dtype) / temperature
    if class_weights is not None and len(class_weights) != len(keys):
        raise ValueError(f"class_weights has {len(class_weights)} entries for {len(keys)} prototypes + queue entries")
    row_weights = (
        torch.ones_like(labels, dtype=query.dtype) if class_weights is None else class_weights.to(query.dtype)[labels]
    )
    return _PixelContrastiveCE.apply(query, keys, labels, row_weights, int(chunk_rows))


#: rows per chunk of the pixel loss on a CPU (and the least anywhere)
CPU_CHUNK_ROWS = 4096


def contrastive_chunk_rows(
    n_keys: int, device: torch.device, itemsize: int = 4, fraction: float = 0.25, max_rows: int = 1 << 22
) -> int:
    """Rows per chunk of :func:`pixel_contrastive_loss`.

    On a CPU: 4,096 (measured; larger chunks only add page faults). On CUDA: as many as fit in
    ``fraction`` of the free device memory (``torch.cuda.mem_get_info``), counting four
    ``rows x n_keys`` buffers (the chunk's logits and the temporaries of its log-sum-exp in the
    forward; its softmax and gradient in the backward), between 4,096 and ``max_rows``. A
    MaskContrast batch of 128 views at 224 px has about 2.5 M object pixels: at 4,096 rows that is
    600 chunks, each a handful of small kernel launches, per forward and again per backward.
    """
    if device.type != "cuda":
        return CPU_CHUNK_ROWS
    free, _ = torch.cuda.mem_get_info(device)
    rows = int(free * fraction) // max(4 * n_keys * itemsize, 1)
    return int(min(max(rows, CPU_CHUNK_ROWS), max_rows))


def maskcontrast_pixel_loss(
    query_embedding: torch.Tensor,
    query_mask: torch.Tensor,
    prototypes: torch.Tensor,
    owner: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
    class_weighting: str = "enet",
    image_offset: int = 0,
    n_ids: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MaskContrast contrastive term from the query embeddings and the (gathered) prototypes.

    :func:`query_pixels`, L2 normalisation, :func:`enet_class_weights` (or none) and
    :func:`pixel_contrastive_loss`, in that order.

    Args:
        query_embedding: ``B x D x h x w`` query embeddings (feature resolution or input resolution).
        query_mask: ``B x H x W`` object ids of the query view.
        prototypes: ``P x D`` and owner: ``P x 2`` from :func:`mask_prototypes` (gathered over ranks).
        queue: ``K x D`` memory bank or None; temperature: T > 0.
        class_weighting: ``"enet"`` or ``"none"``.
        image_offset: the global index of this process's first image.
        n_ids: see :func:`query_pixels`.

    Returns:
        ``(loss, q, labels)``: the scalar loss, the ``N x D`` normalised query pixels and their
        ``N`` labels (for accuracy metrics).
    """
    if class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {class_weighting!r}")
    q_raw, labels = query_pixels(query_embedding, query_mask, owner, image_offset=image_offset, n_ids=n_ids)
    q = F.normalize(q_raw, dim=1)
    n_keys = len(prototypes) + (0 if queue is None else len(queue))
    weights = enet_class_weights(labels, n_keys) if class_weighting == "enet" else None
    return pixel_contrastive_loss(q, prototypes, queue, labels, temperature, weights), q, labels


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


def info_nce_loss(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float, return_logits: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``-log( exp(q.k/T) / (exp(q.k/T) + sum_j exp(q.n_j/T)) )`` averaged over the batch.

    With ``return_logits``: ``(loss, logits B x (1 + K), labels B)`` (for accuracy metrics).
    """
    logits, labels = info_nce_logits(query, key, queue, temperature)
    loss = F.cross_entropy(logits.float(), labels)
    return (loss, logits, labels) if return_logits else loss


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
