"""DetCon (Hénaff et al., ICCV 2021): contrast mask-pooled features of the same regions across views.

Checkpoint: the MoCo layout (:mod:`maskcontrast.objectives.layout`): ``module.encoder_q.*`` (the
ResNet), ``module.projector_q.*``, and for DetConB ``module.predictor.*``, ``module.encoder_k.*``,
``module.projector_k.*``; ``model.backbone.init`` of MaskContrast and ``load_model`` read its ResNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskcontrast.config import DetConModelConfig, DetConObjectiveConfig
from maskcontrast.data import DataError
from maskcontrast.data.views import Views
from maskcontrast.dense_losses.detcon import region_contrastive_loss, region_pool, sample_regions
from maskcontrast.losses import check_temperature, topk_accuracy
from maskcontrast.models import build_backbone, init_backbone
from maskcontrast.momentum import concat_all_gather, make_momentum_copy, rank
from maskcontrast.objectives.base import Objective
from maskcontrast.objectives.layout import backbone_in_layout, pack_modules, unpack_modules

__all__ = ["DetConObjective", "mlp"]


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: ``Linear(in, hidden), BatchNorm1d, ReLU, Linear(hidden, out)``."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


def _project(head: nn.Module, pooled: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``head`` on the valid rows of ``pooled`` (``N x C``), zeros elsewhere, L2-normalised: ``N x d``.
    BatchNorm sees the valid rows only (all rows when fewer than two are valid)."""
    rows = valid.nonzero().squeeze(1) if int(valid.sum()) >= 2 else torch.arange(len(pooled), device=pooled.device)
    z = head(pooled[rows])
    out = z.new_zeros(len(pooled), z.shape[1]).index_copy(0, rows, z)
    return F.normalize(out, dim=1)


