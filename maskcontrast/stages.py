"""Run pipeline stages as ``python -m ...`` subprocesses: skip finished ones, remember wall times.

Used by the main job (``maskcontrast.demo``) and the benchmarks (``bench/quality.py``), so each
stage runs through exactly the command line a user would type, and a re-run after an interruption
continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maskcontrast.utils import atomic_write_bytes

__all__ = ["REPO", "StageFailed", "StageRecord", "StageRunner"]

log = logging.getLogger(__name__)

#: the source checkout (configs/ lives here)
REPO = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    """A stage's command exited with a non-zero status."""


@dataclass
class StageRecord:
    """One stage: its name, command, wall time, CPU time (user + system of the stage's processes),
    and whether it was skipped as already done."""

    name: str
    command: list[str]
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    skipped: bool = False

    @property
    def shell(self) -> str:
        """The command as a user would type it (``python -m ...``)."""
        return shlex.join(["python" if c == sys.executable else c for c in self.command])


class StageRunner:
    """Runs stages in order and records every finished stage (command and wall time) in
    ``times_file`` (JSON). A stage whose exact command finished before is skipped, as is one
    whose ``done`` file exists; a changed command runs again. The report of a resumed run still
    shows how long the skipped stages took.

    Example::

        runner = StageRunner(out / "stages.json")
        runner.run("saliency", ["saliency.generate", "--images", "photos", "--out", "masks", "--method", "fused"])
        runner.run("linear", ["eval.linear", ...], done=out / "linear" / "results.json")
    """

    def __init__(self, times_file: Path, cwd: Path = REPO) -> None:
        self.times_file = Path(times_file)
        self.cwd = cwd
        self.records: list[StageRecord] = []
        self._finished: dict[str, dict] = (
            json.loads(self.times_file.read_text(encoding="utf-8")) if self.times_file.is_file() else {}
        )

    def run(self, name: str, args: list[str], done: Path | None = None) -> StageRecord:
        """Run ``python -m <args>`` unless it finished before (or ``done`` exists).

        Raises:
            StageFailed: the command failed; its output went to the terminal.
        """
        record = StageRecord(name, [sys.executable, "-m", *args])
        self.records.append(record)
        before = self._finished.get(name)
        if (before is not None and before.get("command") == record.shell) or (done is not None and done.exists()):
            record.skipped = True
            record.seconds = float(before["seconds"]) if before else 0.0
            record.cpu_seconds = float(before.get("cpu_seconds", 0.0)) if before else 0.0
            log.info("[%s] finished before; skipping", name)
            return record
        log.info("[%s] %s", name, record.shell)
        t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
        proc = subprocess.run(record.command, cwd=self.cwd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        record.seconds = time.perf_counter() - t0
        record.cpu_seconds = _children_cpu_seconds() - cpu0
        if proc.returncode != 0:
            raise StageFailed(f"stage '{name}' failed (exit {proc.returncode}); command:\n  {record.shell}")
        self._finished[name] = {"command": record.shell, "seconds": record.seconds, "cpu_seconds": record.cpu_seconds}
        atomic_write_bytes(self.times_file, json.dumps(self._finished, indent=2).encode())
        log.info("[%s] done in %.0f s (%.0f CPU s)", name, record.seconds, record.cpu_seconds)
        return record

    @property
    def finished(self) -> dict[str, dict]:
        """Every stage finished so far, in this run or an earlier one: name -> ``{"command", "seconds",
        "cpu_seconds"}`` (``cpu_seconds`` is absent from records written before it was kept)."""
        return dict(self._finished)


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process of this one (their threads included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
