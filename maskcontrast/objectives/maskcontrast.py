"""The MaskContrast objective: pixel-to-prototype contrast against a momentum key network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from maskcontrast.config import MaskContrastObjectiveConfig, ModelConfig
from maskcontrast.data.views import Views
from maskcontrast.embeddings import mask_prototypes
from maskcontrast.losses import (
    CLASS_WEIGHTINGS,
    balanced_bce,
    check_temperature,
    full_precision,
    maskcontrast_pixel_loss,
    pixel_prototype_logits,
    topk_accuracy,
)
from maskcontrast.models import CheckpointError, build_model, model_checkpoint
from maskcontrast.momentum import (
    MemoryBank,
    batch_shuffle,
    batch_unshuffle,
    concat_all_gather,
    make_momentum_copy,
    rank,
)
from maskcontrast.objectives.base import Objective

__all__ = ["MaskContrastObjective"]


#: pixels whose top-1/top-5 accuracy is logged each step (an evenly spaced subset; the metric only)
ACCURACY_ROWS = 16384


class MaskContrastObjective(Objective):
    """Query network, momentum key network and a memory bank of prototypes.

    ``forward(views)`` (views with object masks) does, per step:

    1. query forward (with gradients) at feature resolution;
    2. key forward (no gradients) on the key views, shuffled across DDP ranks (shuffle-BN),
       at feature resolution, unshuffled;
    3. one prototype per (image, object) of the key view (:func:`~maskcontrast.embeddings.mask_prototypes`),
       gathered from every rank;
    4. every query pixel on an object with a prototype is classified against all prototypes of
       the global batch (``negatives="global"``; ``"local"``: of this process's batch, as the
       official code) and the memory bank (T = ``temperature``), cross-entropy with ENet class
       weights; balanced BCE on the query saliency (upsampled to the input) against the query mask;
    5. the gathered prototypes of every rank are enqueued.

    The trainer applies the momentum update (``momentum_pairs``) before each forward.

    The embeddings are upsampled to the input size bilinearly, as in the paper, but only at the
    object pixels that enter the loss (:func:`~maskcontrast.embeddings.upsampled_pixels`), and the
    cross-entropy runs in row chunks (:func:`~maskcontrast.losses.pixel_contrastive_loss`); the
    values are those of the full-resolution computation.

    Example::

        obj = MaskContrastObjective(model_cfg, MaskContrastObjectiveConfig())
        loss, metrics = obj(views)     # metrics: loss_contrastive, loss_saliency, acc_top1, acc_top5, ...
    """

    needs_mask = True

    def __init__(self, model_cfg: ModelConfig | Any, cfg: MaskContrastObjectiveConfig | Any) -> None:
        super().__init__()
        if cfg.class_weighting not in CLASS_WEIGHTINGS:  # early, at config time
            raise ValueError(
                f"objective.class_weighting must be one of {CLASS_WEIGHTINGS}, got {cfg.class_weighting!r}"
            )
        check_temperature(cfg.temperature)
        self.model_config: dict = (
            OmegaConf.to_container(OmegaConf.structured(model_cfg), resolve=True)  # type: ignore[assignment]
            if not isinstance(model_cfg, dict)
            else dict(model_cfg)
        )
        self.query = build_model(model_cfg)
        self.freeze_early = bool(cfg.freeze_early_layers)
        self.key = make_momentum_copy(self.query)
        for m in self.early_layer_modules():  # frozen: no gradients here, eval mode in train()
            for p in m.parameters():
                p.requires_grad_(False)
        self.bank = MemoryBank(cfg.queue_size, self.query.embed_dim)
        self.momentum = float(cfg.key_momentum)  # the EMA the trainer applies
        self.temperature = float(cfg.temperature)
        self.contrastive_weight = float(cfg.contrastive_weight)
        self.saliency_weight = float(cfg.saliency_weight)
        self.class_weighting = cfg.class_weighting
        self.negatives = str(getattr(cfg, "negatives", "global"))
        if self.negatives not in ("global", "local"):
            raise ValueError(f"objective.negatives must be global or local, got {self.negatives!r}")
        if self.saliency_weight > 0 and self.query.saliency_head is None:
            raise ValueError("objective.saliency_weight > 0 needs model.saliency_head=true")

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.query, self.key)]

    def early_layer_modules(self) -> list[nn.Module]:
        if not self.freeze_early:
            return []
        return [*self.query.backbone.stem_and_early_layers(), *self.key.backbone.stem_and_early_layers()]

    def forward(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if views.query_mask is None or views.key_mask is None:
            raise ValueError("MaskContrast needs views with object masks")
        b = views.batch_size
        size = views.query.shape[-2:]
        # one bound on the object ids of both views (this process's prototypes come from its key view)
        n_ids = int(torch.maximum(views.query_mask.max(), views.key_mask.max())) + 1 if views.query_mask.numel() else 1
        # The networks run under the trainer's autocast; everything after them runs in fp32.
        out_q = self.query(views.query, upsample=False)

        with torch.no_grad():
            k_in, order = batch_shuffle(views.key)
            k_small = batch_unshuffle(self.key(k_in, upsample=False).embedding, order)
            with torch.autocast(views.query.device.type, enabled=False):
                protos, owner = mask_prototypes(full_precision(k_small), views.key_mask, n_ids)
            owner = owner.clone()
            owner[:, 0] += rank() * b
            # the queue always gets every process's prototypes; one collective gathers them with their owners
            both = concat_all_gather(torch.cat([protos, owner.to(protos.dtype)], dim=1))
            all_protos, all_owner = both[:, :-2].contiguous(), both[:, -2:].long()
            if self.negatives == "global":  # contrast with the prototypes of every process
                cand_protos, cand_owner, offset = all_protos, all_owner, rank() * b
            else:  # local: this process's prototypes only
                cand_protos, cand_owner, offset = protos, owner, rank() * b
            queue = self.bank.queue.clone()

        with torch.autocast(views.query.device.type, enabled=False):  # the loss math stays fp32 under AMP
            loss_con, q, labels = maskcontrast_pixel_loss(
                full_precision(out_q.embedding),
                views.query_mask,
                cand_protos,
                cand_owner,
                queue,
                self.temperature,
                self.class_weighting,
                image_offset=offset,
                n_ids=n_ids,
            )
            loss = self.contrastive_weight * loss_con
            metrics = {"loss_contrastive": loss_con.detach()}
            if out_q.saliency is not None:
                q_sal = F.interpolate(
                    full_precision(out_q.saliency), size=tuple(size), mode="bilinear", align_corners=False
                )
                loss_sal = balanced_bce(q_sal, views.query_mask > 0)
                loss = loss + self.saliency_weight * loss_sal  # also at weight 0: DDP wants every parameter used
                metrics["loss_saliency"] = loss_sal.detach()
            with torch.no_grad():
                step = max(1, -(-len(labels) // ACCURACY_ROWS))
                some = pixel_prototype_logits(q[::step], cand_protos, queue, self.temperature)
                top1, top5 = topk_accuracy(some, labels[::step], (1, 5))
        metrics.update(
            acc_top1=top1,
            acc_top5=top5,
            prototypes=loss.new_full((), float(len(cand_protos))),  # on the device: read only when logged
            pixels=loss.new_full((), float(len(labels))),
        )
        self.bank.enqueue(all_protos, gather=False)  # already gathered above: one collective per step
        return loss, metrics

    def checkpoint(self) -> dict[str, Any]:
        """The maskcontrast checkpoint format (``model_from_checkpoint`` / ``load_model`` read it), plus
        ``key_model`` and ``memory_bank`` for resuming."""
        return model_checkpoint(
            self.query,
            self.model_config,
            objective="maskcontrast",
            key_model={k: v.detach().cpu() for k, v in self.key.state_dict().items()},
            memory_bank={k: v.detach().cpu() for k, v in self.bank.state_dict().items()},
        )

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:
        for key in ("model", "key_model", "memory_bank"):
            if key not in ckpt:
                raise CheckpointError(f"checkpoint has no '{key}' entry; it is not a MaskContrast training checkpoint")
        self.query.load_state_dict(ckpt["model"])
        self.key.load_state_dict(ckpt["key_model"])
        self.bank.load_state_dict(ckpt["memory_bank"])