def _gather_keep_local(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (``N x d`` each), this process's own rows keeping their gradient."""
    allx = concat_all_gather(x.detach())
    if allx.shape[0] == x.shape[0]:
        return x
    n, r = x.shape[0], rank()
    return torch.cat([allx[: r * n], x, allx[(r + 1) * n :]])


class DetConObjective(Objective):
    """DetConS (``variant="s"``) or DetConB (``variant="b"``) on a ResNet.

    Per step: up to ``regions_per_image`` region ids present in both views are drawn per image;
    the online ResNet's last feature map of each view is averaged over each region (the mask
    area-downsampled to feature resolution); the pooled vectors are projected (DetConB: and
    predicted) and each region is classified against every region of the batch in both views
    (:func:`~maskcontrast.dense_losses.detcon.region_contrastive_loss`, symmetrised). DetConS's
    keys are its own projections (SimCLR); DetConB's come from the momentum target network.
    A region that vanishes from a view (at pixel or at feature resolution) is dropped, and counted
    in ``regions_dropped``.

    Example::

        obj = DetConObjective(DetConModelConfig(arch="resnet18"), DetConObjectiveConfig(variant="b"))
        loss, metrics = obj(views)   # views with masks; metrics: loss_detcon, acc_top1, regions, ...
    """

    needs_mask = True

    def __init__(self, model_cfg: DetConModelConfig | Any, cfg: DetConObjectiveConfig | Any) -> None:
        super().__init__()
        if cfg.variant not in ("s", "b"):
            raise ValueError(f"objective.variant must be s (DetConS) or b (DetConB), got {cfg.variant!r}")
        check_temperature(cfg.temperature)
        self.arch = str(model_cfg.arch)
        self.variant = str(cfg.variant)
        self.encoder_q = build_backbone(model_cfg)  # a dilated ResNet or a ViT (its patch map)
        init_backbone(self.encoder_q, model_cfg.init, str(getattr(model_cfg, "init_key", "teacher")))
        c, hidden, dim = self.encoder_q.out_channels, int(model_cfg.proj_hidden), int(model_cfg.proj_dim)
        self.projector_q = mlp(c, hidden, dim)
        if self.variant == "b":
            self.predictor = mlp(dim, hidden, dim)
            self.encoder_k = make_momentum_copy(self.encoder_q)
            self.projector_k = make_momentum_copy(self.projector_q)
        self.temperature = float(cfg.temperature)
        self.regions_per_image = int(cfg.regions_per_image)
        self.momentum = float(cfg.key_momentum)

    def _checkpoint_modules(self) -> dict[str, nn.Module]:
        names = ["encoder_q", "projector_q"] + (
            ["predictor", "encoder_k", "projector_k"] if self.variant == "b" else []
        )
        # the encoders in their published key layout (torchvision's / timm's): model.backbone.init reads them
        return {n: backbone_in_layout(getattr(self, n)) if n.startswith("encoder") else getattr(self, n) for n in names}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.variant == "s":
            return []
        return [(self.encoder_q, self.encoder_k), (self.projector_q, self.projector_k)]

    def forward(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if views.query_mask is None or views.key_mask is None:
            raise ValueError(
                "DetCon needs views with region masks: set data.mask_source to masks (with a masks "
                "folder per data source), felzenszwalb or grid"
            )
        ids, valid, vanished = sample_regions(views.query_mask, views.key_mask, self.regions_per_image)
        if not bool(valid.any()):
            raise DataError(
                "no image of the batch has a region in both views; check data.mask_source and the "
                "masks (a masks folder of all-background images has no region to contrast)"
            )
        b, r = ids.shape
        f1, f2 = self.encoder_q(views.query), self.encoder_q(views.key)
        with torch.autocast(views.query.device.type, enabled=False):  # pooling and the loss stay fp32 under AMP
            p1, v1 = region_pool(f1.float(), views.query_mask, ids, valid)
            p2, v2 = region_pool(f2.float(), views.key_mask, ids, valid)
        ok = (v1 & v2).flatten()
        online = nn.Sequential(self.projector_q, self.predictor) if self.variant == "b" else self.projector_q
        q1 = _project(online, p1.flatten(0, 1), ok)
        q2 = _project(online, p2.flatten(0, 1), ok)
        if self.variant == "b":
            with torch.no_grad():
                t1, t2 = self.encoder_k(views.query), self.encoder_k(views.key)
                with torch.autocast(views.query.device.type, enabled=False):
                    k1 = _project(
                        self.projector_k, region_pool(t1.float(), views.query_mask, ids, valid)[0].flatten(0, 1), ok
                    )
                    k2 = _project(
                        self.projector_k, region_pool(t2.float(), views.key_mask, ids, valid)[0].flatten(0, 1), ok
                    )
                k1, k2 = concat_all_gather(k1), concat_all_gather(k2)
        else:
            k1, k2 = _gather_keep_local(q1), _gather_keep_local(q2)
        cols = concat_all_gather(ok)
        offset = rank() * b * r
        with torch.autocast(views.query.device.type, enabled=False):
            l12, logits, labels = region_contrastive_loss(
                q1.float(), k2.float(), k1.float(), ok, cols, self.temperature, offset
            )
            l21, _, _ = region_contrastive_loss(q2.float(), k1.float(), k2.float(), ok, cols, self.temperature, offset)
            loss = 0.5 * (l12 + l21)
        with torch.no_grad():
            top1, top5 = topk_accuracy(logits[ok], labels[ok], (1, 5)) if bool(ok.any()) else (loss * 0, loss * 0)
        dropped = vanished + (valid.flatten() & ~ok).sum().float()
        return loss, {
            "loss_detcon": loss.detach(),
            "acc_top1": top1,
            "acc_top5": top5,
            "regions": ok.sum().float() / b,
            "regions_dropped": dropped.detach(),
        }

    def checkpoint(self) -> dict[str, Any]:
        """``{'arch', 'state_dict', 'detcon_config'}`` in the MoCo layout (the trainer adds 'epoch' and 'optimizer')."""
        return {
            "arch": self.arch,
            "state_dict": pack_modules(self._checkpoint_modules()),
            "detcon_config": {
                "variant": self.variant,
                "temperature": self.temperature,
                "regions_per_image": self.regions_per_image,
                "key_momentum": self.momentum,
            },
        }

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:
        sd = ckpt.get("state_dict")
        if not isinstance(sd, Mapping) or "detcon_config" not in ckpt:
            from maskcontrast.models import CheckpointError

            raise CheckpointError("not a DetCon training checkpoint (no state_dict and detcon_config)")
        unpack_modules(sd, self._checkpoint_modules(), "DetCon")
