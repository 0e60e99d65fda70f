"""Self-trained saliency refiner (DeepUSPS-style), trained without labels.

Loop (T. Nguyen et al., "DeepUSPS: Deep Robust Unsupervised Saliency Prediction With
Self-Supervision", NeurIPS 2019, simplified to one handcrafted source: our fusion):

1. Pseudo-labels: the fused classical map of every image (:mod:`saliency.fusion`) and its
   confidence mask, at the network's input size.
2. Round ``r``: train a small segmentation network on the targets. The loss is binary
   cross-entropy with the binarised target on the confident pixels (weight 1) plus, with
   ``unconfident_weight > 0``, cross-entropy with the soft target on the other pixels (weight
   ``unconfident_weight``), so that the network keeps its teacher's uncertainty there instead
   of guessing (a network trained on the confident pixels alone calls about half of the
   unconfident background foreground, which grows the objects; see docs/SALIENCY.md).
3. After the round, predict every image (with a horizontal-flip average); with ``align_mean``,
   shift each prediction's logits so that its mean equals its fused map's (:func:`align_mean`:
   the network otherwise calls more of each image foreground every round). Then update the
   per-image moving average ``a <- m a + (1 - m) p`` (``a`` starts as the fused map). The next
   round's targets are ``t = w * fused + (1 - w) * a`` (``w = target_anchor``; 0 gives the plain
   moving average); its confident pixels are those where ``|t - 0.5| >= margin``.
4. Output (:class:`RefinerPredictor`): the network's flip-averaged map, resized to the image,
   aligned to the fused map's mean with ``align_mean``, then combined with the classical maps
   (the fusion runs at inference too): ``combine="fusion"`` adds it to the agreement-weighted
   fusion as a fifth estimator (:func:`saliency.fusion.fuse_with`); ``combine="blend"`` averages
   it with the fused map, ``(1 - fused_weight) * network + fused_weight * fused``.

The network is a ResNet (``maskcontrast.models.ResNetBackbone``) with a light decoder that
merges layer4 with the layer1/layer2 features (stride 4) and, with ``model.stem_skip``, with
the stem's features at stride 2 for sharper boundaries. It is trained from scratch by default;
``model.init`` may name a MoCo, torchvision or maskcontrast checkpoint (read by
``maskcontrast.models.init_backbone``). Images are resized (squashed) to ``input_size`` squares;
the prediction is resized back. ``precision=auto`` trains and predicts under bfloat16 autocast
where the hardware has native bfloat16 (CUDA, or a CPU with AVX512-BF16 / AMX), else in fp32.

Usage::

    python -m saliency.refine --images DIR [--images DIR2] [--dataset weizmann=ROOT] --out RUN \\
        --config configs/saliency/refine_cpu.yaml [key=value ...]
    python -m saliency.generate --images DIR --out MASKS --method refined --checkpoint RUN/refiner.pt

Run folder: ``config.yaml``, ``pseudo_labels.pt`` (cached fused targets), ``last.pt`` (resumable
state, written atomically every epoch), ``refiner.pt`` (the final model), ``history.json`` and
TensorBoard logs in ``tb/``. An interrupted run continues with ``--resume``.

Python API::

    from saliency.refine import RefinerPredictor
    predict = RefinerPredictor("RUN/refiner.pt")
    soft = predict(image)       # H x W float32 in [0, 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from tqdm import tqdm

from maskcontrast.config import ConfigError, add_config_arguments, config_to_dict, load_config, save_config
from maskcontrast.data import DataError, build_dataset
from maskcontrast.data.base import SegmentationDataset
from maskcontrast.models import ResNetBackbone, init_backbone, read_checkpoint
from maskcontrast.models.checkpoint import CheckpointError
from maskcontrast.runs import (
    RunLayout,
    capture_rng_state,
    claim_run_folder,
    identity_diff,
    load_state,
    optim_state,
    read_identity,
    restore_optim_state,
    restore_rng_state,
    save_state,
    tensorboard,
)
from maskcontrast.utils import (
    atomic_write_bytes,
    autocast_dtype,
    get_device,
    seed_everything,
    setup_logging,
)
from saliency.common import check_image, resize_map
from saliency.fusion import FusionConfig, FusionResult, fuse, fuse_with
from saliency.generate import single_thread_env

__all__ = [
    "RefinerNetConfig",
    "RefineConfig",
    "RefinerNet",
    "RefinerPredictor",
    "align_mean",
    "confident_bce",
    "update_targets",
    "target_diagnostics",
    "train_refiner",
    "main",
]

log = logging.getLogger("saliency.refine")

FORMAT = "maskcontrast-saliency-refiner"
#: the refiner's precision settings (``auto``: bfloat16 where the device computes it natively)
PRECISIONS = ("auto", "bf16", "fp32")
#: how the output combines the network's map with the classical ones (see RefineConfig.combine)
COMBINES = ("fusion", "blend")
FORMAT_VERSION = 3  # 2: stem_skip, fused_weight, unconfident_weight, precision; 3: align_mean, combine
SUPPORTED_VERSIONS = (1, 2, 3)
# Older checkpoints predate some keys; they load with the values that their version's code used.
_LEGACY = {
    1: {"model": {"stem_skip": False}, "fused_weight": 0.0, "unconfident_weight": 0.0, "precision": "fp32",
        "align_mean": False, "combine": "blend"},
    2: {"align_mean": False, "combine": "blend"},
}  # fmt: skip
#: what a refiner run writes in its folder (``pseudo_labels.pt`` is a keyed cache that an overwrite keeps)
RUN_LAYOUT = RunLayout("refiner run", owned=("last.pt", "refiner.pt", "history.json"), state=("last.pt", "refiner.pt"),
                       writer="saliency.refine")  # fmt: skip
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class RefinerNetConfig:
    """The refiner network: a torchvision ResNet trunk and a light decoder."""

    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101
    output_stride: int = 32  # 8, 16 or 32 (32: no dilation, the cheapest)
    decoder_channels: int = 64
    stem_skip: bool = True  # also merge the stem's features at stride 2 (sharper boundaries)
    init: str = "random"  # random | torchvision | path to a MoCo / torchvision / maskcontrast checkpoint


@dataclass
class RefineConfig:
    """Everything ``python -m saliency.refine`` needs besides the image sources."""

    model: RefinerNetConfig = field(default_factory=RefinerNetConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    input_size: int = 192
    rounds: int = 3
    epochs_per_round: int = 3
    batch_size: int = 16
    lr: float = 1e-3  # AdamW, cosine over all rounds
    weight_decay: float = 1e-4
    target_momentum: float = 0.5  # moving average of predictions: a <- m a + (1 - m) prediction
    target_anchor: float = 0.5  # next targets: w * fused + (1 - w) * a (0: the average alone)
    margin: float = 0.25  # confident where |t - 0.5| >= margin (rounds after the first)
    unconfident_weight: float = 0.5  # loss weight of the unconfident pixels (soft targets); 0: confident only
    fused_weight: float = 0.5  # combine=blend: (1 - w) * network + w * fused map (0: the network alone)
    align_mean: bool = True  # shift each prediction's logits so its mean equals its fused map's (stops drift)
    combine: str = "fusion"  # fusion: the network joins the classical fusion as one more estimator | blend
    tta_scales: list[float] = field(default_factory=lambda: [1.0])  # inference: mean of the maps at these x input_size
    precision: str = "auto"  # auto (bf16 where native) | bf16 | fp32
    scale_min: float = 0.6  # random-resized-crop area range lower bound
    color_jitter: float = 0.2
    max_images: int = 0  # 0: all images
    workers: int = 2  # processes for the pseudo-labels
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "auto"
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class RefinerNet(nn.Module):
    """ResNet trunk + decoder: ``B x 3 x H x W`` (ImageNet-normalised) -> ``B x 1 x H x W`` logits.

    The decoder projects layer4 (stride ``output_stride``) and layer2 (stride 8) to
    ``decoder_channels`` ``c``, adds them at stride 8, upsamples to layer1 (stride 4),
    concatenates layer1's projection, and applies two 3x3 convs. Without ``stem_skip`` a 1x1 conv
    then predicts at stride 4. With it, the result (``c / 2`` channels) is upsampled to the stem
    (conv1, stride 2), concatenated with the stem's projection (``c / 4``), and a 3x3 conv and a
    1x1 conv predict at stride 2. The logits are upsampled (bilinear) to the input size.

    Example::

        net = RefinerNet(RefinerNetConfig())
        logits = net(torch.randn(2, 3, 128, 128))   # 2 x 1 x 128 x 128
    """

    def __init__(self, cfg: RefinerNetConfig) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(cfg.arch, cfg.output_stride)
        expansion = 4 if self.backbone.out_channels == 2048 else 1
        c = cfg.decoder_channels
        if c < 8:
            raise ValueError(f"model.decoder_channels must be >= 8, got {c}")
        self.proj4 = _conv_bn_relu(self.backbone.out_channels, c, 1)
        self.proj2 = _conv_bn_relu(128 * expansion, c, 1)
        self.proj1 = _conv_bn_relu(64 * expansion, c // 2, 1)
        self.stem_skip = bool(cfg.stem_skip)
        if self.stem_skip:
            self.head = nn.Sequential(_conv_bn_relu(c + c // 2, c, 3), _conv_bn_relu(c, c // 2, 3))
            self.proj0 = _conv_bn_relu(64, c // 4, 1)
            self.fine = nn.Sequential(_conv_bn_relu(c // 2 + c // 4, c // 4, 3), nn.Conv2d(c // 4, 1, 1))
        else:  # the version-1 decoder (stride 4)
            self.head = nn.Sequential(_conv_bn_relu(c + c // 2, c, 3), _conv_bn_relu(c, c, 3), nn.Conv2d(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        size = x.shape[-2:]
        f0 = b.relu(b.bn1(b.conv1(x)))
        f1 = b.layer1(b.maxpool(f0))
        f2 = b.layer2(f1)
        f4 = b.layer4(b.layer3(f2))
        h = self.proj2(f2) + F.interpolate(self.proj4(f4), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        h = F.interpolate(h, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(torch.cat([h, self.proj1(f1)], dim=1))
        if self.stem_skip:
            out = F.interpolate(out, size=f0.shape[-2:], mode="bilinear", align_corners=False)
            out = self.fine(torch.cat([out, self.proj0(f0)], dim=1))
        # the last upsampling in fp32 (bf16 interpolation is slow on CPUs and rounds the logits)
        with torch.autocast(x.device.type, enabled=False):
            return F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)


def _normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """``B x H x W x 3`` uint8 -> ``B x 3 x H x W`` float, ImageNet mean/std."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------
# Math
# ----------------------------------------------------------------------------------------------


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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


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


