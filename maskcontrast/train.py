"""One trainer for every objective (MaskContrast pretraining and MoCo v2).

A step is ``views = sampler(batch)``, then the momentum update of the objective's pairs, then
``loss, metrics = objective(views)``, then the optimizer step. The trainer owns everything else:
SGD and its schedule, AMP and channels_last, DDP (``torchrun``; gloo on CPU, nccl on GPU),
the run folder, checkpoints, resume, TensorBoard and the progress bar.

Run folder (``trainer.run_dir``)::

    config.yaml        the resolved config of the run
    train.log          the log
    tb/                TensorBoard events: loss/*, acc/*, lr, images_per_s, data/*
    last.pt            written atomically at every epoch end (and every save_every_steps steps)
    epoch_<n>.pt       every save_every_epochs epochs

Example::

    from maskcontrast.config import PretrainConfig
    from maskcontrast.config_loading import load_config, resolve_config
    from maskcontrast.objectives import MaskContrastObjective
    cfg = resolve_config(load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["trainer.max_steps=4"]))
    result = train(cfg, lambda: MaskContrastObjective(cfg.model, cfg.objective), stage="pretrain")
    result.checkpoint      # run_dir / "last.pt"
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import DEPRECATED_KEYS, config_to_dict, save_config
from maskcontrast.data import DataError, SegmentationDataset, build_dataset
from maskcontrast.data.regions import RegionMaker
from maskcontrast.data.views import EpochBatchSampler, PairedViewDataset, Views, ViewSampler
from maskcontrast.momentum import average_batchnorm_stats, update_momentum
from maskcontrast.objectives.base import Objective
from maskcontrast.preemption import (
    PeerWatch,
    Preempted,
    agreed_request,
    control_group,
    ignore_signals_in_worker,
    section,
)
from maskcontrast.runs import (
    RunClaim,
    RunFolderError,
    RunLayout,
    capture_rng_state,
    checkpoint_problem,
    claim_run_folder,
    identity_diff,
    load_state,
    optim_state,
    previous_path,
    restore_optim_state,
    restore_rng_state,
    run_log,
    save_state,
    tensorboard,
)
from maskcontrast.utils import autocast_dtype, configure_cuda_backends, get_device, peak_rss_mib, seed_everything

__all__ = [
    "train",
    "RunResult",
    "RunDirError",
    "NonFiniteLossError",
    "lr_at",
    "schedule_step",
    "build_sources",
    "build_view_dataset",
    "DistEnv",
    "setup_distributed",
    "capture_rng_state",
    "restore_rng_state",
    "RUN_LAYOUT",
    "claim_training_run",
    "TrainingSetup",
    "setup_training",
    "restore_training",
    "RESUME_MAY_CHANGE",
    "refused_config_changes",
    "training_checkpoint",
    "train_step",
    "train_one_epoch",
    "min_batch_per_process",
    "RunningBatchSampler",
    "epoch_batches",
    "TrainingLog",
]

log = logging.getLogger(__name__)


class RunDirError(RunFolderError, RuntimeError):
    """The run folder already holds a run and neither resume nor overwrite was asked for, or the
    checkpoint to resume from is missing or of another stage."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class RunResult:
    """What :func:`train` returns (on every rank)."""

    run_dir: Path
    checkpoint: Path
    steps: int
    epochs_done: float
    metrics: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------


