"""Training and scoring the linear probe, in the trainer's shape (:mod:`maskcontrast.train`):
:func:`setup_probe` (the classifier, SGD and its milestone schedule), :func:`restore_probe`
(``state.pt``, or its previous save when it is damaged), :func:`train_probe_epoch` (one epoch,
stopping at a preemption signal with ``state.pt`` at that batch), :func:`evaluate` (the
confusion on a split), and :func:`run_linear_probe`, which runs them.

Example::

    result = run_linear_probe(load_model("last.pt"), train_ds, val_ds, LinearConfig(epochs=5), Path("runs/probe"))
    result["miou"]
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eval.linear.classifier import LinearClassifier, crf_available, dense_crf
from eval.linear.config import LinearConfig
from eval.linear.features import (
    CachedFeatures,
    cache_features,
    label_of,
    preempted,
    stop_if_requested,
    train_batch_from_cache,
    train_batch_from_images,
)
from eval.metrics import confusion_matrix, segmentation_scores
from eval.outputs import safe_name, save_panel
from eval.stream import collate_samples
from maskcontrast.api import FeatureModel, refuse_too_large
from maskcontrast.config_checks import check_values
from maskcontrast.data import IGNORE_INDEX, SegmentationDataset
from maskcontrast.preemption import ignore_signals_in_worker, requested, section
from maskcontrast.run_logs import open_tensorboard
from maskcontrast.run_state import optim_state, restore_optim_state, save_state
from maskcontrast.runs import load_state_or_previous
from maskcontrast.schedules import LrSchedule
from maskcontrast.utils import seed_everything

__all__ = [
    "ProbeRun",
    "setup_probe",
    "restore_probe",
    "probe_state",
    "train_probe_epoch",
    "evaluate",
    "run_linear_probe",
]

log = logging.getLogger("eval.linear")


@dataclass
class ProbeRun:
    """Everything an epoch of the probe needs, built by :func:`setup_probe`.

    Attributes:
        train_cache, val_cache: the feature-cache folders (None: augment images, run the network every step).
        epoch: the next epoch to run; ``batch``, ``loss_sum``, ``loss_count`` and ``rng``: where it
            stopped inside that epoch (``batch`` 0: at its start).
        history: the epochs run by this call, ``{"epoch", "loss"}``.
    """

    model: FeatureModel
    cfg: LinearConfig
    probe: LinearClassifier
    optim: torch.optim.Optimizer
    schedule: LrSchedule
    state_path: Path
    train_cache: Path | None
    val_cache: Path | None
    workers: int = 0
    progress: bool = True
    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    rng: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def setup_probe(
    model: FeatureModel, num_classes: int, cfg: LinearConfig, out_dir: Path, workers: int = 0, progress: bool = True
) -> ProbeRun:
    """Seed, build the classifier on the model's features, SGD and its per-epoch milestone rates."""
    seed_everything(cfg.seed)
    probe = LinearClassifier(model.feature_dim, num_classes).to(model.device)
    o = cfg.optim
    optim = torch.optim.SGD(probe.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cache = out_dir / "features" if cfg.cache_features else None
    return ProbeRun(
        model=model,
        cfg=cfg,
        probe=probe,
        optim=optim,
        schedule=LrSchedule.multistep(cfg.epochs, o.lr, list(o.milestones), o.gamma),
        state_path=out_dir / "state.pt",
        train_cache=None if cache is None else cache / "train",
        val_cache=None if cache is None else cache / "val",
        workers=workers,
        progress=progress,
    )


def restore_probe(r: ProbeRun) -> None:
    """Continue from ``state.pt`` (or, when it is damaged, its previous save) when there is one."""
    if not r.state_path.is_file():
        return
    state = load_state_or_previous(r.state_path)
    r.probe.load_state_dict(state["probe"])
    restore_optim_state(state, r.optim)
    r.epoch, r.batch = int(state["epoch"]), int(state.get("batch", 0))
    if r.batch:
        r.loss_sum, r.loss_count, r.rng = float(state["loss_sum"]), int(state["loss_count"]), state["rng"]
    log.info("resuming from %s after epoch %d%s", r.state_path, r.epoch, f", batch {r.batch}" if r.batch else "")


def probe_state(r: ProbeRun, epoch: int, **extra: Any) -> dict[str, Any]:
    """The resumable state (``state.pt``): the classifier and SGD after ``epoch`` epochs, plus ``extra``."""
    return {"probe": r.probe.state_dict(), **optim_state(r.optim), "epoch": epoch, **extra}


def _probe_step(r: ProbeRun, items: list[Any], rng: np.random.Generator) -> float | None:
    """One SGD step on a batch; None when the batch holds no labelled pixel (nothing is stepped)."""
    if r.train_cache is not None:
        feats, labels = train_batch_from_cache(r.model, items, r.cfg, rng)
    else:
        feats, labels = train_batch_from_images(r.model, items, r.cfg, rng)
    logits = r.probe(feats, tuple(labels.shape[-2:]))
    if not bool((labels != IGNORE_INDEX).any()):
        return None
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    r.optim.zero_grad(set_to_none=True)
    loss.backward()
    r.optim.step()
    return float(loss.detach())


def train_probe_epoch(r: ProbeRun, train_ds: SegmentationDataset) -> float:
    """Epoch ``r.epoch`` (from batch ``r.batch`` on); returns its mean loss. On SIGTERM/SIGINT
    inside it, ``state.pt`` is written at that batch and :class:`Preempted` raised."""
    cfg, epoch = r.cfg, r.epoch
    r.probe.train()
    r.schedule.apply(r.optim, epoch)
    rng = np.random.default_rng([cfg.seed, epoch])
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    data: Dataset = CachedFeatures(r.train_cache, train_ds.ids) if r.train_cache is not None else train_ds
    # the order of DataLoader(shuffle=True, generator=gen): a seed draw, then a permutation
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    order = torch.randperm(len(data), generator=gen).tolist()
    first, total, count = r.batch, r.loss_sum, r.loss_count
    if r.rng is not None:  # resume inside the epoch where a signal stopped it
        rng.bit_generator.state = json.loads(r.rng)
    r.batch, r.loss_sum, r.loss_count, r.rng = 0, 0.0, 0, None
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size,
        sampler=order[first * cfg.batch_size :],
        num_workers=r.workers,
        collate_fn=collate_samples,
        worker_init_fn=ignore_signals_in_worker,
    )
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not r.progress)
    for batch, items in enumerate(bar, start=first + 1):
        if (loss := _probe_step(r, items, rng)) is not None:
            total += loss * len(items)
            count += len(items)
        if (signum := requested()) is not None and batch * cfg.batch_size < len(data):
            extra = {"batch": batch, "rng": json.dumps(rng.bit_generator.state), "loss_sum": total, "loss_count": count}
            save_state(r.state_path, probe_state(r, epoch, **extra), keep_previous=True)
            raise preempted(signum, f"batch {batch} of epoch {epoch + 1}", r.state_path)
    return total / max(1, count)


