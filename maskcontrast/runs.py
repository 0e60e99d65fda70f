"""Run folders and saved training state: the one policy of every command that writes a run or a cache.

A command describes its folder once (:class:`RunLayout`: the files a run owns, the files that
hold saved progress, where its identity is kept, what marks it finished) and claims it with
:func:`claim_run_folder` before any long work:

* an empty or missing folder is a fresh start;
* a folder that holds saved progress is resumed when the command was asked to (or, for commands
  that keep an identity, when the identity is the same), refused otherwise with a message that
  names the folder and the flags;
* a folder whose stored identity differs from this run's is refused, naming the keys;
* ``overwrite`` removes what a run owns (and only that) and starts afresh;
* a run that failed before its first checkpoint left no progress: its leftovers are cleared and
  the folder is reused without ``--overwrite``;
* temporary files of an atomic save that a killed process left behind are removed;
* one writer per folder: :meth:`RunClaim.prepare` takes a lock (``.maskcontrast.lock``, an
  ``flock`` that the kernel drops when its process ends), and a second command on a folder in use
  is refused at once (:class:`RunFolderInUse`, naming the folder and the other process's pid,
  host and command); a lock left by a process that died does not block.

Training state (model, optimizer, scheduler, AMP scaler, RNG, extra entries) is written with
:func:`save_state` (atomic; a full disk is an error that names the file and the space left, and the
previous file stays intact) and read back with :func:`load_state` (weights-only).

Example::

    layout = RunLayout("linear-probe run", owned=("state.pt", "run.json", "tb"), state=("state.pt",),
                       identity_file="run.json", finished="results.json")
    claim = claim_run_folder(out, layout, identity={"config": cfg_dict}, overwrite=args.overwrite)
    claim.prepare()                        # only now is the folder touched
    with run_log(out / "train.log"), tensorboard(out / "tb") as writer:
        ...
        save_state(out / "state.pt", {"model": ..., **optim_state(optimizer, scheduler)})
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskcontrast.utils import atomic_save

__all__ = [
    "RunFolderError",
    "ChangedIdentityError",
    "RunFolderInUse",
    "LOCK_FILE",
    "check_not_in_use",
    "lock_run_folder",
    "release_run_folder",
    "RunLayout",
    "RunClaim",
    "claim_run_folder",
    "identity_digest",
    "identity_diff",
    "read_identity",
    "remove_stale_temporaries",
    "save_state",
    "load_state",
    "checkpoint_problem",
    "set_aside_damaged",
    "previous_path",
    "load_state_or_previous",
    "capture_rng_state",
    "restore_rng_state",
    "optim_state",
    "restore_optim_state",
    "run_log",
    "open_tensorboard",
    "tensorboard",
]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


class RunFolderError(FileExistsError, ValueError):
    """A run folder (or cache file) that this run must not use as it is: it holds another run, a
    finished run, or files of another program. The message names the folder and the flags."""


class ChangedIdentityError(RunFolderError):
    """The folder holds a run whose stored identity (settings) differs from this run's."""


class RunFolderInUse(RunFolderError):
    """Another live process writes in this run folder (the message names it)."""


# ----------------------------------------------------------------------------------------------
# One writer per folder
# ----------------------------------------------------------------------------------------------

#: the lock file of a run folder (its content names the holder: pid, host, command, start time)
LOCK_FILE = ".maskcontrast.lock"

_HELD: dict[str, int] = {}  # resolved folder -> fd of the lock this process holds


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return (
            f"pid {info.get('pid')} on host {info.get('host')}, running since {info.get('started')}: "
            f"{info.get('command')}"
        )
    except (OSError, ValueError):
        return "another process (its lock file names no holder yet)"


def _in_use_error(folder: Path) -> RunFolderInUse:
    return RunFolderInUse(
        f"run folder {folder} is in use by {_holder(folder / LOCK_FILE)}; wait for that process to end, stop "
        "it, or choose another folder (a lock whose process died does not block)"
    )


