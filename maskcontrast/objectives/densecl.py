"""DenseCL (Wang et al., CVPR 2021): MoCo v2 plus a dense InfoNCE over matched feature locations.

Checkpoint: the MoCo layout with the dense heads beside it: ``module.encoder_q.*`` (the ResNet,
and MoCo v2's global MLP as ``fc.0`` / ``fc.2``), ``module.dense_head_q.*``, the same for ``_k``,
``module.queue`` (dim x K) and ``module.queue_ptr`` as the MoCo release, and
``module.dense_queue`` / ``module.dense_queue_ptr``. ``model.backbone.init`` of MaskContrast and
``load_model`` read its ResNet (the ``fc`` keys are ignored as for a MoCo file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskcontrast.config import DenseCLModelConfig, DenseCLObjectiveConfig
from maskcontrast.data.views import Views
from maskcontrast.dense_losses.densecl import dense_correspondence, densecl_dense_loss
from maskcontrast.losses import check_temperature, info_nce_loss, topk_accuracy
from maskcontrast.models import CheckpointError, build_backbone, init_backbone
from maskcontrast.momentum import MemoryBank, batch_shuffle, batch_unshuffle, make_momentum_copy
from maskcontrast.objectives.base import Objective
from maskcontrast.objectives.layout import (
    PREFIX,
    backbone_in_layout,
    pack_modules,
    pack_queues,
    unpack_modules,
    unpack_queues,
)

__all__ = ["DenseCLObjective", "DenseCLEncoder"]


class DenseCLEncoder(nn.Module):
    """A ResNet or a ViT (``backbone``), MoCo v2's global MLP on its average-pooled features (``fc``) and the
    dense MLP of 1x1 convs on every location (``dense``).

    ``forward(x)`` with ``x`` of shape ``B x 3 x H x W`` returns ``(features B x C x h x w,
    global B x dim, dense B x dim x h x w)``, none normalised.
    """

    def __init__(self, model_cfg: DenseCLModelConfig | Any, dim: int) -> None:
        super().__init__()
        self.backbone = build_backbone(model_cfg)  # a dilated ResNet or a ViT (its patch map)
        c = self.backbone.out_channels
        self.fc = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, dim))
        self.dense = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, dim, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return feats, self.fc(feats.mean(dim=(2, 3))), self.dense(feats)


class DenseCLObjective(Objective):
    """DenseCL: query encoder, momentum key encoder (shuffle-BN across ranks), a global and a dense queue.

    ``loss = (1 - dense_weight) * L_global + dense_weight * L_dense``: ``L_global`` is MoCo v2's
    InfoNCE of the global projections against the global queue; ``L_dense`` contrasts every query
    location's dense projection with the key's dense projection at the location whose backbone
    feature is the most similar, against the dense queue (:mod:`maskcontrast.dense_losses.densecl`).
    Each step enqueues the global keys and, per image, the normalised mean of its dense keys.

    Example::

        obj = DenseCLObjective(DenseCLModelConfig(arch="resnet18"), DenseCLObjectiveConfig(queue_size=4096))
        loss, metrics = obj(views)   # metrics: loss_global, loss_dense, acc_top1, acc_dense_top1
    """

    needs_mask = False

    def __init__(self, model_cfg: DenseCLModelConfig | Any, cfg: DenseCLObjectiveConfig | Any) -> None:
        super().__init__()
        check_temperature(cfg.temperature)
        if not 0.0 <= cfg.dense_weight <= 1.0:
            raise ValueError(f"objective.dense_weight must be in [0, 1], got {cfg.dense_weight}")
        self.arch = str(model_cfg.arch)
        self.dim = int(model_cfg.dim)
        self.encoder_q = DenseCLEncoder(model_cfg, self.dim)
        init_backbone(self.encoder_q.backbone, model_cfg.init, str(getattr(model_cfg, "init_key", "teacher")))
        self.encoder_k = make_momentum_copy(self.encoder_q)
        self.bank = MemoryBank(cfg.queue_size, self.dim)
        self.dense_bank = MemoryBank(cfg.queue_size, self.dim)
        self.temperature = float(cfg.temperature)
        self.dense_weight = float(cfg.dense_weight)
        self.momentum = float(cfg.key_momentum)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder_q, self.encoder_k)]

    def forward(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feat_q, glob_q, dense_q = self.encoder_q(views.query)
        with torch.no_grad():
            k_in, order = batch_shuffle(views.key)
            feat_k, glob_k, dense_k = (batch_unshuffle(t, order) for t in self.encoder_k(k_in))
            queue, dense_queue = self.bank.queue.clone(), self.dense_bank.queue.clone()
        with torch.autocast(views.query.device.type, enabled=False):  # the loss math stays fp32 under AMP
            q = F.normalize(glob_q.float(), dim=1)
            k = F.normalize(glob_k.float(), dim=1)
            loss_global, logits, labels = info_nce_loss(q, k, queue, self.temperature, return_logits=True)
            dq = F.normalize(dense_q.float().flatten(2), dim=1)
            dk = F.normalize(dense_k.float().flatten(2), dim=1)
            with torch.no_grad():
                match = dense_correspondence(feat_q.detach().float().flatten(2), feat_k.float().flatten(2))
            loss_dense, dense_logits = densecl_dense_loss(dq, dk, match, dense_queue, self.temperature)
            loss = (1.0 - self.dense_weight) * loss_global + self.dense_weight * loss_dense
        with torch.no_grad():
            top1, top5 = topk_accuracy(logits.detach(), labels, (1, 5))
            dense_labels = torch.zeros(len(dense_logits), dtype=torch.long, device=dense_logits.device)
            (dense_top1,) = topk_accuracy(dense_logits.detach(), dense_labels, (1,))
        self.bank.enqueue(k)
        self.dense_bank.enqueue(F.normalize(dk.mean(dim=2), dim=1))
        return loss, {
            "loss_global": loss_global.detach(),
            "loss_dense": loss_dense.detach(),
            "acc_top1": top1,
            "acc_top5": top5,
            "acc_dense_top1": dense_top1,
        }

    def _checkpoint_modules(self) -> dict[str, nn.Module]:
        # encoder_q.<resnet key> and encoder_q.fc.*: the MoCo release's names; the dense heads beside them
        return {
            "encoder_q": _MocoView(self.encoder_q),
            "dense_head_q": self.encoder_q.dense,
            "encoder_k": _MocoView(self.encoder_k),
            "dense_head_k": self.encoder_k.dense,
        }

    def checkpoint(self) -> dict[str, Any]:
        """``{'arch', 'state_dict', 'densecl_config'}`` in the MoCo layout plus the dense heads and queue."""
        sd = {**pack_modules(self._checkpoint_modules()), **pack_queues(self._queues())}
        return {
            "arch": self.arch,
            "state_dict": sd,
            "densecl_config": {
                "dim": self.dim,
                "queue_size": self.bank.size,
                "temperature": self.temperature,
                "dense_weight": self.dense_weight,
                "key_momentum": self.momentum,
            },
        }

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:
        sd = ckpt.get("state_dict")
        if not isinstance(sd, Mapping) or f"{PREFIX}dense_queue" not in sd:
            raise CheckpointError("not a DenseCL training checkpoint (no state_dict with module.dense_queue)")
        unpack_modules(sd, self._checkpoint_modules(), "DenseCL")
        unpack_queues(sd, self._queues())

    def _queues(self) -> dict[str, MemoryBank]:
        return {"queue": self.bank, "dense_queue": self.dense_bank}


class _MocoView(nn.Module):
    """A view of a :class:`DenseCLEncoder` whose state dict has the MoCo release's names: the ResNet's
    keys at the top level and the global MLP as ``fc.*`` (no dense head)."""

    def __init__(self, encoder: DenseCLEncoder) -> None:
        super().__init__()
        self.__dict__["_encoder"] = encoder  # not a submodule: no parameters are registered twice

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        enc = self.__dict__["_encoder"]
        out = dict(backbone_in_layout(enc.backbone).state_dict())
        out.update({f"fc.{k}": v for k, v in enc.fc.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        enc = self.__dict__["_encoder"]
        enc.fc.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("fc.")}, strict=strict)
        backbone = backbone_in_layout(enc.backbone)
        return backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=strict)
