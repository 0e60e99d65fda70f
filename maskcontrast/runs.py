"""Run folders: the one policy of every command that writes a run or a cache, and of its resume.

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

A resumed run (the trainer, the linear probe, the refiner) continues from
:func:`resume_checkpoint`: the last complete checkpoint, or the newest older complete one when
the last is damaged (the damaged file is renamed, never deleted); :func:`check_resume_config`
refuses a changed config, naming the keys. The state files themselves are written and read by
:mod:`maskcontrast.run_state`, the logs by :mod:`maskcontrast.run_logs`.

Example::

    layout = RunLayout("linear-probe run", owned=("state.pt", "run.json", "tb"), state=("state.pt",),
                       identity_file="run.json", finished="results.json")
    claim = claim_run_folder(out, layout, identity={"config": cfg_dict}, overwrite=args.overwrite)
    claim.prepare()                        # only now is the folder touched
    state = load_state_or_previous(out / "state.pt") if claim.resume else None
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import DEPRECATED_KEYS
from maskcontrast.run_state import checkpoint_problem, load_state, previous_path, set_aside_damaged

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
    "resume_checkpoint",
    "load_state_or_previous",
    "refused_changes",
    "check_resume_config",
]

log = logging.getLogger(__name__)


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
        damaged: damaged checkpoints that :meth:`prepare` sets aside (renamed, never deleted).
    """

    path: Path
    layout: RunLayout
    identity: dict[str, Any] | None
    resume: bool = False
    reuse: bool = False
    previous: dict[str, Any] | None = None
    remove: list[Path] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)

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
# Resume: which checkpoint, and may the config change
# ----------------------------------------------------------------------------------------------


def resume_checkpoint(
    last: str | Path, older: Sequence[Path] = (), hint: str = "pass --overwrite to start afresh"
) -> tuple[Path | None, list[Path]]:
    """The checkpoint a resumed run continues from, and the damaged files to set aside.

    ``last`` when it is complete; else the first complete one of its previous save
    (``<stem>.prev<suffix>``, see :func:`maskcontrast.run_state.save_state`) and ``older`` (newest
    first), with a warning naming the damaged files and the one used. ``(None, [])`` when none of
    them exists. Nothing on disk changes: the caller renames the damaged ``last``
    (:func:`set_aside_damaged`, or :attr:`RunClaim.damaged`, which :meth:`RunClaim.prepare` renames).

    Raises:
        RunFolderError: files exist but none is complete; the message names every damaged file
            and ``hint``.
    """
    last = Path(last)
    problems: list[str] = []
    for path in [last, previous_path(last), *older]:
        if not path.is_file():
            continue
        why = checkpoint_problem(path)
        if why is None:
            if problems:
                log.warning(
                    "%s; resuming from %s, the newest complete checkpoint, instead (the damaged %s is kept, "
                    "renamed %s)",
                    "; ".join(problems),
                    path,
                    last.name,
                    f"{last.stem}.damaged{last.suffix}",
                )
            return path, [last] if problems and last.is_file() else []
        problems.append(f"{path} is damaged ({why})")
    if problems:
        raise RunFolderError(f"{'; '.join(problems)}; no complete checkpoint is left to resume from. {hint}")
    return None, []


def load_state_or_previous(path: str | Path, overwrite_hint: str = "--overwrite") -> dict[str, Any]:
    """:func:`load_state` of :func:`resume_checkpoint`: when ``path`` is damaged (truncated,
    corrupted), the complete ``<stem>.prev<suffix>`` kept beside it instead, saying so; the damaged
    file is renamed (:func:`set_aside_damaged`), never deleted.

    Raises:
        maskcontrast.models.CheckpointError: ``path`` is missing, or damaged with nothing to fall
            back on (the message names it and the way out).
    """
    from maskcontrast.models import CheckpointError

    hint = f"Pass {overwrite_hint} to start afresh (the damaged file is kept as it is until then)"
    try:
        found, damaged = resume_checkpoint(path, hint=hint)
    except RunFolderError as err:
        raise CheckpointError(str(err)) from err
    for p in damaged:
        set_aside_damaged(p)
    return load_state(path if found is None else found)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix.rstrip("."): value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def refused_changes(old: Mapping[str, Any], new: Mapping[str, Any], may_change: Sequence[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every changed (dotted; list items as ``sources.0.root``) key that
    none of the ``fnmatch`` patterns ``may_change`` allows. A config saved before a key was renamed
    (``maskcontrast.config.DEPRECATED_KEYS``) is read under the new name."""
    a, b = _flat(old), _flat(new)
    for was, now in DEPRECATED_KEYS.items():
        if was in a and now not in a:
            a[now] = a.pop(was)
            if was in b:
                a[was] = b[was]
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>") and not any(fnmatchcase(k, pat) for pat in may_change)
    ]


def check_resume_config(
    source: str | Path, old: Mapping[str, Any], new: Mapping[str, Any], may_change: Sequence[str] = (), advice: str = ""
) -> list[str]:
    """Refuse to resume ``source`` (a checkpoint or run folder) when this run's config ``new``
    differs from the stored ``old`` in a key outside ``may_change``. Returns every change (the
    allowed ones, for the log).

    Raises:
        ConfigError: the message names the refused keys, then ``advice``.
    """
    refused = refused_changes(old, new, may_change)
    if refused:
        raise ConfigError(
            f"cannot resume {source} with a changed config: {'; '.join(refused[:8])}. Its config differs from "
            f"this run's in these keys; {advice}"
        )
    return identity_diff(old, new)
