"""A STEGO-style head (Hamilton et al., ICLR 2022) trained on a frozen backbone.

The network is a :class:`~maskcontrast.models.MaskContrastModel` with ``model.head=stego``: the
frozen ResNet of ``model.backbone.init`` and a small head (linear plus nonlinear 1x1 branches)
straight on its features. Its checkpoint is an ordinary maskcontrast checkpoint, so
``load_model``, ``eval.kmeans`` and the other eval commands read it, and its embedding is the head's
output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from maskcontrast.config import ModelConfig, StegoObjectiveConfig
from maskcontrast.data.views import Views
from maskcontrast.dense_losses.stego import feature_correlation, stego_correspondence_loss
from maskcontrast.models import CheckpointError, build_model, model_checkpoint
from maskcontrast.objectives.base import Objective

__all__ = ["StegoObjective", "FeatureBank"]

log = logging.getLogger(__name__)

#: frozen features whose spread over the data is below this are "no usable features"
MIN_FEATURE_STD = 1e-6


class FeatureBank(nn.Module):
    """The frozen backbone features of every training image (resized to ``size x size``, no
    augmentation) and each image's nearest neighbours by frozen global feature (cosine of the
    mean-pooled, normalised features). Buffers are not saved: they are recomputed from the data and
    the frozen backbone, deterministically, on every start.

    Attributes:
        features: ``N x C x h x w`` float16.
        neighbours: ``N x K`` long (never the image itself).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(0), persistent=False)
        self.register_buffer("neighbours", torch.zeros(0, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def build(
        self, backbone: nn.Module, dataset: Any, size: int, k: int, mean: Any, std: Any, batch_size: int = 32
    ) -> None:
        was_training = backbone.training
        backbone.eval()  # frozen: its BatchNorm statistics must not move
        try:
            self._build(backbone, dataset, size, k, mean, std, batch_size)
        finally:
            backbone.train(was_training)

    def _build(
        self, backbone: nn.Module, dataset: Any, size: int, k: int, mean: Any, std: Any, batch_size: int
    ) -> None:
        device = next(backbone.parameters()).device
        m = torch.tensor(list(mean), device=device).view(1, 3, 1, 1)
        s = torch.tensor(list(std), device=device).view(1, 3, 1, 1)
        n = len(dataset)
        if n < 2:
            raise ValueError("a STEGO head needs at least 2 training images (nearest neighbours)")
        feats = []
        for start in range(0, n, batch_size):
            batch = []
            for i in range(start, min(n, start + batch_size)):
                img, _, nh, nw = dataset.load_resized(i)
                x = (
                    torch.from_numpy(np.ascontiguousarray(img[:nh, :nw])).to(device).permute(2, 0, 1)[None].float()
                    / 255
                )
                batch.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
            x = (torch.cat(batch) - m) / s
            feats.append(backbone(x).float())
        bank = torch.cat(feats)
        if float(bank.std()) < MIN_FEATURE_STD:
            raise ValueError(
                f"the frozen backbone gives the same features for every image (std {float(bank.std()):.2e}): "
                "model.backbone.init has no usable features; pass a trained checkpoint (MoCo, MaskContrast, ...)"
            )
        glob = F.normalize(bank.mean(dim=(2, 3)), dim=1)
        sim = glob @ glob.t()
        sim.fill_diagonal_(-float("inf"))
        self.neighbours = sim.topk(min(k, n - 1), dim=1).indices
        self.features = bank.half()


class StegoObjective(Objective):
    """The STEGO correspondence loss over three kinds of pairs.

    For the query view of each image (frozen features ``f``, head output ``s``):

    * **self**: the view with itself;
    * **knn**: the view with one of its image's ``neighbours`` nearest neighbours (their frozen
      features from the :class:`FeatureBank`, at the bank's resolution);
    * **random**: the view with another image of the batch (a random permutation);

    each through :func:`~maskcontrast.dense_losses.stego.stego_correspondence_loss` with its own
    shift, weighted and summed. ``acc_top1`` is the analogue of a contrastive top-1: the share of
    locations whose most similar other location in the same view is the same by the head's output
    as by the frozen features (chance ``1 / (h w - 1)``).

    Example::

        obj = StegoObjective(ModelConfig(head="stego", embed_dim=32, saliency_head=False,
                                         backbone=BackboneConfig(arch="resnet18", init="moco.pt")),
                             StegoObjectiveConfig())
    """

    needs_mask = False

    def __init__(self, model_cfg: ModelConfig | Any, cfg: StegoObjectiveConfig | Any) -> None:
        super().__init__()
        if getattr(model_cfg, "head", "deeplab") != "stego":
            raise ValueError(f"the STEGO objective trains model.head=stego, got model.head={model_cfg.head}")
        if str(model_cfg.backbone.init) in ("random", "", "None"):
            raise ValueError(
                "a STEGO head distils the features of a trained backbone: set model.backbone.init=FILE "
                "(a MoCo, DenseCL, DetCon or maskcontrast checkpoint, or a torchvision state dict)"
            )
        self.model_config: dict = OmegaConf.to_container(OmegaConf.structured(model_cfg), resolve=True)  # type: ignore[assignment]
        self.model = build_model(model_cfg)
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self.bank = FeatureBank()
        self.neighbours = int(cfg.neighbours)
        self.pairs = {
            "self": (float(cfg.self_weight), float(cfg.self_shift)),
            "knn": (float(cfg.knn_weight), float(cfg.knn_shift)),
            "random": (float(cfg.random_weight), float(cfg.random_shift)),
        }
        self.pointwise = bool(cfg.pointwise)
        self.momentum = 0.0  # no momentum pairs

    def early_layer_modules(self) -> list[nn.Module]:
        return [self.model.backbone]  # frozen, in eval mode

    def prepare_data(self, dataset: Any) -> None:
        a = dataset.augment
        self.bank.build(self.model.backbone, dataset, dataset.image_size, self.neighbours, a.mean, a.std)
        log.info(
            "STEGO feature bank: %d images, features %s, %d neighbours each",
            len(self.bank.features),
            tuple(self.bank.features.shape[1:]),
            self.bank.neighbours.shape[1],
        )

    def forward(self, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if views.index is None:
            raise ValueError("the STEGO objective needs the dataset index of each view (Views.index)")
        if self.bank.features.numel() == 0:
            raise RuntimeError("the STEGO feature bank is empty: the trainer calls prepare_data(dataset) first")
        with torch.no_grad():
            feats = self.model.backbone(views.query)
            pick = torch.randint(0, self.bank.neighbours.shape[1], (len(views.index),), device=views.index.device)
            nn_idx = self.bank.neighbours[views.index, pick]
            nn_feats = self.bank.features[nn_idx].to(feats.dtype)
            perm = torch.roll(torch.arange(len(feats), device=feats.device), 1)
        code = self.model.embed_head(feats)
        nn_code = self.model.embed_head(nn_feats)
        f, c = feats.flatten(2), code.flatten(2)
        parts = {
            "self": (f, f, c, c),
            "knn": (f, nn_feats.flatten(2), c, nn_code.flatten(2)),
            "random": (f, f[perm], c, c[perm]),
        }
        loss = code.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        with torch.autocast(views.query.device.type, enabled=False):
            for name, (fa, fb, ca, cb) in parts.items():
                weight, shift = self.pairs[name]
                part = stego_correspondence_loss(fa.float(), fb.float(), ca.float(), cb.float(), shift, self.pointwise)
                loss = loss + weight * part
                metrics[f"loss_{name}"] = part.detach()
            with torch.no_grad():
                metrics["acc_top1"] = _nearest_agreement(f.float(), c.float())
        return loss, metrics

    def checkpoint(self) -> dict[str, Any]:
        """A maskcontrast checkpoint of the whole network (frozen backbone and head)."""
        return model_checkpoint(self.model, self.model_config, objective="stego")

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:
        if ckpt.get("objective") != "stego" or "model" not in ckpt:
            raise CheckpointError("not a STEGO training checkpoint (objective != 'stego')")
        self.model.load_state_dict(ckpt["model"])


def _nearest_agreement(feats: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Share of locations whose most similar other location (``B x C x P`` features, ``B x D x P``
    codes; same image) is the same by the codes as by the features."""
    eye = torch.eye(feats.shape[2], dtype=torch.bool, device=feats.device)
    by_feat = feature_correlation(feats, feats).masked_fill(eye, -2.0).argmax(dim=2)
    by_code = feature_correlation(codes, codes).masked_fill(eye, -2.0).argmax(dim=2)
    return (by_feat == by_code).float().mean()