def lr_at(
    step: int, total_steps: int, base_lr: float, schedule: str = "poly", power: float = 0.9, warmup_steps: int = 0
) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    ``poly``: ``base * (1 - t)^power``; ``cosine``: ``base * (1 + cos(pi t)) / 2``; ``constant``;
    ``t = step / total_steps``. A linear warm-up from 0 over ``warmup_steps`` comes first.
    """
    if schedule not in ("poly", "cosine", "constant"):
        raise ValueError(f"optim.schedule must be poly, cosine or constant, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "poly":
        return base_lr * (1.0 - t) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return base_lr


def schedule_step(step: int, steps_per_epoch: int, unit: str = "step") -> int:
    """The step the learning-rate schedule sees: ``step`` itself (``unit="step"``), or the first step
    of its epoch (``unit="epoch"``: the rate holds for a whole epoch, as the official poly schedule,
    ``base * (1 - epoch / epochs)^power``)."""
    if unit not in ("step", "epoch"):
        raise ValueError(f"optim.schedule_unit must be step or epoch, got {unit!r}")
    return step if unit == "step" else (step // max(steps_per_epoch, 1)) * max(steps_per_epoch, 1)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 17) % (2**62)


# ----------------------------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------------------------


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    nccl on CUDA, gloo on CPU. Without it: one process, nothing initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = get_device(device)
    if world <= 1:
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)  # else CUDA also opens a context (and allocates) on cuda:0
        return DistEnv(0, 1, 0, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        here = True
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, here)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def build_sources(data_cfg: Any, need_mask: bool) -> list[SegmentationDataset]:
    """One reader per ``data.sources`` entry (``masks`` falls back to ``data.masks`` when masks are needed).

    Raises:
        ConfigError: no sources, or a source that cannot be opened (the message names it).
    """
    if not data_cfg.sources:
        raise ConfigError("data.sources is empty; list at least one dataset (name, root[, split, masks])")
    out = []
    for i, src in enumerate(data_cfg.sources):
        masks = (src.masks or data_cfg.masks) if need_mask else None
        try:
            ds = build_dataset(src.name, src.root, src.split, masks=masks, ids=src.ids)
            if src.limit and src.limit < len(ds.ids):
                step = len(ds.ids) / src.limit
                ds.ids = [ds.ids[int(i * step)] for i in range(src.limit)]
            out.append(ds)
        except (DataError, ValueError, OSError) as err:
            raise ConfigError(f"data.sources[{i}] ({src.name} at {src.root}): {err}") from err
    return out


def region_maker(data_cfg: Any) -> RegionMaker | None:
    """The :class:`RegionMaker` of ``data.mask_source`` (None for ``masks``: mask files are read)."""
    source = str(data_cfg.get("mask_source", "masks"))
    if source == "masks":
        return None
    r = data_cfg.regions
    return RegionMaker(
        source,
        grid_cells=r.grid_cells,
        scale=r.scale,
        sigma=r.sigma,
        min_size=r.min_size,
        max_regions=r.max_regions,
        cache_dir=r.cache_dir,
    )


def build_view_dataset(cfg: Any, need_mask: bool) -> PairedViewDataset:
    """The :class:`PairedViewDataset` of a training config (``data``, ``augment``, ``trainer.seed``)."""
    regions = region_maker(cfg.data) if need_mask else None
    return PairedViewDataset(
        build_sources(cfg.data, need_mask and regions is None),
        image_size=cfg.data.image_size,
        need_mask=need_mask,
        augment=cfg.augment,
        load_size=cfg.data.load_size,
        min_mask_fraction=cfg.data.min_mask_fraction,
        seed=cfg.trainer.seed,
        cache_images=cfg.data.cache_images,
        regions=regions,
    )


# ----------------------------------------------------------------------------------------------
# Run folder
# ----------------------------------------------------------------------------------------------

#: what a training run writes in ``trainer.run_dir`` (``last.pt`` and ``epoch_*.pt`` hold its progress)
RUN_LAYOUT = RunLayout(
    "run",
    owned=(
        "config.yaml",
        "config.resumed-step*.yaml",
        "last.pt",
        "last.prev.pt",
        "last.damaged*.pt",
        "train.log",
        "tb",
        "epoch_*.pt",
    ),
    state=("last.pt", "last.prev.pt", "epoch_*.pt"),
    resume_hint="trainer.resume=auto (--resume)",
    overwrite_hint="--overwrite (trainer.overwrite=true)",
    writer="maskcontrast.train",
)


def claim_training_run(tcfg: Any) -> tuple[RunClaim, Path | None]:
    """The run folder's claim and the checkpoint to resume from (None: a fresh start).

    ``trainer.resume``: ``none`` (refuse a folder that holds a checkpoint), ``auto`` (continue
    ``last.pt`` when there is one) or a path to a checkpoint. A folder that holds no checkpoint
    (a run that stopped before its first save) is reused without ``--overwrite``.
    """
    run_dir = Path(tcfg.run_dir).expanduser()
    resume = str(tcfg.resume)
    explicit = resume not in ("none", "auto", "")
    if explicit and not Path(resume).expanduser().is_file():
        raise RunDirError(f"trainer.resume={resume}: file not found")
    # resume=auto with a last.pt wins over overwrite (as before): nothing written is lost
    overwrite = bool(tcfg.overwrite) and not (resume == "auto" and (run_dir / "last.pt").is_file())
    try:
        claim = claim_run_folder(run_dir, RUN_LAYOUT, resume=resume == "auto" or explicit, overwrite=overwrite)
    except RunFolderError as err:
        raise RunDirError(str(err)) from err
    if explicit:
        return claim, Path(resume).expanduser()
    last = run_dir / "last.pt"
    if claim.resume and not last.is_file() and not previous_path(last).is_file():
        raise RunDirError(
            f"run folder {run_dir} holds epoch checkpoints but no last.pt; pass trainer.resume=<one of "
            "them> to continue from it, --overwrite to start afresh, or choose another trainer.run_dir"
        )
    if not claim.resume:
        return claim, None
    return claim, _complete_checkpoint(claim, last)


def _complete_checkpoint(claim: RunClaim, last: Path) -> Path:
    """``last``, or when it is damaged (truncated, corrupted) the newest complete one of ``last.prev.pt``
    and ``epoch_*.pt``; the damaged ``last.pt`` is renamed ``last.damaged.pt`` by ``claim.prepare()``."""
    epochs = sorted(last.parent.glob("epoch_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    problems: list[str] = []
    for path in [last, previous_path(last), *epochs]:
        if not path.is_file():
            continue
        why = checkpoint_problem(path)
        if why is None:
            if problems:
                log.warning(
                    "%s; resuming from %s, the newest complete checkpoint, instead (the damaged last.pt is "
                    "kept, renamed last.damaged.pt)",
                    "; ".join(problems),
                    path,
                )
                claim.damaged = [last] if last.is_file() else []
            return path
        problems.append(f"{path} is damaged ({why})")
    raise RunDirError(
        f"{'; '.join(problems)}; no complete checkpoint is left to resume from. Pass --overwrite to "
        "start afresh (the damaged files are deleted then) or trainer.resume=<a good checkpoint>"
    )


# ----------------------------------------------------------------------------------------------
# Set-up, restore, one step, logging
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainingSetup:
    """Everything :func:`train_one_epoch` needs, built by :func:`setup_training`."""

    cfg: Any
    env: DistEnv
    objective: Objective
    model: nn.Module  # the objective, wrapped in DDP with several processes
    dataset: PairedViewDataset
    batch_sampler: EpochBatchSampler
    loader: DataLoader
    sampler: ViewSampler
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    total_steps: int
    batches: Any = None  # the loader's iterator, which runs across epochs (see :func:`epoch_batches`)
    next_step: int = -1  # the step its next batch belongs to


class RunningBatchSampler(Sampler[list[tuple[int, int]]]):
    """The batches of an :class:`EpochBatchSampler`, epoch after epoch without end, from the batch
    :meth:`start_at` names. One loader iterator then serves the whole run, so its workers prefetch
    the first batches of the next epoch while the current one ends (a new iterator per epoch waits
    for its workers to start over at every epoch boundary)."""

    def __init__(self, epochs: EpochBatchSampler) -> None:
        self.epochs = epochs
        self.start = (0, 0)

    def start_at(self, epoch: int, batch: int) -> None:
        self.start = (epoch, batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start
        while True:
            self.epochs.set_epoch(epoch, batch)
            yield from iter(self.epochs)
            epoch, batch = epoch + 1, 0


def epoch_batches(s: TrainingSetup, step: int) -> Iterator[dict[str, Any]]:
    """The batches of the epoch that ``step`` lies in, from ``step`` on, drawn from one loader iterator
    that runs across epochs (a new one is started only when ``step`` is not where it stands)."""
    spe = s.steps_per_epoch
    if s.batches is None or s.next_step != step:
        s.loader.batch_sampler.start_at(*divmod(step, spe))  # type: ignore[union-attr]
        s.batches, s.next_step = iter(s.loader), step
    for _ in range(spe - step % spe):
        batch = next(s.batches)
        s.next_step += 1
        yield batch


def min_batch_per_process(module: nn.Module) -> int:
    """The smallest batch per process ``module`` trains with: 2 when a BatchNorm follows a global
    average pooling (the image-pooling branch of ASPP sees a ``B x C x 1 x 1`` map, and BatchNorm in
    training mode raises on a single value per channel), else 1."""
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        pooled = False
        for child in seq:
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                pooled = True
            elif pooled and isinstance(child, nn.modules.batchnorm._BatchNorm) and child.training:
                return 2
    return 1


def setup_training(cfg: Any, build_objective: Callable[[], Objective], env: DistEnv) -> TrainingSetup:
    """Seed, build the objective, the data pipeline and the optimizer (nothing on disk changes).

    Raises:
        ConfigError: a batch that does not split over the processes, too few images per process for
            the networks' BatchNorm, bf16 asked on a GPU without it (falls back to fp16 with a
            warning instead), or fewer images than one batch.
    """
    tcfg, ocfg = cfg.trainer, cfg.optim
    amp_dtype = autocast_dtype(
        tcfg.precision, env.device, choices=("fp32", "bf16", "fp16"), key="trainer.precision", fp16_fallback=True
    )
    configure_cuda_backends(env.device)
    seed_everything(tcfg.seed)
    objective = build_objective().to(env.device)
    if tcfg.channels_last:
        objective = objective.to(memory_format=torch.channels_last)
    if ocfg.batch_size % env.world_size:
        raise ConfigError(f"optim.batch_size={ocfg.batch_size} is not divisible by {env.world_size} processes")
    per_rank = ocfg.batch_size // env.world_size
    objective.train()
    need = min_batch_per_process(objective)
    if per_rank < need:
        raise ConfigError(
            f"optim.batch_size={ocfg.batch_size} over {env.world_size} process(es) is {per_rank} image(s) per "
            f"process; the BatchNorm after the image pooling of the ASPP head needs at least {need} per process. "
            f"Set optim.batch_size to at least {need * env.world_size} or run fewer processes"
        )
    dataset = build_view_dataset(cfg, objective.needs_mask)
    if len(dataset) < ocfg.batch_size:
        raise ConfigError(
            f"{len(dataset)} usable images are fewer than one batch (optim.batch_size="
            f"{ocfg.batch_size}); lower the batch size or add data"
        )
    objective.prepare_data(dataset)  # e.g. STEGO's frozen-feature bank and neighbours (a no-op for most)
    batch_sampler = EpochBatchSampler(len(dataset), per_rank, tcfg.seed, env.rank, env.world_size)
    workers = int(cfg.data.num_workers)
    loader = DataLoader(
        dataset,
        batch_sampler=RunningBatchSampler(batch_sampler),  # one pass over every epoch: no stall between epochs
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(tcfg.seed),
        worker_init_fn=ignore_signals_in_worker,
    )
    sampler = ViewSampler(cfg.augment, cfg.data.image_size).to(env.device)
    spe = len(dataset) // ocfg.batch_size
    budget = int(tcfg.max_steps or 0)
    total = budget if budget > 0 else int(tcfg.epochs) * spe
    objective.train()  # the objective keeps its frozen layers (if any) in eval mode
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay, nesterov=ocfg.nesterov
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16)
    model: nn.Module = objective
    if env.world_size > 1:
        model = DistributedDataParallel(
            objective,
            device_ids=[env.device.index] if env.device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    return TrainingSetup(
        cfg, env, objective, model, dataset, batch_sampler, loader, sampler, optimizer, scaler, amp_dtype, spe, total
    )


def training_checkpoint(s: TrainingSetup, *, step: int, stage: str, cfg_dict: dict) -> dict[str, Any]:
    """The objective's checkpoint plus the optimizer and the ``trainer`` entry (step, RNG, scaler, config)."""
    ckpt = s.objective.checkpoint()
    epoch = step // s.steps_per_epoch
    ckpt["epoch"] = epoch
    ckpt.update(optim_state(s.optimizer))
    ckpt["trainer"] = {
        "stage": stage,
        "step": step,
        "epoch": epoch,
        "steps_per_epoch": s.steps_per_epoch,
        "total_steps": s.total_steps,
        "world_size": s.env.world_size,
        "rng": capture_rng_state(),
        "scaler": optim_state(scaler=s.scaler)["scaler"],
        "config": cfg_dict,
    }
    return ckpt


