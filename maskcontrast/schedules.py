"""Learning-rate schedules: the one home of the rates of the trainer, the linear probe and the refiner.

A schedule is a table of rates, one per step, computed once before the loop (as DINO does), so a
loop reads ``schedule[step]`` and a resumed run reads the same number at the same step. The
rates come from pure functions of the step:

* :func:`lr_at`: ``poly`` (``base * (1 - t)^power``), ``cosine`` (``base * (1 + cos(pi t)) / 2``)
  or ``constant``, with ``t = step / total_steps`` and an optional linear warm-up from 0;
* :func:`schedule_step`: the step the schedule sees when the rate holds for a whole epoch;
* :func:`multistep_lr`: ``base`` times ``gamma`` at each milestone (the linear probe's epochs).

Example::

    schedule = LrSchedule.steps(total_steps=1000, base_lr=0.004, kind="poly", power=0.9)
    for step in range(1000):
        lr = schedule.apply(optimizer, step)   # sets every parameter group's rate, returns it
        ...
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SCHEDULES", "SCHEDULE_UNITS", "lr_at", "schedule_step", "multistep_lr", "set_lr", "LrSchedule"]

#: the shapes of :func:`lr_at`
SCHEDULES = ("poly", "cosine", "constant")
#: how often the rate of :func:`lr_at` may move: every step, or once per epoch
SCHEDULE_UNITS = ("step", "epoch")


def lr_at(
    step: int, total_steps: int, base_lr: float, schedule: str = "poly", power: float = 0.9, warmup_steps: int = 0
) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    ``poly``: ``base * (1 - t)^power``; ``cosine``: ``base * (1 + cos(pi t)) / 2``; ``constant``;
    ``t = step / total_steps``. A linear warm-up from 0 over ``warmup_steps`` comes first.

    Raises:
        ValueError: an unknown ``schedule`` (the message names ``optim.schedule``).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be poly, cosine or constant, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "poly":
        return base_lr * (1.0 - t) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return base_lr


def schedule_step(step: int, steps_per_epoch: int, unit: str = "step") -> int:
    """The step the learning-rate schedule sees: ``step`` itself (``unit="step"``), or the first step
    of its epoch (``unit="epoch"``: the rate holds for a whole epoch, as the official poly schedule,
    ``base * (1 - epoch / epochs)^power``)."""
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f"optim.schedule_unit must be step or epoch, got {unit!r}")
    return step if unit == "step" else (step // max(steps_per_epoch, 1)) * max(steps_per_epoch, 1)


def multistep_lr(epoch: int, base_lr: float, milestones: Sequence[int], gamma: float) -> float:
    """``base_lr`` times ``gamma`` at every milestone ``<= epoch`` (``gamma^n`` at a milestone listed
    ``n`` times), multiplied in milestone order: the rates of ``torch.optim.lr_scheduler.MultiStepLR``
    stepped once per epoch, bit for bit."""
    lr = base_lr
    for milestone, count in sorted(Counter(int(m) for m in milestones).items()):
        if milestone <= epoch:
            lr = lr * gamma**count
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class LrSchedule:
    """Precomputed per-step learning rates (``values[step]``; a step past the end reads the last one).

    Attributes:
        values: ``N`` float64 rates, one per step.
    """

    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, step: int) -> float:
        return float(self.values[min(max(int(step), 0), len(self.values) - 1)])

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set ``optimizer``'s rate to the one of ``step``; returns it."""
        lr = self[step]
        set_lr(optimizer, lr)
        return lr

    @classmethod
    def steps(
        cls,
        total_steps: int,
        base_lr: float,
        kind: str = "poly",
        power: float = 0.9,
        warmup_steps: int = 0,
        steps_per_epoch: int = 1,
        unit: str = "step",
        length: int | None = None,
    ) -> LrSchedule:
        """:func:`lr_at` of :func:`schedule_step` for steps ``0 .. length - 1`` (``length``: ``total_steps``
        by default; the refiner also reads the rate after its last step).

        Raises:
            ValueError: an unknown ``kind`` or ``unit``.
        """
        n = max(int(total_steps if length is None else length), 1)
        return cls(
            np.array(
                [
                    lr_at(schedule_step(s, steps_per_epoch, unit), total_steps, base_lr, kind, power, warmup_steps)
                    for s in range(n)
                ],
                dtype=np.float64,
            )
        )

    @classmethod
    def multistep(cls, epochs: int, base_lr: float, milestones: Sequence[int], gamma: float) -> LrSchedule:
        """:func:`multistep_lr` for epochs ``0 .. epochs`` (the rate after the last epoch included)."""
        return cls(np.array([multistep_lr(e, base_lr, milestones, gamma) for e in range(epochs + 1)], np.float64))
