"""The run folder of a training run: its layout, its claim, the checkpoint a resume continues
from, and the config keys a resume may change (:data:`RESUME_MAY_CHANGE`, the one list).

The policy itself (claiming, the writer lock, falling back from a damaged ``last.pt``, refusing
a changed config) is :mod:`maskcontrast.runs`; this module applies it to ``trainer.*``.

Example::

    claim, resume_path = claim_training_run(cfg.trainer)   # nothing on disk changes yet
    claim.prepare()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskcontrast.run_state import previous_path
from maskcontrast.runs import (
    RunClaim,
    RunFolderError,
    RunLayout,
    check_resume_config,
    claim_run_folder,
    identity_diff,
    refused_changes,
    resume_checkpoint,
)

__all__ = [
    "RunDirError",
    "RUN_LAYOUT",
    "claim_training_run",
    "RESUME_MAY_CHANGE",
    "refused_config_changes",
    "resume_config_changes",
]


class RunDirError(RunFolderError, RuntimeError):
    """The run folder already holds a run and neither resume nor overwrite was asked for, or the
    checkpoint to resume from is missing or of another stage."""


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
    ``last.pt`` when there is one; when it is damaged, the newest complete one of ``last.prev.pt``
    and ``epoch_*.pt``, see :func:`maskcontrast.runs.resume_checkpoint`) or a path to a checkpoint.
    A folder that holds no checkpoint (a run that stopped before its first save) is reused without
    ``--overwrite``.
    """
    run_dir = Path(tcfg.run_dir).expanduser()
    resume = str(tcfg.resume)
    explicit = resume not in ("none", "auto", "")
    if explicit and not Path(resume).expanduser().is_file():
        raise RunDirError(f"trainer.resume={resume}: file not found")
    last = run_dir / "last.pt"
    # resume=auto with a last.pt wins over overwrite (as before): nothing written is lost
    overwrite = bool(tcfg.overwrite) and not (resume == "auto" and last.is_file())
    try:
        claim = claim_run_folder(run_dir, RUN_LAYOUT, resume=resume == "auto" or explicit, overwrite=overwrite)
    except RunFolderError as err:
        raise RunDirError(str(err)) from err
    if explicit:
        return claim, Path(resume).expanduser()
    if claim.resume and not last.is_file() and not previous_path(last).is_file():
        raise RunDirError(
            f"run folder {run_dir} holds epoch checkpoints but no last.pt; pass trainer.resume=<one of "
            "them> to continue from it, --overwrite to start afresh, or choose another trainer.run_dir"
        )
    if not claim.resume:
        return claim, None
    epochs = sorted(run_dir.glob("epoch_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    hint = "Pass --overwrite to start afresh (the damaged files are deleted then) or trainer.resume=<a good checkpoint>"
    try:
        path, claim.damaged = resume_checkpoint(last, epochs, hint=hint)
    except RunFolderError as err:
        raise RunDirError(str(err)) from err
    return claim, path


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
    # used before a resume only: the weights then come from the checkpoint
    "model.backbone.init",
)


def refused_config_changes(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every changed key that :data:`RESUME_MAY_CHANGE` does not allow."""
    return refused_changes(old, new, RESUME_MAY_CHANGE)


def resume_config_changes(path: Path, old: dict | None, new: dict) -> list[str]:
    """Every change between the config ``old`` stored in checkpoint ``path`` and this run's ``new``
    (for the log); a checkpoint without its config (an old format) resumes with every key logged.

    Raises:
        ConfigError: a change outside :data:`RESUME_MAY_CHANGE` (the message names the keys).
    """
    if old is None:
        return identity_diff({}, new)
    advice = (
        f"they change the model, the method or the data. Resume with the run's own settings "
        f"({path.parent / 'config.yaml'}), or start a new run (another trainer.run_dir, or --overwrite). Keys "
        f"that may change on resume: {', '.join(RESUME_MAY_CHANGE)}"
    )
    return check_resume_config(path, old, new, RESUME_MAY_CHANGE, advice)
