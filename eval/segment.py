"""Segment a folder of images without labels: ``python -m eval.segment``.

The fitted clustering gives every image a label map in which the same cluster means the same
thing in every image (docs/EVAL.md, "Segment your own images", has every option)::

    python -m eval.segment --checkpoint C --images photos/ --k 10 --out seg/     # fit and segment
    python -m eval.segment --checkpoint C --images new/ --clusters seg/clusters.pt --out seg_new/
    python -m eval.segment --checkpoint C --dataset msrc --k 20 --out seg_msrc/  # + mIoU, pixel accuracy

Two protocols (``--protocol``), the same as ``eval.kmeans`` but with ``k`` object clusters:

* ``prototype`` (default, the paper's): one prototype per image, the mean of the unit embeddings
  in its object mask (``--saliency-source model``: the model's saliency > 0.5; ``folder``: a masks
  folder such as ``saliency.generate``'s); the prototypes are PCA-whitened and clustered into
  ``k`` clusters. Label ``1 + c`` inside the mask, ``0`` (background) outside.
* ``pixel``: K-means over (a per-image sample of) pixel embeddings; every pixel gets ``1 + c``.

It writes into ``--out``: ``labels/<id>.png`` (palette PNG, 0 = background, 1..K, at the image's
size), ``overlays/<id>.jpg``, ``sheets/cluster_XX.jpg`` (each cluster's most typical segments,
nearest the centroid, then its least typical), ``index.html`` (offline), ``clusters.pt`` (the
fitted clustering; ``--clusters FILE`` applies one without refitting) and ``segment.json``.
It resumes after an interruption (the policy of :mod:`maskcontrast.runs`).

The same results from Python: :func:`fit_clusters` and :func:`segment_images`
(``model.segment(images, clusters)``).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eval.arguments import add_dataset_arguments, add_model_arguments, dataset_from_args
from eval.caches import StreamCache, checkpoint_fingerprint
from eval.clustering import BACKENDS, assign_clusters, kmeans, pca_whitening, resolve_backend
from eval.outputs import quiet_faiss, safe_name, write_json
from maskcontrast.api import FeatureModel, FeatureOutput, upsample_saliency
from maskcontrast.cli import run_main
from maskcontrast.data import DataError, SegmentationDataset, build_dataset
from maskcontrast.data.record import default_palette
from maskcontrast.embeddings import masked_mean_embedding, normalised_pixels
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.runs import RunLayout, claim_run_folder, identity_digest
from maskcontrast.utils import atomic_save, atomic_write_bytes, setup_logging

__all__ = [
    "CLUSTERS_FORMAT",
    "PROTOCOLS",
    "ClustersError",
    "Clusters",
    "model_identity",
    "size_key",
    "fit_clusters",
    "segment_images",
    "cluster_palette",
    "overlay_image",
    "build_parser",
    "main",
]

log = logging.getLogger("eval.segment")

CLUSTERS_FORMAT = "maskcontrast.clusters/1"
PROTOCOLS = ("prototype", "pixel")
#: the largest K: label PNGs hold one byte per pixel and 0 is the background
MAX_K = 255
#: the default shorter side of the network input (a folder of camera photos at native size is slow)
DEFAULT_SIZE = 512

LAYOUT = RunLayout(
    "segmentation run",
    owned=("run.json", "clusters.pt", "labels", "overlays", "sheets", "index.html", "segment.json", "cache"),
    state=("cache",),
    identity_file="run.json",
    finished="segment.json",
    writer="python -m eval.segment",
)


class ClustersError(ValueError):
    """A ``clusters.pt`` that cannot be used here (another model, size or protocol, or not a
    clustering at all); the message names the file and what to do."""


# ----------------------------------------------------------------------------------------------
# The fitted clustering
# ----------------------------------------------------------------------------------------------


def size_key(size: Any) -> list[int] | None:
    """A network input size (None, an int shorter side, or ``(H, W)``) as stored: None or a list."""
    if size is None:
        return None
    if isinstance(size, int):
        return [int(size)]
    return [int(s) for s in size]


def model_identity(model: Any) -> str:
    """A digest of the model's weights (the same for a checkpoint and its ONNX / TorchScript export)."""
    digest = getattr(model, "weights_digest", None)
    if isinstance(digest, str) and digest:
        return digest
    cached = getattr(model, "_segment_weights_digest", None)
    if cached:
        return cached
    from maskcontrast.export import weights_digest

    digest = weights_digest(model.net)
    with contextlib.suppress(AttributeError):  # a duck-typed model that takes no attributes
        model._segment_weights_digest = digest
    return digest