def check_not_in_use(folder: str | Path) -> None:
    """Raise :class:`RunFolderInUse` when another live process holds ``folder``'s lock (no change on disk)."""
    import fcntl

    folder = Path(folder)
    lock = folder / LOCK_FILE
    if str(folder.resolve()) in _HELD or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use_error(folder) from None
    except OSError:  # a file system without flock: no check
        pass
    finally:
        os.close(fd)


def lock_run_folder(folder: str | Path) -> None:
    """Take ``folder``'s writer lock for this process (held until :func:`release_run_folder` or the
    process ends; taking it again in the same process is a no-op).

    Raises:
        RunFolderInUse: another live process holds it.
    """
    import fcntl

    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        return
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as err:
        raise RunFolderError(
            f"run folder {folder} cannot be written ({err.strerror}); make it writable or choose another folder"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use_error(folder) from None
    except OSError as err:  # e.g. ENOLCK on some network file systems: run unlocked, say so
        os.close(fd)
        log.warning("%s: cannot lock the run folder (%s); make sure no other command writes in it", folder, err)
        return
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:500],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _HELD[key] = fd


def release_run_folder(folder: str | Path) -> None:
    """Give up this process's lock on ``folder`` (the lock file stays; it blocks nobody)."""
    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Identity
# ----------------------------------------------------------------------------------------------


def identity_digest(obj: Any) -> str:
    """A short, stable digest of a JSON-able identity (dict key order does not matter)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity_diff(old: Mapping[str, Any] | Any, new: Mapping[str, Any] | Any, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every (nested, dotted) key whose value differs."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return [] if old == new else [f"{prefix.rstrip('.') or 'value'}: {old!r} -> {new!r}"]
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += identity_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def read_identity(path: Path) -> dict[str, Any]:
    """A stored identity: a JSON file, or a YAML file (``.yaml``/``.yml``) as a plain dict.

    Raises:
        RunFolderError: the file cannot be read or parsed.
    """
    try:
        if path.suffix in (".yaml", ".yml"):
            from omegaconf import OmegaConf

            data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as err:  # json, yaml and OS errors
        raise RunFolderError(
            f"{path}: unreadable ({type(err).__name__}: {err}); pass --overwrite to start afresh"
        ) from err
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a mapping, got {type(data).__name__}; pass --overwrite to start afresh")
    return data


# ----------------------------------------------------------------------------------------------
# Claiming a folder
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLayout:
    """What a command writes in its run folder.

    Attributes:
        what: a name for messages, e.g. ``"pretraining run"``.
        owned: names or glob patterns a run writes; ``overwrite`` removes these (and only these).
        state: names or patterns of saved progress (checkpoints); their presence means "resumable".
        identity_file: a file (JSON, or YAML for ``.yaml``) holding the run's identity; with it, a
            non-empty folder without it is foreign and refused.
        finished: a file whose presence marks a finished run (refused without ``overwrite``).
        compare: the identity keys that must match (None: all).
        resume_hint, overwrite_hint: the flags named in refusals.
        writer: the command, for the "not written by" message.
    """

    what: str
    owned: tuple[str, ...]
    state: tuple[str, ...] = ()
    identity_file: str | None = None
    finished: str | None = None
    compare: tuple[str, ...] | None = None
    resume_hint: str = "--resume"
    overwrite_hint: str = "--overwrite"
    writer: str = "this command"


def _matches(folder: Path, patterns: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            found += sorted(folder.glob(pattern))
        elif (folder / pattern).exists():
            found.append(folder / pattern)
    return found


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the ``.<name>.<random>.tmp`` files that an atomic save killed mid-write left in
    ``folder`` (a killed process cannot clean up after itself). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info(
            "removed %d temporary file(s) of an interrupted save in %s: %s",
            len(stale),
            folder,
            ", ".join(p.name for p in stale[:4]),
        )
    return stale


@dataclass
class RunClaim:
    """The decision of :func:`claim_run_folder`; :meth:`prepare` carries it out on disk.

    Attributes:
        path: the run folder.
        resume: saved progress exists and is to be continued.
        reuse: the folder holds outputs of the same run that may be reused (resume, or the same
            identity).
        previous: the stored identity, if any.
        remove: what :meth:`prepare` deletes (an overwrite, or the leftovers of a failed start).
    """

    path: Path
    layout: RunLayout
    identity: dict[str, Any] | None
    resume: bool = False
    reuse: bool = False
    previous: dict[str, Any] | None = None
    remove: list[Path] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)  # set aside (renamed, never deleted) by prepare()

    def release(self) -> None:
        """Give up the writer lock (:func:`release_run_folder`); the process end does it too."""
        release_run_folder(self.path)

    def prepare(self, write_identity: bool = True) -> None:
        """Create the folder, take its writer lock (:func:`lock_run_folder`), delete what the claim
        says, remove stale temporaries and write the identity file (JSON layouts).

        Raises:
            RunFolderInUse: another live process took the folder since the claim.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except PermissionError as err:
            raise RunFolderError(f"cannot create the run folder {self.path} ({err.strerror}); choose another") from err
        lock_run_folder(self.path)  # before anything is removed or written
        if self.remove:
            log.info("%s: removing %s", self.path, ", ".join(p.name for p in self.remove[:6]))
            _remove(self.remove)
        remove_stale_temporaries(self.path)
        for p in self.damaged:
            set_aside_damaged(p)
        name = self.layout.identity_file
        if write_identity and name and self.identity is not None and not name.endswith((".yaml", ".yml")):
            from maskcontrast.utils import atomic_write_bytes

            atomic_write_bytes(self.path / name, (json.dumps(self.identity, indent=2, default=str) + "\n").encode())


