"""Resumable per-image caches of the evaluations (claimed and saved through :mod:`maskcontrast.runs`) and checkpoint fingerprints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from eval.outputs import jsonable
from maskcontrast.preemption import Preempted, requested
from maskcontrast.run_state import load_state, save_state
from maskcontrast.runs import ChangedIdentityError, identity_digest, remove_stale_temporaries

__all__ = ["checkpoint_fingerprint", "StreamCache"]

log = logging.getLogger(__name__)


def checkpoint_fingerprint(path: str | Path, init_key: str = "teacher") -> str:
    """Identifies a checkpoint file by absolute path, size and modification time, and the network
    read from it (``init_key``: the teacher or the student of a full DINO checkpoint)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}" + ("" if init_key == "teacher" else f":{init_key}")


class StreamCache:
    """Resume a per-image pass: ``(done, state)`` saved atomically every ``every`` images.

    ``settings`` (a JSON-able dict) must match the cached one; otherwise loading fails with a
    message naming the file and the keys that differ (:class:`maskcontrast.runs.ChangedIdentityError`,
    a ``ValueError``). Temporary files of a save killed midway are removed. ``path=None`` disables caching.

    Example::

        cache = StreamCache(Path("cache/pass1.pt"), {"k": 21})
        done, state = cache.load()          # (0, None) for a fresh cache
        ...
        cache.save(done, state)
    """

    def __init__(self, path: Path | None, settings: dict[str, Any], every: int = 100) -> None:
        self.path = path
        self.settings = jsonable(settings)
        self.every = max(1, every)

    def load(self) -> tuple[int, dict[str, Any] | None]:
        if self.path is None:
            return 0, None
        remove_stale_temporaries(self.path.parent)
        if not self.path.is_file():
            return 0, None
        data = load_state(self.path)
        old = data.get("settings", {})
        if identity_digest(old) != identity_digest(self.settings):
            diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            raise ChangedIdentityError(
                f"cache {self.path} was written with different settings ({', '.join(diff)}); "
                "use another cache folder, or delete this one"
            )
        log.info("resuming from %s (%d images done)", self.path, data["done"])
        return int(data["done"]), data["state"]

    def due(self, done: int) -> bool:
        """Time to save: every ``every`` images, and at once when SIGTERM/SIGINT arrived."""
        return self.path is not None and (done % self.every == 0 or requested() is not None)

    def save(self, done: int, state: dict[str, Any]) -> None:
        """Save; then, when SIGTERM/SIGINT arrived, stop with :class:`maskcontrast.preemption.Preempted`."""
        if self.path is not None:
            save_state(self.path, {"settings": self.settings, "done": done, "state": state})
            if (signum := requested()) is not None:
                err = Preempted(
                    signum,
                    "evaluation pass",
                    step=f"after {done} images",
                    saved=self.path,
                    hint="rerun the same command to continue from the cache",
                )
                log.warning("%s", err)
                raise err
