"""The interface the trainer expects from an objective."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from maskcontrast.data.views import Views

__all__ = ["Objective", "recording_metrics"]


class Objective(nn.Module):
    """Base class of training objectives.

    Subclasses implement :meth:`forward` (``views -> (loss, metrics)``; metrics are detached
    scalar tensors such as ``loss_contrastive`` or ``acc_top1``), :meth:`momentum_pairs`,
    :meth:`checkpoint` and :meth:`load_checkpoint`. Everything an objective needs to resume
    (key network, memory bank, pointer) must be in what :meth:`checkpoint` returns.

    Attributes:
        momentum: the EMA coefficient the trainer applies to every pair before each step.
        needs_mask: whether the views must carry object masks.
    """

    momentum: float = 0.999
    needs_mask: bool = False

    def forward(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs; the trainer sets ``target = m target + (1 - m) online``."""
        return []

    def early_layer_modules(self) -> list[nn.Module]:
        """Frozen modules (no gradients, BatchNorm statistics kept); default none. A subclass
        that freezes layers turns their gradients off itself; :meth:`train` keeps them in eval mode."""
        return []

    def train(self, mode: bool = True) -> Objective:
        """``nn.Module.train``, except that the frozen modules (:meth:`early_layer_modules`) stay in
        eval mode, so their BatchNorm statistics do not move."""
        super().train(mode)
        for m in self.early_layer_modules():
            m.eval()
        return self

    def checkpoint(self) -> dict[str, Any]:  # pragma: no cover
        """A weights-only-loadable dict in this objective's deliverable layout, holding its whole state."""
        raise NotImplementedError

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:  # pragma: no cover
        """Restore the state written by :meth:`checkpoint` (strictly)."""
        raise NotImplementedError

    def prepare_data(self, dataset: Any) -> None:
        """Called once by the trainer with the training :class:`~maskcontrast.data.views.PairedViewDataset`,
        after the objective is built and moved to its device; objectives that need the whole data set
        (STEGO's nearest neighbours) read it here. Default: nothing."""

    def prepare_input(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """A view batch (``B x 3 x H x W``) in the memory layout this objective's networks want;
        the trainer calls it on the query and key views of every step."""
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def recording_metrics(build: Callable[[], Objective], history: list[dict[str, float]]) -> Callable[[], Objective]:
    """Wrap an objective factory (what :func:`maskcontrast.train.train` takes) so that every step's
    metrics are appended to ``history`` as plain floats, one dict per step (for tests, benchmarks
    and notebooks; the trainer itself logs only every ``trainer.log_every_steps``).

    Example::

        history = []
        train(cfg, recording_metrics(lambda: MaskContrastObjective(cfg.model, cfg.objective), history), "pretrain")
        history[-1]["acc_top1"]
    """

    def build_recording() -> Objective:
        objective = build()
        forward = objective.forward

        def forward_and_record(views: Views) -> tuple[torch.Tensor, Mapping[str, Any]]:
            loss, metrics = forward(views)
            history.append({k: float(v) for k, v in metrics.items()})
            return loss, metrics

        objective.forward = forward_and_record  # type: ignore[method-assign]
        return objective

    return build_recording
