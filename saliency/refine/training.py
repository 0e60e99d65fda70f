"""Training the refiner: the run folder, the rounds of self-training, the final checkpoint.

The loop has the trainer's shape (:mod:`maskcontrast.train`): :func:`claim_refiner_run` (the run
folder, refusing a changed config), :func:`setup_refiner` (pseudo-labels, network, optimizer and
its cosine schedule), :func:`restore_refiner` (``last.pt``, or its previous save when it is
damaged), :func:`train_refiner_epoch` (one epoch, stopping at a preemption signal with
``last.pt`` at that step), :func:`end_round` (predict every image and update the targets), and
:func:`train_refiner`, which runs them.
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
from omegaconf import OmegaConf
from tqdm import tqdm

from maskcontrast.config_loading import config_to_dict, save_config
from maskcontrast.models import init_backbone
from maskcontrast.preemption import Preempted, requested, section
from maskcontrast.run_logs import tensorboard
from maskcontrast.run_state import capture_rng_state, optim_state, restore_optim_state, restore_rng_state, save_state
from maskcontrast.runs import (
    RunClaim,
    RunLayout,
    check_resume_config,
    claim_run_folder,
    load_state_or_previous,
    read_identity,
)
from maskcontrast.schedules import LrSchedule
from maskcontrast.utils import atomic_write_bytes, autocast_dtype, get_device, seed_everything
from saliency.refine.config import FORMAT, FORMAT_VERSION, PRECISIONS, RefineConfig, validate
from saliency.refine.network import RefinerNet, autocast, flip_average, normalize
from saliency.refine.pseudo import pseudo_labels
from saliency.refine.selftrain import align_mean, augment, confident_bce, target_diagnostics, update_targets

__all__ = [
    "RUN_LAYOUT",
    "RefinerRun",
    "claim_refiner_run",
    "setup_refiner",
    "restore_refiner",
    "refiner_state",
    "train_refiner_epoch",
    "end_round",
    "final_checkpoint",
    "train_refiner",
]

log = logging.getLogger("saliency.refine")

#: what a refiner run writes in its folder (``pseudo_labels.pt`` is a keyed cache that an overwrite keeps)
RUN_LAYOUT = RunLayout(
    "refiner run",
    owned=("last.pt", "last.prev.pt", "last.damaged*.pt", "refiner.pt", "history.json"),
    state=("last.pt", "last.prev.pt", "refiner.pt"),
    writer="saliency.refine",
)


@dataclass
class RefinerRun:
    """Everything an epoch of the refiner needs, built by :func:`setup_refiner`.

    Attributes:
        images: ``N x S x S x 3`` uint8 input images.
        fused, fused_conf: ``N x S x S`` the fused pseudo-labels in ``[0, 1]`` and their confidence.
        targets, average, conf: ``N x S x S`` the current targets, the moving average of the
            predictions and the confident pixels.
        schedule: the learning rate of every step over all rounds (cosine).
        gen: the augmentation's random stream.
        round, epoch: where the next epoch starts; ``step``, ``perm`` and ``losses``: inside it,
            when a run stopped mid-epoch.
    """

    cfg: Any
    out: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    net: RefinerNet
    opt: torch.optim.Optimizer
    schedule: LrSchedule
    images: torch.Tensor
    fused: torch.Tensor
    fused_conf: torch.Tensor
    targets: torch.Tensor
    average: torch.Tensor
    conf: torch.Tensor
    steps_per_epoch: int
    pseudo_seconds: float
    gen: torch.Generator = field(default_factory=torch.Generator)
    history: list[dict[str, Any]] = field(default_factory=list)
    round: int = 0
    epoch: int = 0
    step: int = 0
    perm: torch.Tensor | None = None
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def _predict_all(
    net: RefinerNet, images: torch.Tensor, device: torch.device, batch: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    net.eval()
    outs = []
    for i in range(0, len(images), batch):
        outs.append(flip_average(net, normalize(images[i : i + batch].to(device)), dtype)[:, 0].cpu())
    net.train()
    return torch.cat(outs)


def final_checkpoint(net: RefinerNet, cfg: RefineConfig | Any, **extra: Any) -> dict[str, Any]:
    """The refiner's checkpoint (``refiner.pt``): format, config and weights, plus ``extra`` entries."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(cfg),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }


def claim_refiner_run(out: Path, cfg: Any, resume: bool, overwrite: bool) -> RunClaim:
    """Claim the run folder ``out``; a resume with another config than ``out/config.yaml`` is refused.

    Raises:
        RunFolderError: the folder holds a run and neither ``resume`` nor ``overwrite`` was asked for.
        ConfigError: the config differs from the run's (the message names the keys).
    """
    claim = claim_run_folder(out, RUN_LAYOUT, resume=resume, overwrite=overwrite)
    if claim.resume and (out / "config.yaml").is_file():
        old = read_identity(out / "config.yaml")
        check_resume_config(out, old, OmegaConf.to_container(cfg), advice="resume with the same settings")
    return claim


