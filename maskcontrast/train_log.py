"""The trainer's log: metric averaging on the device, the progress bar, TensorBoard scalars and
the per-epoch log line.

Example::

    logger = TrainingLog(writer, "pretrain", step=0, total_steps=100, batch_size=64, every=10)
    logger.step(1, batch, loss, metrics, lr)
    logger.close()
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm import tqdm

from maskcontrast.utils import peak_rss_mib

__all__ = ["TrainingLog"]

log = logging.getLogger("maskcontrast.train")


class TrainingLog:
    """Metric averaging, the progress bar, TensorBoard scalars and the per-epoch log line.

    The metrics of a step stay on the device: they are added to a tensor buffer, and the buffer is
    read (one host sync) only every ``trainer.log_every_steps`` steps, at an epoch end and at the
    end of the run. ``images_per_s`` is measured over those windows.
    """

    def __init__(
        self,
        writer: Any,
        stage: str,
        step: int,
        *,
        total_steps: int,
        batch_size: int,
        every: int = 10,
        progress: bool = True,
        is_main: bool = True,
    ) -> None:
        """``writer``: a TensorBoard writer or None; ``step``: the steps already done; ``batch_size``:
        the global batch (for ``images_per_s``); ``every``: the logging interval in steps; the bar
        shows with ``progress`` on the main process only."""
        self.writer, self.total_steps, self.batch_size, self.is_main = writer, total_steps, batch_size, is_main
        self.every = max(every, 1)
        self.bar = tqdm(
            total=total_steps, initial=step, desc=stage, dynamic_ncols=True, disable=not (progress and is_main)
        )
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None  # device buffer: the sum of every metric since the last flush
        self.latest: torch.Tensor | None = None  # the metrics of the last step
        self.n_sum = 0
        self.lr = 0.0
        self.skipped = torch.zeros((), dtype=torch.long)
        self.redraws = torch.zeros((), dtype=torch.long)
        self.last: dict[str, float] = {}
        self.t_last = time.perf_counter()

    def step(
        self, step: int, batch: dict[str, Any], loss: torch.Tensor, metrics: dict[str, torch.Tensor], lr: float
    ) -> None:
        """Record step ``step`` (1-based count of steps done); no host sync unless it is a logging step."""
        self.skipped += batch["skipped"].sum()
        self.redraws += batch["redraws"].sum()
        keys = ["loss_total", *metrics]
        values = torch.stack(
            [
                loss.detach().float().reshape(()),
                *(v.detach().float().reshape(()).to(loss.device) for v in metrics.values()),
            ]
        )
        if keys != self.keys and self.n_sum:
            self.flush(step - 1)
        self.keys = keys
        self.sums = values.clone() if self.sums is None or not self.n_sum else self.sums.add_(values)
        self.latest = values
        self.n_sum += 1
        self.lr = lr
        self.bar.update(1)
        if step % self.every == 0 or step == self.total_steps:
            self.flush(step)

    def flush(self, step: int) -> None:
        """Read the buffer (one host sync): TensorBoard means of the window, the progress bar, ``last``."""
        if not self.n_sum or self.sums is None or self.latest is None:
            return
        now = time.perf_counter()
        ips = self.batch_size * self.n_sum / max(now - self.t_last, 1e-9)
        self.t_last = now
        sums, latest = torch.stack([self.sums, self.latest]).tolist()
        self.last = {**dict(zip(self.keys, latest)), "lr": self.lr, "images_per_s": ips}
        means = {**{k: v / self.n_sum for k, v in zip(self.keys, sums)}, "lr": self.lr, "images_per_s": ips}
        self.bar.set_postfix(
            loss=f"{self.last['loss_total']:.3f}",
            top1=f"{self.last.get('acc_top1', 0):.2f}",
            lr=f"{self.lr:.2g}",
            ips=f"{ips:.1f}",
            refresh=False,
        )
        if self.writer is not None:
            for k, v in means.items():
                tag = k.replace("loss_", "loss/").replace("acc_", "acc/") if k.startswith(("loss_", "acc_")) else k
                self.writer.add_scalar(tag, v, step)
            self.writer.add_scalar("peak_rss_mib", peak_rss_mib(), step)
        self.n_sum = 0

    def epoch_end(self, done: int, step: int) -> None:
        self.flush(step)
        skipped, redraws = int(self.skipped), int(self.redraws)
        if self.writer is not None:
            self.writer.add_scalar("data/skipped_images", skipped, done)
            self.writer.add_scalar("data/view_redraws", redraws, done)
        if self.is_main:
            log.info(
                "epoch %d done (step %d): loss %.4f, top1 %.3f; %d images skipped (no usable mask or view), "
                "%d views redrawn",
                done,
                step,
                self.last["loss_total"],
                self.last.get("acc_top1", float("nan")),
                skipped,
                redraws,
            )
        self.skipped.zero_()
        self.redraws.zero_()

    def close(self) -> None:
        self.bar.close()