@dataclass
class Clusters:
    """A fitted clustering: what ``clusters.pt`` holds.

    Attributes:
        protocol: ``prototype`` or ``pixel``.
        k: object clusters; labels are ``1..k`` (0 = background).
        centroids: ``k x d`` float32 in the whitened space.
        pca_mean, pca_w: ``(D,)`` and ``D x d`` (None without PCA): ``(x - mean) @ W``.
        model_id: :func:`model_identity` of the model it was fitted with.
        size: the network input size (None = native, ``[n]`` = shorter side, ``[H, W]``).
        saliency: the object-mask source of the prototype protocol (``model`` or ``folder``), None
            for ``pixel``; ``threshold``: on the model's saliency.
        embed_dim: ``D``. info: seed, objective, numbers of points and images, the model's file.
    """

    protocol: str
    k: int
    centroids: np.ndarray
    pca_mean: np.ndarray | None
    pca_w: np.ndarray | None
    model_id: str
    size: list[int] | None
    saliency: str | None = "model"
    threshold: float = 0.5
    embed_dim: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """A ``torch.load(..., weights_only=True)``-readable dict."""
        t = torch.from_numpy
        return {
            "format": CLUSTERS_FORMAT,
            "protocol": self.protocol,
            "k": int(self.k),
            "centroids": t(np.ascontiguousarray(self.centroids, dtype=np.float32)),
            "pca_mean": None if self.pca_mean is None else t(np.ascontiguousarray(self.pca_mean, dtype=np.float32)),
            "pca_w": None if self.pca_w is None else t(np.ascontiguousarray(self.pca_w, dtype=np.float32)),
            "model_id": self.model_id,
            "size": self.size,
            "saliency": self.saliency,
            "threshold": float(self.threshold),
            "embed_dim": int(self.embed_dim),
            "info": dict(self.info),
        }

    def save(self, path: str | Path) -> None:
        """Write ``clusters.pt`` atomically."""
        atomic_save(self.state(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Clusters:
        """Read a ``clusters.pt`` (weights-only).

        Raises:
            ClustersError: a missing or unreadable file, or one that is not a clustering.
        """
        path = Path(path)
        if not path.is_file():
            raise ClustersError(f"--clusters {path}: file not found; pass the clusters.pt an eval.segment run wrote")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ClustersError(f"--clusters {path}: unreadable ({type(err).__name__}: {err})") from err
        if not isinstance(state, dict) or state.get("format") != CLUSTERS_FORMAT:
            raise ClustersError(
                f"--clusters {path}: not a clustering written by eval.segment (format "
                f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                f"expected {CLUSTERS_FORMAT})"
            )

        def arr(v: Any) -> np.ndarray | None:
            return None if v is None else v.numpy()

        return cls(
            state["protocol"],
            int(state["k"]),
            state["centroids"].numpy(),
            arr(state["pca_mean"]),
            arr(state["pca_w"]),
            state["model_id"],
            state["size"],
            state["saliency"],
            float(state["threshold"]),
            int(state["embed_dim"]),
            dict(state.get("info") or {}),
        )

    def check(self, model: Any, source: str = "the clustering") -> None:
        """Raise :class:`ClustersError` when this clustering was fitted on another model or input size."""
        mine = model_identity(model)
        if self.model_id != mine:
            fitted = self.info.get("model_file") or "another model"
            raise ClustersError(
                f"{source} was fitted on another checkpoint ({fitted}, weights {self.model_id}); this model's weights "
                f"are {mine}. Fit the clusters with this checkpoint (eval.segment without --clusters)"
            )
        if self.size != size_key(model.size):
            fix = f"--size {' '.join(map(str, self.size))}" if self.size else "--size 0 (native resolution)"
            raise ClustersError(
                f"{source} was fitted at input size {_size_text(self.size)}, and the model runs at "
                f"{_size_text(size_key(model.size))}; pass {fix} (or leave --size out: it follows the clusters)"
            )
        if self.embed_dim and self.embed_dim != model.embed_dim:
            raise ClustersError(f"{source}: {self.embed_dim}-d embeddings, the model gives {model.embed_dim}-d")

    def apply(self, model: FeatureModel, images: Any, *, masks: Any = None) -> Any:
        """:func:`segment_images` with this clustering (what ``model.segment(images, clusters)`` calls)."""
        return segment_images(model, images, self, masks=masks)

    def projection(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.pca_mean is None or self.pca_w is None:
            return None
        return torch.from_numpy(self.pca_mean).to(device), torch.from_numpy(self.pca_w).to(device)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``N x D`` unit embeddings -> ``N x d`` whitened points."""
        proj = self.projection(x.device)
        return x if proj is None else (x - proj[0]) @ proj[1]

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``N x d`` whitened points -> ``(N,)`` cluster ``0..k-1`` and squared distance to it."""
        cent = torch.from_numpy(self.centroids).to(x.device)
        ids = assign_clusters(x, cent)
        return ids, (x - cent[ids]).square().sum(1)


def _size_text(size: list[int] | None) -> str:
    if size is None:
        return "native resolution"
    return f"shorter side {size[0]}" if len(size) == 1 else f"{size[0]} x {size[1]}"


# ----------------------------------------------------------------------------------------------
# Per image: object mask, fit points, labels
# ----------------------------------------------------------------------------------------------


def model_foreground(out: FeatureOutput, hw: tuple[int, int], threshold: float) -> torch.Tensor:
    """``H x W`` bool: the model's saliency probability above ``threshold`` at the image's size."""
    if out.saliency is None:
        raise ValueError("the model has no saliency head; pass --saliency-source folder --masks DIR")
    return upsample_saliency(out.saliency, hw)[0, 0] > threshold


def _pixel_sample(n_pixels: int, n_take: int, seed: int, image_index: int) -> np.ndarray:
    if n_take >= n_pixels:
        return np.arange(n_pixels)
    return np.sort(np.random.default_rng([seed, image_index]).choice(n_pixels, size=n_take, replace=False))


def fit_points(
    protocol: str,
    out: FeatureOutput,
    hw: tuple[int, int],
    fg: torch.Tensor | None,
    *,
    per_image: int,
    seed: int,
    index: int,
) -> np.ndarray:
    """What one image adds to the fit: its prototype (``1 x D``; ``0 x D`` without an object) or
    ``per_image`` sampled unit pixel embeddings (``n x D``), float32."""
    if protocol == "prototype":
        assert fg is not None
        proto = masked_mean_embedding(out.embedding, fg)
        return np.zeros((0, out.embedding.shape[1]), np.float32) if proto is None else proto.cpu().numpy()[None]
    idx = torch.from_numpy(_pixel_sample(hw[0] * hw[1], per_image, seed, index)).to(out.embedding.device)
    return normalised_pixels(out.embedding, hw, idx).cpu().numpy().astype(np.float32)


def fit_from_points(
    x: np.ndarray,
    k: int,
    protocol: str,
    *,
    pca_dim: int = 32,
    seed: int = 0,
    nredo: int = 10,
    niter: int = 100,
    backend: str = "auto",
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, float]:
    """PCA whitening and K-means of ``n x D`` fit points. Returns ``(centroids k x d, (mean, W)
    or None, objective)``.

    Raises:
        ValueError: ``k`` outside ``1..255`` or more clusters than points (naming ``--k``).
    """
    _check_k(k)
    what = "object prototypes (images with a salient region)" if protocol == "prototype" else "sampled pixels"
    if len(x) < k:
        raise ValueError(f"--k {k} is more than the {len(x)} {what}; use --k {max(1, len(x))} or less, or more images")
    proj = pca_whitening(x, pca_dim, seed) if pca_dim > 0 else None
    xf = (x - proj[0]) @ proj[1] if proj is not None else x
    res = kmeans(np.ascontiguousarray(xf, dtype=np.float32), k, seed=seed, nredo=nredo, niter=niter, backend=backend)
    return res.centroids, proj, res.objective


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"--k must lie in 1..{MAX_K} (object clusters; label 0 is the background), got {k}")


@dataclass
class Segment:
    """One segment of one image: its cluster (``1..k``), squared distance to the centroid, pixels."""

    cluster: int
    distance: float
    pixels: int


def label_prototype(clusters: Clusters, proto: torch.Tensor | None, fg: np.ndarray) -> tuple[np.ndarray, list[Segment]]:
    """Prototype protocol: ``H x W`` uint8 labels (``1 + c`` inside the mask, 0 outside) from the
    image's ``(D,)`` prototype (None: no object) and its ``H x W`` bool mask."""
    labels = np.zeros(fg.shape, np.uint8)
    if proto is None or not fg.any():
        return labels, []
    ids, dist = clusters.nearest(clusters.project(proto.float()[None]))
    c = int(ids[0]) + 1
    labels[fg] = c
    return labels, [Segment(c, float(dist[0]), int(fg.sum()))]


def label_pixels(clusters: Clusters, out: FeatureOutput, hw: tuple[int, int]) -> tuple[np.ndarray, list[Segment]]:
    """Pixel protocol: every pixel's nearest centroid (``1 + c``) as ``H x W`` uint8; a segment per
    cluster present, its distance that of the mean of its whitened pixels."""
    feats = normalised_pixels(out.embedding, hw, proj=clusters.projection(out.embedding.device))
    ids, _ = clusters.nearest(feats)
    k = clusters.k
    counts = torch.bincount(ids, minlength=k)
    sums = torch.zeros(k, feats.shape[1], device=feats.device).index_add_(0, ids, feats)
    means = sums / counts.clamp_min(1)[:, None]
    dist = (means - torch.from_numpy(clusters.centroids).to(feats.device)).square().sum(1)
    segs = [Segment(c + 1, float(dist[c]), int(counts[c])) for c in torch.nonzero(counts).flatten().tolist()]
    return (ids + 1).to(torch.uint8).cpu().numpy().reshape(hw), segs


def label_output(
    clusters: Clusters, out: FeatureOutput, hw: tuple[int, int], fg: torch.Tensor | None
) -> tuple[np.ndarray, list[Segment]]:
    """Labels and segments of one image from its network output (and object mask for ``prototype``)."""
    if clusters.protocol == "pixel":
        return label_pixels(clusters, out, hw)
    assert fg is not None
    return label_prototype(clusters, masked_mean_embedding(out.embedding, fg), fg.cpu().numpy())


# ----------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------


def _api_masks(masks: Any, n: int) -> list[Any] | None:
    if masks is None:
        return None
    items = list(masks) if isinstance(masks, (list, tuple)) or getattr(masks, "ndim", 2) == 3 else [masks]
    if len(items) != n:
        raise ValueError(f"{n} images but {len(items)} masks; give one object mask per image")
    return items


def _api_foreground(
    masks: list[Any] | None, i: int, out: FeatureOutput, hw: tuple[int, int], threshold: float, device: torch.device
) -> torch.Tensor:
    if masks is None:
        return model_foreground(out, hw, threshold)
    m = torch.as_tensor(np.asarray(masks[i])).to(device)
    if tuple(m.shape) != tuple(hw):
        raise ValueError(f"mask {i} is {tuple(m.shape)}, its image {hw}; give masks at the images' size (H x W)")
    return m > 0


def fit_clusters(
    model: FeatureModel,
    images: Any,
    k: int,
    protocol: str = "prototype",
    *,
    masks: Any = None,
    threshold: float = 0.5,
    pca_dim: int = 32,
    seed: int = 0,
    nredo: int = 10,
    niter: int = 100,
    backend: str = "auto",
    fit_pixels: int = 100_000,
) -> Clusters:
    """Fit ``k`` clusters on images, as ``python -m eval.segment`` does (same numbers, same defaults).

    Args:
        model: a :class:`~maskcontrast.FeatureModel` (its ``size`` is the input size; the CLI's
            default is ``size=512``). images: anything :meth:`FeatureModel.embed` accepts.
        k: object clusters (labels ``1..k``; 0 = background). protocol: ``prototype`` or ``pixel``.
        masks: object masks (``H x W`` per image, nonzero = object) instead of the model's saliency
            (the CLI's ``--saliency-source folder``); ``threshold``: on the model's saliency.
        pca_dim, seed, nredo, niter, backend, fit_pixels: as the CLI's flags.

    Returns:
        :class:`Clusters`, e.g. ``clusters.centroids.shape == (k, min(pca_dim, D))``.

    Example::

        model = maskcontrast.load_model("last.pt", size=512)
        clusters = fit_clusters(model, ["a.jpg", "b.jpg", "c.jpg"], k=2)
        labels = model.segment(["d.jpg"], clusters)          # 1 x H x W int64, 0 = background
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be prototype or pixel, got {protocol!r}")
    _check_k(k)
    from maskcontrast.api import _flatten_images

    items = _flatten_images(images)
    mask_list = _api_masks(masks, len(items))
    per_image = max(1, math.ceil(fit_pixels / len(items)))
    chunks = []
    for i, out, hw in model.run(items):
        fg = (
            _api_foreground(mask_list, i, out, hw, threshold, out.embedding.device) if protocol == "prototype" else None
        )
        chunks.append(fit_points(protocol, out, hw, fg, per_image=per_image, seed=seed, index=i))
    x = np.concatenate(chunks).astype(np.float32)
    centroids, proj, objective = fit_from_points(
        x, k, protocol, pca_dim=pca_dim, seed=seed, nredo=nredo, niter=niter, backend=backend
    )
    return Clusters(
        protocol,
        k,
        centroids,
        proj[0] if proj else None,
        proj[1] if proj else None,
        model_identity(model),
        size_key(model.size),
        ("model" if mask_list is None else "folder") if protocol == "prototype" else None,
        threshold,
        int(model.embed_dim),
        {
            "seed": seed,
            "objective": objective,
            "n_points": len(x),
            "n_images": len(items),
            "model_file": getattr(model, "source", ""),
            "backend": resolve_backend(backend),
        },
    )


def segment_images(model: FeatureModel, images: Any, clusters: Clusters, *, masks: Any = None) -> Any:
    """Label every pixel of every image with a fitted clustering (``model.segment(images, clusters)``).

    Args:
        model: the model the clusters were fitted with (same weights and input size).
        images: anything :meth:`FeatureModel.embed` accepts. clusters: :class:`Clusters`
            (:func:`fit_clusters`, or ``Clusters.load("clusters.pt")`` from the CLI).
        masks: object masks (``H x W`` per image) for clusters fitted with a masks folder.

    Returns:
        ``B x H x W`` int64 labels at the images' size, 0 = background and ``1..k`` the clusters
        (a list of ``H_i x W_i`` tensors when the sizes differ): what the CLI's label PNGs hold.

    Raises:
        ClustersError: clusters fitted on another model or input size.

    Example::

        clusters = Clusters.load("seg/clusters.pt")
        labels = model.segment([img_a, img_b], clusters)   # 2 x H x W when both are H x W
    """
    clusters.check(model)
    from maskcontrast.api import _flatten_images

    items = _flatten_images(images)
    mask_list = _api_masks(masks, len(items))
    if clusters.protocol == "prototype" and clusters.saliency == "folder" and mask_list is None:
        raise ValueError("these clusters were fitted with object masks from a folder; pass masks=[...] as well")
    results = []
    for i, out, hw in model.run(items):
        fg = None
        if clusters.protocol == "prototype":
            fg = _api_foreground(mask_list, i, out, hw, clusters.threshold, out.embedding.device)
        labels, _ = label_output(clusters, out, hw, fg)
        results.append(torch.from_numpy(labels.astype(np.int64)))
    if all(r.shape == results[0].shape for r in results):
        return torch.stack(results)
    return results


# ----------------------------------------------------------------------------------------------
# Pictures and the page
# ----------------------------------------------------------------------------------------------


def cluster_palette() -> np.ndarray:
    """``256 x 3`` uint8: 0 (background) black, clusters in the VOC colour map."""
    return np.asarray(default_palette(256), dtype=np.uint8)


def overlay_image(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``H x W x 3`` uint8: cluster colours blended over the image, background dimmed."""
    img = image.astype(np.float32)
    out = img * 0.55
    fg = labels > 0
    out[fg] = (1 - alpha) * img[fg] + alpha * palette[labels[fg]].astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _jpeg(path: Path, arr: np.ndarray, quality: int = 88) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())


def _thumbnail(image: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """The segment's bounding box (plus a margin), the rest of the image dimmed, fitted in ``side x side``."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(ys):
        m = max(2, int(0.1 * max(ys.max() - ys.min(), xs.max() - xs.min())))
        y0, y1, x0, x1 = max(0, ys.min() - m), min(h, ys.max() + m + 1), max(0, xs.min() - m), min(w, xs.max() + m + 1)
    else:
        y0, y1, x0, x1 = 0, h, 0, w
    crop = np.where(mask[..., None], image, (image * 0.3).astype(np.uint8))[y0:y1, x0:x1]
    scale = side / max(crop.shape[0], crop.shape[1])  # small segments are enlarged, large ones shrunk
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    pil = Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR)
    tile = np.full((side, side, 3), 255, np.uint8)
    arr = np.asarray(pil)
    oy, ox = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
    tile[oy : oy + arr.shape[0], ox : ox + arr.shape[1]] = arr
    return tile


def contact_sheet(
    most: list[np.ndarray], least: list[np.ndarray], per_row: int, side: int, colour: np.ndarray
) -> np.ndarray:
    """Two rows of ``side`` px tiles (most typical, least typical) with a band in the cluster's colour."""
    gap, band = 4, 6
    width = per_row * side + (per_row + 1) * gap
    rows = [r for r in (most, least) if r]
    sheet = np.full((band + len(rows) * (side + gap) + gap, width, 3), 255, np.uint8)
    sheet[:band] = colour
    for r, tiles in enumerate(rows):
        y = band + gap + r * (side + gap)
        for j, tile in enumerate(tiles[:per_row]):
            x = gap + j * (side + gap)
            sheet[y : y + side, x : x + side] = tile
    return sheet


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}.sw{display:inline-block;width:1em;height:1em;
vertical-align:middle;border:1px solid #888;margin-right:.4em}img.sheet{max-width:100%;border:1px solid #ccc}
.links a{margin-right:.6em;font-size:.9em}table{border-collapse:collapse}td,th{padding:2px 8px;
border-bottom:1px solid #ddd;font-size:.9em;text-align:left}.note{color:#666;font-size:.9em}"""


def _href(rel: str) -> str:
    return html.escape(quote(rel))


def index_html(summary: dict[str, Any], palette: np.ndarray) -> str:
    """The offline page: each cluster's contact sheet and links to its images' overlays, then a
    table of every image (no external scripts, styles or fonts)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>eval.segment: {summary['k']} clusters</title><style>{_CSS}</style></head><body>",
        f"<h1>{summary['n_segmented']} images in {summary['k']} clusters ({e(summary['protocol'])} protocol)</h1>",
        f"<p class=note>Model: {e(str(summary['model']))}. Object masks: {e(str(summary['saliency_source']))}. "
        "Each sheet shows the cluster's most typical segments (nearest its centroid, top row) and its least "
        "typical ones (bottom row).</p>",
    ]
    scores = summary.get("scores")
    if scores:
        parts.append(
            f"<p>With the labels of {e(str(summary.get('dataset')))}: mIoU {100 * scores['miou']:.1f} %, "
            f"pixel accuracy {100 * scores['pixel_acc']:.1f} % (clusters matched to classes).</p>"
        )
    for cl in summary["clusters"]:
        c = cl["cluster"]
        r, g, b = (int(v) for v in palette[c])
        parts.append(
            f'<h2 id="c{c}"><span class=sw style="background:rgb({r},{g},{b})"></span>cluster {c} '
            f"({cl['segments']} segments)</h2>"
        )
        if cl["sheet"]:
            parts.append(f'<img class=sheet src="{_href(cl["sheet"])}" alt="cluster {c}">')
        links = " ".join(
            f'<a href="{_href(summary["images"][i]["overlay"])}">{e(summary["images"][i]["id"])}</a>'
            for i in cl["members"]
        )
        parts.append(f"<div class=links>{links or '<span class=note>no segment</span>'}</div>")
    parts.append("<h2>All images</h2><table><tr><th>image</th><th>clusters</th><th>label map</th></tr>")
    for im in summary["images"]:
        cls = ", ".join(f'<a href="#c{c}">{c}</a>' for c in im["clusters"]) or "background only"
        parts.append(
            f'<tr><td><a href="{_href(im["overlay"])}">{e(im["id"])}</a></td><td>{cls}</td>'
            f'<td><a href="{_href(im["labels"])}">png</a></td></tr>'
        )
    parts.append("</table>")
    if summary["skipped"]:
        parts.append("<h2>Skipped (unreadable)</h2><ul>")
        parts += [f"<li>{e(k)}: {e(v)}</li>" for k, v in summary["skipped"].items()]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Streaming a folder, skipping unreadable images
# ----------------------------------------------------------------------------------------------


@dataclass
class _Unreadable:
    id: str
    reason: str


class _Tolerant(Dataset):
    """A dataset whose unreadable images come back as :class:`_Unreadable` instead of raising."""

    def __init__(self, ds: SegmentationDataset, start: int = 0) -> None:
        self.ds, self.start = ds, start

    def __len__(self) -> int:
        return len(self.ds) - self.start

    def __getitem__(self, i: int) -> Any:
        sid = self.ds.ids[self.start + i]
        try:
            return self.ds.load(sid)
        except DataError as err:
            return _Unreadable(sid, str(err))


def _stream(
    model: FeatureModel | None,
    ds: SegmentationDataset,
    *,
    start: int,
    workers: int,
    desc: str,
    progress: bool,
    batch: int = 4,
) -> Iterator[tuple[int, Any, FeatureOutput | None]]:
    """Yield ``(index, sample or _Unreadable, output or None)`` from ``start``; the model runs on the
    readable images only (``model=None``: decode only)."""
    from tqdm import tqdm

    loader = DataLoader(
        _Tolerant(ds, start),
        batch_size=model.batch_size if model is not None else batch,
        num_workers=max(0, workers),
        collate_fn=list,
    )
    bar = tqdm(total=len(ds), initial=start, desc=desc, unit="img", disable=not progress, leave=False)
    index = start
    try:
        for samples in loader:
            good = [j for j, s in enumerate(samples) if not isinstance(s, _Unreadable)]
            outs: dict[int, FeatureOutput] = {}
            if model is not None and good:
                for j, out, _ in model.run([samples[j].image for j in good]):
                    outs[good[j]] = out
            for j, s in enumerate(samples):
                yield index + j, s, outs.get(j)
            index += len(samples)
            bar.update(len(samples))
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.segment",
        description="Segment a folder of images into K clusters without labels: label PNGs, overlays, contact "
        "sheets, index.html and clusters.pt (docs/EVAL.md, 'Segment your own images').",
    )
    add_model_arguments(p)
    g = p.add_argument_group("images")
    g.add_argument("--images", default=None, help="folder of images (searched recursively; ids = relative paths)")
    add_dataset_arguments(p)
    for action in p._actions:  # --checkpoint / --model and --images / --dataset are either-or here
        if action.dest in ("checkpoint", "dataset"):
            action.required = False
            action.default = None
        if action.dest == "size":
            action.help = (
                f"network input size: one value = shorter side, two = H W, 0 = native resolution "
                f"(default {DEFAULT_SIZE}, or the size of --clusters)"
            )
    p.add_argument(
        "--model",
        default=None,
        help="an exported network (.onnx or TorchScript .pt from "
        "python -m maskcontrast.export) instead of --checkpoint",
    )
    c = p.add_argument_group("clustering")
    c.add_argument("--k", type=int, default=None, help="object clusters (labels 1..K; 0 is the background)")
    c.add_argument(
        "--protocol",
        default="prototype",
        choices=PROTOCOLS,
        help="prototype: one prototype per object mask (the paper's); pixel: every pixel (default prototype)",
    )
    c.add_argument(
        "--saliency-source",
        default="model",
        choices=("model", "folder"),
        help="object masks of the prototype protocol: the model's saliency head, or --masks DIR",
    )
    c.add_argument(
        "--masks",
        default=None,
        help="object-mask folder (<DIR>/<id>.png, 0 = background), e.g. "
        "saliency.generate's output, for --saliency-source folder",
    )
    c.add_argument("--saliency-threshold", type=float, default=0.5, help="on the model's saliency (default 0.5)")
    c.add_argument("--clusters", default=None, help="apply this clusters.pt instead of fitting (same model and size)")
    c.add_argument("--pca-dim", type=int, default=32, help="PCA whitening before K-means; 0 = off (default 32)")
    c.add_argument("--seed", type=int, default=0, help="K-means and pixel-sampling seed (default 0)")
    c.add_argument("--nredo", type=int, default=10, help="K-means restarts (default 10)")
    c.add_argument("--niter", type=int, default=100, help="K-means iterations (default 100)")
    c.add_argument("--backend", default="auto", choices=BACKENDS, help="K-means backend (default auto)")
    c.add_argument("--fit-pixels", type=int, default=100_000, help="pixel protocol: pixels sampled for the fit")
    c.add_argument(
        "--matching",
        default=None,
        choices=("auto", "hungarian", "majority"),
        help="with --dataset: cluster -> class matching (as eval.kmeans)",
    )
    o = p.add_argument_group("outputs")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote in --out")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--save-every", type=int, default=50, help="save progress every N images (default 50)")
    o.add_argument("--sheet-size", type=int, default=8, help="segments per contact-sheet row (default 8)")
    o.add_argument("--thumb", type=int, default=96, help="contact-sheet tile side in pixels (default 96)")
    return p


def _load_any_model(args: argparse.Namespace, size: Any) -> FeatureModel:
    from eval.arguments import model_from_args

    if args.model:
        from maskcontrast.export import load_exported

        return load_exported(args.model, device=args.device, size=size, batch_size=args.batch_size)
    args.size = None if size is None else ([size] if isinstance(size, int) else list(size))
    return model_from_args(args)


def _build_images(args: argparse.Namespace) -> SegmentationDataset:
    masks = args.masks if args.saliency_source == "folder" and args.protocol == "prototype" else None
    if args.dataset:
        return dataset_from_args(args, masks=masks)
    folder = Path(args.images).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: folder not found")
    try:
        ds = build_dataset("image_folder", folder, masks=masks)
    except DataError as err:
        raise ValueError(
            f"--images {folder}: no images found (looked for .jpg, .png, .bmp, .tif, .webp ... "
            "recursively); point --images at a folder of photos"
        ) from err
    if args.limit is not None:
        ds.ids = ds.ids[: max(1, args.limit)]
    return ds


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before a model is loaded or an image read."""
    if bool(args.checkpoint) == bool(args.model):
        raise ValueError("pass exactly one of --checkpoint FILE and --model FILE (an exported network)")
    if bool(args.images) == bool(args.dataset):
        raise ValueError("pass exactly one of --images DIR (any folder) and --dataset NAME (labelled, for mIoU)")
    if args.clusters is None:
        if args.k is None:
            raise ValueError("--k K is required (the number of clusters), unless --clusters FILE applies a saved one")
        _check_k(args.k)
    elif args.k is not None:
        _check_k(args.k)
    if args.saliency_source == "folder" and args.protocol == "prototype" and not args.masks:
        raise ValueError("--saliency-source folder needs --masks DIR (e.g. the output of python -m saliency.generate)")
    if args.masks and not Path(args.masks).is_dir():
        raise ValueError(f"--masks {args.masks}: folder not found")
    if not 0.0 < args.saliency_threshold < 1.0:
        raise ValueError(f"--saliency-threshold must lie in (0, 1), got {args.saliency_threshold}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    quiet_faiss()
    _check_args(args)
    out = Path(args.out).expanduser()
    saved = Clusters.load(args.clusters) if args.clusters else None
    if saved is not None:
        if args.k is not None and args.k != saved.k:
            raise ValueError(
                f"--k {args.k} differs from the {saved.k} clusters of --clusters {args.clusters}; "
                "leave --k out when applying saved clusters"
            )
        args.protocol = saved.protocol
        if saved.protocol == "prototype" and saved.saliency != args.saliency_source:
            raise ClustersError(
                f"--clusters {args.clusters} was fitted with --saliency-source {saved.saliency}; "
                f"pass --saliency-source {saved.saliency}" + (" --masks DIR" if saved.saliency == "folder" else "")
            )
    size_given = args.size is not None
    if size_given:
        from eval.arguments import _size_arg

        size: Any = None if list(args.size) == [0] else _size_arg(args.size)
    elif saved is not None:
        size = None if saved.size is None else (saved.size[0] if len(saved.size) == 1 else tuple(saved.size))
        log.info("input size from --clusters: %s", _size_text(saved.size))
    else:
        size = DEFAULT_SIZE
    ds = _build_images(args)
    backend = resolve_backend(args.backend)
    model_file = args.model or args.checkpoint
    identity = {
        "model": checkpoint_fingerprint(model_file),
        "images": str(ds.root),
        "dataset": args.dataset,
        "dataset_args": parse_key_values(args.dataset_arg),
        "split": ds.split if args.dataset else None,
        "ids": identity_digest(ds.ids),
        "protocol": args.protocol,
        "k": saved.k if saved else args.k,
        "size": size_key(size),
        "pca_dim": args.pca_dim,
        "seed": args.seed,
        "nredo": args.nredo,
        "niter": args.niter,
        "backend": backend,
        "fit_pixels": args.fit_pixels if args.protocol == "pixel" else None,
        "saliency": [args.saliency_source, args.masks, args.saliency_threshold]
        if args.protocol == "prototype"
        else None,
        "clusters": checkpoint_fingerprint(args.clusters) if args.clusters else None,
    }
    claim = claim_run_folder(out, LAYOUT, identity=identity, overwrite=args.overwrite)
    if ds.mask_dir is not None:
        missing = [i for i in ds.ids if not ds.mask_path(i).is_file()]  # type: ignore[union-attr]
        if missing:
            raise ValueError(
                f"--masks {ds.mask_dir}: {len(missing)} of {len(ds)} images have no mask <id>.png, "
                f"e.g. {missing[:3]}; generate them (python -m saliency.generate) or remove those images"
            )
    model = _load_any_model(args, size)
    if args.protocol == "prototype" and args.saliency_source == "model" and not model.has_saliency:
        raise ValueError(
            f"{model_file} has no saliency head; pass --saliency-source folder --masks DIR, or --protocol pixel"
        )
    if saved is not None:
        saved.check(model, f"--clusters {args.clusters}")
    claim.prepare()
    progress = not args.no_progress
    log.info("segmenting %d images of %s with %s (%s protocol)", len(ds), ds.root, model_file, args.protocol)
    cache_dir = out / "cache"
    clusters_path = out / "clusters.pt"
    fit_state: dict[str, Any] | None = None
    if saved is not None:
        clusters = saved
        clusters.save(clusters_path)
    elif claim.reuse and clusters_path.is_file():
        clusters = Clusters.load(clusters_path)
        log.info("reusing the clustering of the interrupted run: %s", clusters_path)
        fit_state = _fit_state(cache_dir, identity, args.save_every)
    else:
        clusters, fit_state = _fit(args, model, ds, cache_dir, identity, model_file, backend, progress)
        clusters.save(clusters_path)
    summary = _assign(args, model, ds, clusters, fit_state, out, identity, progress)
    summary.update(
        model=str(model_file),
        model_id=clusters.model_id,
        size=clusters.size,
        dataset=args.dataset,
        kmeans={
            "backend": backend,
            "nredo": args.nredo,
            "niter": args.niter,
            "pca_dim": args.pca_dim,
            "seed": args.seed,
        },
        clusters_file=str(args.clusters or clusters_path),
        units="fractions in [0, 1]",
    )
    palette = cluster_palette()
    _sheets(args, ds, summary, out, palette)
    atomic_write_bytes(out / "index.html", index_html(summary, palette).encode("utf-8"))
    write_json(out / "segment.json", summary)
    if summary.get("scores"):
        s = summary["scores"]
        print(
            f"mIoU {100 * s['miou']:.2f} %, pixel accuracy {100 * s['pixel_acc']:.2f} % ({summary['k']} clusters "
            f"+ background, {s['matching']} matching)"
        )
    if summary["skipped"]:
        log.warning("skipped %d unreadable image(s): %s", len(summary["skipped"]), ", ".join(summary["skipped"]))
    print(
        f"wrote {summary['n_segmented']} label maps and overlays, {len(summary['clusters'])} contact sheets: "
        f"{out / 'index.html'}"
    )
    return summary


def _fit_state(cache_dir: Path, identity: dict[str, Any], every: int) -> dict[str, Any] | None:
    path = cache_dir / "fit.pt"
    if not path.is_file():
        return None
    return StreamCache(path, identity, every).load()[1]


def _fit(
    args: argparse.Namespace,
    model: FeatureModel,
    ds: SegmentationDataset,
    cache_dir: Path,
    identity: dict[str, Any],
    model_file: str,
    backend: str,
    progress: bool,
) -> tuple[Clusters, dict[str, Any]]:
    """Pass 1 (resumable): fit points of every image (the prototype protocol also keeps each
    object mask, so its labels need no second forward pass); then PCA and K-means."""
    from maskcontrast.data import write_mask

    cache = StreamCache(cache_dir / "fit.pt", identity, args.save_every)
    done, state = cache.load()
    chunks: list[np.ndarray] = [state["points"].numpy()] if state else []
    owners: list[np.ndarray] = [state["owner"].numpy()] if state else []
    skipped: dict[str, str] = dict(state["skipped"]) if state else {}
    per_image = max(1, math.ceil(args.fit_pixels / len(ds)))
    dim = model.embed_dim

    def snapshot() -> dict[str, Any]:
        pts = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        own = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        return {
            "points": torch.from_numpy(pts.astype(np.float32)),
            "owner": torch.from_numpy(own.astype(np.int64)),
            "skipped": dict(skipped),
        }

    for i, sample, o in _stream(model, ds, start=done, workers=args.workers, desc="fit", progress=progress):
        if isinstance(sample, _Unreadable):
            log.warning("skipping %s", sample.reason)
            skipped[sample.id] = sample.reason
        else:
            assert o is not None
            hw = sample.size
            fg = None
            if args.protocol == "prototype":
                fg = _cli_foreground(args, sample, o, hw, ds)
                write_mask(cache_dir / "fg" / f"{i:06d}.png", fg.cpu().numpy().astype(np.uint8))
            pts = fit_points(args.protocol, o, hw, fg, per_image=per_image, seed=args.seed, index=i)
            chunks.append(pts)
            owners.append(np.full(len(pts), i, np.int64))
        if cache.due(i + 1):
            cache.save(i + 1, snapshot())
    state = snapshot()
    cache.save(len(ds), state)
    if len(skipped) == len(ds):
        raise ValueError(f"no image of {ds.root} could be read (e.g. {next(iter(skipped.values()))})")
    x = state["points"].numpy()
    log.info(
        "fitting %d clusters on %d %s of dimension %d (%s)",
        args.k,
        len(x),
        "prototypes" if args.protocol == "prototype" else "pixels",
        x.shape[1],
        backend,
    )
    centroids, proj, objective = fit_from_points(
        x,
        args.k,
        args.protocol,
        pca_dim=args.pca_dim,
        seed=args.seed,
        nredo=args.nredo,
        niter=args.niter,
        backend=backend,
    )
    clusters = Clusters(
        args.protocol,
        args.k,
        centroids,
        proj[0] if proj else None,
        proj[1] if proj else None,
        model_identity(model),
        size_key(model.size),
        args.saliency_source if args.protocol == "prototype" else None,
        args.saliency_threshold,
        int(model.embed_dim),
        {
            "seed": args.seed,
            "objective": objective,
            "n_points": len(x),
            "n_images": len(ds) - len(skipped),
            "model_file": str(model_file),
            "backend": backend,
            "images": str(ds.root),
        },
    )
    return clusters, state


def _cli_foreground(
    args: argparse.Namespace, sample: Any, out: FeatureOutput, hw: tuple[int, int], ds: SegmentationDataset
) -> torch.Tensor:
    if args.saliency_source == "model":
        return model_foreground(out, hw, args.saliency_threshold)
    if sample.mask is None:
        raise DataError(f"object mask not found: {ds.mask_path(sample.id)}", path=str(ds.mask_path(sample.id)))
    return torch.from_numpy(sample.mask > 0).to(out.embedding.device)


def _assign(
    args: argparse.Namespace,
    model: FeatureModel,
    ds: SegmentationDataset,
    clusters: Clusters,
    fit_state: dict[str, Any] | None,
    out: Path,
    identity: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Pass 2 (resumable): label PNG and overlay of every image, its segments, and the confusion
    when the images have labels. The prototype protocol reuses pass 1's masks and prototypes."""
    from maskcontrast.data import read_index_png, write_mask

    out = Path(out)
    palette = cluster_palette()
    from_cache = clusters.protocol == "prototype" and fit_state is not None and (out / "cache" / "fg").is_dir()
    protos: dict[int, torch.Tensor] = {}
    if from_cache:
        assert fit_state is not None
        for row, owner in zip(fit_state["points"], fit_state["owner"].tolist()):
            protos[int(owner)] = row
    c = ds.info.num_classes
    rows = clusters.k + 1 if clusters.protocol == "prototype" else clusters.k
    cache = StreamCache(
        out / "cache" / "assign.pt",
        {**identity, "clusters": identity_digest([clusters.centroids.tolist(), clusters.model_id])},
        args.save_every,
    )
    done, state = cache.load()
    records: list[dict[str, Any]] = list(state["records"]) if state else []
    skipped: dict[str, str] = dict(state["skipped"]) if state else {}
    conf = state["conf"].numpy() if state and c else (np.zeros((rows, c), np.int64) if c else None)

    def snapshot() -> dict[str, Any]:
        snap: dict[str, Any] = {"records": list(records), "skipped": dict(skipped)}
        if conf is not None:
            snap["conf"] = torch.from_numpy(conf)
        return snap

    run_model = None if from_cache else model
    for i, sample, o in _stream(run_model, ds, start=done, workers=args.workers, desc="segment", progress=progress):
        if isinstance(sample, _Unreadable):
            if sample.id not in skipped:
                log.warning("skipping %s", sample.reason)
            skipped[sample.id] = sample.reason
        else:
            hw = sample.size
            if from_cache:
                fg = read_index_png(out / "cache" / "fg" / f"{i:06d}.png") > 0
                labels, segs = label_prototype(clusters, protos.get(i), fg)
            else:
                assert o is not None
                fg_t = _cli_foreground(args, sample, o, hw, ds) if clusters.protocol == "prototype" else None
                labels, segs = label_output(clusters, o, hw, fg_t)
            name = safe_name(sample.id)
            write_mask(out / "labels" / f"{name}.png", labels, palette)
            _jpeg(out / "overlays" / f"{name}.jpg", overlay_image(sample.image, labels, palette))
            records.append({"index": i, "id": sample.id, "segments": [[s.cluster, s.distance, s.pixels] for s in segs]})
            if conf is not None and sample.label is not None:
                from eval.metrics import confusion_matrix

                pred = labels.astype(np.int64) - (0 if clusters.protocol == "prototype" else 1)
                conf += confusion_matrix(pred, sample.label, rows, c, ds.info.ignore_index)
        if cache.due(i + 1):
            cache.save(i + 1, snapshot())
    cache.save(len(ds), snapshot())
    images = [
        {
            "id": r["id"],
            "labels": f"labels/{safe_name(r['id'])}.png",
            "overlay": f"overlays/{safe_name(r['id'])}.jpg",
            "clusters": sorted({int(s[0]) for s in r["segments"]}),
        }
        for r in records
    ]
    members: dict[int, list[tuple[float, int, int]]] = {cl: [] for cl in range(1, clusters.k + 1)}
    for j, r in enumerate(records):
        for cl, dist, _pixels in r["segments"]:
            members[int(cl)].append((float(dist), j, int(r["index"])))
    summary: dict[str, Any] = {
        "protocol": clusters.protocol,
        "k": clusters.k,
        "n_images": len(ds),
        "n_segmented": len(records),
        "skipped": skipped,
        "saliency_source": (clusters.saliency if clusters.protocol == "prototype" else "none (pixel protocol)"),
        "images": images,
        "clusters": [
            {
                "cluster": cl,
                "segments": len(m),
                "members": [j for _, j, _ in sorted(m)],
                "_order": sorted(m),
                "sheet": None,
            }
            for cl, m in members.items()
        ],
    }
    if conf is not None and len(records) and any(r for r in records):
        from eval.kmeans import summarize_seeds

        matching = args.matching or ("hungarian" if clusters.protocol == "prototype" else "auto")
        s = summarize_seeds([conf], [args.seed], ds.info.classes, matching)
        if conf.sum() > 0:
            summary["scores"] = {
                "miou": s["miou_mean"],
                "pixel_acc": s["pixel_acc"],
                "per_class": s["per_class"],
                "mapping": s["seeds"][0]["mapping"],
                "matching": matching,
                "rows": "0 = background, 1..k clusters"
                if clusters.protocol == "prototype"
                else "0..k-1 = clusters 1..k",
            }
    return summary


def _sheets(
    args: argparse.Namespace, ds: SegmentationDataset, summary: dict[str, Any], out: Path, palette: np.ndarray
) -> None:
    """A contact sheet per cluster: its ``--sheet-size`` most typical segments, then as many of its
    least typical ones (never the same segment twice)."""
    from maskcontrast.data import read_index_png

    n = max(1, args.sheet_size)
    for cl in summary["clusters"]:
        order = cl.pop("_order")
        if not order:
            continue
        most = order[:n]
        least = order[n:][-n:][::-1]
        tiles: list[list[np.ndarray]] = [[], []]
        for row, chosen in enumerate((most, least)):
            for _dist, j, _index in chosen:
                img_id = summary["images"][j]["id"]
                try:
                    image = ds.load(img_id).image
                except DataError:
                    continue
                labels = read_index_png(out / summary["images"][j]["labels"])
                tiles[row].append(_thumbnail(image, labels == cl["cluster"], args.thumb))
        rel = f"sheets/cluster_{cl['cluster']:03d}.jpg"
        _jpeg(out / rel, contact_sheet(tiles[0], tiles[1], n, args.thumb, palette[cl["cluster"]]))
        cl["sheet"] = rel


if __name__ == "__main__":
    run_main(main, "eval.segment")
