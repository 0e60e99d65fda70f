"""The self-training math: the confident loss, the round's target update, mean alignment, diagnostics and augmentation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from saliency.refine.config import RefineConfig


def confident_bce(
    logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor, unconfident_weight: float = 0.0
) -> torch.Tensor:
    """Weighted binary cross-entropy for self-training on pseudo-labels.

    Confident pixels count with weight 1 against the binarised ``target`` (``>= 0.5``); the other
    pixels count with weight ``unconfident_weight`` against the soft ``target`` itself (0: they
    are ignored). The sum is divided by the total weight (0 when it is 0, still differentiable).

    Shapes: ``logits``, ``target`` (in ``[0, 1]``) and ``confidence`` (bool) are ``B x 1 x H x W``.

    Example::

        loss = confident_bce(net(x), targets, confidence, unconfident_weight=0.5)
    """
    if logits.shape != target.shape or logits.shape != confidence.shape:
        raise ValueError(f"shapes differ: logits {logits.shape}, target {target.shape}, confidence {confidence.shape}")
    if not 0.0 <= unconfident_weight <= 1.0:
        raise ValueError(f"unconfident_weight must lie in [0, 1], got {unconfident_weight}")
    conf = confidence.float()
    goal = torch.where(confidence, (target >= 0.5).float(), target.float())
    weight = conf + (1.0 - conf) * unconfident_weight
    loss = F.binary_cross_entropy_with_logits(logits.float(), goal, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def target_diagnostics(
    predictions: torch.Tensor, fused: torch.Tensor, fused_confidence: torch.Tensor
) -> dict[str, float]:
    """Label-free statistics of a round's predictions against the fused pseudo-labels.

    Args:
        predictions, fused: ``N x H x W`` maps in ``[0, 1]``.
        fused_confidence: ``N x H x W`` bool, the fusion's confidence mask.

    Returns:
        ``foreground_share`` (share of predicted pixels ``>= 0.5``), ``fused_foreground_share``
        (the same for the fused maps), ``confident_agreement`` (share of the fusion's confident
        pixels where the prediction has the fused label) and ``unconfident_foreground`` (share
        of the unconfident pixels predicted as foreground).
    """
    if predictions.shape != fused.shape or fused.shape != fused_confidence.shape:
        raise ValueError(f"shapes differ: {predictions.shape}, {fused.shape}, {fused_confidence.shape}")
    p, f = predictions >= 0.5, fused >= 0.5
    conf = fused_confidence.bool()
    agree = (p == f) & conf
    unconf = ~conf
    return {
        "foreground_share": float(p.float().mean()),
        "fused_foreground_share": float(f.float().mean()),
        "confident_agreement": float(agree.sum()) / max(1, int(conf.sum())),
        "unconfident_foreground": float((p & unconf).sum()) / max(1, int(unconf.sum())),
    }


def align_mean(probabilities: torch.Tensor, target_mean: torch.Tensor, iters: int = 40) -> torch.Tensor:
    """Per-image distribution alignment: shift each map's logits by the one constant that makes
    its mean equal ``target_mean`` (the idea of ReMixMatch's distribution alignment, Berthelot et
    al., ICLR 2020, applied per image). The order of the pixels within an image is unchanged; only
    how much of the image is called foreground moves. Self-training uses it to keep each image's
    predicted foreground at its fused pseudo-label's, which stops the objects from growing round
    after round.

    Args:
        probabilities: ``N x H x W`` maps in ``[0, 1]``.
        target_mean: ``N`` wanted means in ``[0, 1]`` (clamped to ``[1e-4, 1 - 1e-4]``).
        iters: bisection steps on the shift (40 reach float32 precision on ``[-30, 30]``).

    Returns:
        ``N x H x W`` float32 maps ``sigmoid(logit(p) + b_n)`` whose means equal ``target_mean``.

    Example::

        aligned = align_mean(predictions, fused.mean(dim=(1, 2)))
    """
    if probabilities.dim() != 3 or target_mean.shape != probabilities.shape[:1]:
        raise ValueError(
            f"want N x H x W maps and N means, got {tuple(probabilities.shape)} and {tuple(target_mean.shape)}"
        )
    out = torch.empty(probabilities.shape, dtype=torch.float32)
    for i in range(0, len(probabilities), 64):  # chunks bound the memory of 1,000s of maps
        z = torch.logit(probabilities[i : i + 64].float().clamp(1e-6, 1 - 1e-6))
        goal = target_mean[i : i + 64].float().clamp(1e-4, 1 - 1e-4).view(-1, 1, 1)
        lo, hi = torch.full_like(goal, -30.0), torch.full_like(goal, 30.0)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = torch.sigmoid(z + mid).mean(dim=(1, 2), keepdim=True) > goal
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        out[i : i + 64] = torch.sigmoid(z + (lo + hi) / 2)
    return out


def update_targets(
    average: torch.Tensor,
    predictions: torch.Tensor,
    momentum: float,
    margin: float,
    anchor: torch.Tensor | None = None,
    anchor_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One self-training step on the stored per-image targets.

    Args:
        average: ``N x H x W`` moving average of the predictions so far (starts as the fused maps).
        predictions: ``N x H x W`` float predictions in ``[0, 1]``.
        momentum: ``m`` in ``a <- m a + (1 - m) p`` (0: take the predictions as they are).
        margin: confident where ``|t - 0.5| >= margin``.
        anchor: ``N x H x W`` the first round's (fused) targets, or None.
        anchor_weight: ``w``; the next targets are ``t = w * anchor + (1 - w) * a``. With
            ``w > 0`` a pixel can only stay confident where the average still agrees with the
            fused pseudo-label, which stops self-training from drifting (e.g. growing objects).

    Returns:
        ``(new average, targets, confidence)``, all ``N x H x W`` (confidence bool).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"target_momentum must lie in [0, 1), got {momentum}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must lie in [0, 0.5), got {margin}")
    if not 0.0 <= anchor_weight < 1.0:
        raise ValueError(f"target_anchor must lie in [0, 1), got {anchor_weight}")
    if anchor_weight > 0 and anchor is None:
        raise ValueError("anchor_weight > 0 needs the anchor targets")
    new = momentum * average + (1.0 - momentum) * predictions
    targets = new if anchor is None or anchor_weight == 0 else anchor_weight * anchor + (1.0 - anchor_weight) * new
    return new, targets, (targets - 0.5).abs() >= margin


def augment(
    images: torch.Tensor, targets: torch.Tensor, conf: torch.Tensor, cfg: RefineConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random flip, random resized crop (one affine warp for image, target and confidence) and
    colour jitter. ``images`` ``B x 3 x S x S`` normalised, ``targets``/``conf`` ``B x 1 x S x S``."""
    b, dev = images.shape[0], images.device
    r = lambda *s: torch.rand(*s, generator=gen).to(dev)  # noqa: E731
    area = cfg.scale_min + (1 - cfg.scale_min) * r(b)
    aspect = torch.exp((r(b) - 0.5) * math.log(4 / 3) * 2)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (1 - sx) * (2 * r(b) - 1)
    ty = (1 - sy) * (2 * r(b) - 1)
    flip = torch.where(r(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    targets = F.grid_sample(targets, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    conf = F.grid_sample(conf.float(), grid, mode="nearest", padding_mode="reflection", align_corners=False) > 0.5
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        gain = 1 + j * (2 * r(b, 1, 1, 1) - 1)
        bias = j * (2 * r(b, 1, 1, 1) - 1)
        images = images * gain + bias
    return images, targets, conf