def setup_refiner(sources: Sequence[tuple[str, str]], out: Path, cfg: Any) -> RefinerRun:
    """Seed, compute (or read) the pseudo-labels, build the network, AdamW and its cosine schedule."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = get_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device, choices=PRECISIONS)
    log.info("device %s, precision %s", device, "bf16" if amp_dtype is not None else "fp32")
    start = time.perf_counter()
    data = pseudo_labels([tuple(s) for s in sources], cfg, out / "pseudo_labels.pt")  # type: ignore[misc]
    pseudo_seconds = time.perf_counter() - start
    targets = data["targets"].float() / 255.0
    net = RefinerNet(OmegaConf.to_object(cfg.model))
    init_backbone(net.backbone, cfg.model.init)
    net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(data["images"]) // cfg.batch_size)
    total_steps = cfg.rounds * cfg.epochs_per_round * steps_per_epoch
    # cosine over all rounds; the table also holds the rate after the last step (saved in last.pt before)
    schedule = LrSchedule.steps(total_steps, cfg.lr, "cosine", length=total_steps + 1)
    conf = data["confidence"].clone()
    return RefinerRun(
        cfg=cfg,
        out=out,
        device=device,
        amp_dtype=amp_dtype,
        net=net,
        opt=opt,
        schedule=schedule,
        images=data["images"],
        fused=targets.clone(),
        fused_conf=conf.clone(),
        targets=targets,
        average=targets.clone(),
        conf=conf,
        steps_per_epoch=steps_per_epoch,
        pseudo_seconds=pseudo_seconds,
    )


def restore_refiner(r: RefinerRun, last: Path) -> dict[str, Any]:
    """Load ``last`` (or, when it is damaged, its previous save) into the run; returns the state."""
    state = load_state_or_previous(last, "--overwrite")
    r.net.load_state_dict(state["model"])
    restore_optim_state(state, r.opt)
    r.targets, r.conf = state["targets"].float() / 255.0, state["confidence"].bool()
    r.average = state["average"].float() / 255.0 if "average" in state else r.targets.clone()
    r.round, r.epoch = int(state["round"]), int(state["epoch"])
    r.history = list(state["history"])
    restore_rng_state(state["rng"])
    if "step" in state:  # stopped inside an epoch
        r.step, r.perm, r.losses = int(state["step"]), state["perm"], list(state["losses"])
    log.info(
        "resumed %s at round %d, epoch %d%s",
        last,
        r.round + 1,
        r.epoch + 1,
        f", step {r.step}" if "step" in state else "",
    )
    return state


def refiner_state(r: RefinerRun, **extra: Any) -> dict[str, Any]:
    """The resumable state (``last.pt``) at ``(r.round, r.epoch)``, plus ``extra`` (a position inside an epoch)."""
    return {
        "model": {k: v.detach().cpu() for k, v in r.net.state_dict().items()},
        **optim_state(r.opt),
        "targets": torch.round(r.targets * 255).to(torch.uint8),
        "average": torch.round(r.average * 255).to(torch.uint8),
        "confidence": r.conf,
        "round": r.round,
        "epoch": r.epoch,
        "history": r.history,
        "rng": capture_rng_state(),
        "gen": r.gen.get_state(),
        **extra,
    }


def _stop(r: RefinerRun, signum: int, where: str) -> None:
    err = Preempted(signum, "saliency refiner", saved=r.out / "last.pt", hint="resume with --resume", step=where)
    log.warning("%s", err)
    raise err


def train_refiner_epoch(r: RefinerRun) -> list[float]:
    """Epoch ``(r.round, r.epoch)`` from step ``r.step`` on; returns its losses. On SIGTERM/SIGINT
    inside it, ``last.pt`` is written at that step and :class:`Preempted` raised."""
    cfg, spe, rnd, epoch = r.cfg, r.steps_per_epoch, r.round, r.epoch
    perm = r.perm if r.perm is not None else torch.randperm(len(r.images), generator=r.gen)
    losses, first = r.losses, r.step
    r.step, r.perm, r.losses = 0, None, []
    desc = f"round {rnd + 1}/{cfg.rounds} epoch {epoch + 1}/{cfg.epochs_per_round}"
    bar = tqdm(range(first, spe), desc=desc, unit="step", leave=False)
    for step in bar:
        r.schedule.apply(r.opt, (rnd * cfg.epochs_per_round + epoch) * spe + step)
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = normalize(r.images[idx].to(r.device))
        t = r.targets[idx].unsqueeze(1).to(r.device)
        c = r.conf[idx].unsqueeze(1).to(r.device)
        x, t, c = augment(x, t, c, cfg, r.gen)
        with autocast(r.device, r.amp_dtype):
            logits = r.net(x.contiguous(memory_format=torch.channels_last))
        loss = confident_bce(logits, t, c, cfg.unconfident_weight)
        r.opt.zero_grad(set_to_none=True)
        loss.backward()
        r.opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (signum := requested()) is not None and step + 1 < spe:
            extra = {"step": step + 1, "perm": perm, "losses": losses}
            save_state(r.out / "last.pt", refiner_state(r, **extra), keep_previous=True)
            _stop(r, signum, f"round {rnd + 1}, epoch {epoch + 1}, step {step + 1}")
    return losses


def end_round(r: RefinerRun, entry: dict[str, Any], writer: Any) -> None:
    """After a round: predict every image, log label-free diagnostics (into ``entry`` too), and
    make the next targets from the moving average of the predictions."""
    cfg = r.cfg
    preds = _predict_all(r.net, r.images, r.device, cfg.batch_size * 2, r.amp_dtype)
    diag = target_diagnostics(preds, r.fused, r.fused_conf)
    entry.update(diag)
    if cfg.align_mean:  # the diagnostics above show the drift before the alignment
        preds = align_mean(preds, r.fused.mean(dim=(1, 2)))
    average, targets, r.conf = update_targets(
        r.average, preds, cfg.target_momentum, cfg.margin, r.fused, cfg.target_anchor
    )
    # on the 1/255 grid that last.pt stores them on, so that a resumed run is bit-exact
    r.average, r.targets = torch.round(average * 255) / 255.0, torch.round(targets * 255) / 255.0
    log.info(
        "round %d done: predicted foreground %.3f (fused %.3f), agreement with the fused label on its "
        "confident pixels %.3f, unconfident pixels called foreground %.3f; next targets: %.1f%% of "
        "pixels confident",
        entry["round"],
        diag["foreground_share"],
        diag["fused_foreground_share"],
        diag["confident_agreement"],
        diag["unconfident_foreground"],
        100 * float(r.conf.float().mean()),
    )
    if writer is not None:
        for k, v in diag.items():
            writer.add_scalar(f"refine/{k}", v, entry["round"])


def _log_epoch(r: RefinerRun, losses: list[float], seconds: float, writer: Any) -> dict[str, Any]:
    entry = {
        "round": r.round + 1,
        "epoch": r.epoch + 1,
        "loss": float(np.mean(losses)),
        "confident_fraction": float(r.conf.float().mean()),
        "seconds": seconds,
    }
    r.history.append(entry)
    log.info(
        "round %d epoch %d: loss %.4f (confident pixels %.1f%%)",
        entry["round"],
        entry["epoch"],
        entry["loss"],
        100 * entry["confident_fraction"],
    )
    if writer is not None:
        writer.add_scalar("refine/loss", entry["loss"], len(r.history))
        writer.add_scalar("refine/confident_fraction", entry["confident_fraction"], len(r.history))
    return entry


def _run_rounds(r: RefinerRun) -> float:
    """Every remaining epoch of every round, ``last.pt`` after each; returns the training seconds."""
    cfg, train_start = r.cfg, time.perf_counter()
    with tensorboard(r.out / "tb") as writer, section("saliency refiner"):
        while r.round < cfg.rounds:
            losses = train_refiner_epoch(r)
            entry = _log_epoch(r, losses, time.perf_counter() - train_start, writer)
            done = (r.round, r.epoch)
            r.epoch += 1
            if r.epoch == cfg.epochs_per_round:  # end of the round: new targets from the moving average
                end_round(r, entry, writer)
                r.round, r.epoch = r.round + 1, 0
            save_state(r.out / "last.pt", refiner_state(r), keep_previous=True)
            if (signum := requested()) is not None and r.round < cfg.rounds:
                _stop(r, signum, f"end of round {done[0] + 1}, epoch {done[1] + 1}")
    return time.perf_counter() - train_start


def train_refiner(
    sources: Sequence[tuple[str, str]],
    out: str | Path,
    cfg: RefineConfig | Any,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the refiner on the images of ``sources`` (``(reader name, root)`` pairs, e.g.
    ``("image_folder", "photos/")``) and write the run folder ``out`` (see the package doc).

    Returns:
        ``{"checkpoint": path, "history": [...], "seconds": ..., "n_images": ...}``.
    """
    cfg = cfg if not isinstance(cfg, RefineConfig) else OmegaConf.structured(cfg)
    validate(cfg)
    out = Path(out).expanduser()
    claim = claim_refiner_run(out, cfg, resume, overwrite)
    claim.prepare()
    save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    r = setup_refiner(sources, out, cfg)
    state = restore_refiner(r, out / "last.pt") if claim.resume and (out / "last.pt").is_file() else {}
    r.gen.manual_seed(cfg.seed + 1000 * r.round + r.epoch)
    if "gen" in state:
        r.gen.set_state(state["gen"])  # the augmentation stream continues where it stopped
    train_seconds = _run_rounds(r)
    seconds = time.perf_counter() - start
    final = out / "refiner.pt"
    save_state(final, final_checkpoint(r.net, cfg, history=r.history, n_images=len(r.images)))
    summary = {
        "checkpoint": str(final),
        "history": r.history,
        "seconds": seconds,
        "pseudo_label_seconds": r.pseudo_seconds,
        "train_seconds": train_seconds,
        "n_images": len(r.images),
    }
    atomic_write_bytes(out / "history.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
