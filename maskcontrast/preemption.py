"""Stopping cleanly: preemption signals (SIGTERM, SIGINT) and failing peers of a distributed run.

Every long loop that saves progress (training, the linear probe, the saliency refiner,
``saliency.generate``, the per-image passes of the evaluations) runs inside :func:`section`.
Inside it, SIGTERM and SIGINT are *requests*: the handler only records the signal, the loop
finishes (or abandons) its current step, writes a complete checkpoint at that step, logs the
signal and the step, and raises :class:`Preempted`. ``Preempted`` is a ``SystemExit`` whose
status is ``128 + signal number``: **143 for SIGTERM, 130 for SIGINT** (the shell's convention,
so a scheduler sees the same status as for a process killed by the signal). The same command with
``--resume`` (or, for commands that resume by themselves, the same command) continues bit-exactly.

A second signal while the first is being honoured stops at once (SIGINT: ``KeyboardInterrupt``;
SIGTERM: the default action); checkpoints are written atomically, so even then nothing saved is
damaged. Outside a section the signals keep Python's default behaviour. A forked child (a
DataLoader worker) that inherited the handler ignores the first signal and leaves the decision
to its parent, which shuts it down.

With several processes (``torch.distributed``), :func:`agreed_request` all-reduces the request
so that every process stops after the same step, and :class:`PeerWatch` ends a process within
seconds when another one failed (it raised: its error is published in the rendezvous store) or
went silent (it died: no heartbeat for ``MASKCONTRAST_PEER_TIMEOUT`` seconds, default 30, or the
store is gone). Such a process exits with status :data:`PEER_FAILED_STATUS` (1).

Example::

    with preemption.section("linear probe"):
        for step in ...:
            ...one step...
            if preemption.requested():
                save_state(path, state_at(step))
                raise preemption.Preempted(preemption.requested(), "linear probe", step=step, saved=path)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

__all__ = [
    "HANDLED_SIGNALS",
    "PEER_FAILED_STATUS",
    "Preempted",
    "section",
    "requested",
    "stop_if_requested",
    "agreed_request",
    "exit_status",
    "ignore_signals_in_worker",
    "PeerWatch",
]

log = logging.getLogger(__name__)

#: the signals a section turns into a stop request
HANDLED_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)

#: exit status of a process that ended because another process of its distributed run failed
PEER_FAILED_STATUS = 1

_state: dict[str, Any] = {"signum": None, "depth": 0, "previous": {}, "owner": None, "at": None}


def exit_status(signum: int) -> int:
    """The documented exit status of a stop by ``signum``: ``128 + signum`` (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Preempted(SystemExit):
    """A loop stopped on SIGTERM/SIGINT after saving its progress.

    A ``SystemExit`` (so an entry point ends with :attr:`code`, ``128 + signum``, without a
    traceback, and ``except Exception`` blocks do not swallow it). ``str()`` is the message.
    """

    def __init__(
        self,
        signum: int,
        what: str,
        *,
        step: int | str | None = None,
        saved: str | Path | None = None,
        hint: str = "rerun the same command with --resume to continue",
    ) -> None:
        self.signum, self.what, self.step, self.saved = int(signum), what, step, saved
        super().__init__(exit_status(signum))
        at = "" if step is None else f" at step {step}" if isinstance(step, int) else f" ({step})"
        kept = f"; progress saved in {saved}" if saved is not None else "; nothing needed saving"
        self.message = f"{what} stopped by {signal_name(signum)}{at}{kept}; {hint} (exit status {self.code})"

    def __str__(self) -> str:
        return self.message


def _handler(signum: int, frame: Any) -> None:
    if _state["signum"] is not None:  # a second signal: stop now
        _restore()
        _state["signum"] = None  # acted on here, not again when the section ends
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _state["signum"], _state["at"] = signum, time.time()
    if os.getpid() == _state["owner"]:
        with suppress(OSError):  # not logging: the handler may run inside a logging call
            os.write(
                2,
                f"{signal_name(signum)} received: finishing the current step, saving, then stopping "
                "(send it again to stop at once)\n".encode(),
            )


def _restore() -> None:
    for sig, prev in _state["previous"].items():
        with suppress(ValueError, OSError):
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    _state["previous"] = {}


@contextmanager
def section(what: str) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT only record a stop request (:func:`requested`).

    Sections nest; the outermost one installs and restores the handlers. A request that no loop
    acted on (the signal came during the last step) is delivered again when the outermost block
    ends, to the handler that was there before (by default: SIGTERM ends the process, SIGINT
    raises ``KeyboardInterrupt``). Outside the main thread this does nothing (signals are
    delivered to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = _state["depth"] == 0
    if outer:
        _state.update(signum=None, owner=os.getpid(), at=None)
        _state["previous"] = {s: signal.getsignal(s) for s in HANDLED_SIGNALS}
        for s in HANDLED_SIGNALS:
            signal.signal(s, _handler)
    _state["depth"] += 1
    try:
        yield
    except BaseException:
        if outer:
            _restore()
            _state.update(signum=None, at=None)
        raise
    finally:
        _state["depth"] -= 1
    if outer:
        pending = _state["signum"]
        _restore()
        _state.update(signum=None, at=None)
        if pending is not None:
            log.warning("%s: %s arrived as the work ended; passing it on", what, signal_name(pending))
            os.kill(os.getpid(), pending)


def requested() -> int | None:
    """The signal number of a pending stop request in this process, or None."""
    return _state["signum"] if os.getpid() == _state["owner"] else None


def stop_if_requested(
    what: str,
    *,
    step: int | str | None = None,
    saved: str | Path | None = None,
    hint: str = "rerun the same command",
    logger: logging.Logger | None = None,
) -> None:
    """When a stop was requested (:func:`requested`), log the :class:`Preempted` of ``what`` on
    ``logger`` and raise it; for a loop whose progress is already saved (``saved``) or needs none."""
    signum = requested()
    if signum is not None:
        err = Preempted(signum, what, step=step, saved=saved, hint=hint)
        (logger or log).warning("%s", err)
        raise err


def agreed_request(group: Any = None) -> int | None:
    """:func:`requested`, the same answer on every process of a distributed run (an all-reduce of
    the signal number over ``group``, which must be a CPU/gloo group; see :func:`control_group`).
    One process alone: no communication."""
    import torch
    import torch.distributed as dist

    local = requested() or 0
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return local or None
    flag = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return int(flag.item()) or None


def control_group() -> Any:
    """A process group for small CPU messages (stop requests): the default group when its backend
    is gloo, else a new gloo group. Call it on every process at the same point."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def _exit_on_parent_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)


def ignore_signals_in_worker(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the DataLoaders of preemptible loops. A scheduler signals every
    process of a job, and Ctrl-C reaches the whole process group; a worker leaves the decision to
    its parent: it ignores SIGINT, and SIGTERM unless its parent sent it (the parent's shutdown,
    on which it ends quietly, as PyTorch's workers do). The parent finishes its step (with the
    batches the workers keep delivering), saves and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: keep the default SIGTERM
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parent_sigterm, args=(os.getppid(),), daemon=True).start()


# ----------------------------------------------------------------------------------------------
# Failing peers
# ----------------------------------------------------------------------------------------------

_generation = {"n": 0}


class PeerWatch:
    """A background thread that ends this process when another process of the run failed.

    :meth:`fail` publishes this process's error in the rendezvous store (call it before
    re-raising an error that the other processes do not share); every other process's watch
    sees it within ``interval`` seconds, logs which process failed and why, and exits with
    :data:`PEER_FAILED_STATUS`, even when its main thread waits inside a collective. A process
    that dies without a word (SIGKILL, out of memory) stops its heartbeat: after ``timeout``
    seconds the others exit too; if it hosted the store, they exit as soon as it is gone.
    Checkpoints are written atomically, so the last complete one stays valid.

    Example::

        watch = PeerWatch.start_if_distributed()
        try:
            ...
        except Exception as err:
            watch.fail(err); raise
        finally:
            watch.stop()
    """

    def __init__(
        self, store: Any, rank: int, world_size: int, interval: float = 1.0, timeout: float | None = None
    ) -> None:
        self.store, self.rank, self.world = store, rank, world_size
        self.interval = interval
        self.timeout = float(os.environ.get("MASKCONTRAST_PEER_TIMEOUT", "30")) if timeout is None else timeout
        _generation["n"] += 1
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"maskcontrast/peerwatch/{restart}/{_generation['n']}/"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maskcontrast-peer-watch", daemon=True)

    @classmethod
    def start_if_distributed(cls, **kwargs: Any) -> PeerWatch | None:
        """A started watch when ``torch.distributed`` is initialised with several processes, else None."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return None
        try:
            from torch.distributed import distributed_c10d

            store = distributed_c10d._get_default_store()
        except Exception as err:  # a torch without it: no watch, collectives still time out
            log.warning("no watch on the other processes (%s); a failing process may leave the others waiting", err)
            return None
        watch = cls(store, dist.get_rank(), dist.get_world_size(), **kwargs)
        watch._thread.start()
        return watch

    def fail(self, err: BaseException) -> None:
        """Tell the other processes that this one failed with ``err`` (best effort)."""
        self._stop.set()
        text = f"process {self.rank} failed: {type(err).__name__}: {err}"[:2000]
        with suppress(Exception):  # the store may be gone as well
            self.store.set(self.prefix + "failed", text)

    def stop(self) -> None:
        """End the watch (before leaving the process group)."""
        self._stop.set()

    def _exit(self, why: str) -> None:
        if self._stop.is_set():
            return
        log.error(
            "%s; stopping process %d too (exit status %d); the last complete checkpoint is kept",
            why,
            self.rank,
            PEER_FAILED_STATUS,
        )
        for h in logging.getLogger().handlers:
            with suppress(Exception):
                h.flush()
        sys.stderr.flush()
        os._exit(PEER_FAILED_STATUS)

    def _run(self) -> None:
        beat, errors = 0, 0
        seen: dict[int, tuple[bytes | None, float]] = {}
        key_failed = self.prefix + "failed"
        while not self._stop.wait(self.interval):
            try:
                beat += 1
                self.store.set(f"{self.prefix}beat/{self.rank}", str(beat))
                if self.store.check([key_failed]):
                    self._exit(self.store.get(key_failed).decode(errors="replace"))
                    return
                now = time.monotonic()
                for peer in range(self.world):
                    if peer == self.rank:
                        continue
                    key = f"{self.prefix}beat/{peer}"
                    value = self.store.get(key) if self.store.check([key]) else None
                    last = seen.get(peer)
                    if last is None or last[0] != value:
                        seen[peer] = (value, now)
                    elif now - last[1] > self.timeout:
                        self._exit(f"process {peer} gave no sign of life for {self.timeout:.0f} s (it died?)")
                        return
                errors = 0
            except Exception as err:
                if self._stop.is_set():
                    return
                errors += 1
                if errors >= 3:
                    self._exit(
                        f"the rendezvous store is gone ({type(err).__name__}: {err}); the process that hosted it died"
                    )
                    return
