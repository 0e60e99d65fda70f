"""Pixel embeddings: upsampling, L2 normalisation and mask prototypes, in one home.

The losses (training), the API (``FeatureModel.embed``) and the evaluation (K-means, retrieval,
segment-by-example) all use these:

* :func:`upsample_embedding`: ``B x D x h x w`` -> ``B x D x H x W``, bilinear then unit norm.
* :func:`upsampled_pixels`: the bilinearly upsampled embeddings at chosen pixels only (the
  network's output stays at feature resolution; no full-resolution map, and no gradient buffer of
  that size, is ever made).
* :func:`normalised_pixels`: unit-norm upsampled embeddings of (some) pixels, optionally
  projected, in channel chunks so that 2048-d baselines stay memory-bounded.
* :func:`mask_prototypes`: one prototype per (image, object id): the sum of the L2-normalised
  embeddings inside the object's mask, L2-normalised again.
* :func:`masked_mean_embedding`: the same prototype for one mask of one image, in channel chunks.

Example::

    protos, owner = mask_prototypes(key_emb, key_mask)          # P x D, P x 2
    q = upsampled_pixels(query_emb, query_mask > 0)             # N x D at input resolution
    emb = upsample_embedding(out.embedding, (H, W))             # B x D x H x W, unit norm
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "CHUNK_BYTES",
    "upsample_embedding",
    "upsampled_pixels",
    "normalised_pixels",
    "mask_prototypes",
    "masked_mean_embedding",
    "pixel_sums",
]

#: bytes of one upsampled channel chunk (keeps high-dimensional baselines memory-bounded)
CHUNK_BYTES = 1 << 27


def upsample_embedding(emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x D x h x w`` raw embeddings -> ``B x D x H x W`` L2-normalised (bilinear, then normalise)."""
    if tuple(emb.shape[-2:]) != tuple(size):
        emb = F.interpolate(emb.float(), size=size, mode="bilinear", align_corners=False)
    return F.normalize(emb.float(), dim=1)


