"""Training the refiner: the run folder, the rounds of self-training, the final checkpoint."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import config_to_dict, save_config
from maskcontrast.models import init_backbone
from maskcontrast.preemption import Preempted, requested, section
from maskcontrast.runs import (
    RunLayout,
    capture_rng_state,
    claim_run_folder,
    identity_diff,
    load_state_or_previous,
    optim_state,
    read_identity,
    restore_optim_state,
    restore_rng_state,
    save_state,
    tensorboard,
)
from maskcontrast.utils import atomic_write_bytes, autocast_dtype, get_device, seed_everything
from saliency.refine.config import FORMAT, FORMAT_VERSION, PRECISIONS, RefineConfig, validate
from saliency.refine.network import RefinerNet, autocast, flip_average, normalize
from saliency.refine.pseudo import pseudo_labels
from saliency.refine.selftrain import align_mean, augment, confident_bce, target_diagnostics, update_targets

log = logging.getLogger("saliency.refine")

#: what a refiner run writes in its folder (``pseudo_labels.pt`` is a keyed cache that an overwrite keeps)
RUN_LAYOUT = RunLayout(
    "refiner run",
    owned=("last.pt", "last.prev.pt", "last.damaged*.pt", "refiner.pt", "history.json"),
    state=("last.pt", "last.prev.pt", "refiner.pt"),
    writer="saliency.refine",
)


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
    validate(cfg)
    out = Path(out).expanduser()
    last, final = out / "last.pt", out / "refiner.pt"
    claim = claim_run_folder(out, RUN_LAYOUT, resume=resume, overwrite=overwrite)
    if claim.resume and (out / "config.yaml").is_file():
        diff = identity_diff(read_identity(out / "config.yaml"), OmegaConf.to_container(cfg))
        if diff:
            raise ConfigError(
                f"{out}/config.yaml differs from this run's config ({'; '.join(diff[:4])}); resume "
                "with the same settings"
            )
    claim.prepare()
    save_config(cfg, out / "config.yaml")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = get_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device, choices=PRECISIONS)
    log.info("device %s, precision %s", device, "bf16" if amp_dtype is not None else "fp32")
    start = time.perf_counter()
    data = pseudo_labels([tuple(s) for s in sources], cfg, out / "pseudo_labels.pt")  # type: ignore[misc]
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
        state = load_state_or_previous(last, "--overwrite")
        net.load_state_dict(state["model"])
        restore_optim_state(state, opt, sched)
        targets, conf = state["targets"].float() / 255.0, state["confidence"].bool()
        average = state["average"].float() / 255.0 if "average" in state else targets.clone()
        first_round, first_epoch = int(state["round"]), int(state["epoch"])
        history = list(state["history"])
        restore_rng_state(state["rng"])
        log.info(
            "resumed %s at round %d, epoch %d%s",
            last,
            first_round + 1,
            first_epoch + 1,
            f", step {int(state['step'])}" if "step" in state else "",
        )
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * first_round + first_epoch)
    if claim.resume and last.is_file() and "gen" in state:
        gen.set_state(state["gen"])  # the augmentation stream continues where it stopped

    def state_now(rnd: int, epoch: int, **extra: Any) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            **optim_state(opt, sched),
            "targets": torch.round(targets * 255).to(torch.uint8),
            "average": torch.round(average * 255).to(torch.uint8),
            "confidence": conf,
            "round": rnd,
            "epoch": epoch,
            "history": history,
            "rng": capture_rng_state(),
            "gen": gen.get_state(),
            **extra,
        }

    train_start = time.perf_counter()
    with tensorboard(out / "tb") as writer, section("saliency refiner"):
        for rnd in range(first_round, cfg.rounds):
            for epoch in range(first_epoch if rnd == first_round else 0, cfg.epochs_per_round):
                first_step, losses = 0, []
                if claim.resume and last.is_file() and "step" in state and (rnd, epoch) == (first_round, first_epoch):
                    perm, first_step, losses = state["perm"], int(state["step"]), list(state["losses"])
                else:
                    perm = torch.randperm(n, generator=gen)
                bar = tqdm(
                    range(first_step, steps_per_epoch),
                    desc=f"round {rnd + 1}/{cfg.rounds} epoch {epoch + 1}/{cfg.epochs_per_round}",
                    unit="step",
                    leave=False,
                )
                for step in bar:
                    idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    x = normalize(images[idx].to(device))
                    t = targets[idx].unsqueeze(1).to(device)
                    c = conf[idx].unsqueeze(1).to(device)
                    x, t, c = augment(x, t, c, cfg, gen)
                    with autocast(device, amp_dtype):
                        logits = net(x.contiguous(memory_format=torch.channels_last))
                    loss = confident_bce(logits, t, c, cfg.unconfident_weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(loss.item())
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                    if (signum := requested()) is not None and step + 1 < steps_per_epoch:
                        save_state(
                            last, state_now(rnd, epoch, step=step + 1, perm=perm, losses=losses), keep_previous=True
                        )
                        err = Preempted(
                            signum,
                            "saliency refiner",
                            saved=last,
                            hint="resume with --resume",
                            step=f"round {rnd + 1}, epoch {epoch + 1}, step {step + 1}",
                        )
                        log.warning("%s", err)
                        raise err
                entry = {
                    "round": rnd + 1,
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)),
                    "confident_fraction": float(conf.float().mean()),
                    "seconds": time.perf_counter() - train_start,
                }
                history.append(entry)
                log.info(
                    "round %d epoch %d: loss %.4f (confident pixels %.1f%%)",
                    rnd + 1,
                    epoch + 1,
                    entry["loss"],
                    100 * entry["confident_fraction"],
                )
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
                    # on the 1/255 grid that last.pt stores them on, so that a resumed run is bit-exact
                    average, targets = torch.round(average * 255) / 255.0, torch.round(targets * 255) / 255.0
                    log.info(
                        "round %d done: predicted foreground %.3f (fused %.3f), agreement with the fused label on its "
                        "confident pixels %.3f, unconfident pixels called foreground %.3f; next targets: %.1f%% of "
                        "pixels confident",
                        rnd + 1,
                        diag["foreground_share"],
                        diag["fused_foreground_share"],
                        diag["confident_agreement"],
                        diag["unconfident_foreground"],
                        100 * float(conf.float().mean()),
                    )
                    if writer is not None:
                        for k, v in diag.items():
                            writer.add_scalar(f"refine/{k}", v, rnd + 1)
                save_state(last, state_now(next_round, next_epoch), keep_previous=True)
                if (signum := requested()) is not None and (next_round, next_epoch) != (cfg.rounds, 0):
                    err = Preempted(
                        signum,
                        "saliency refiner",
                        saved=last,
                        hint="resume with --resume",
                        step=f"end of round {rnd + 1}, epoch {epoch + 1}",
                    )
                    log.warning("%s", err)
                    raise err
    seconds = time.perf_counter() - start
    save_state(final, _final_checkpoint(net, cfg, history=history, n_images=n))
    summary = {
        "checkpoint": str(final),
        "history": history,
        "seconds": seconds,
        "pseudo_label_seconds": pseudo_seconds,
        "train_seconds": time.perf_counter() - train_start,
        "n_images": n,
    }
    atomic_write_bytes(out / "history.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
