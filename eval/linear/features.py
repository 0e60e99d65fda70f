"""The probe's inputs: the feature cache (the frozen network run once per image), and the training
batches, augmented in image space or on the cached feature maps.

``cache_features: true`` runs the frozen network once per image and stores its features
(float16) in the run folder; every epoch then applies the same random flip/rotation/scale/crop
to the cached feature map (bilinear) and its label (nearest), so an epoch costs only the
classifier. This is an approximation of image-space augmentation (exact without augmentation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from eval.linear.config import LinearConfig
from eval.linear.geometry import sample_affine, warp_features, warp_image, warp_label
from eval.outputs import safe_name
from eval.stream import collate_samples, require_label
from maskcontrast import preemption
from maskcontrast.api import FeatureModel, refuse_too_large
from maskcontrast.data import Sample, SegmentationDataset
from maskcontrast.images import target_size, to_image_tensor
from maskcontrast.preemption import Preempted, ignore_signals_in_worker
from maskcontrast.run_state import save_state

__all__ = [
    "preempted",
    "stop_if_requested",
    "cache_features",
    "CachedFeatures",
    "label_of",
    "train_batch_from_images",
    "train_batch_from_cache",
]

log = logging.getLogger("eval.linear")

#: how a stopped probe continues
RESUME_HINT = "rerun the same command to continue"


def preempted(signum: int, where: str, saved: Path | None) -> Preempted:
    """The :class:`Preempted` of the probe stopped at ``where`` by signal ``signum`` (logged);
    ``saved``: what holds the progress."""
    err = Preempted(signum, "linear probe", step=where, saved=saved, hint=RESUME_HINT)
    log.warning("%s", err)
    return err


def stop_if_requested(where: str, saved: Path | None) -> None:
    """Stop the probe at ``where`` (as :func:`preempted` says it) when SIGTERM/SIGINT arrived."""
    preemption.stop_if_requested("linear probe", step=where, saved=saved, hint=RESUME_HINT, logger=log)


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
            refuse_too_large(model, ds, samples, size)
            for j, out, hw in model.run([s.image for s in samples], size=size):
                s = samples[j]
                entry: dict[str, Any] = {"features": out.features[0].half().cpu()}
                in_hw = target_size(hw, size, model.stride)
                entry["input_hw"] = torch.tensor(in_hw)
                if with_label:
                    lab = torch.from_numpy(label_of(s).astype(np.int16))
                    if tuple(lab.shape) != in_hw:
                        lab = F.interpolate(lab[None, None].float(), size=in_hw, mode="nearest")[0, 0].to(torch.int16)
                    entry["label"] = lab
                save_state(_cache_file(folder, s.id), entry)
            bar.update(len(samples))
            stop_if_requested(f"caching {folder.name} features", folder)


class CachedFeatures(Dataset):
    """The cached entries of ``ids`` in ``folder`` (see :func:`cache_features`), one dict per image."""

    def __init__(self, folder: Path, ids: Sequence[str]) -> None:
        self.folder, self.ids = folder, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return torch.load(_cache_file(self.folder, self.ids[i]), map_location="cpu", weights_only=True)


def label_of(sample: Sample) -> np.ndarray:
    """The ``H x W`` label of ``sample``.

    Raises:
        DataError: the sample has none (the probe needs labelled images).
    """
    return require_label(sample, "the linear probe")


def train_batch_from_images(
    model: FeatureModel, samples: list[Sample], cfg: LinearConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment each image (``cfg.augment``, after resizing to ``cfg.base_size``) and its label, then run
    the frozen network: ``(B x F x h x w features, B x crop x crop labels)``."""
    crop = cfg.augment.crop_size
    images, labels = [], []
    for s in samples:
        img = to_image_tensor(s.image).to(model.device)[None]
        img = (img - model.mean) / model.std
        hw = s.size
        base = cfg.base_size / min(hw) if cfg.base_size else 1.0
        p = sample_affine(rng, hw, crop, cfg.augment, base)
        images.append(warp_image(img, p, crop))
        labels.append(warp_label(torch.from_numpy(label_of(s)).to(model.device), p, crop))
    feats = model(torch.cat(images)).features
    return feats, torch.stack(labels)


def train_batch_from_cache(
    model: FeatureModel, entries: list[dict[str, Any]], cfg: LinearConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment each cached feature map and its label alike: ``(B x F x n x n features, B x crop x crop
    labels)``, ``n = ceil(crop / stride)``."""
    crop = cfg.augment.crop_size
    feats, labels = [], []
    for e in entries:
        in_hw = tuple(int(v) for v in e["input_hw"])
        p = sample_affine(rng, in_hw, crop, cfg.augment)
        f = e["features"].to(model.device).float()[None]
        feats.append(warp_features(f, p, in_hw, crop, model.output_stride))
        labels.append(warp_label(e["label"].to(model.device).long(), p, crop))
    return torch.cat(feats), torch.stack(labels)