def _source_index(out_size: int, in_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (``align_corners=False``) source rows of every output row: ``(i0, i1, lambda)``,
    output = ``(1 - lambda) * in[i0] + lambda * in[i1]`` (torch's rule: ``src = (dst + 0.5) *
    in / out - 0.5``, clamped at 0). Computed in float64."""
    src = (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5
    src = src.clamp_(min=0.0)
    i0 = src.long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, src - i0


def upsampled_pixels(features: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """The bilinearly upsampled features at the selected pixels only.

    Equal, up to float rounding, to
    ``F.interpolate(features, select.shape[1:], mode="bilinear", align_corners=False)
    .permute(0, 2, 3, 1)[select]``, without making the ``B x D x H x W`` map: the width is
    upsampled first (``B x D x h x W``), then each selected pixel blends its two source rows.

    Args:
        features: ``B x D x h x w`` with ``h <= H`` and ``w <= W``.
        select: ``B x H x W`` bool.

    Returns:
        ``N x D`` in (image, row, column) order, ``N = select.sum()``; differentiable in ``features``.

    Example::

        q = upsampled_pixels(out.embedding, mask > 0)      # the salient pixels at input resolution
    """
    if features.dim() != 4 or select.dim() != 3 or features.shape[0] != select.shape[0]:
        raise ValueError(
            f"expected features B x D x h x w and a selection B x H x W, got "
            f"{tuple(features.shape)} and {tuple(select.shape)}"
        )
    b, d, h, w = features.shape
    big_h, big_w = select.shape[1:]
    if h > big_h or w > big_w:
        raise ValueError(
            f"features of size {(h, w)} are larger than the mask size {(big_h, big_w)}; "
            "pass features at the mask's resolution or below"
        )
    if (h, w) == (big_h, big_w):
        return features.permute(0, 2, 3, 1)[select]
    rows = features if w == big_w else F.interpolate(features, size=(h, big_w), mode="bilinear", align_corners=False)
    rows = rows.permute(0, 2, 3, 1).reshape(b * h * big_w, d)  # a view when channels_last
    bi, yi, xi = torch.nonzero(select, as_tuple=True)
    if h == big_h:
        return rows.index_select(0, (bi * h + yi) * big_w + xi)
    y0, y1, lam = _source_index(big_h, h, features.device)
    base = bi * (h * big_w) + xi
    top = rows.index_select(0, base + y0[yi] * big_w)
    bottom = rows.index_select(0, base + y1[yi] * big_w)
    return torch.lerp(top, bottom, lam[yi].to(rows.dtype).unsqueeze(1))


def mask_prototypes(
    embedding: torch.Tensor, mask: torch.Tensor, n_ids: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One L2-normalised prototype per object of every image.

    Every object pixel's embedding (bilinearly upsampled to the mask's size, at those pixels only,
    when the embedding is smaller) is L2-normalised; a prototype is their sum, L2-normalised.

    Args:
        embedding: ``B x D x h x w`` pixel embeddings, ``h <= H``, ``w <= W``.
        mask: ``B x H x W`` integer object ids, 0 = background, 1..n = objects.
        n_ids: more than the largest id (None: ``mask.max() + 1``, a host sync; a caller that
            knows a bound passes it).

    Returns:
        ``(prototypes, owner)``: ``P x D`` unit vectors, one per (image, object id) that has at
        least one pixel, ordered by image then object id; and ``P x 2`` long ``(image, object id)``.
        ``P = 0`` gives empty tensors.

    Example::

        protos, owner = mask_prototypes(key_embedding, key_mask)
    """
    if embedding.dim() != 4 or mask.dim() != 3 or embedding.shape[0] != mask.shape[0]:
        raise ValueError(
            f"expected embedding B x D x h x w and mask B x H x W, got {tuple(embedding.shape)} and {tuple(mask.shape)}"
        )
    b, d = embedding.shape[:2]
    mask = mask.long()
    if n_ids is None:
        n_ids = int(mask.max().item()) + 1 if mask.numel() else 1
    fg = mask > 0  # B x H x W
    seg = (mask + torch.arange(b, device=mask.device).view(b, 1, 1) * n_ids)[fg]  # N_fg global segment ids
    emb = F.normalize(upsampled_pixels(embedding, fg), dim=1)  # N_fg x D
    sums = emb.new_zeros(b * n_ids, d).index_add_(0, seg, emb)
    counts = torch.bincount(seg, minlength=b * n_ids)
    present = torch.nonzero(counts > 0).squeeze(1)
    owner = torch.stack([present // n_ids, present % n_ids], dim=1)
    return F.normalize(sums[present], dim=1), owner


def _channel_chunks(emb: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(channels, c x H*W upsampled chunk)`` of a ``1 x D x h x w`` embedding."""
    d = emb.shape[1]
    step = max(1, min(d, CHUNK_BYTES // max(1, 4 * size[0] * size[1])))
    for c0 in range(0, d, step):
        part = emb[:, c0 : c0 + step].float()
        if tuple(part.shape[-2:]) != tuple(size):
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        yield slice(c0, c0 + part.shape[1]), part[0].reshape(part.shape[1], -1)


def _chunks(emb: torch.Tensor, size: tuple[int, int]) -> list[tuple[slice, torch.Tensor]] | None:
    """All upsampled chunks at once when they fit in one chunk (the common 32-d case), else None."""
    if emb.shape[1] * size[0] * size[1] * 4 <= CHUNK_BYTES:
        return list(_channel_chunks(emb, size))
    return None


def _inverse_norms(chunks: Any) -> torch.Tensor:
    sq = None
    for _, chunk in chunks:
        s = chunk.square().sum(0)
        sq = s if sq is None else sq + s
    assert sq is not None
    return sq.sqrt().clamp_min(1e-12).reciprocal()


def normalised_pixels(
    emb: torch.Tensor,
    size: tuple[int, int],
    index: torch.Tensor | None = None,
    proj: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """L2-normalised embeddings of pixels at resolution ``size``, optionally projected.

    Equals ``upsample_embedding(emb, size)`` (bilinear, then unit norm) flattened to ``H*W x D``,
    restricted to the flat pixel ``index``, then ``(x - mean) @ W`` when ``proj = (mean, W)``,
    but computed in channel chunks so that high-dimensional baselines (2048-d) stay within
    ~128 MiB per chunk.

    Args:
        emb: ``1 x D x h x w`` raw embeddings. size: ``(H, W)``.
        index: ``(N,)`` int64 flat pixel indices (None: all ``H*W``).
        proj: ``mean (D,)``, ``W (D x d)``.

    Returns:
        ``N x D`` (or ``N x d``) float32.
    """
    cached = _chunks(emb, size)
    inv = _inverse_norms(cached if cached is not None else _channel_chunks(emb, size))
    if index is not None:
        inv = inv[index]
    parts = []
    out = None
    for sl, chunk in cached if cached is not None else _channel_chunks(emb, size):
        part = (chunk if index is None else chunk[:, index]) * inv  # c x N
        if proj is not None:
            y = part.T @ proj[1][sl].float()
            out = y if out is None else out + y
        else:
            parts.append(part.T)
    if proj is None:
        return torch.cat(parts, 1).contiguous()
    assert out is not None
    return (out - proj[0].float() @ proj[1].float()).contiguous()


def masked_mean_embedding(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The prototype of a mask: mean of the unit embeddings inside it, re-normalised (the
    prototype :func:`mask_prototypes` gives a one-object mask), from :func:`pixel_sums`, so the
    upsampled ``D x H x W`` map is never made (a 512-d backbone map on a 375 x 500 Pet image: 1.6 s
    -> 0.04 s of CPU, equal to 1e-7).

    Args:
        emb: ``1 x D x h x w`` raw embeddings; mask: ``H x W`` bool at the evaluation resolution.

    Returns:
        ``(D,)`` unit vector, or None for an empty mask.
    """
    if not bool(mask.any()):
        return None
    ids = torch.where(mask.to(emb.device), 0, -1).long()
    sums, _ = pixel_sums(emb, ids, 1)
    return F.normalize(sums[0], dim=0)


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
    sq = (
        a * a * dot(c00, c00)
        + b * b * dot(c01, c01)
        + c * c * dot(c10, c10)
        + dd * dd * dot(c11, c11)
        + 2
        * (
            a * b * dot(c00, c01)
            + c * dd * dot(c10, c11)
            + a * c * dot(c00, c10)
            + b * dd * dot(c01, c11)
            + a * dd * dot(c00, c11)
            + b * c * dot(c01, c10)
        )
    )
    inv = sq.clamp_min(0).sqrt().clamp_min(1e-12).reciprocal()
    keep = ids >= 0
    idx = ids[keep]
    cells = torch.zeros(n * h * w, device=e.device)
    for wt, ys, xs in ((a, y0, x0), (b, y0, x1), (c, y1, x0), (dd, y1, x1)):
        k = (ys[:, None] * w + xs[None, :]).expand(big_h, big_w)
        cells.index_add_(0, idx * (h * w) + k[keep], (wt * inv).expand(big_h, big_w)[keep])
    sums = cells.view(n, h * w) @ e.reshape(d, h * w).T
    return sums, torch.bincount(idx, minlength=n)[:n]
