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

    from maskcontrast.config import PretrainConfig, load_config, resolve_config
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
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskcontrast.config import ConfigError, config_to_dict, save_config
from maskcontrast.data import DataError, SegmentationDataset, build_dataset
from maskcontrast.data.views import EpochBatchSampler, PairedViewDataset, Views, ViewSampler
from maskcontrast.models import read_checkpoint
from maskcontrast.momentum import update_momentum
from maskcontrast.objectives.base import Objective
from maskcontrast.utils import atomic_save, autocast_dtype, get_device, peak_rss_mib

__all__ = [
    "train",
    "RunResult",
    "RunDirError",
    "NonFiniteLossError",
    "lr_at",
    "build_sources",
    "build_view_dataset",
    "DistEnv",
    "setup_distributed",
    "capture_rng_state",
    "restore_rng_state",
]

log = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "last.pt", "train.log", "tb")


class RunDirError(RuntimeError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


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


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "poly", power: float = 0.9,
          warmup_steps: int = 0) -> float:  # fmt: skip
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


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as weights-only-loadable values."""
    py = random.getstate()
    npst = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            str(npst[0]),
            torch.from_numpy(np.asarray(npst[1]).astype(np.int64)),
            int(npst[2]),
            int(npst[3]),
            float(npst[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def build_view_dataset(cfg: Any, need_mask: bool) -> PairedViewDataset:
    """The :class:`PairedViewDataset` of a training config (``data``, ``augment``, ``trainer.seed``)."""
    return PairedViewDataset(
        build_sources(cfg.data, need_mask),
        image_size=cfg.data.image_size,
        need_mask=need_mask,
        augment=cfg.augment,
        load_size=cfg.data.load_size,
        min_mask_fraction=cfg.data.min_mask_fraction,
        seed=cfg.trainer.seed,
        cache_images=cfg.data.cache_images,
    )


# ----------------------------------------------------------------------------------------------
# Run folder
# ----------------------------------------------------------------------------------------------


def _resolve_resume(tcfg: Any, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start; refuses to reuse a run folder."""
    resume = str(tcfg.resume)
    if resume not in ("none", "auto", ""):
        path = Path(resume).expanduser()
        if not path.is_file():
            raise RunDirError(f"trainer.resume={resume}: file not found")
        return path
    last = run_dir / "last.pt"
    if resume == "auto" and last.is_file():
        return last
    taken = [name for name in RUN_FILES if (run_dir / name).exists()] + sorted(
        p.name for p in run_dir.glob("epoch_*.pt")
    )
    if taken and resume != "auto" and not tcfg.overwrite:
        raise RunDirError(
            f"run folder {run_dir} already holds a run ({', '.join(taken[:4])}); pass trainer.resume=auto to "
            "continue it, --overwrite (trainer.overwrite=true) to start afresh, or choose another trainer.run_dir"
        )
    return None


def _clear_run_dir(run_dir: Path) -> None:
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in run_dir.glob("epoch_*.pt"):
        p.unlink()


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a} -> {b}")
    return out


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _set_train_mode(objective: Objective) -> None:
    objective.train()
    for m in objective.early_layer_modules():
        m.eval()  # frozen layers keep their BatchNorm statistics
        for p in m.parameters():
            p.requires_grad_(False)


