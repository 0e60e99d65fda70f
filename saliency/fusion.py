"""Fusion of the classical estimators into one soft map, a confidence mask and a disagreement flag.

Steps for one image (all at the working size, longer side ``max_side``):

1. RBD and GMR on SLIC superpixels at several scales (``scales``), averaged per method; MB+ and
   the spectral residual once. Every map is min-max normalised to ``[0, 1]``.
2. Agreement: the Pearson correlation of every pair of maps (on a 64 px thumbnail). A method's
   agreement ``a_m`` is its mean correlation with the other methods; its weight is
   ``prior_m * exp(a_m / temperature)``, normalised to sum to 1. A map that contradicts the
   others loses weight on that image.
3. The weighted mean is min-max normalised and passed through the sigmoid
   ``1 / (1 + exp(-b (S - t)))`` centred at its Otsu threshold ``t`` (as in MB+), so that 0.5
   is a meaningful threshold for the post-processing rule.
4. Confidence: every method votes foreground where its map exceeds its own Otsu threshold.
   A pixel is confident when the fused map is decisive (``|S - 0.5| >= margin``) and the weighted
   vote agrees with the fused label by at least ``vote`` (foreground: vote >= ``vote``,
   background: vote <= ``1 - vote``).
5. Flag: an image whose mean pairwise correlation is below ``flag_agreement`` is flagged as
   one where the methods disagree strongly.

Example::

    from saliency.fusion import FusionConfig, fuse
    result = fuse(image, FusionConfig())
    result.saliency     # H x W float32 in [0, 1]
    result.confidence   # H x W bool
    result.flagged, result.agreement, result.weights
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from saliency.common import (
    build_superpixel_graph,
    normalize_map,
    otsu_threshold,
    resize_map,
    to_lab,
    working_image,
)
from saliency.gmr import gmr_scores
from saliency.mbd import mbd_saliency
from saliency.rbd import rbd_scores
from saliency.spectral import spectral_residual_saliency

__all__ = ["FusionConfig", "FusionResult", "fuse", "fuse_maps", "fuse_with", "fused_saliency", "agreement_matrix"]


@dataclass
class FusionConfig:
    """Parameters of :func:`fuse` (defaults chosen a priori, not tuned on ground truth)."""

    max_side: int = 300
    # SLIC superpixels per scale
    scales: list[int] = field(default_factory=lambda: [100, 200, 300])
    compactness: float = 10.0
    priors: dict[str, float] = field(default_factory=lambda: {"rbd": 1.0, "gmr": 1.0, "mbd": 1.0, "spectral": 0.5})
    temperature: float = 0.2
    enhance_b: float = 10.0
    margin: float = 0.2
    vote: float = 0.75
    flag_agreement: float = 0.2


@dataclass
class FusionResult:
    """What :func:`fuse` returns.

    Attributes:
        saliency: ``H x W`` float32 fused soft map in ``[0, 1]``.
        confidence: ``H x W`` bool, True where the pseudo-label is trusted.
        maps: each method's normalised map, at the working size (longer side ``max_side``).
        weights: each method's fusion weight on this image (they sum to 1).
        agreement: the mean pairwise correlation of the methods' maps.
        flagged: True when ``agreement < flag_agreement``.
    """

    saliency: np.ndarray
    confidence: np.ndarray
    maps: dict[str, np.ndarray]
    weights: dict[str, float]
    agreement: float
    flagged: bool


def _thumb(smap: np.ndarray, side: int = 64) -> np.ndarray:
    h, w = smap.shape
    scale = side / max(h, w)
    size = (max(4, round(w * scale)), max(4, round(h * scale)))
    return np.asarray(Image.fromarray(smap.astype(np.float32), mode="F").resize(size, Image.BILINEAR)).ravel()


def agreement_matrix(maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """``M x M`` Pearson correlations of ``M`` maps (each ``H x W``, same size), compared on a
    64 px thumbnail. A constant map correlates 0 with everything (1 with itself)."""
    thumbs = np.stack([_thumb(m) for m in maps.values()]).astype(np.float64)
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(thumbs, axis=1)
    safe = np.where(norms > 1e-9, norms, 1.0)
    corr = (thumbs @ thumbs.T) / (safe[:, None] * safe[None, :])
    corr[norms <= 1e-9, :] = 0.0
    corr[:, norms <= 1e-9] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr


def fuse_maps(
    maps: Mapping[str, np.ndarray],
    priors: Mapping[str, float] | None = None,
    temperature: float = 0.2,
    enhance_b: float = 10.0,
    margin: float = 0.2,
    vote: float = 0.75,
) -> tuple[np.ndarray, np.ndarray, dict[str, float], float]:
    """Fuse normalised maps with per-image agreement weights (steps 2-4 of the module doc).

    Args:
        maps: name -> ``H x W`` map in ``[0, 1]`` (at least two, same size).
        priors: name -> prior weight (missing names: 1).
        temperature: softness of the agreement weighting (> 0).
        enhance_b: slope of the calibrating sigmoid (0: no calibration, only normalisation).
        margin, vote: the confidence rule.

    Returns:
        ``(saliency H x W float32, confidence H x W bool, weights, mean pairwise agreement)``.
    """
    if len(maps) < 2:
        raise ValueError(f"fusion needs at least two maps, got {len(maps)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.5 <= vote <= 1.0:
        raise ValueError(f"vote must lie in [0.5, 1], got {vote}")
    names = list(maps)
    shapes = {np.asarray(m).shape for m in maps.values()}
    if len(shapes) != 1:
        raise ValueError(f"maps differ in size: {shapes}")
    priors = dict(priors or {})
    corr = agreement_matrix(maps)
    m = len(names)
    agree = (corr.sum(axis=1) - 1.0) / (m - 1)
    logits = agree / temperature
    raw = np.array([priors.get(n, 1.0) for n in names]) * np.exp(logits - logits.max())
    if raw.sum() <= 0:
        raise ValueError("all fusion priors are zero")
    weights = raw / raw.sum()
    stack = np.stack([np.asarray(maps[n], dtype=np.float32) for n in names])
    fused = normalize_map(np.tensordot(weights.astype(np.float32), stack, axes=1))
    if enhance_b > 0:
        t = otsu_threshold(fused)
        fused = (1.0 / (1.0 + np.exp(-enhance_b * (fused - t)))).astype(np.float32)
        fused = normalize_map(fused)
    votes = np.tensordot(
        weights.astype(np.float32),
        np.stack([(s > otsu_threshold(s)).astype(np.float32) for s in stack]),
        axes=1,
    )
    fg = fused >= 0.5
    confidence = np.where(fg, (fused >= 0.5 + margin) & (votes >= vote), (fused <= 0.5 - margin) & (votes <= 1 - vote))
    mean_agreement = float((corr.sum() - m) / (m * (m - 1)))
    return fused.astype(np.float32), confidence, dict(zip(names, weights.tolist())), mean_agreement


def fuse(image: np.ndarray, cfg: FusionConfig | None = None) -> FusionResult:
    """Fused classical saliency of an ``H x W x 3`` uint8 RGB image (see the module doc)."""
    cfg = cfg or FusionConfig()
    if not cfg.scales:
        raise ValueError("FusionConfig.scales must list at least one superpixel count")
    size = np.asarray(image).shape[:2]
    small = working_image(image, cfg.max_side)
    lab = to_lab(small)
    priors = dict(cfg.priors)
    unknown = set(priors) - {"rbd", "gmr", "mbd", "spectral"}
    if unknown:
        raise ValueError(f"FusionConfig.priors: unknown methods {sorted(unknown)}; use rbd, gmr, mbd, spectral")
    maps: dict[str, np.ndarray] = {}
    if priors.get("rbd", 0) > 0 or priors.get("gmr", 0) > 0:
        rbd_acc = np.zeros(small.shape[:2], np.float32)
        gmr_acc = np.zeros(small.shape[:2], np.float32)
        for n_segments in cfg.scales:
            graph = build_superpixel_graph(lab, int(n_segments), cfg.compactness)
            if priors.get("rbd", 0) > 0:
                rbd_acc += normalize_map(graph.to_pixels(rbd_scores(graph)))
            if priors.get("gmr", 0) > 0:
                gmr_acc += normalize_map(graph.to_pixels(gmr_scores(graph)))
        if priors.get("rbd", 0) > 0:
            maps["rbd"] = normalize_map(rbd_acc)
        if priors.get("gmr", 0) > 0:
            maps["gmr"] = normalize_map(gmr_acc)
    if priors.get("mbd", 0) > 0:
        maps["mbd"] = mbd_saliency(small, max_side=None, lab=lab)
    if priors.get("spectral", 0) > 0:
        maps["spectral"] = spectral_residual_saliency(small)
    fused, conf, weights, agreement = fuse_maps(maps, priors, cfg.temperature, cfg.enhance_b, cfg.margin, cfg.vote)
    if fused.shape != tuple(size):
        fused = resize_map(fused, size)
        conf = np.asarray(Image.fromarray(conf).resize((size[1], size[0]), Image.NEAREST))
    return FusionResult(
        saliency=np.clip(fused, 0.0, 1.0),
        confidence=conf.astype(bool),
        maps=maps,
        weights=weights,
        agreement=agreement,
        flagged=agreement < cfg.flag_agreement,
    )


def fuse_with(
    result: FusionResult, extra: Mapping[str, np.ndarray], cfg: FusionConfig | None = None, prior: float = 1.0
) -> np.ndarray:
    """Fuse an image's classical maps again, together with more maps (e.g. a learned network's).

    The extra maps join the methods of ``result`` as further estimators: same agreement
    weighting, calibration and confidence rule (steps 2-3 of the module doc), each with the prior
    weight ``prior``. A map that agrees with the others gains weight, one that contradicts them
    loses it, image by image.

    Args:
        result: :func:`fuse`'s result for the image (its ``maps`` are at the working size).
        extra: name -> ``H' x W'`` map in ``[0, 1]``, any size (resized to the working size and
            min-max normalised); the names must differ from the methods' names.
        cfg: the fusion settings ``result`` was made with.
        prior: the prior weight of every extra map (> 0).

    Returns:
        ``H x W`` float32 soft map in ``[0, 1]``, the size of ``result.saliency``.

    Example::

        result = fuse(image, cfg)
        soft = fuse_with(result, {"network": network_map}, cfg)
    """
    cfg = cfg or FusionConfig()
    clash = set(extra) & set(result.maps)
    if clash:
        raise ValueError(f"extra maps {sorted(clash)} have the names of the fused methods; rename them")
    if prior <= 0:
        raise ValueError(f"prior must be > 0, got {prior}")
    size = next(iter(result.maps.values())).shape
    maps = dict(result.maps)
    maps.update({name: normalize_map(resize_map(np.asarray(m, np.float32), size)) for name, m in extra.items()})
    priors = {**cfg.priors, **{name: prior for name in extra}}
    fused, _, _, _ = fuse_maps(maps, priors, cfg.temperature, cfg.enhance_b, cfg.margin, cfg.vote)
    return np.clip(resize_map(fused, result.saliency.shape), 0.0, 1.0).astype(np.float32)


def fused_saliency(image: np.ndarray, cfg: FusionConfig | None = None) -> np.ndarray:
    """Only the fused soft map of :func:`fuse` (``H x W`` float32 in ``[0, 1]``)."""
    return fuse(image, cfg).saliency
