"""One trainer for every objective (MaskContrast pretraining and MoCo v2).

A step is ``views = sampler(batch)``, then the momentum update of the objective's pairs, then
``loss, metrics = objective(views)``, then the optimizer step. The trainer owns everything else:
SGD and its schedule (:mod:`maskcontrast.schedules`), AMP and channels_last, DDP (``torchrun``;
gloo on CPU, nccl on GPU, :mod:`maskcontrast.distributed`), the run folder, checkpoints, resume
(:mod:`maskcontrast.runs`), TensorBoard and the progress bar (:mod:`maskcontrast.train_log`).
The command line of ``maskcontrast.pretrain`` and the other objectives is :mod:`maskcontrast.cli`.

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

import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import config_to_dict, save_config
from maskcontrast.data.views import EpochBatchSampler, PairedViewDataset, Views, ViewSampler
from maskcontrast.distributed import DistEnv, setup_distributed
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
from maskcontrast.run_logs import run_log, tensorboard
from maskcontrast.run_state import (
    capture_rng_state,
    load_state,
    optim_state,
    restore_optim_state,
    restore_rng_state,
    save_state,
)
from maskcontrast.runs import RunClaim
from maskcontrast.schedules import LrSchedule, lr_at
from maskcontrast.train_data import RunningBatchSampler, build_view_dataset
from maskcontrast.train_folder import RunDirError, claim_training_run, resume_config_changes
from maskcontrast.train_log import TrainingLog
from maskcontrast.utils import autocast_dtype, configure_cuda_backends, seed_everything

__all__ = [
    "train",
    "RunResult",
    "NonFiniteLossError",
    "TrainingSetup",
    "setup_training",
    "restore_training",
    "training_checkpoint",
    "train_step",
    "train_one_epoch",
    "min_batch_per_process",
    "epoch_batches",
    "Checkpoints",
]

log = logging.getLogger(__name__)


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


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 17) % (2**62)


# ----------------------------------------------------------------------------------------------
# Set-up, restore, one step, one epoch
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainingSetup:
    """Everything :func:`train_one_epoch` needs, built by :func:`setup_training`.

    Attributes:
        model: the objective, wrapped in DDP with several processes.
        schedule: the learning rate of every step (:class:`maskcontrast.schedules.LrSchedule`).
        batches: the loader's iterator, which runs across epochs (see :func:`epoch_batches`).
        next_step: the step its next batch belongs to.
    """

    cfg: Any
    env: DistEnv
    objective: Objective
    model: nn.Module
    dataset: PairedViewDataset
    batch_sampler: EpochBatchSampler
    loader: DataLoader
    sampler: ViewSampler
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    total_steps: int
    schedule: LrSchedule
    batches: Any = None
    next_step: int = -1


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


def _build_objective(cfg: Any, build_objective: Callable[[], Objective], env: DistEnv) -> Objective:
    """Seed, build the objective on the device and check that the batch splits over the processes."""
    tcfg, ocfg = cfg.trainer, cfg.optim
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
    return objective


def _data_pipeline(
    cfg: Any, objective: Objective, env: DistEnv
) -> tuple[PairedViewDataset, EpochBatchSampler, DataLoader]:
    """The paired-view dataset, this process's batch order and the loader that runs across epochs."""
    tcfg, ocfg = cfg.trainer, cfg.optim
    dataset = build_view_dataset(cfg, objective.needs_mask)
    if len(dataset) < ocfg.batch_size:
        raise ConfigError(
            f"{len(dataset)} usable images are fewer than one batch (optim.batch_size="
            f"{ocfg.batch_size}); lower the batch size or add data"
        )
    objective.prepare_data(dataset)  # e.g. STEGO's frozen-feature bank and neighbours (a no-op for most)
    per_rank = ocfg.batch_size // env.world_size
    batch_sampler = EpochBatchSampler(len(dataset), per_rank, tcfg.seed, env.rank, env.world_size)
    loader = DataLoader(
        dataset,
        batch_sampler=RunningBatchSampler(batch_sampler),  # one pass over every epoch: no stall between epochs
        num_workers=int(cfg.data.num_workers),
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(tcfg.seed),
        worker_init_fn=ignore_signals_in_worker,
    )
    return dataset, batch_sampler, loader


