"""Linear probe: ``python -m eval.linear``.

A 1x1 convolution is trained on the frozen network's features (the 256-d decoder features of a
maskcontrast checkpoint, layer4 features of a MoCo/torchvision backbone) with per-pixel
cross-entropy (ignore label 255) on logits upsampled to the crop, then scored on the validation
split at label resolution (mIoU, per-class IoU, pixel accuracy; optional dense CRF).

The default config is the paper's schedule (``configs/eval/linear_voc.yaml``): ``train_aug``,
batch 16, 60 epochs, SGD lr 0.1 (momentum 0.9, weight decay 1e-4) x0.1 at epoch 25, random
horizontal flip, +-5 degree rotation, 0.75-1.25 scale and 512 x 512 crops (padding with the mean
colour / ignore label). ``configs/eval/linear_cpu.yaml`` is a CPU budget version.

``cache_features: true`` runs the frozen network once per image and stores its features
(float16) in the run folder; every epoch then applies the same random flip/rotation/scale/crop
to the cached feature map (bilinear) and its label (nearest), so an epoch costs only the
classifier. This is an approximation of image-space augmentation (exact without augmentation).

Datasets without official splits (MSRC, Pet ``all``, Weizmann, ...): with ``data.train_split``
null, the dataset's default split is divided by a seeded split (``data.val_fraction``,
``data.split_seed``) that is written to the run folder as ``split_{train,val}.txt`` and reused
on resume or with ``data.split_dir``.

Example::

    python -m eval.linear --checkpoint run/checkpoint.pt --dataset voc --root VOCdevkit --out runs/linear_voc
    python -m eval.linear --config configs/eval/linear_cpu.yaml --checkpoint moco.pth.tar --dataset weizmann \\
        --out runs/linear_weizmann epochs=5
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eval.arguments import dataset_from_args, model_from_args
from eval.caches import checkpoint_fingerprint
from eval.metrics import confusion_matrix, segmentation_scores
from eval.outputs import jsonable, safe_name, save_panel, write_json
from eval.splits import resolve_split
from eval.stream import collate_samples, require_label
from maskcontrast.api import FeatureModel, target_size, to_image_tensor
from maskcontrast.cli import run_main
from maskcontrast.config_checks import bounded, check_values
from maskcontrast.config_loading import add_config_arguments, config_to_dict, load_config, save_config
from maskcontrast.data import IGNORE_INDEX, Sample, SegmentationDataset
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.preemption import Preempted, ignore_signals_in_worker, requested, section
from maskcontrast.runs import (
    RunLayout,
    claim_run_folder,
    load_state_or_previous,
    open_tensorboard,
    optim_state,
    restore_optim_state,
    save_state,
)
from maskcontrast.utils import peak_rss_mib, seed_everything, setup_logging

__all__ = [
    "LinearDataConfig",
    "AugmentConfig",
    "OptimConfig",
    "CRFConfig",
    "LinearConfig",
    "AffineParams",
    "sample_affine",
    "affine_grid",
    "warp_image",
    "warp_label",
    "warp_features",
    "LinearClassifier",
    "crf_available",
    "dense_crf",
    "run_linear_probe",
    "main",
]

log = logging.getLogger("eval.linear")


# ----------------------------------------------------------------------------------------------
# Config schema
# ----------------------------------------------------------------------------------------------


@dataclass
class LinearDataConfig:
    """Which images train and which evaluate the probe."""

    train_split: str | None = "train_aug"  # null: seeded split of the dataset's default split
    val_split: str | None = "val"
    val_fraction: float = bounded(0.2, gt=0.0, lt=1.0)  # seeded split only
    split_seed: int = 0  # seeded split only
    split_dir: str | None = None  # reuse split_train.txt / split_val.txt from this folder
    train_limit: int | None = bounded(None, ge=1)  # first N training images (quick runs)
    val_limit: int | None = bounded(None, ge=1)


@dataclass
class AugmentConfig:
    """Random flip, rotation, scale and crop (applied to images, or to cached features)."""

    crop_size: int = bounded(512, ge=1)
    scale_min: float = bounded(0.75, gt=0.0)
    scale_max: float = bounded(1.25, gt=0.0)
    rotate_degrees: float = bounded(5.0, ge=0.0)
    flip: bool = True


@dataclass
class OptimConfig:
    lr: float = bounded(0.1, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    milestones: list[int] = field(default_factory=lambda: [25])  # epochs at which lr *= gamma
    gamma: float = bounded(0.1, gt=0.0)


@dataclass
class CRFConfig:
    """Dense CRF post-processing (needs ``pip install pydensecrf2``; skipped with a message otherwise)."""

    enabled: bool = False
    iterations: int = bounded(5, ge=1)
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


@dataclass
class LinearConfig:
    """The linear probe. Defaults: the paper's schedule on PASCAL VOC."""

    data: LinearDataConfig = field(default_factory=LinearDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    batch_size: int = bounded(16, ge=1)
    epochs: int = bounded(60, ge=0)
    base_size: int | None = bounded(
        None, ge=1
    )  # resize training images (shorter side) before augmentation; null = native
    eval_size: int | None = bounded(None, ge=1)  # network input (shorter side) for validation; null = native
    cache_features: bool = False  # run the frozen network once; augment the cached features
    eval_every: int = bounded(0, ge=0)  # also evaluate every N epochs (0: only at the end)
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# Joint geometric augmentation (pure functions)
# ----------------------------------------------------------------------------------------------


class AffineParams(NamedTuple):
    """A random view of an image: ``scale`` (crop pixels per image pixel), ``angle`` (degrees,
    about the image centre), horizontal ``flip``, and the crop's top-left ``(x0, y0)`` in the
    scaled image (negative or beyond the edge: padding)."""

    scale: float
    angle: float
    flip: bool
    x0: float
    y0: float


def sample_affine(
    rng: np.random.Generator, hw: tuple[int, int], crop: int, aug: AugmentConfig, base_scale: float = 1.0
) -> AffineParams:
    """Draw flip/rotation/scale and a uniformly placed ``crop x crop`` window for an ``H x W`` image.

    The window lies inside the scaled image where it fits; otherwise the image lies inside the
    window at a random place (the rest is padding).
    """
    if aug.scale_min <= 0 or aug.scale_max < aug.scale_min:
        raise ValueError(
            f"augment scale range must satisfy 0 < scale_min <= scale_max, got {aug.scale_min}..{aug.scale_max}"
        )
    s = base_scale * float(rng.uniform(aug.scale_min, aug.scale_max))
    angle = float(rng.uniform(-aug.rotate_degrees, aug.rotate_degrees)) if aug.rotate_degrees > 0 else 0.0
    flip = bool(aug.flip and rng.random() < 0.5)
    sh, sw = hw[0] * s, hw[1] * s
    x0 = float(rng.uniform(min(0.0, sw - crop), max(0.0, sw - crop)))
    y0 = float(rng.uniform(min(0.0, sh - crop), max(0.0, sh - crop)))
    return AffineParams(s, angle, flip, x0, y0)


def affine_grid(p: AffineParams, in_hw: tuple[int, int], crop: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """``1 x h_out x w_out x 2`` sampling grid (``grid_sample``, ``align_corners=False``) of the
    view ``p`` of an input covering ``in_hw`` pixels, sampled at ``out_hw`` points over the crop.

    All maps of one image (the image, its label, its feature map at any stride) are warped with
    the same continuous transform: crop point -> scaled image -> rotated about the centre ->
    flipped -> input, so they stay aligned whatever their resolution.
    """
    h, w = in_hw
    ys = (torch.arange(out_hw[0], dtype=torch.float64) + 0.5) * (crop / out_hw[0]) + p.y0
    xs = (torch.arange(out_hw[1], dtype=torch.float64) + 0.5) * (crop / out_hw[1]) + p.x0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cx, cy = w * p.scale / 2, h * p.scale / 2
    a = math.radians(p.angle)
    dx, dy = gx - cx, gy - cy
    rx = cx + math.cos(a) * dx + math.sin(a) * dy
    ry = cy - math.sin(a) * dx + math.cos(a) * dy
    if p.flip:
        rx = w * p.scale - rx
    nx = 2 * (rx / p.scale) / w - 1
    ny = 2 * (ry / p.scale) / h - 1
    return torch.stack([nx, ny], -1).float()[None]


def warp_image(image: torch.Tensor, p: AffineParams, crop: int) -> torch.Tensor:
    """``1 x C x H x W`` (normalised) image -> ``1 x C x crop x crop``, bilinear, zero padding
    (= the mean colour after ImageNet normalisation)."""
    grid = affine_grid(p, tuple(image.shape[-2:]), crop, (crop, crop)).to(image.device)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_label(label: torch.Tensor, p: AffineParams, crop: int, in_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """``H x W`` int label -> ``crop x crop`` int64, nearest; padding becomes 255 (ignore)."""
    hw = in_hw or tuple(label.shape[-2:])
    grid = affine_grid(p, hw, crop, (crop, crop)).to(label.device)
    shifted = (label.float() + 1)[None, None]
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    out = out.round().long() - 1
    out[out < 0] = IGNORE_INDEX
    return out


def warp_features(feats: torch.Tensor, p: AffineParams, in_hw: tuple[int, int], crop: int, stride: int) -> torch.Tensor:
    """``1 x F x h x w`` features of an ``in_hw`` image -> ``1 x F x ceil(crop/stride)^2``, bilinear."""
    n = math.ceil(crop / stride)
    grid = affine_grid(p, in_hw, crop, (n, n)).to(feats.device)
    return F.grid_sample(feats.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------------------------
# Classifier and CRF
# ----------------------------------------------------------------------------------------------


class LinearClassifier(nn.Module):
    """A 1x1 convolution ``B x F x h x w -> B x C x h x w``; ``forward(x, size)`` upsamples the
    logits bilinearly to ``size``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        logits = self.conv(x)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


def crf_available() -> tuple[bool, str]:
    """``(True, "")`` when ``pydensecrf`` (installed by ``pip install pydensecrf2``) imports."""
    try:
        import pydensecrf.densecrf
        import pydensecrf.utils  # noqa: F401  (checked for availability only)
    except Exception as err:  # ImportError, or a broken build
        return False, f"pydensecrf is not importable ({type(err).__name__}: {err}); pip install pydensecrf2"
    return True, ""


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Fully connected CRF (Krähenbühl & Koltun 2011) on ``C x H x W`` softmax probabilities of
    an ``H x W x 3`` uint8 image; returns the refined ``H x W`` labels."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    # pydensecrf needs a writeable buffer: the image is copied (datasets give read-only arrays)
    crf.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy,
        srgb=cfg.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C"),
        compat=cfg.bilateral_compat,
    )
    q = np.asarray(crf.inference(cfg.iterations)).reshape(c, h, w)
    return q.argmax(0)


# ----------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------


def _stop_if_requested(where: str, saved: Path | None) -> None:
    """Raise :class:`Preempted` (logged) when SIGTERM/SIGINT arrived; ``saved``: what holds the progress."""
    signum = requested()
    if signum is not None:
        err = Preempted(signum, "linear probe", step=where, saved=saved, hint="rerun the same command to continue")
        log.warning("%s", err)
        raise err


def _cache_file(folder: Path, sample_id: str) -> Path:
    return folder / f"{safe_name(sample_id)}.pt"


def cache_features(
    model: FeatureModel,
    ds: SegmentationDataset,
    folder: Path,
    size: int | None,
    *,
    with_label: bool,
    workers: int = 0,
    progress: bool = True,
) -> None:
    """Run the frozen network once per image and store ``{"features": F x h x w float16,
    "input_hw": (H', W')[, "label": H' x W' int16]}`` per image (resumable: existing files are kept)."""
    from torch.utils.data import Subset
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i, sid in enumerate(ds.ids) if not _cache_file(folder, sid).is_file()]
    if not todo:
        return
    loader = DataLoader(
        Subset(ds, todo),
        batch_size=model.batch_size,
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=ignore_signals_in_worker,
    )
    with tqdm(
        total=len(todo), desc=f"caching {folder.name} features", unit="img", leave=False, disable=not progress
    ) as bar:
        for samples in loader:
            for j, out, hw in model.run([s.image for s in samples], size=size):
                s = samples[j]
                entry: dict[str, Any] = {"features": out.features[0].half().cpu()}
                in_hw = target_size(hw, size, model.stride)
                entry["input_hw"] = torch.tensor(in_hw)
                if with_label:
                    lab = torch.from_numpy(_label_of(s).astype(np.int16))
                    if tuple(lab.shape) != in_hw:
                        lab = F.interpolate(lab[None, None].float(), size=in_hw, mode="nearest")[0, 0].to(torch.int16)
                    entry["label"] = lab
                save_state(_cache_file(folder, s.id), entry)
            bar.update(len(samples))
            _stop_if_requested(f"caching {folder.name} features", folder)


class _CachedFeatures(Dataset):
    def __init__(self, folder: Path, ids: Sequence[str]) -> None:
        self.folder, self.ids = folder, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return torch.load(_cache_file(self.folder, self.ids[i]), map_location="cpu", weights_only=True)


def _label_of(sample: Sample) -> np.ndarray:
    return require_label(sample, "the linear probe")


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------


def _train_batch_from_images(
    model: FeatureModel, samples: list[Sample], cfg: LinearConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    crop = cfg.augment.crop_size
    images, labels = [], []
    for s in samples:
        img = to_image_tensor(s.image).to(model.device)[None]
        img = (img - model.mean) / model.std
        hw = s.size
        base = cfg.base_size / min(hw) if cfg.base_size else 1.0
        p = sample_affine(rng, hw, crop, cfg.augment, base)
        images.append(warp_image(img, p, crop))
        labels.append(warp_label(torch.from_numpy(_label_of(s)).to(model.device), p, crop))
    feats = model(torch.cat(images)).features
    return feats, torch.stack(labels)


def _train_batch_from_cache(
    model: FeatureModel, entries: list[dict[str, Any]], cfg: LinearConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    crop = cfg.augment.crop_size
    feats, labels = [], []
    for e in entries:
        in_hw = tuple(int(v) for v in e["input_hw"])
        p = sample_affine(rng, in_hw, crop, cfg.augment)
        f = e["features"].to(model.device).float()[None]
        feats.append(warp_features(f, p, in_hw, crop, model.output_stride))
        labels.append(warp_label(e["label"].to(model.device).long(), p, crop))
    return torch.cat(feats), torch.stack(labels)


@torch.no_grad()
def evaluate(
    model: FeatureModel,
    probe: LinearClassifier,
    ds: SegmentationDataset,
    cfg: LinearConfig,
    *,
    cache_dir: Path | None = None,
    use_crf: bool = False,
    vis_dir: Path | None = None,
    vis_n: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``C x C`` confusion (rows = prediction) on ``ds`` at label resolution, and the CRF one."""
    from tqdm import tqdm

    probe.eval()
    c = ds.info.num_classes
    conf = np.zeros((c, c), np.int64)
    conf_crf = np.zeros((c, c), np.int64) if use_crf else None
    loader = DataLoader(
        ds,
        batch_size=model.batch_size,
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=ignore_signals_in_worker,
    )
    index = 0
    with tqdm(total=len(ds), desc="evaluating", unit="img", leave=False, disable=not progress) as bar:
        for samples in loader:
            if cache_dir is not None:
                feats = [
                    _CachedFeatures(cache_dir, [s.id])[0]["features"].float()[None].to(model.device) for s in samples
                ]
            else:
                feats = [out.features for _, out, _ in model.run([s.image for s in samples], size=cfg.eval_size)]
            for s, f in zip(samples, feats):
                label = _label_of(s)
                logits = probe(f, s.size)[0]
                pred = logits.argmax(0).cpu().numpy()
                conf += confusion_matrix(pred, label, c, c, ds.info.ignore_index)
                if conf_crf is not None:
                    pred = dense_crf(s.image, logits.softmax(0).cpu().numpy(), cfg.crf)
                    conf_crf += confusion_matrix(pred, label, c, c, ds.info.ignore_index)
                if vis_dir is not None and index < vis_n:
                    save_panel(vis_dir / f"{index:04d}_{safe_name(s.id)}.png", s.image, label, pred, ds.info)
                index += 1
            bar.update(len(samples))
            _stop_if_requested("evaluation", None)
    return conf, conf_crf


def _scores_dict(conf: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    s = segmentation_scores(conf)
    return {"miou": s.miou, "per_class": dict(zip(classes, s.per_class_iou.tolist())), "pixel_acc": s.pixel_acc}


def run_linear_probe(
    model: FeatureModel,
    train_ds: SegmentationDataset,
    val_ds: SegmentationDataset,
    cfg: LinearConfig | DictConfig,
    out_dir: Path,
    *,
    vis_n: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the probe (resuming from ``out_dir/state.pt``) and evaluate it. Returns the results."""
    from tqdm import tqdm

    # the schema's own bounds (ConfigError, a ValueError), also for a config built in Python
    check_values(cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg), source="linear probe config")
    if not isinstance(cfg, LinearConfig):
        cfg = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    assert isinstance(cfg, LinearConfig)
    info = train_ds.info
    c = info.num_classes
    if c < 2:
        raise ValueError(f"dataset '{info.name}' has {c} classes; the linear probe needs labels with >= 2 classes")
    seed_everything(cfg.seed)
    device = model.device
    probe = LinearClassifier(model.feature_dim, c).to(device)
    optim = torch.optim.SGD(
        probe.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(optim, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma)
    state_path = out_dir / "state.pt"
    start_epoch, start_batch, state = 0, 0, {}
    if state_path.is_file():
        state = load_state_or_previous(state_path)
        probe.load_state_dict(state["probe"])
        restore_optim_state(state, optim, sched)
        start_epoch, start_batch = int(state["epoch"]), int(state.get("batch", 0))
        log.info(
            "resuming from %s after epoch %d%s",
            state_path,
            start_epoch,
            f", batch {start_batch}" if start_batch else "",
        )
    train_cache = out_dir / "features" / "train" if cfg.cache_features else None
    val_cache = out_dir / "features" / "val" if cfg.cache_features else None
    t0 = time.time()
    with section("linear probe"):
        if train_cache is not None and start_epoch < cfg.epochs:
            cache_features(
                model, train_ds, train_cache, cfg.base_size, with_label=True, workers=workers, progress=progress
            )
        writer = open_tensorboard(out_dir / "tb")
        history = []  # the epochs run by this call
        for epoch in range(start_epoch, cfg.epochs):
            probe.train()
            rng = np.random.default_rng([cfg.seed, epoch])
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            data: Dataset = _CachedFeatures(train_cache, train_ds.ids) if train_cache is not None else train_ds
            # the order of DataLoader(shuffle=True, generator=gen): a seed draw, then a permutation
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            order = torch.randperm(len(data), generator=gen).tolist()
            first, total, count = 0, 0.0, 0
            if epoch == start_epoch and start_batch:  # resume inside the epoch where a signal stopped it
                first, total, count = start_batch, float(state["loss_sum"]), int(state["loss_count"])
                rng.bit_generator.state = json.loads(state["rng"])
            loader = DataLoader(
                data,
                batch_size=cfg.batch_size,
                sampler=order[first * cfg.batch_size :],
                num_workers=workers,
                collate_fn=collate_samples,
                worker_init_fn=ignore_signals_in_worker,
            )
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
            for batch, items in enumerate(bar, start=first + 1):
                if train_cache is not None:
                    feats, labels = _train_batch_from_cache(model, items, cfg, rng)
                else:
                    feats, labels = _train_batch_from_images(model, items, cfg, rng)
                logits = probe(feats, tuple(labels.shape[-2:]))
                if bool((labels != IGNORE_INDEX).any()):
                    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    total += float(loss.detach()) * len(items)
                    count += len(items)
                if (signum := requested()) is not None and batch * cfg.batch_size < len(data):
                    save_state(
                        state_path,
                        {
                            "probe": probe.state_dict(),
                            **optim_state(optim, sched),
                            "epoch": epoch,
                            "batch": batch,
                            "rng": json.dumps(rng.bit_generator.state),
                            "loss_sum": total,
                            "loss_count": count,
                        },
                        keep_previous=True,
                    )
                    err = Preempted(
                        signum,
                        "linear probe",
                        step=f"batch {batch} of epoch {epoch + 1}",
                        saved=state_path,
                        hint="rerun the same command to continue",
                    )
                    log.warning("%s", err)
                    raise err
            sched.step()
            mean_loss = total / max(1, count)
            writer.add_scalar("linear/loss", mean_loss, epoch + 1)
            writer.add_scalar("linear/lr", optim.param_groups[0]["lr"], epoch + 1)
            log.info("epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, mean_loss)
            history.append({"epoch": epoch + 1, "loss": mean_loss})
            save_state(
                state_path,
                {"probe": probe.state_dict(), **optim_state(optim, sched), "epoch": epoch + 1},
                keep_previous=True,
            )
            _stop_if_requested(f"end of epoch {epoch + 1}", state_path)
            if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
                if val_cache is not None:
                    cache_features(
                        model, val_ds, val_cache, cfg.eval_size, with_label=False, workers=workers, progress=progress
                    )
                conf, _ = evaluate(model, probe, val_ds, cfg, cache_dir=val_cache, workers=workers, progress=progress)
                miou = segmentation_scores(conf).miou
                writer.add_scalar("linear/val_miou", miou, epoch + 1)
                log.info("epoch %d: val mIoU %.2f %%", epoch + 1, 100 * miou)
        train_seconds = time.time() - t0
        use_crf, crf_note = False, "off"
        if cfg.crf.enabled:
            use_crf, why = crf_available()
            crf_note = "applied" if use_crf else f"skipped: {why}"
            if not use_crf:
                log.warning("dense CRF skipped: %s", why)
        if val_cache is not None:
            cache_features(
                model, val_ds, val_cache, cfg.eval_size, with_label=False, workers=workers, progress=progress
            )
        vis_dir = out_dir / "vis" if vis_n > 0 else None
        if vis_dir is not None:
            vis_dir.mkdir(parents=True, exist_ok=True)
        conf, conf_crf = evaluate(
            model,
            probe,
            val_ds,
            cfg,
            cache_dir=val_cache,
            use_crf=use_crf,
            vis_dir=vis_dir,
            vis_n=vis_n,
            workers=workers,
            progress=progress,
        )
        result = _scores_dict(conf, info.classes)
        writer.add_scalar("linear/val_miou", result["miou"], cfg.epochs)
        writer.close()
    result.update(
        crf=crf_note,
        crf_scores=_scores_dict(conf_crf, info.classes) if conf_crf is not None else None,
        n_train=len(train_ds),
        n_val=len(val_ds),
        epochs=cfg.epochs,
        train_seconds=train_seconds,
        history=history,
    )
    return result


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from eval.arguments import add_dataset_arguments, add_model_arguments

    p = argparse.ArgumentParser(
        prog="python -m eval.linear",
        description="Linear probe (1x1 conv) on frozen features; the default config is the paper's schedule. "
        "Settings: --config YAML and key=value overrides of eval.linear.LinearConfig (docs/EVAL.md).",
    )
    add_model_arguments(p, with_size=False)
    add_dataset_arguments(p, with_split=False)
    add_config_arguments(p)
    o = p.add_argument_group("outputs")
    o.add_argument(
        "--out",
        default=None,
        help="run folder: config, split lists, feature cache, classifier state, "
        "results.json, TensorBoard logs (default: runs/eval_linear/<dataset>-<checkpoint name>)",
    )
    o.add_argument("--json", default=None, help="also write the results here (default: <out>/results.json only)")
    o.add_argument("--vis", type=int, default=0, help="write N validation pictures to <out>/vis")
    o.add_argument("--overwrite", action="store_true", help="discard a finished or differently configured run in --out")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


#: what a linear-probe run writes in ``--out`` (its identity is ``run.json``; ``results.json`` marks it finished)
RUN_LAYOUT = RunLayout(
    "linear-probe run",
    owned=(
        "state.pt",
        "state.prev.pt",
        "state.damaged*.pt",
        "results.json",
        "run.json",
        "config.yaml",
        "split_train.txt",
        "split_val.txt",
        "features",
        "vis",
        "tb",
    ),
    state=("state.pt",),
    identity_file="run.json",
    finished="results.json",
    writer="eval.linear",
)


def _prepare_run_dir(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Claim ``out`` for this run (:func:`maskcontrast.runs.claim_run_folder`): the same identity
    resumes, another is refused, a finished run needs ``--overwrite``."""
    claim_run_folder(out, RUN_LAYOUT, identity=jsonable(identity), resume=True, overwrite=overwrite).prepare()


def _datasets(
    args: argparse.Namespace, cfg: LinearConfig, out: Path
) -> tuple[SegmentationDataset, SegmentationDataset]:
    d = cfg.data
    if d.train_split is None or d.train_split == d.val_split:
        full = dataset_from_args(args, split=d.train_split)
        train_ids, val_ids = resolve_split(full.ids, out, d.val_fraction, d.split_seed, d.split_dir)
        train_ds = dataset_from_args(args, split=d.train_split, ids=train_ids)
        val_ds = dataset_from_args(args, split=d.train_split, ids=val_ids)
    else:
        train_ds = dataset_from_args(args, split=d.train_split)
        val_ds = dataset_from_args(args, split=d.val_split)
    if d.train_limit is not None:
        train_ds.ids = train_ds.ids[: d.train_limit]
    if d.val_limit is not None:
        val_ds.ids = val_ds.ids[: d.val_limit]
    return train_ds, val_ds


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg_node = load_config(LinearConfig, args.config, args.overrides)
    cfg: LinearConfig = OmegaConf.to_object(cfg_node)  # type: ignore[assignment]
    out = Path(args.out) if args.out else Path("runs") / "eval_linear" / f"{args.dataset}-{Path(args.checkpoint).stem}"
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
    identity = {
        "checkpoint": checkpoint_fingerprint(args.checkpoint, getattr(args, "init_key", "teacher")),
        "output_stride": args.output_stride,
        "dataset": args.dataset,
        "root": args.root,
        "dataset_args": parse_key_values(args.dataset_arg),
        "ids": args.ids,
        "limit": args.limit,
        "config": config_to_dict(cfg_node),
    }
    _prepare_run_dir(out, identity, args.overwrite)
    save_config(cfg_node, out / "config.yaml")
    model = model_from_args(args)
    train_ds, val_ds = _datasets(args, cfg, out)
    log.info(
        "linear probe on %s features of %s: %d train / %d val images of %s, %d epochs%s",
        model.layout,
        args.checkpoint,
        len(train_ds),
        len(val_ds),
        args.dataset,
        cfg.epochs,
        " (cached features)" if cfg.cache_features else "",
    )
    result = run_linear_probe(
        model, train_ds, val_ds, cfg, out, vis_n=args.vis, workers=args.workers, progress=not args.no_progress
    )
    result = {
        **result,
        "dataset": args.dataset,
        "train_split": train_ds.split if cfg.data.train_split else f"seeded split of {train_ds.split}",
        "val_split": val_ds.split if cfg.data.train_split else f"seeded split of {val_ds.split}",
        "checkpoint": str(args.checkpoint),
        "layout": model.layout,
        "feature_dim": model.feature_dim,
        "config": config_to_dict(cfg_node),
        "units": "fractions in [0, 1]",
        "peak_rss_mib": peak_rss_mib(),
    }
    write_json(out / "results.json", result)
    if args.json:
        write_json(args.json, result)
    log.info(
        "linear probe: mIoU %.2f %%, pixel accuracy %.2f %% (%d val images)",
        100 * result["miou"],
        100 * result["pixel_acc"],
        len(val_ds),
    )
    if result.get("crf_scores"):
        log.info(
            "with dense CRF: mIoU %.2f %%, pixel accuracy %.2f %%",
            100 * result["crf_scores"]["miou"],
            100 * result["crf_scores"]["pixel_acc"],
        )
    print(f"wrote results to {out / 'results.json'}" + (f" and {args.json}" if args.json else ""))
    return result


if __name__ == "__main__":
    run_main(main, "eval.linear")