def _features_of(
    r: ProbeRun, ds: SegmentationDataset, samples: list[Any], cache_dir: Path | None
) -> list[torch.Tensor]:
    """The ``1 x F x h x w`` features of each sample: from the cache, or from the frozen network
    (an image whose network input would be too large is refused by name)."""
    if cache_dir is not None:
        return [CachedFeatures(cache_dir, [s.id])[0]["features"].float()[None].to(r.model.device) for s in samples]
    refuse_too_large(r.model, ds, samples, r.cfg.eval_size)
    return [out.features for _, out, _ in r.model.run([s.image for s in samples], size=r.cfg.eval_size)]


@torch.no_grad()
def evaluate(
    r: ProbeRun,
    ds: SegmentationDataset,
    *,
    use_crf: bool = False,
    vis_dir: Path | None = None,
    vis_n: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``C x C`` confusion (rows = prediction) on ``ds`` at label resolution, and the CRF one."""
    r.probe.eval()
    c = ds.info.num_classes
    conf = np.zeros((c, c), np.int64)
    conf_crf = np.zeros((c, c), np.int64) if use_crf else None
    kw = {"num_workers": r.workers, "collate_fn": collate_samples, "worker_init_fn": ignore_signals_in_worker}
    loader = DataLoader(ds, batch_size=r.model.batch_size, **kw)
    index = 0
    with tqdm(total=len(ds), desc="evaluating", unit="img", leave=False, disable=not r.progress) as bar:
        for samples in loader:
            for s, f in zip(samples, _features_of(r, ds, samples, r.val_cache)):
                label = label_of(s)
                logits = r.probe(f, s.size)[0]
                pred = logits.argmax(0).cpu().numpy()
                conf += confusion_matrix(pred, label, c, c, ds.info.ignore_index)
                if conf_crf is not None:
                    pred = dense_crf(s.image, logits.softmax(0).cpu().numpy(), r.cfg.crf)
                    conf_crf += confusion_matrix(pred, label, c, c, ds.info.ignore_index)
                if vis_dir is not None and index < vis_n:
                    save_panel(vis_dir / f"{index:04d}_{safe_name(s.id)}.png", s.image, label, pred, ds.info)
                index += 1
            bar.update(len(samples))
            stop_if_requested("evaluation", None)
    return conf, conf_crf


def _scores_dict(conf: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    s = segmentation_scores(conf)
    return {"miou": s.miou, "per_class": dict(zip(classes, s.per_class_iou.tolist())), "pixel_acc": s.pixel_acc}


def _cache(r: ProbeRun, ds: SegmentationDataset, train: bool) -> None:
    """Fill the train or val feature cache (a no-op without ``cache_features``)."""
    folder, size = (r.train_cache, r.cfg.base_size) if train else (r.val_cache, r.cfg.eval_size)
    if folder is not None:
        cache_features(r.model, ds, folder, size, with_label=train, workers=r.workers, progress=r.progress)


def _train_epochs(r: ProbeRun, train_ds: SegmentationDataset, val_ds: SegmentationDataset, writer: Any) -> None:
    """Every remaining epoch, ``state.pt`` after each, a validation every ``eval_every`` epochs."""
    cfg = r.cfg
    while r.epoch < cfg.epochs:
        mean_loss = train_probe_epoch(r, train_ds)
        r.epoch += 1
        writer.add_scalar("linear/loss", mean_loss, r.epoch)
        writer.add_scalar("linear/lr", r.schedule[r.epoch], r.epoch)  # the rate of the next epoch
        log.info("epoch %d/%d: loss %.4f", r.epoch, cfg.epochs, mean_loss)
        r.history.append({"epoch": r.epoch, "loss": mean_loss})
        save_state(r.state_path, probe_state(r, r.epoch), keep_previous=True)
        stop_if_requested(f"end of epoch {r.epoch}", r.state_path)
        if cfg.eval_every and r.epoch % cfg.eval_every == 0 and r.epoch < cfg.epochs:
            _cache(r, val_ds, train=False)
            miou = segmentation_scores(evaluate(r, val_ds)[0]).miou
            writer.add_scalar("linear/val_miou", miou, r.epoch)
            log.info("epoch %d: val mIoU %.2f %%", r.epoch, 100 * miou)


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
    # the schema's own bounds (ConfigError, a ValueError), also for a config built in Python
    check_values(cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg), source="linear probe config")
    if not isinstance(cfg, LinearConfig):
        cfg = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    assert isinstance(cfg, LinearConfig)
    info = train_ds.info
    if info.num_classes < 2:
        raise ValueError(
            f"dataset '{info.name}' has {info.num_classes} classes; the linear probe needs labels with >= 2 classes"
        )
    r = setup_probe(model, info.num_classes, cfg, out_dir, workers, progress)
    restore_probe(r)
    t0 = time.time()
    with section("linear probe"):
        if r.epoch < cfg.epochs:
            _cache(r, train_ds, train=True)
        writer = open_tensorboard(out_dir / "tb")
        _train_epochs(r, train_ds, val_ds, writer)
        train_seconds = time.time() - t0
        result = _final_scores(r, val_ds, info.classes, out_dir, vis_n)
        writer.add_scalar("linear/val_miou", result["miou"], cfg.epochs)
        writer.close()
    result.update(n_train=len(train_ds), n_val=len(val_ds), epochs=cfg.epochs, train_seconds=train_seconds)
    result["history"] = r.history
    return result


def _final_scores(
    r: ProbeRun, val_ds: SegmentationDataset, classes: Sequence[str], out_dir: Path, vis_n: int
) -> dict[str, Any]:
    """The validation scores after training (with the dense CRF where asked and available), and pictures."""
    use_crf, crf_note = False, "off"
    if r.cfg.crf.enabled:
        use_crf, why = crf_available()
        crf_note = "applied" if use_crf else f"skipped: {why}"
        if not use_crf:
            log.warning("dense CRF skipped: %s", why)
    _cache(r, val_ds, train=False)
    vis_dir = out_dir / "vis" if vis_n > 0 else None
    if vis_dir is not None:
        vis_dir.mkdir(parents=True, exist_ok=True)
    conf, conf_crf = evaluate(r, val_ds, use_crf=use_crf, vis_dir=vis_dir, vis_n=vis_n)
    result = _scores_dict(conf, classes)
    result.update(crf=crf_note, crf_scores=_scores_dict(conf_crf, classes) if conf_crf is not None else None)
    return result