def _save(objective: Objective, optimizer: torch.optim.Optimizer, scaler: Any, path: Path, *, step: int,
          epoch: int, spe: int, total: int, stage: str, cfg_dict: dict, world: int) -> None:  # fmt: skip
    ckpt = objective.checkpoint()
    ckpt["epoch"] = epoch
    ckpt["optimizer"] = optimizer.state_dict()
    ckpt["trainer"] = {
        "stage": stage,
        "step": step,
        "epoch": epoch,
        "steps_per_epoch": spe,
        "total_steps": total,
        "world_size": world,
        "rng": capture_rng_state(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "config": cfg_dict,
    }
    atomic_save(ckpt, path)


def train(cfg: DictConfig, build_objective: Callable[[], Objective], stage: str) -> RunResult:
    """Train ``build_objective()`` as ``cfg`` (``data``, ``augment``, ``optim``, ``trainer`` sections) says.

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
    amp_dtype = autocast_dtype(tcfg.precision, choices=("fp32", "bf16", "fp16"), key="trainer.precision")
    if tcfg.epochs <= 0 and tcfg.max_steps <= 0:
        raise ConfigError("set trainer.epochs > 0 or trainer.max_steps > 0")
    lr_at(0, 1, ocfg.lr, ocfg.schedule)  # validates the schedule name
    env = setup_distributed(tcfg.device)
    threads_before = torch.get_num_threads()
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    run_dir = Path(tcfg.run_dir).expanduser()
    file_handler: logging.Handler | None = None
    writer = None
    try:
        resume_path = _resolve_resume(tcfg, run_dir)
        if env.world_size > 1:
            dist.barrier()

        # -- model, data, optimizer ---------------------------------------------------------
        torch.manual_seed(tcfg.seed)
        random.seed(tcfg.seed)
        np.random.seed(tcfg.seed % 2**32)
        objective = build_objective().to(env.device)
        if tcfg.channels_last:
            objective = objective.to(memory_format=torch.channels_last)
        if ocfg.batch_size % env.world_size:
            raise ConfigError(f"optim.batch_size={ocfg.batch_size} is not divisible by {env.world_size} processes")
        per_rank = ocfg.batch_size // env.world_size
        dataset = build_view_dataset(cfg, objective.needs_mask)
        if len(dataset) < ocfg.batch_size:
            raise ConfigError(f"{len(dataset)} usable images are fewer than one batch (optim.batch_size="
                              f"{ocfg.batch_size}); lower the batch size or add data")  # fmt: skip
        batch_sampler = EpochBatchSampler(len(dataset), per_rank, tcfg.seed, env.rank, env.world_size)
        workers = int(cfg.data.num_workers)
        loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=workers,
            pin_memory=env.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(tcfg.seed),
        )
        sampler = ViewSampler(cfg.augment, cfg.data.image_size).to(env.device)
        spe = len(dataset) // ocfg.batch_size
        total = int(tcfg.max_steps) if tcfg.max_steps > 0 else int(tcfg.epochs) * spe
        _set_train_mode(objective)
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay,
                                    nesterov=ocfg.nesterov)  # fmt: skip
        scaler = torch.amp.GradScaler(env.device.type, enabled=tcfg.precision == "fp16")
        cfg_dict = config_to_dict(cfg)

        # everything is validated: only now touch the run folder (an --overwrite run that fails early loses nothing)
        if env.is_main:
            if resume_path is None and tcfg.overwrite:
                _clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(run_dir / "train.log")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
            logging.getLogger().addHandler(file_handler)
        if env.world_size > 1:
            dist.barrier()

        step = 0
        if resume_path is not None:
            ckpt = read_checkpoint(resume_path)
            tstate = ckpt.get("trainer")
            if not isinstance(tstate, dict) or tstate.get("stage") != stage:
                raise RunDirError(f"{resume_path}: not a {stage} training checkpoint of this trainer")
            objective.load_checkpoint(ckpt)
            optimizer.load_state_dict(ckpt["optimizer"])
            if tstate.get("scaler") is not None and scaler.is_enabled():
                scaler.load_state_dict(tstate["scaler"])
            restore_rng_state(tstate["rng"])
            step = int(tstate["step"])
            diff = _config_diff(tstate.get("config", {}), cfg_dict)
            if diff:
                log.warning("resuming with a changed config: %s", "; ".join(diff[:12]))
            if tstate.get("steps_per_epoch") != spe:
                log.warning("steps per epoch changed from %s to %s (data or batch size changed)",
                            tstate.get("steps_per_epoch"), spe)  # fmt: skip
            log.info("resumed from %s at step %d", resume_path, step)
            del ckpt
        if env.is_main:
            if resume_path is None:
                save_config(cfg, run_dir / "config.yaml")
            elif diff:
                save_config(cfg, run_dir / f"config.resumed-step{step}.yaml")

        model: nn.Module = objective
        if env.world_size > 1:
            model = DistributedDataParallel(
                objective, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                broadcast_buffers=False,
            )  # fmt: skip
        if env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
            log.info("%s: %d images, %d steps per epoch (global batch %d on %d process(es)), %d steps in all, "
                     "device %s, precision %s%s", stage, len(dataset), spe, ocfg.batch_size, env.world_size, total,
                     env.device, tcfg.precision, ", channels_last" if tcfg.channels_last else "")  # fmt: skip

        # -- loop ----------------------------------------------------------------------------
        last_path = run_dir / "last.pt"
        bar = tqdm(total=total, initial=step, desc=stage, dynamic_ncols=True,
                   disable=not (tcfg.progress and env.is_main))  # fmt: skip
        sums: dict[str, float] = {}
        n_sum = 0
        epoch_counts = {"skipped": 0, "redraws": 0}
        last_metrics: dict[str, float] = {}
        saved_step = step
        t_last = time.perf_counter()

        def save(path: Path) -> None:
            if env.is_main:
                _save(objective, optimizer, scaler, path, step=step, epoch=step // spe, spe=spe, total=total,
                      stage=stage, cfg_dict=cfg_dict, world=env.world_size)  # fmt: skip

        while step < total:
            epoch, start_batch = divmod(step, spe)
            batch_sampler.set_epoch(epoch, start_batch)
            for batch in loader:
                torch.manual_seed(_step_seed(tcfg.seed, step, env.rank))
                lr = lr_at(step, total, ocfg.lr, ocfg.schedule, ocfg.poly_power, ocfg.warmup_steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                views: Views = sampler(batch)
                if tcfg.channels_last:
                    views.query = views.query.contiguous(memory_format=torch.channels_last)
                    views.key = views.key.contiguous(memory_format=torch.channels_last)
                for online, target in objective.momentum_pairs():
                    update_momentum(online, target, objective.momentum)
                with torch.autocast(env.device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    loss, metrics = model(views)
                finite = torch.isfinite(loss.detach()).float()
                if env.world_size > 1:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() < 1:
                    raise NonFiniteLossError(
                        f"the loss became {loss.item()} at step {step} (epoch {epoch}); the run stopped. "
                        f"{last_path if saved_step > 0 else 'No checkpoint'} keeps the last good state "
                        f"(step {saved_step}). Try a lower optim.lr or trainer.precision=fp32, then resume "
                        "with trainer.resume=auto"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1

                # -- bookkeeping --
                now = time.perf_counter()
                ips = ocfg.batch_size / max(now - t_last, 1e-9)
                t_last = now
                epoch_counts["skipped"] += int(batch["skipped"].sum())
                epoch_counts["redraws"] += int(batch["redraws"].sum())
                values = {"loss_total": float(loss.detach()), **{k: float(v) for k, v in metrics.items()},
                          "lr": lr, "images_per_s": ips}  # fmt: skip
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                last_metrics = values
                bar.update(1)
                bar.set_postfix(
                    loss=f"{values['loss_total']:.3f}", top1=f"{values.get('acc_top1', 0):.2f}",
                    lr=f"{lr:.2g}", ips=f"{ips:.1f}", refresh=False,
                )  # fmt: skip
                if writer is not None and (step % max(tcfg.log_every_steps, 1) == 0 or step == total):
                    for k, v in sums.items():
                        tag = (
                            k.replace("loss_", "loss/").replace("acc_", "acc/")
                            if k.startswith(("loss_", "acc_"))
                            else k
                        )
                        writer.add_scalar(tag, v / n_sum, step)
                    writer.add_scalar("peak_rss_mib", peak_rss_mib(), step)
                    sums, n_sum = {}, 0

                epoch_end = step % spe == 0
                if epoch_end:
                    done = step // spe
                    if writer is not None:
                        writer.add_scalar("data/skipped_images", epoch_counts["skipped"], done)
                        writer.add_scalar("data/view_redraws", epoch_counts["redraws"], done)
                    if env.is_main:
                        log.info("epoch %d done (step %d): loss %.4f, top1 %.3f; %d images skipped (no usable mask or "
                                 "view), %d views redrawn", done, step, values["loss_total"],
                                 values.get("acc_top1", float("nan")), epoch_counts["skipped"],
                                 epoch_counts["redraws"])  # fmt: skip
                    epoch_counts = {"skipped": 0, "redraws": 0}
                    if tcfg.save_every_epochs > 0 and done % tcfg.save_every_epochs == 0:
                        save(run_dir / f"epoch_{done:04d}.pt")
                if epoch_end or step == total or (tcfg.save_every_steps > 0 and step % tcfg.save_every_steps == 0):
                    save(last_path)
                    saved_step = step
                if step >= total:
                    break
        bar.close()
        if saved_step != step:
            save(last_path)
        if env.world_size > 1:
            dist.barrier()
        if env.is_main:
            log.info("%s finished after %d steps; checkpoint %s", stage, step, last_path)
        return RunResult(run_dir, last_path, step, step / max(spe, 1), last_metrics)
    finally:
        if writer is not None:
            writer.close()
        if file_handler is not None:
            logging.getLogger().removeHandler(file_handler)
            file_handler.close()
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
    from maskcontrast.config import add_config_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value overrides; defaults shown, "
        f"explained in {docs}):\n" + "\n".join(schema_keys(schema)),
    )
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if trainer.run_dir holds a run (its checkpoints are deleted)")  # fmt: skip
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

    from maskcontrast.config import load_config, resolve_config
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
    except (ConfigError, DataError, CheckpointError, RunDirError, NonFiniteLossError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteLossError) else 2
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {result.checkpoint}")
        print(
            f"run folder: {result.run_dir} (config.yaml, train.log; TensorBoard: tensorboard --logdir {result.run_dir / 'tb'})"
        )
    return 0
