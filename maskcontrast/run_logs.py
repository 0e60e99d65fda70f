"""The logs of a run: a copy of the log in the run folder, and TensorBoard (optional at run time).

Example::

    with run_log(run_dir / "train.log"), tensorboard(run_dir / "tb") as writer:
        writer.add_scalar("loss", 0.5, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LOG_FORMAT", "run_log", "open_tensorboard", "tensorboard"]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


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