def claim_run_folder(
    path: str | Path,
    layout: RunLayout,
    *,
    identity: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunClaim:
    """Decide how this run uses ``path`` (nothing on disk changes until :meth:`RunClaim.prepare`).

    Args:
        path: the run folder.
        layout: what the command writes there.
        identity: this run's identity (JSON-able), compared with the stored one.
        resume: continue saved progress (commands without an identity file need this to resume;
            with one, the same identity resumes by itself).
        overwrite: start afresh, removing what a run owns.

    Raises:
        RunFolderError: the folder cannot be used as asked; the message names it and the flags.
        ChangedIdentityError: the stored identity differs (the message names the keys).
        RunFolderInUse: another live process writes in the folder (it names the process).
    """
    path = Path(path).expanduser()
    ident = None if identity is None else json.loads(json.dumps(dict(identity), default=str))
    claim = RunClaim(path, layout, ident)
    if not path.exists():
        return claim
    if not path.is_dir():
        raise RunFolderError(f"{path} exists and is not a folder; choose another output folder")
    check_not_in_use(path)
    entries = [
        p for p in path.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")) and p.name != LOCK_FILE
    ]
    if not entries:
        return claim
    owned = _matches(path, layout.owned)
    state = _matches(path, layout.state)
    if overwrite:
        log.warning("%s: overwriting the %s in %s", layout.overwrite_hint, layout.what, path)
        claim.remove = owned
        return claim
    hints = (
        f"pass {layout.resume_hint} to continue it, {layout.overwrite_hint} to start afresh, or choose another folder"
    )
    if layout.identity_file is not None:
        id_path = path / layout.identity_file
        if not id_path.is_file():
            if not owned:
                raise RunFolderError(
                    f"{path} is not empty and has no {layout.identity_file}, so it was not written by "
                    f"{layout.writer}; choose an empty folder or pass {layout.overwrite_hint}"
                )
            if state:
                names = ", ".join(p.name for p in state[:4])
                raise RunFolderError(
                    f"{path} holds saved progress ({names}) but no {layout.identity_file}, so its settings are "
                    f"unknown; pass {layout.overwrite_hint} to start afresh or choose another folder"
                )
        else:
            claim.previous = read_identity(id_path)
            if layout.finished is not None and (path / layout.finished).is_file():
                raise RunFolderError(
                    f"{path} holds a finished run ({layout.what}: {layout.finished}); pass {layout.overwrite_hint} "
                    "to redo it or choose another folder"
                )
            if ident is not None:
                keys = layout.compare
                old = claim.previous if keys is None else {k: claim.previous.get(k) for k in keys}
                new = ident if keys is None else {k: ident.get(k) for k in keys}
                if identity_digest(old) != identity_digest(new):
                    diff = identity_diff(old, new)
                    raise ChangedIdentityError(
                        f"{path} holds a {layout.what} with other settings: its {layout.identity_file} differs "
                        f"from this run's ({'; '.join(diff[:6])}); use another folder or pass {layout.overwrite_hint}"
                    )
            claim.reuse = True
            claim.resume = bool(state)
            return claim
    if state:
        if not resume:
            names = ", ".join(p.name for p in (state + owned)[:4])
            raise RunFolderError(f"run folder {path} already holds a {layout.what} ({names}); {hints}")
        claim.resume = claim.reuse = True
        return claim
    if owned:  # a run that failed before its first checkpoint: nothing to lose, nothing to resume
        log.info(
            "%s holds no checkpoint of an earlier %s (it stopped before its first one); starting afresh",
            path,
            layout.what,
        )
        claim.remove = owned
    return claim


# ----------------------------------------------------------------------------------------------
# Training state
# ----------------------------------------------------------------------------------------------


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


def load_state_or_previous(path: str | Path, overwrite_hint: str = "--overwrite") -> dict[str, Any]:
    """:func:`load_state`; when ``path`` is damaged (truncated, corrupted), the complete
    ``<stem>.prev<suffix>`` that :func:`save_state` kept (``keep_previous``) instead, saying so; the
    damaged file is renamed (:func:`set_aside_damaged`), never deleted.

    Raises:
        maskcontrast.models.CheckpointError: ``path`` is damaged and there is nothing to fall back on
            (the message names it and the way out).
    """
    from maskcontrast.models import CheckpointError

    path = Path(path)
    try:
        return load_state(path)
    except CheckpointError as err:
        prev = previous_path(path)
        if not prev.is_file() or checkpoint_problem(prev) is not None:
            raise CheckpointError(
                f"{err}. It is damaged and no complete {prev.name} is there to fall back on; pass {overwrite_hint} "
                f"to start afresh (the damaged file is kept as it is until then)"
            ) from err
        state = load_state(prev)
        log.warning("%s is damaged (%s); resuming from the previous complete save %s", path, err, prev.name)
        set_aside_damaged(path)
        return state


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


# ----------------------------------------------------------------------------------------------
# Logs
# ----------------------------------------------------------------------------------------------


@contextmanager
def run_log(path: str | Path | None) -> Iterator[logging.Handler | None]:
    """Copy the log to ``path`` (appending) while the block runs. An exception that ends the block
    is written to the file too (stderr shows it through the caller's own report). ``None``: no file."""
    if path is None:
        yield None
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    except BaseException as err:
        if isinstance(err, Exception):
            record = logging.LogRecord(
                log.name, logging.ERROR, __file__, 0, "stopped: %s: %s", (type(err).__name__, err), None
            )
            handler.handle(record)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


class _NoWriter:
    """Stands in for a ``SummaryWriter`` when TensorBoard cannot start: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def open_tensorboard(folder: str | Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``folder``; when TensorBoard cannot start, a warning and
    a writer whose calls do nothing (TensorBoard is optional at run time). Close it when done."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    except Exception as err:
        log.warning("TensorBoard logging disabled (%s)", err)
        return _NoWriter()


@contextmanager
def tensorboard(folder: str | Path | None) -> Iterator[Any]:
    """:func:`open_tensorboard` on ``folder`` (None: no logging, the block gets None), closed when
    the block ends."""
    writer = None if folder is None else open_tensorboard(folder)
    try:
        yield writer
    finally:
        if writer is not None:
            writer.close()
