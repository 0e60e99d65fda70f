"""MoCo v2 (He et al. 2020; Chen et al. 2020): image-level InfoNCE against a queue of keys.

The checkpoint is laid out as the official MoCo release (``{'epoch', 'arch', 'state_dict',
'optimizer'}`` with ``module.encoder_q.*``, ``module.encoder_k.*``, ``module.queue`` (dim x K) and
``module.queue_ptr``), so ``backbone.init`` of the pretraining reads our file and the official
one the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskcontrast.config import MocoModelConfig, MocoObjectiveConfig
from maskcontrast.data.views import Views
from maskcontrast.losses import check_temperature, info_nce_loss, topk_accuracy
from maskcontrast.models import ARCHS, CheckpointError, load_backbone_weights
from maskcontrast.models.vit import create_timm_vit, is_vit_arch
from maskcontrast.momentum import MemoryBank, batch_shuffle, batch_unshuffle, make_momentum_copy
from maskcontrast.objectives.base import Objective
from maskcontrast.objectives.layout import PREFIX, pack_modules, pack_queues, unpack_modules, unpack_queues

__all__ = ["MocoObjective", "moco_encoder"]


def moco_encoder(arch: str = "resnet50", dim: int = 128, mlp: bool = True, vit: Any = None) -> nn.Module:
    """A torchvision ResNet whose ``fc`` maps to ``dim``: with ``mlp``, ``fc = Sequential(Linear(C, C),
    ReLU, Linear(C, dim))`` as in MoCo v2 (parameter names ``fc.0.*``, ``fc.2.*``).

    A timm ViT name (``maskcontrast.config.VIT_ARCHS``; ``vit`` = its :class:`ViTConfig`) gives a
    timm ViT whose class token goes through the same projection as ``head`` (``head.0.*``,
    ``head.2.*``); its other parameters keep timm's names, so ``model.backbone.init`` reads them.

    Input ``B x 3 x H x W``; output ``B x dim`` (not normalised).
    """
    if is_vit_arch(arch):
        net = create_timm_vit(
            arch,
            int(getattr(vit, "img_size", 224)),
            int(getattr(vit, "dim", 0)),
            int(getattr(vit, "depth", 0)),
            float(getattr(vit, "drop_path_rate", 0.0)),
        )
        c = int(net.num_features)
        net.head = (
            nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, dim)) if mlp else nn.Linear(c, dim)
        )
        return net
    if arch not in ARCHS:
        raise ValueError(f"unknown MoCo arch '{arch}'; choose one of {sorted(ARCHS)}")
    net = ARCHS[arch][0](weights=None, num_classes=dim)
    if mlp:
        c = net.fc.weight.shape[1]
        net.fc = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), net.fc)
    return net


class MocoObjective(Objective):
    """MoCo v2: query encoder, momentum key encoder (shuffle-BN across ranks), queue of keys.

    Example::

        obj = MocoObjective(MocoModelConfig(arch="resnet18"), MocoObjectiveConfig(queue_size=4096))
        loss, metrics = obj(views)    # metrics: loss_infonce, acc_top1, acc_top5
    """

    needs_mask = False

    def __init__(self, model_cfg: MocoModelConfig | Any, cfg: MocoObjectiveConfig | Any) -> None:
        super().__init__()
        check_temperature(cfg.temperature)
        self.arch = str(model_cfg.arch)
        self.dim = int(model_cfg.dim)
        self.mlp = bool(model_cfg.mlp)
        self.encoder_q = moco_encoder(self.arch, self.dim, self.mlp, getattr(model_cfg, "vit", None))
        if model_cfg.init not in ("random", "", None):
            load_backbone_weights(self.encoder_q, model_cfg.init, str(getattr(model_cfg, "init_key", "teacher")))
        self.encoder_k = make_momentum_copy(self.encoder_q)
        self.bank = MemoryBank(cfg.queue_size, self.dim)
        self.momentum = float(cfg.key_momentum)  # the EMA the trainer applies
        self.temperature = float(cfg.temperature)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder_q, self.encoder_k)]

    def forward(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = F.normalize(self.encoder_q(views.query).float(), dim=1)
        with torch.no_grad():
            k_in, order = batch_shuffle(views.key)
            k = F.normalize(self.encoder_k(k_in).float(), dim=1)
            k = batch_unshuffle(k, order)
            queue = self.bank.queue.clone()
        with torch.autocast(views.query.device.type, enabled=False):  # the loss math stays fp32 under AMP
            loss, logits, labels = info_nce_loss(q, k, queue, self.temperature, return_logits=True)
        top1, top5 = topk_accuracy(logits.detach(), labels, (1, 5))
        self.bank.enqueue(k)
        return loss, {"loss_infonce": loss.detach(), "acc_top1": top1, "acc_top5": top5}

    def checkpoint(self) -> dict[str, Any]:
        """``{'arch', 'state_dict'}`` in the official layout (the trainer adds 'epoch' and 'optimizer')."""
        sd = {**pack_modules(self._checkpoint_modules()), **pack_queues({"queue": self.bank})}
        return {
            "arch": self.arch,
            "state_dict": sd,
            "moco_config": {
                "dim": self.dim,
                "mlp": self.mlp,
                "queue_size": self.bank.size,
                "temperature": self.temperature,
                "momentum": self.momentum,
            },
        }

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:
        sd = ckpt.get("state_dict")
        if not isinstance(sd, Mapping) or f"{PREFIX}queue" not in sd:
            raise CheckpointError("not a MoCo training checkpoint (no state_dict with module.queue)")
        unpack_modules(sd, self._checkpoint_modules(), "MoCo")
        unpack_queues(sd, {"queue": self.bank})

    def _checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder_q": self.encoder_q, "encoder_k": self.encoder_k}