#: the config keys (``fnmatch`` patterns of dotted keys; list items as ``sources.0.root``) whose
#: value may differ when a run is resumed: the budget, the cadence of saves and logs, where and how
#: fast it runs, where the data and the run folder now live. Any other change (the model, the
#: objective, the data, the image size, the augmentation, the optimizer, the seed) is refused.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.resume",
    "trainer.overwrite",
    "trainer.run_dir",
    "trainer.save_every_steps",
    "trainer.save_every_epochs",
    "trainer.log_every_steps",
    "trainer.progress",
    "trainer.threads",
    "trainer.device",
    "trainer.precision",
    "trainer.channels_last",
    "data.num_workers",
    "data.cache_images",
    "data.sources.*.root",
    "data.sources.*.masks",
    "data.masks",
    "model.backbone.init",  # used before a resume only: the weights then come from the checkpoint
)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix.rstrip("."): value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def refused_config_changes(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every changed key that :data:`RESUME_MAY_CHANGE` does not allow."""
    from fnmatch import fnmatchcase

    a, b = _flat(old), _flat(new)
    for was, now in DEPRECATED_KEYS.items():  # a run saved before a rename: its old key is the new one
        if was in a and now not in a:
            a[now] = a.pop(was)
            if was in b:
                a[was] = b[was]
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>") and not any(fnmatchcase(k, pat) for pat in RESUME_MAY_CHANGE)
    ]


def restore_training(s: TrainingSetup, path: Path, stage: str, cfg_dict: dict) -> tuple[int, list[str]]:
    """Load a :func:`training_checkpoint` into the set-up; returns ``(step, config changes)``.

    Raises:
        RunDirError: not a training checkpoint of this stage.
        ConfigError: the config differs from the checkpoint's in a key outside
            :data:`RESUME_MAY_CHANGE` (the message names the keys).
    """
    ckpt = load_state(path)
    tstate = ckpt.get("trainer")
    if not isinstance(tstate, dict) or tstate.get("stage") != stage:
        raise RunDirError(f"{path}: not a {stage} training checkpoint of this trainer")
    refused = refused_config_changes(tstate.get("config", {}), cfg_dict) if "config" in tstate else []
    if refused:
        raise ConfigError(
            f"cannot resume {path} with a changed config: {'; '.join(refused[:8])}. These change the model, the "
            f"method or the data; resume with the run's own settings ({path.parent / 'config.yaml'}), or start a new "
            f"run (another trainer.run_dir, or --overwrite). Keys that may change on resume: "
            f"{', '.join(RESUME_MAY_CHANGE)}"
        )
    s.objective.load_checkpoint(ckpt)
    restore_optim_state({"optimizer": ckpt["optimizer"], "scaler": tstate.get("scaler")}, s.optimizer, scaler=s.scaler)
    restore_rng_state(tstate["rng"])
    step = int(tstate["step"])
    diff = identity_diff(tstate.get("config", {}), cfg_dict)
    if diff:
        log.warning("resuming with a changed config: %s", "; ".join(diff[:12]))
    if tstate.get("steps_per_epoch") != s.steps_per_epoch:
        log.warning(
            "steps per epoch changed from %s to %s (data or batch size changed)",
            tstate.get("steps_per_epoch"),
            s.steps_per_epoch,
        )
    log.info("resumed from %s at step %d", path, step)
    return step, diff


def train_step(
    s: TrainingSetup, batch: dict[str, Any], step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """One optimisation step: views, momentum update, ``objective(views)``, NaN check, SGD step.

    Returns:
        ``(loss, metrics, lr)``.

    Raises:
        NonFiniteLossError: the loss is NaN/inf on some process (nothing was stepped).
    """
    tcfg, ocfg = s.cfg.trainer, s.cfg.optim
    torch.manual_seed(_step_seed(tcfg.seed, step, s.env.rank))
    lr = lr_at(
        schedule_step(step, s.steps_per_epoch, ocfg.schedule_unit),
        s.total_steps,
        ocfg.lr,
        ocfg.schedule,
        ocfg.poly_power,
        ocfg.warmup_steps,
    )
    for g in s.optimizer.param_groups:
        g["lr"] = lr
    views: Views = s.sampler(batch)
    views.query = s.objective.prepare_input(views.query, tcfg.channels_last)
    views.key = s.objective.prepare_input(views.key, tcfg.channels_last)
    for online, target in s.objective.momentum_pairs():
        update_momentum(online, target, s.objective.momentum)
    with torch.autocast(s.env.device.type, dtype=s.amp_dtype) if s.amp_dtype else nullcontext():
        loss, metrics = s.model(views)
    finite = torch.isfinite(loss.detach()).float()
    if s.env.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    # the step's one host sync, after the backward is queued (a GPU keeps working while we wait)
    if finite.item() < 1:
        raise NonFiniteLossError(f"the loss became {loss.item()} at step {step} (epoch {step // s.steps_per_epoch})")
    s.scaler.step(s.optimizer)
    s.scaler.update()
    return loss, metrics, lr


class TrainingLog:
    """Metric averaging, the progress bar, TensorBoard scalars and the per-epoch log line.

    The metrics of a step stay on the device: they are added to a tensor buffer, and the buffer is
    read (one host sync) only every ``trainer.log_every_steps`` steps, at an epoch end and at the
    end of the run. ``images_per_s`` is measured over those windows.
    """

    def __init__(self, s: TrainingSetup, writer: Any, stage: str, step: int) -> None:
        self.s, self.writer = s, writer
        tcfg = s.cfg.trainer
        self.every = max(tcfg.log_every_steps, 1)
        self.bar = tqdm(
            total=s.total_steps,
            initial=step,
            desc=stage,
            dynamic_ncols=True,
            disable=not (tcfg.progress and s.env.is_main),
        )
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None  # device buffer: the sum of every metric since the last flush
        self.latest: torch.Tensor | None = None  # the metrics of the last step
        self.n_sum = 0
        self.lr = 0.0
        self.skipped = torch.zeros((), dtype=torch.long)
        self.redraws = torch.zeros((), dtype=torch.long)
        self.last: dict[str, float] = {}
        self.t_last = time.perf_counter()

    def step(
        self, step: int, batch: dict[str, Any], loss: torch.Tensor, metrics: dict[str, torch.Tensor], lr: float
    ) -> None:
        """Record step ``step`` (1-based count of steps done); no host sync unless it is a logging step."""
        self.skipped += batch["skipped"].sum()
        self.redraws += batch["redraws"].sum()
        keys = ["loss_total", *metrics]
        values = torch.stack(
            [
                loss.detach().float().reshape(()),
                *(v.detach().float().reshape(()).to(loss.device) for v in metrics.values()),
            ]
        )
        if keys != self.keys and self.n_sum:
            self.flush(step - 1)
        self.keys = keys
        self.sums = values.clone() if self.sums is None or not self.n_sum else self.sums.add_(values)
        self.latest = values
        self.n_sum += 1
        self.lr = lr
        self.bar.update(1)
        if step % self.every == 0 or step == self.s.total_steps:
            self.flush(step)

    def flush(self, step: int) -> None:
        """Read the buffer (one host sync): TensorBoard means of the window, the progress bar, ``last``."""
        if not self.n_sum or self.sums is None or self.latest is None:
            return
        now = time.perf_counter()
        ips = self.s.cfg.optim.batch_size * self.n_sum / max(now - self.t_last, 1e-9)
        self.t_last = now
        sums, latest = torch.stack([self.sums, self.latest]).tolist()
        self.last = {**dict(zip(self.keys, latest)), "lr": self.lr, "images_per_s": ips}
        means = {**{k: v / self.n_sum for k, v in zip(self.keys, sums)}, "lr": self.lr, "images_per_s": ips}
        self.bar.set_postfix(
            loss=f"{self.last['loss_total']:.3f}",
            top1=f"{self.last.get('acc_top1', 0):.2f}",
            lr=f"{self.lr:.2g}",
            ips=f"{ips:.1f}",
            refresh=False,
        )
        if self.writer is not None:
            for k, v in means.items():
                tag = k.replace("loss_", "loss/").replace("acc_", "acc/") if k.startswith(("loss_", "acc_")) else k
                self.writer.add_scalar(tag, v, step)
            self.writer.add_scalar("peak_rss_mib", peak_rss_mib(), step)
        self.n_sum = 0

    def epoch_end(self, done: int, step: int) -> None:
        self.flush(step)
        skipped, redraws = int(self.skipped), int(self.redraws)
        if self.writer is not None:
            self.writer.add_scalar("data/skipped_images", skipped, done)
            self.writer.add_scalar("data/view_redraws", redraws, done)
        if self.s.env.is_main:
            log.info(
                "epoch %d done (step %d): loss %.4f, top1 %.3f; %d images skipped (no usable mask or view), "
                "%d views redrawn",
                done,
                step,
                self.last["loss_total"],
                self.last.get("acc_top1", float("nan")),
                skipped,
                redraws,
            )
        self.skipped.zero_()
        self.redraws.zero_()

    def close(self) -> None:
        self.bar.close()


def train_one_epoch(
    s: TrainingSetup,
    step: int,
    logger: TrainingLog,
    save: Callable[[str, int], None],
    stop: Callable[[int], None] | None = None,
) -> int:
    """Run the steps of the epoch that ``step`` lies in (from ``step`` on, up to the step budget).

    ``save(name, step)`` writes a checkpoint (``last.pt`` at the epoch end, at the end of the
    budget and every ``save_every_steps``; ``epoch_<n>.pt`` every ``save_every_epochs``).
    ``stop(step)``, called after every step and its saves, may end the run (a preemption signal).
    Returns the step count after the epoch.
    """
    tcfg, spe = s.cfg.trainer, s.steps_per_epoch
    for batch in epoch_batches(s, step):
        loss, metrics, lr = train_step(s, batch, step)
        step += 1
        logger.step(step, batch, loss, metrics, lr)
        epoch_end = step % spe == 0
        if epoch_end:
            done = step // spe
            logger.epoch_end(done, step)
            if tcfg.save_every_epochs > 0 and done % tcfg.save_every_epochs == 0:
                save(f"epoch_{done:04d}.pt", step)
        if epoch_end or step == s.total_steps or (tcfg.save_every_steps > 0 and step % tcfg.save_every_steps == 0):
            save("last.pt", step)
        if step >= s.total_steps:
            break
        if stop is not None:
            stop(step)
    return step


def train(cfg: DictConfig, build_objective: Callable[[], Objective], stage: str) -> RunResult:
    """Train ``build_objective()`` as ``cfg`` (``data``, ``augment``, ``optim``, ``trainer`` sections) says.

    Set-up (:func:`setup_training`), the run folder (:func:`claim_training_run`), restore
    (:func:`restore_training`), then :func:`train_one_epoch` until the step budget is spent.

    Args:
        cfg: a resolved config (PretrainConfig or MocoConfig layout).
        build_objective: called once, after seeding, on every process.
        stage: a name stored in checkpoints (``pretrain`` or ``moco``).

    Returns:
        A :class:`RunResult` with the run folder and the last checkpoint.

    Raises:
        RunDirError: the run folder holds a run and neither resume nor overwrite was asked for.
        NonFiniteLossError: the loss became NaN/inf; ``last.pt`` keeps the last good state.
        ConfigError, DataError: bad options or data (the message names them).
    """
    tcfg, ocfg = cfg.trainer, cfg.optim
    autocast_dtype(tcfg.precision, choices=("fp32", "bf16", "fp16"), key="trainer.precision")
    if tcfg.epochs <= 0 and not (tcfg.max_steps or 0) > 0:
        raise ConfigError("set trainer.epochs > 0 or trainer.max_steps > 0")
    lr_at(0, 1, ocfg.lr, ocfg.schedule)  # validates the schedule name
    env = setup_distributed(tcfg.device)
    threads_before = torch.get_num_threads()
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    run_dir = Path(tcfg.run_dir).expanduser()
    last_path = run_dir / "last.pt"
    watch = PeerWatch.start_if_distributed()  # a failing process ends the others within seconds
    claim: RunClaim | None = None
    try:
        group = control_group() if env.world_size > 1 else None
        claim, resume_path = claim_training_run(tcfg)
        if env.world_size > 1:
            dist.barrier()
        s = setup_training(cfg, build_objective, env)
        cfg_dict = config_to_dict(cfg)
        # everything is validated: only now touch the run folder (an --overwrite run that fails early loses nothing)
        if env.is_main:
            claim.prepare()
        if env.world_size > 1:
            dist.barrier()
        with run_log(run_dir / "train.log" if env.is_main else None):
            step, diff = 0, []
            if resume_path is not None:
                step, diff = restore_training(s, resume_path, stage, cfg_dict)
            if env.is_main:
                if resume_path is None:
                    save_config(cfg, run_dir / "config.yaml")
                elif diff:
                    save_config(cfg, run_dir / f"config.resumed-step{step}.yaml")
            with tensorboard(run_dir / "tb" if env.is_main else None) as writer:
                if env.is_main:
                    log.info(
                        "%s: %d images, %d steps per epoch (global batch %d on %d process(es)), %d steps in "
                        "all, device %s, precision %s%s",
                        stage,
                        len(s.dataset),
                        s.steps_per_epoch,
                        ocfg.batch_size,
                        env.world_size,
                        s.total_steps,
                        env.device,
                        tcfg.precision,
                        ", channels_last" if tcfg.channels_last else "",
                    )
                logger = TrainingLog(s, writer, stage, step)
                saved = {"step": step}

                def save(name: str, at: int) -> None:
                    average_batchnorm_stats(s.objective)  # every rank's statistics, not rank 0's (all ranks call it)
                    if env.is_main:
                        save_state(
                            run_dir / name,
                            training_checkpoint(s, step=at, stage=stage, cfg_dict=cfg_dict),
                            keep_previous=name == "last.pt",
                        )
                    if name == "last.pt":
                        saved["step"] = at

                def stop(at: int) -> None:
                    signum = agreed_request(group)
                    if signum is None:
                        return
                    if saved["step"] != at:
                        save("last.pt", at)
                    if env.world_size > 1:
                        dist.barrier()
                    err = Preempted(
                        signum,
                        f"{stage} training",
                        step=at,
                        saved=last_path,
                        hint="resume with --resume (trainer.resume=auto)",
                    )
                    if env.is_main:
                        log.warning("%s", err)
                    raise err

                try:
                    with section(f"{stage} training"):
                        while step < s.total_steps:
                            step = train_one_epoch(s, step, logger, save, stop)
                except NonFiniteLossError as err:
                    good = saved["step"]
                    raise NonFiniteLossError(
                        f"{err}; the run stopped. {last_path if good > 0 else 'No checkpoint'} keeps the last good "
                        f"state (step {good}). Try a lower optim.lr or trainer.precision=fp32, then resume with "
                        "trainer.resume=auto"
                    ) from None
                finally:
                    logger.close()
                if saved["step"] != step:
                    save("last.pt", step)
            if env.world_size > 1:
                dist.barrier()
            if env.is_main:
                log.info("%s finished after %d steps; checkpoint %s", stage, step, last_path)
        return RunResult(run_dir, last_path, step, step / max(s.steps_per_epoch, 1), logger.last)
    except BaseException as err:
        if watch is not None and not isinstance(err, (Preempted, NonFiniteLossError)):
            watch.fail(err)  # an error the other processes do not share: they stop too
        raise
    finally:
        if watch is not None:
            watch.stop()
        if claim is not None:
            claim.release()  # the run folder's writer lock
        if env.initialised_here and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads_before)


def config_summary(cfg: DictConfig) -> str:
    """The resolved config as YAML (for ``--print-config``)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def schema_keys(schema: Any) -> list[str]:
    """``key = default`` lines for every option of a config schema (for ``--help``)."""
    flat: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, DictConfig):
                walk(v, f"{prefix}{k}.")
            else:
                flat.append(f"  {prefix}{k} = {OmegaConf.to_yaml(OmegaConf.create({'v': v})).strip()[3:]}")

    node = OmegaConf.structured(schema)
    walk(node, "")
    return flat