def _augment(
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


# ----------------------------------------------------------------------------------------------
# Pseudo-labels
# ----------------------------------------------------------------------------------------------

_SOURCES: list[SegmentationDataset] = []
_FUSION: list[FusionConfig] = []


def _init_pseudo(sources: list[tuple[str, str]], fusion: dict[str, Any]) -> None:
    _SOURCES.clear()
    _SOURCES.extend(build_dataset(name, root) for name, root in sources)
    _FUSION[:] = [FusionConfig(**fusion)]


def _pseudo_one(item: tuple[int, str, int]) -> tuple[int, str, Any]:
    src, sid, size = item
    ds = _SOURCES[src]
    try:
        image = ds.read_sample_image(ds.files(sid), sid)
    except DataError as err:
        return src, sid, str(err)
    result = fuse(image, _FUSION[0])
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    target = np.rint(resize_map(result.saliency, (size, size)) * 255).astype(np.uint8)
    conf = np.asarray(Image.fromarray(result.confidence).resize((size, size), Image.NEAREST))
    return src, sid, (small, target, conf)


def _pseudo_labels(sources: list[tuple[str, str]], cfg: RefineConfig, cache: Path) -> dict[str, Any]:
    size = cfg.input_size
    fusion = config_to_dict(cfg.fusion)
    key = {"sources": [list(s) for s in sources], "input_size": size, "fusion": fusion, "max_images": cfg.max_images}
    if cache.is_file():
        data = read_checkpoint(cache)
        if data.get("key") == json.dumps(key, sort_keys=True):
            log.info("using cached pseudo-labels %s (%d images)", cache, len(data["ids"]))
            return data
        log.warning("%s was made with other settings; recomputing", cache)
    items = []
    for src, (name, root) in enumerate(sources):
        ds = build_dataset(name, root)
        items.extend((src, sid, size) for sid in ds.ids)
    if cfg.max_images and len(items) > cfg.max_images:
        rng = np.random.default_rng(cfg.seed)
        items = [items[i] for i in sorted(rng.choice(len(items), cfg.max_images, replace=False))]
    images, targets, confs, ids = [], [], [], []
    bar = tqdm(total=len(items), desc="pseudo-labels (fusion)", unit="img")

    def take(res: tuple[int, str, Any]) -> None:
        src, sid, data = res
        bar.update()
        if isinstance(data, str):
            log.warning("skipping unreadable image %s: %s", sid, data)
            return
        ids.append(f"{src}:{sid}")
        images.append(data[0])
        targets.append(data[1])
        confs.append(data[2])

    if cfg.workers > 1:
        with (
            single_thread_env(True),
            mp.get_context("spawn").Pool(cfg.workers, _init_pseudo, (sources, fusion)) as pool,
        ):
            for res in pool.imap(_pseudo_one, items, chunksize=2):
                take(res)
    else:
        _init_pseudo(sources, fusion)
        for it in items:
            take(_pseudo_one(it))
    bar.close()
    if not ids:
        raise DataError("no readable images in the given sources")
    data = {
        "key": json.dumps(key, sort_keys=True),
        "ids": ids,
        "images": torch.from_numpy(np.stack(images)),
        "targets": torch.from_numpy(np.stack(targets)),
        "confidence": torch.from_numpy(np.stack(confs).astype(bool)),
    }
    save_state(cache, data)
    return data


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _flip_average(net: RefinerNet, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``B x 3 x H x W`` -> ``B x 1 x H x W`` mean of the sigmoid maps of ``x`` and its mirror image."""
    x = x.contiguous(memory_format=torch.channels_last)
    with _autocast(x.device, dtype):
        p = torch.sigmoid(net(x)) + torch.sigmoid(net(x.flip(-1))).flip(-1)
    return p.float() / 2


@torch.no_grad()
def _predict_all(
    net: RefinerNet, images: torch.Tensor, device: torch.device, batch: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    net.eval()
    outs = []
    for i in range(0, len(images), batch):
        outs.append(_flip_average(net, _normalize(images[i : i + batch].to(device)), dtype)[:, 0].cpu())
    net.train()
    return torch.cat(outs)


def _final_checkpoint(net: RefinerNet, cfg: RefineConfig, **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(cfg),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }


def train_refiner(
    sources: Sequence[tuple[str, str]],
    out: str | Path,
    cfg: RefineConfig | Any,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the refiner on the images of ``sources`` (``(reader name, root)`` pairs, e.g.
    ``("image_folder", "photos/")``) and write the run folder ``out`` (see the module doc).

    Returns:
        ``{"checkpoint": path, "history": [...], "seconds": ..., "n_images": ...}``.
    """
    cfg = cfg if not isinstance(cfg, RefineConfig) else OmegaConf.structured(cfg)
    _validate(cfg)
    out = Path(out).expanduser()
    last, final = out / "last.pt", out / "refiner.pt"
    claim = claim_run_folder(out, RUN_LAYOUT, resume=resume, overwrite=overwrite)
    if claim.resume and (out / "config.yaml").is_file():
        diff = identity_diff(read_identity(out / "config.yaml"), OmegaConf.to_container(cfg))
        if diff:
            raise ConfigError(f"{out}/config.yaml differs from this run's config ({'; '.join(diff[:4])}); resume "
                              "with the same settings")  # fmt: skip
    claim.prepare()
    save_config(cfg, out / "config.yaml")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = get_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device, choices=PRECISIONS)
    log.info("device %s, precision %s", device, "bf16" if amp_dtype is not None else "fp32")
    start = time.perf_counter()
    data = _pseudo_labels([tuple(s) for s in sources], cfg, out / "pseudo_labels.pt")  # type: ignore[misc]
    pseudo_seconds = time.perf_counter() - start
    images = data["images"]
    targets = data["targets"].float() / 255.0
    fused = targets.clone()
    average = targets.clone()
    fused_conf = data["confidence"].clone()
    conf = fused_conf.clone()
    n = len(images)
    net = RefinerNet(OmegaConf.to_object(cfg.model))
    init_backbone(net.backbone, cfg.model.init)
    net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total_steps = cfg.rounds * cfg.epochs_per_round * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    history: list[dict[str, Any]] = []
    first_round, first_epoch = 0, 0
    if claim.resume and last.is_file():
        state = load_state(last)
        net.load_state_dict(state["model"])
        restore_optim_state(state, opt, sched)
        targets, conf = state["targets"].float() / 255.0, state["confidence"].bool()
        average = state["average"].float() / 255.0 if "average" in state else targets.clone()
        first_round, first_epoch = int(state["round"]), int(state["epoch"])
        history = list(state["history"])
        restore_rng_state(state["rng"])
        log.info("resumed %s at round %d, epoch %d", last, first_round + 1, first_epoch + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * first_round + first_epoch)
    train_start = time.perf_counter()
    with tensorboard(out / "tb") as writer:
        for rnd in range(first_round, cfg.rounds):
            for epoch in range(first_epoch if rnd == first_round else 0, cfg.epochs_per_round):
                perm = torch.randperm(n, generator=gen)
                losses = []
                bar = tqdm(range(steps_per_epoch), desc=f"round {rnd + 1}/{cfg.rounds} epoch {epoch + 1}/{cfg.epochs_per_round}", unit="step", leave=False)  # fmt: skip
                for step in bar:
                    idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    x = _normalize(images[idx].to(device))
                    t = targets[idx].unsqueeze(1).to(device)
                    c = conf[idx].unsqueeze(1).to(device)
                    x, t, c = _augment(x, t, c, cfg, gen)
                    with _autocast(device, amp_dtype):
                        logits = net(x.contiguous(memory_format=torch.channels_last))
                    loss = confident_bce(logits, t, c, cfg.unconfident_weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(loss.item())
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                entry = {"round": rnd + 1, "epoch": epoch + 1, "loss": float(np.mean(losses)),
                         "confident_fraction": float(conf.float().mean()), "seconds": time.perf_counter() - train_start}  # fmt: skip
                history.append(entry)
                log.info("round %d epoch %d: loss %.4f (confident pixels %.1f%%)", rnd + 1, epoch + 1, entry["loss"],
                         100 * entry["confident_fraction"])  # fmt: skip
                if writer is not None:
                    writer.add_scalar("refine/loss", entry["loss"], len(history))
                    writer.add_scalar("refine/confident_fraction", entry["confident_fraction"], len(history))
                next_round, next_epoch = (rnd, epoch + 1) if epoch + 1 < cfg.epochs_per_round else (rnd + 1, 0)
                if next_epoch == 0:  # end of the round: new targets from the moving average
                    preds = _predict_all(net, images, device, cfg.batch_size * 2, amp_dtype)
                    diag = target_diagnostics(preds, fused, fused_conf)
                    entry.update(diag)
                    if cfg.align_mean:  # the diagnostics above show the drift before the alignment
                        preds = align_mean(preds, fused.mean(dim=(1, 2)))
                    average, targets, conf = update_targets(
                        average, preds, cfg.target_momentum, cfg.margin, fused, cfg.target_anchor
                    )
                    log.info("round %d done: predicted foreground %.3f (fused %.3f), agreement with the fused label on its "
                             "confident pixels %.3f, unconfident pixels called foreground %.3f; next targets: %.1f%% of "
                             "pixels confident", rnd + 1, diag["foreground_share"], diag["fused_foreground_share"],
                             diag["confident_agreement"], diag["unconfident_foreground"], 100 * float(conf.float().mean()))  # fmt: skip
                    if writer is not None:
                        for k, v in diag.items():
                            writer.add_scalar(f"refine/{k}", v, rnd + 1)
                save_state(
                    last,
                    {
                        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                        **optim_state(opt, sched),
                        "targets": torch.round(targets * 255).to(torch.uint8),
                        "average": torch.round(average * 255).to(torch.uint8),
                        "confidence": conf,
                        "round": next_round,
                        "epoch": next_epoch,
                        "history": history,
                        "rng": capture_rng_state(),
                    },
                )
    seconds = time.perf_counter() - start
    save_state(final, _final_checkpoint(net, cfg, history=history, n_images=n))
    summary = {"checkpoint": str(final), "history": history, "seconds": seconds, "pseudo_label_seconds": pseudo_seconds,
               "train_seconds": time.perf_counter() - train_start, "n_images": n}  # fmt: skip
    atomic_write_bytes(out / "history.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _validate(cfg: Any) -> None:
    checks = [
        (cfg.input_size >= 32, f"input_size must be >= 32, got {cfg.input_size}"),
        (cfg.rounds >= 1, f"rounds must be >= 1, got {cfg.rounds}"),
        (cfg.epochs_per_round >= 1, f"epochs_per_round must be >= 1, got {cfg.epochs_per_round}"),
        (cfg.batch_size >= 2, f"batch_size must be >= 2 (batch norm), got {cfg.batch_size}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (0 < cfg.scale_min <= 1, f"scale_min must lie in (0, 1], got {cfg.scale_min}"),
        (cfg.max_images >= 0, f"max_images must be >= 0, got {cfg.max_images}"),
        (0.0 <= cfg.target_momentum < 1.0, f"target_momentum must lie in [0, 1), got {cfg.target_momentum}"),
        (0.0 <= cfg.margin < 0.5, f"margin must lie in [0, 0.5), got {cfg.margin}"),
        (0.0 <= cfg.target_anchor < 1.0, f"target_anchor must lie in [0, 1), got {cfg.target_anchor}"),
        (0.0 <= cfg.unconfident_weight <= 1.0, f"unconfident_weight must lie in [0, 1], got {cfg.unconfident_weight}"),
        (0.0 <= cfg.fused_weight <= 1.0, f"fused_weight must lie in [0, 1], got {cfg.fused_weight}"),
        (cfg.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"),
        (cfg.combine in COMBINES, f"combine must be one of {', '.join(COMBINES)}, got {cfg.combine!r}"),
        (
            len(cfg.tta_scales) > 0 and all(0.1 <= x <= 4.0 for x in cfg.tta_scales),
            f"tta_scales must be a non-empty list of factors in [0.1, 4], got {list(cfg.tta_scales)}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------


class RefinerPredictor:
    """Load ``refiner.pt`` and predict.

    ``predictor(image)`` with an ``H x W x 3`` uint8 RGB image returns an ``H x W`` float32 map
    in ``[0, 1]``: the flip-averaged network map, shifted to the fused map's mean when the run's
    ``align_mean`` is set, then combined with the classical maps as the run's ``combine`` says:
    ``fusion`` fuses it with them as one more estimator (:func:`saliency.fusion.fuse_with`),
    ``blend`` averages it with the fused map, ``(1 - fused_weight) * network + fused_weight *
    fused`` (``combine="blend", fused_weight=0`` gives the network alone, still aligned; the
    ``combine`` and ``fused_weight`` arguments override the run's). ``predictor.network(image)``
    is the network's raw map: flip-averaged, and averaged over the run's ``tta_scales`` (factors of
    ``input_size``; the ``tta_scales`` argument overrides them). Checkpoints of versions 1 and 2
    (written before some of these keys existed) load and predict as before.

    Example::

        predict = RefinerPredictor("run/refiner.pt")
        soft = predict(image)                      # H x W float32 in [0, 1]
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | None = None,
        fused_weight: float | None = None,
        combine: str | None = None,
        tta_scales: Sequence[float] | None = None,
    ) -> None:
        path = Path(checkpoint).expanduser()
        ckpt = read_checkpoint(path)
        if ckpt.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: not a saliency refiner checkpoint (format {ckpt.get('format')!r}); "
                "pass the refiner.pt written by python -m saliency.refine"
            )
        version = ckpt.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(
                f"{path}: refiner format version {version!r} is not supported (this code reads versions "
                f"{list(SUPPORTED_VERSIONS)}); retrain it with python -m saliency.refine or use a matching release"
            )
        try:
            cfg = load_config(RefineConfig)
            if version in _LEGACY:
                cfg = OmegaConf.merge(cfg, _LEGACY[version])
            cfg = OmegaConf.merge(cfg, ckpt["config"])
            _validate(cfg)
        except Exception as err:
            raise CheckpointError(f"{path}: invalid refiner config ({err})") from err
        given = (("fused_weight", fused_weight), ("combine", combine), ("tta_scales", tta_scales))
        overrides = {k: v for k, v in given if v is not None}
        if overrides:  # the caller's settings, checked like the run's (ConfigError, a ValueError)
            cfg = OmegaConf.merge(cfg, overrides)
            _validate(cfg)
        model_cfg = OmegaConf.to_object(cfg.model)
        model_cfg.init = "random"
        self.net = RefinerNet(model_cfg)
        try:
            self.net.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: the weights do not fit the refiner network of its config ({err})") from err
        self.device = get_device(device)
        self.net.to(self.device, memory_format=torch.channels_last).eval()
        self.dtype = autocast_dtype(str(cfg.precision), self.device, choices=PRECISIONS)
        self.input_size = int(cfg.input_size)
        self.tta_scales = [float(x) for x in cfg.tta_scales]
        self.fused_weight = float(cfg.fused_weight)
        self.align_mean = bool(cfg.align_mean)
        self.combine = str(cfg.combine)
        self.fusion = FusionConfig(**config_to_dict(cfg.fusion))

    @torch.no_grad()
    def network(self, image: np.ndarray) -> np.ndarray:
        """The network's map of an ``H x W x 3`` uint8 image, flip-averaged and averaged over
        ``tta_scales``: ``H x W`` float32 in ``[0, 1]``."""
        image = check_image(image)
        h, w = image.shape[:2]
        out = np.zeros((h, w), np.float32)
        for scale in self.tta_scales:
            s = max(32, round(self.input_size * scale))
            small = np.array(Image.fromarray(image).resize((s, s), Image.BILINEAR, reducing_gap=2.0))
            p = _flip_average(self.net, _normalize(torch.from_numpy(small)[None].to(self.device)), self.dtype)
            out += resize_map(p[0, 0].cpu().numpy(), (h, w))
        return np.clip(out / len(self.tta_scales), 0.0, 1.0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self.network(image)
        if self.combine == "fusion" or self.fused_weight > 0 or self.align_mean:
            return self.output(out, fuse(image, self.fusion))
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def output(self, network_map: np.ndarray, result: FusionResult, combine: str | None = None) -> np.ndarray:
        """The refined map from the network's map (:meth:`network`) and the image's fusion
        (:func:`saliency.fusion.fuse` with ``self.fusion``): aligned with ``align_mean``, then
        combined by ``combine`` (default: this predictor's). ``H x W`` float32 in ``[0, 1]``."""
        combine = self.combine if combine is None else combine
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        out = network_map
        if self.align_mean:
            goal = torch.tensor([float(result.saliency.mean())])
            out = align_mean(torch.from_numpy(out)[None], goal)[0].numpy()
        if combine == "fusion":
            out = fuse_with(result, {"network": out}, self.fusion)
        else:
            out = (1.0 - self.fused_weight) * out + self.fused_weight * result.saliency
        return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m saliency.refine",
        description="Train the self-supervised saliency refiner on unlabelled images (fused classical "
        "pseudo-labels, confident pixels only, several rounds of moving-average targets).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--images", action="append", default=[], help="a folder of images (repeatable; searched recursively)"
    )
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=ROOT",
                   help="images of a maskcontrast.data reader, e.g. weizmann=/data/weizmann_horse (repeatable; labels unused)")  # fmt: skip
    p.add_argument("--out", required=True, help="run folder (config, cached pseudo-labels, checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    add_config_arguments(p, default=None)
    p.epilog = "Config keys (saliency.refine.RefineConfig): " + ", ".join(
        f.name for f in dataclasses.fields(RefineConfig)
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    sources: list[tuple[str, str]] = [("image_folder", d) for d in args.images]
    for item in args.dataset:
        if "=" not in item:
            log.error("--dataset expects NAME=ROOT, got %r", item)
            return 2
        name, root = item.split("=", 1)
        sources.append((name, root))
    if not sources:
        log.error("give at least one --images DIR or --dataset NAME=ROOT")
        return 2
    try:
        cfg = load_config(RefineConfig, args.config, args.overrides)
        for name, root in sources:
            build_dataset(name, root)  # fail early on a bad source
        summary = train_refiner(sources, args.out, cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, DataError, OSError, CheckpointError, ValueError) as err:
        log.error("%s", err)
        return 2
    log.info("trained on %d images in %.0f s (pseudo-labels %.0f s, training %.0f s)", summary["n_images"],
             summary["seconds"], summary["pseudo_label_seconds"], summary["train_seconds"])  # fmt: skip
    print(f"refiner written to {Path(summary['checkpoint']).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