def setup_training(cfg: Any, build_objective: Callable[[], Objective], env: DistEnv) -> TrainingSetup:
    """Seed, build the objective, the data pipeline, the optimizer and its schedule (nothing on disk changes).

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
    objective = _build_objective(cfg, build_objective, env)
    dataset, batch_sampler, loader = _data_pipeline(cfg, objective, env)
    sampler = ViewSampler(cfg.augment, cfg.data.image_size).to(env.device)
    spe = len(dataset) // ocfg.batch_size
    budget = int(tcfg.max_steps or 0)
    total = budget if budget > 0 else int(tcfg.epochs) * spe
    schedule = LrSchedule.steps(
        total, ocfg.lr, ocfg.schedule, ocfg.poly_power, ocfg.warmup_steps, spe, ocfg.schedule_unit
    )
    objective.train()  # the objective keeps its frozen layers (if any) in eval mode
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay, nesterov=ocfg.nesterov
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16)
    model: nn.Module = objective
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = DistributedDataParallel(objective, device_ids=device_ids, broadcast_buffers=False)
    parts = (objective, model, dataset, batch_sampler, loader, sampler, optimizer, scaler, amp_dtype)
    return TrainingSetup(cfg, env, *parts, spe, total, schedule)


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


def restore_training(s: TrainingSetup, path: Path, stage: str, cfg_dict: dict) -> tuple[int, list[str]]:
    """Load a :func:`training_checkpoint` into the set-up; returns ``(step, config changes)``.

    Raises:
        RunDirError: not a training checkpoint of this stage.
        ConfigError: the config differs from the checkpoint's in a key outside
            :data:`maskcontrast.train_folder.RESUME_MAY_CHANGE` (the message names the keys).
    """
    ckpt = load_state(path)
    tstate = ckpt.get("trainer")
    if not isinstance(tstate, dict) or tstate.get("stage") != stage:
        raise RunDirError(f"{path}: not a {stage} training checkpoint of this trainer")
    diff = resume_config_changes(path, tstate.get("config"), cfg_dict)
    s.objective.load_checkpoint(ckpt)
    restore_optim_state({"optimizer": ckpt["optimizer"], "scaler": tstate.get("scaler")}, s.optimizer, scaler=s.scaler)
    restore_rng_state(tstate["rng"])
    step = int(tstate["step"])
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
    tcfg = s.cfg.trainer
    torch.manual_seed(_step_seed(tcfg.seed, step, s.env.rank))
    lr = s.schedule.apply(s.optimizer, step)
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


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


class Checkpoints:
    """The run's saves (:meth:`save`, written by rank 0) and its stop on a preemption request (:meth:`stop`).

    Attributes:
        saved: the step of the newest ``last.pt``.
    """

    def __init__(self, s: TrainingSetup, stage: str, run_dir: Path, cfg_dict: dict, step: int, group: Any) -> None:
        self.s, self.stage, self.run_dir, self.cfg_dict, self.group = s, stage, run_dir, cfg_dict, group
        self.saved = step

    def save(self, name: str, at: int) -> None:
        """Write checkpoint ``name`` at step ``at`` (every rank calls it: the BatchNorm statistics are averaged)."""
        average_batchnorm_stats(self.s.objective)  # every rank's statistics, not rank 0's
        if self.s.env.is_main:
            ckpt = training_checkpoint(self.s, step=at, stage=self.stage, cfg_dict=self.cfg_dict)
            save_state(self.run_dir / name, ckpt, keep_previous=name == "last.pt")
        if name == "last.pt":
            self.saved = at

    def stop(self, at: int) -> None:
        """When every process got SIGTERM/SIGINT: save ``last.pt`` at step ``at`` and raise :class:`Preempted`."""
        signum = agreed_request(self.group)
        if signum is None:
            return
        if self.saved != at:
            self.save("last.pt", at)
        if self.s.env.world_size > 1:
            dist.barrier()
        err = Preempted(
            signum,
            f"{self.stage} training",
            step=at,
            saved=self.run_dir / "last.pt",
            hint="resume with --resume (trainer.resume=auto)",
        )
        if self.s.env.is_main:
            log.warning("%s", err)
        raise err


def _run_epochs(s: TrainingSetup, stage: str, step: int, ckpts: Checkpoints, writer: Any) -> tuple[int, dict]:
    """:func:`train_one_epoch` until the budget is spent, then a final ``last.pt``; returns ``(step, metrics)``."""
    tcfg = s.cfg.trainer
    logger = TrainingLog(
        writer,
        stage,
        step,
        total_steps=s.total_steps,
        batch_size=s.cfg.optim.batch_size,
        every=tcfg.log_every_steps,
        progress=tcfg.progress,
        is_main=s.env.is_main,
    )
    try:
        with section(f"{stage} training"):
            while step < s.total_steps:
                step = train_one_epoch(s, step, logger, ckpts.save, ckpts.stop)
    except NonFiniteLossError as err:
        good, last = ckpts.saved, ckpts.run_dir / "last.pt"
        raise NonFiniteLossError(
            f"{err}; the run stopped. {last if good > 0 else 'No checkpoint'} keeps the last good "
            f"state (step {good}). Try a lower optim.lr or trainer.precision=fp32, then resume with "
            "trainer.resume=auto"
        ) from None
    finally:
        logger.close()
    if ckpts.saved != step:
        ckpts.save("last.pt", step)
    return step, logger.last


def _run(s: TrainingSetup, stage: str, resume_path: Path | None, group: Any) -> RunResult:
    """Restore, log, train and save in the claimed run folder (its log file and TensorBoard on rank 0)."""
    cfg, env = s.cfg, s.env
    run_dir = Path(cfg.trainer.run_dir).expanduser()
    cfg_dict = config_to_dict(cfg)
    with run_log(run_dir / "train.log" if env.is_main else None):
        step, diff = restore_training(s, resume_path, stage, cfg_dict) if resume_path is not None else (0, [])
        if env.is_main and (resume_path is None or diff):
            save_config(cfg, run_dir / ("config.yaml" if resume_path is None else f"config.resumed-step{step}.yaml"))
        with tensorboard(run_dir / "tb" if env.is_main else None) as writer:
            if env.is_main:
                log.info(
                    "%s: %d images, %d steps per epoch (global batch %d on %d process(es)), %d steps in "
                    "all, device %s, precision %s%s",
                    stage,
                    len(s.dataset),
                    s.steps_per_epoch,
                    cfg.optim.batch_size,
                    env.world_size,
                    s.total_steps,
                    env.device,
                    cfg.trainer.precision,
                    ", channels_last" if cfg.trainer.channels_last else "",
                )
            ckpts = Checkpoints(s, stage, run_dir, cfg_dict, step, group)
            step, metrics = _run_epochs(s, stage, step, ckpts, writer)
        if env.world_size > 1:
            dist.barrier()
        if env.is_main:
            log.info("%s finished after %d steps; checkpoint %s", stage, step, run_dir / "last.pt")
    return RunResult(run_dir, run_dir / "last.pt", step, step / max(s.steps_per_epoch, 1), metrics)


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
    tcfg = cfg.trainer
    autocast_dtype(tcfg.precision, choices=("fp32", "bf16", "fp16"), key="trainer.precision")
    if tcfg.epochs <= 0 and not (tcfg.max_steps or 0) > 0:
        raise ConfigError("set trainer.epochs > 0 or trainer.max_steps > 0")
    lr_at(0, 1, cfg.optim.lr, cfg.optim.schedule)  # validates the schedule name
    env = setup_distributed(tcfg.device)
    threads_before = torch.get_num_threads()
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    watch = PeerWatch.start_if_distributed()  # a failing process ends the others within seconds
    claim: RunClaim | None = None
    try:
        group = control_group() if env.world_size > 1 else None
        claim, resume_path = claim_training_run(tcfg)
        if env.world_size > 1:
            dist.barrier()
        s = setup_training(cfg, build_objective, env)
        # everything is validated: only now touch the run folder (an --overwrite run that fails early loses nothing)
        if env.is_main:
            claim.prepare()
        if env.world_size > 1:
            dist.barrier()
        return _run(s, stage, resume_path, group)
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