def training_parser(*, prog: str, description: str, schema: Any, docs: str) -> argparse.ArgumentParser:
    """The argument parser of ``maskcontrast.pretrain`` and ``maskcontrast.moco``: ``--config``,
    ``key=value`` overrides of ``schema`` (listed in the epilog), ``--overwrite``, ``--resume``,
    ``--print-config``."""
    from maskcontrast.config_loading import add_config_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value overrides; defaults shown, "
        f"explained in {docs}):\n" + "\n".join(schema_keys(schema)),
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if trainer.run_dir holds a run (its checkpoints are deleted)",
    )
    parser.add_argument("--resume", action="store_true", help="same as trainer.resume=auto: continue from last.pt")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def cli_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    schema: Any,
    build_objective: Callable[[DictConfig], Objective],
    stage: str,
    docs: str,
) -> int:
    """The shared command line of ``maskcontrast.pretrain`` and ``maskcontrast.moco``."""
    import sys

    from maskcontrast.config_loading import load_config, resolve_config
    from maskcontrast.models import CheckpointError
    from maskcontrast.utils import setup_logging

    parser = training_parser(prog=prog, description=description, schema=schema, docs=docs)
    args = parser.parse_intermixed_args(argv)  # options may come between key=value overrides
    setup_logging()
    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("trainer.overwrite=true")
    if args.resume:
        overrides.append("trainer.resume=auto")
    try:
        cfg = resolve_config(load_config(schema, args.config, overrides), args.config or "config")
        if args.print_config:
            print(config_summary(cfg))
            return 0
        result = train(cfg, lambda: build_objective(cfg), stage=stage)
    except (ConfigError, DataError, CheckpointError, RunDirError, NonFiniteLossError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, (NonFiniteLossError, OSError)) and not isinstance(err, RunDirError) else 2
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {result.checkpoint}")
        print(
            f"run folder: {result.run_dir} (config.yaml, train.log; TensorBoard: tensorboard --logdir {result.run_dir / 'tb'})"
        )
    return 0
