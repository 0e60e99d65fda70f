"""Saved training state: atomic state files, damaged-file checks, RNG and optimizer states.

Training state (model, optimizer, AMP scaler, RNG, extra entries) is written with
:func:`save_state` (atomic; a full disk is an error that names the file and the space left, and
the previous file stays intact, optionally kept as ``<stem>.prev<suffix>``) and read back with
:func:`load_state` (weights-only). :func:`checkpoint_problem` tells a complete file from a
truncated or corrupted one without unpickling it; :func:`set_aside_damaged` renames a damaged
file, never deleting it. Which file a resumed run continues from is decided in
:mod:`maskcontrast.runs` (:func:`maskcontrast.runs.resume_checkpoint`).

Example::

    save_state(out / "state.pt", {"model": model.state_dict(), **optim_state(optimizer)}, keep_previous=True)
    state = load_state(out / "state.pt")
    restore_optim_state(state, optimizer)
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskcontrast.utils import atomic_save

__all__ = [
    "save_state",
    "load_state",
    "previous_path",
    "checkpoint_problem",
    "set_aside_damaged",
    "capture_rng_state",
    "restore_rng_state",
    "optim_state",
    "restore_optim_state",
]

log = logging.getLogger(__name__)


def _free_mib(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return float("nan")


def _looks_like_full_disk(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(err)
    return "unexpected pos" in text or "No space left" in text or "file write failed" in text


def save_state(path: str | Path, state: Mapping[str, Any], keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file beside it, then a rename).

    ``keep_previous``: the file being replaced stays as ``<stem>.prev<suffix>`` (a hard link, or a
    copy where links are not possible), a complete checkpoint to fall back on should ``path``
    later be damaged.

    Raises:
        OSError: the disk filled up (``errno.ENOSPC``); the message names the file and the space
            left, and the previous ``path`` is intact. Other write errors pass through unchanged.
    """
    path = Path(path)
    try:
        if keep_previous and path.is_file() and checkpoint_problem(path) is None:
            _keep_previous(path)
        atomic_save(dict(state), path)
    except Exception as err:
        if not _looks_like_full_disk(err):
            raise
        free = _free_mib(path.parent)
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise OSError(
            errno.ENOSPC,
            f"could not write {path}: the disk is full ({free:.0f} MiB free in {path.parent}); {kept}. "
            "Free some space (or point the run folder elsewhere) and resume",
        ) from err


def previous_path(path: str | Path) -> Path:
    """``last.pt`` -> ``last.prev.pt``: where :func:`save_state` keeps the file it replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (truncated, corrupted, unreadable), or None when it
    is. A zip checkpoint (``torch.save``'s format) is checked member by member against its CRCs
    (the file is read once, nothing is unpickled); another file is loaded weights-only."""
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            return None if bad is None else f"member {bad} is corrupted"
        load_state(path)
        return None
    except Exception as err:  # zip, OS and checkpoint errors
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def set_aside_damaged(path: str | Path) -> Path:
    """Rename a damaged checkpoint to ``<stem>.damaged[.N].pt`` beside it (never deleted; a new
    save may then use the name). Returns the new path."""
    path = Path(path)
    target = path.with_name(f"{path.stem}.damaged{path.suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.damaged.{n}{path.suffix}")
    os.replace(path, target)
    log.warning("%s is damaged; kept as %s", path, target.name)
    return target


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state file weights-only (``maskcontrast.models.read_checkpoint``: errors name the file)."""
    from maskcontrast.models import read_checkpoint

    return read_checkpoint(path)


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


def restore_rng_state(state: Mapping[str, Any] | torch.Tensor) -> None:
    """Inverse of :func:`capture_rng_state` (a bare tensor, as older files stored, is torch's CPU state)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def optim_state(optimizer: Any = None, scheduler: Any = None, scaler: Any = None) -> dict[str, Any]:
    """``{"optimizer", "scheduler", "scaler"}`` state dicts of the given parts (a disabled AMP
    scaler is stored as None)."""
    out: dict[str, Any] = {}
    if optimizer is not None:
        out["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        out["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        out["scaler"] = scaler.state_dict() if scaler.is_enabled() else None
    return out


def restore_optim_state(
    state: Mapping[str, Any], optimizer: Any = None, scheduler: Any = None, scaler: Any = None
) -> None:
    """Inverse of :func:`optim_state` for the given parts."""
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
