"""The MoCo checkpoint layout shared by the ResNet objectives (MoCo v2, DenseCL, DetCon).

A checkpoint's ``state_dict`` holds ``module.<name>.<key>`` for every named module, so the ResNet
of the query encoder is at ``module.encoder_q.<torchvision key>``: the loader of
:mod:`maskcontrast.models.checkpoint` reads it as a backbone (``model.backbone.init``) whatever
heads sit beside it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from maskcontrast.models import CheckpointError
from maskcontrast.momentum import MemoryBank

__all__ = ["PREFIX", "backbone_in_layout", "pack_modules", "unpack_modules", "pack_queues", "unpack_queues"]

PREFIX = "module."


def backbone_in_layout(backbone: nn.Module) -> nn.Module:
    """The module whose state dict is the backbone's published key layout: a ResNet itself
    (torchvision keys), a ViT's timm model (timm keys, as DINO and MoCo v3 files hold them)."""
    from maskcontrast.models.vit import ViTBackbone

    return backbone.vit if isinstance(backbone, ViTBackbone) else backbone


def pack_modules(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """``{"module.<name>.<key>": tensor}`` (on the CPU) for every ``name -> module``."""
    return {
        f"{PREFIX}{name}.{k}": v.detach().cpu()
        for name, module in modules.items()
        for k, v in module.state_dict().items()
    }


def unpack_modules(state: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module], what: str) -> None:
    """Load ``state`` (:func:`pack_modules`' layout) into ``modules``, strictly.

    Raises:
        CheckpointError: a module with no tensors in ``state``, or keys that do not fit; names ``what``.
    """
    for name, module in modules.items():
        p = f"{PREFIX}{name}."
        part = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if not part:
            raise CheckpointError(f"not a {what} training checkpoint: no '{p}*' tensors")
        try:
            module.load_state_dict(part)
        except RuntimeError as err:
            raise CheckpointError(f"{what} checkpoint: '{p}*' does not fit: {str(err).splitlines()[0]}") from err


def pack_queues(banks: Mapping[str, MemoryBank]) -> dict[str, torch.Tensor]:
    """``module.<name>`` (``dim x K``, as the MoCo release stores its queue) and ``module.<name>_ptr``
    of every ``name -> bank``, on the CPU."""
    out = {}
    for name, bank in banks.items():
        out[f"{PREFIX}{name}"] = bank.queue.detach().t().contiguous().cpu()
        out[f"{PREFIX}{name}_ptr"] = bank.ptr.detach().view(1).cpu()
    return out


def unpack_queues(state: Mapping[str, torch.Tensor], banks: Mapping[str, MemoryBank]) -> None:
    """Load :func:`pack_queues`' layout back into ``banks``."""
    for name, bank in banks.items():
        bank.load_state_dict({"queue": state[f"{PREFIX}{name}"].t(), "ptr": state[f"{PREFIX}{name}_ptr"].view(())})
