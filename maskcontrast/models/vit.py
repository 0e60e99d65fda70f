"""Vision Transformers through timm, returning their patch tokens as a dense feature map.

timm builds the network (always ``pretrained=False``: weights come only from files the user
passes, never from a download). ``dynamic_img_size=True`` makes timm interpolate the position
embedding to the token grid of every input, so any input whose sides are multiples of the patch
size works.

A ViT's feature stride is its patch size ``p``: a ``B x 3 x H x W`` input gives ``B x C x H/p x
W/p`` patch tokens. There is no dilation to trade: a finer map needs a smaller patch (ViT-S/8
instead of ViT-S/16, 4x the tokens) or a larger input (see docs/BACKBONES.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from maskcontrast.config import VIT_ARCHS

__all__ = ["VIT_SPECS", "ViTSpec", "ViTTokens", "ViTBackbone", "is_vit_arch", "create_timm_vit", "infer_vit_spec"]


@dataclass(frozen=True)
class ViTSpec:
    """The shape of a ViT as it shows in its weights.

    Attributes:
        patch: patch side in pixels (the feature stride).
        dim: token width. depth: number of blocks.
        registers: register tokens (DINOv2 ``_reg4`` variants: 4).
        layer_scale: blocks carry ``ls1`` / ``ls2`` layer-scale gammas (DINOv2).
    """

    patch: int
    dim: int
    depth: int
    registers: int = 0
    layer_scale: bool = False

    def describe(self) -> str:
        return (
            f"patch {self.patch}, width {self.dim}, depth {self.depth}, {self.registers} register tokens"
            f"{', layer scale' if self.layer_scale else ''}"
        )


#: timm name -> its shape (the names of ``maskcontrast.config.VIT_ARCHS``)
VIT_SPECS: dict[str, ViTSpec] = {
    "vit_small_patch16_224": ViTSpec(16, 384, 12),
    "vit_base_patch16_224": ViTSpec(16, 768, 12),
    "vit_large_patch16_224": ViTSpec(16, 1024, 24),
    "vit_small_patch8_224": ViTSpec(8, 384, 12),
    "vit_base_patch8_224": ViTSpec(8, 768, 12),
    "vit_small_patch14_dinov2": ViTSpec(14, 384, 12, 0, True),
    "vit_base_patch14_dinov2": ViTSpec(14, 768, 12, 0, True),
    "vit_large_patch14_dinov2": ViTSpec(14, 1024, 24, 0, True),
    "vit_small_patch14_reg4_dinov2": ViTSpec(14, 384, 12, 4, True),
    "vit_base_patch14_reg4_dinov2": ViTSpec(14, 768, 12, 4, True),
    "vit_large_patch14_reg4_dinov2": ViTSpec(14, 1024, 24, 4, True),
}
assert tuple(VIT_SPECS) == VIT_ARCHS, "maskcontrast.config.VIT_ARCHS and VIT_SPECS must list the same names"


def is_vit_arch(arch: str) -> bool:
    """True for the timm ViT names of :data:`VIT_SPECS`."""
    return arch in VIT_SPECS


def spec_of(arch: str, dim: int = 0, depth: int = 0) -> ViTSpec:
    """The :class:`ViTSpec` of ``arch`` with the ``dim`` / ``depth`` overrides (0 = the arch's own)."""
    s = VIT_SPECS[arch]
    return ViTSpec(s.patch, dim or s.dim, depth or s.depth, s.registers, s.layer_scale)


def create_timm_vit(
    arch: str, img_size: int = 224, dim: int = 0, depth: int = 0, drop_path_rate: float = 0.0
) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, ...)``.

    ``dim`` / ``depth`` (0 = the arch's own) override the width and depth; the head count is then
    ``max(1, dim // 64)`` (64-d heads, as every published ViT-S/B/L). Never downloads anything.
    """
    import timm

    if not is_vit_arch(arch):
        raise ValueError(f"unknown ViT arch '{arch}'; choose one of {sorted(VIT_SPECS)}")
    kwargs: dict = {}
    if dim:
        kwargs.update(embed_dim=dim, num_heads=max(1, dim // 64))
    if depth:
        kwargs["depth"] = depth
    return timm.create_model(
        arch,
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )


def infer_vit_spec(sd: Mapping[str, torch.Tensor]) -> ViTSpec | None:
    """The :class:`ViTSpec` of a ViT state dict in timm key names, or None when it is not one.

    Patch size and width come from ``patch_embed.proj.weight`` (``C x 3 x p x p``), depth from the
    block indices, registers from ``reg_token`` / ``register_tokens``, layer scale from ``ls1``.
    """
    w = sd.get("patch_embed.proj.weight")
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        return None
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    reg = sd.get("reg_token", sd.get("register_tokens"))
    registers = int(reg.shape[1]) if isinstance(reg, torch.Tensor) and reg.ndim == 3 else 0
    layer_scale = any(re.match(r"blocks\.\d+\.ls1\.gamma$", k) for k in sd)
    return ViTSpec(int(w.shape[-1]), int(w.shape[0]), depth, registers, layer_scale)


def arch_for_spec(spec: ViTSpec) -> tuple[str, int, int] | None:
    """``(arch, dim, depth)`` that builds a ViT of ``spec``: an exact :data:`VIT_SPECS` entry with no
    overrides, else the entry of the same family (patch, registers, layer scale) with ``dim`` /
    ``depth`` overrides; None when no family fits (e.g. patch 32)."""
    for name, s in VIT_SPECS.items():
        if s == spec:
            return name, 0, 0
    for name, s in VIT_SPECS.items():
        if (s.patch, s.registers, s.layer_scale) == (spec.patch, spec.registers, spec.layer_scale):
            return name, spec.dim, spec.depth
    return None


class ViTTokens(NamedTuple):
    """What :meth:`ViTBackbone.tokens` returns (after the final norm).

    Attributes:
        patches: ``B x C x H/p x W/p`` patch tokens as a map.
        cls: ``B x C`` class token.
        registers: ``B x R x C`` register tokens (``R = 0`` without registers).
    """

    patches: torch.Tensor
    cls: torch.Tensor
    registers: torch.Tensor


class ViTBackbone(nn.Module):
    """A timm ViT (``self.vit``, timm's parameter names) that returns its patch tokens as a map.

    Input ``B x 3 x H x W`` with ``H``, ``W`` multiples of the patch size; ``forward`` returns
    ``B x C x H/p x W/p`` (``C = out_channels``, the token width); :meth:`tokens` also returns the
    class and register tokens. ``output_stride`` is the patch size.

    Example::

        bb = ViTBackbone("vit_small_patch16_224")
        bb(torch.randn(2, 3, 224, 320)).shape   # (2, 384, 14, 20)
    """

    def __init__(
        self,
        arch: str = "vit_small_patch16_224",
        img_size: int = 224,
        dim: int = 0,
        depth: int = 0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.vit = create_timm_vit(arch, img_size, dim, depth, drop_path_rate)
        self.arch = arch
        self.spec = spec_of(arch, dim, depth)
        self.out_channels = self.spec.dim
        self.output_stride = self.spec.patch
        self.img_size = img_size

    def stem_and_early_layers(self) -> list[nn.Module]:
        """The patch embedding and the first half of the blocks (as conv1 .. layer2 of a ResNet)."""
        blocks = list(self.vit.blocks)
        return [self.vit.patch_embed, *blocks[: len(blocks) // 2]]

    def tokens(self, x: torch.Tensor) -> ViTTokens:
        """``B x 3 x H x W`` -> :class:`ViTTokens` (patch map, class token, register tokens)."""
        b, _, h, w = x.shape
        p = self.output_stride
        t = self.vit.forward_features(x)  # B x (prefix + N) x C, after the final norm
        n_prefix = self.vit.num_prefix_tokens
        patches = t[:, n_prefix:].transpose(1, 2).reshape(b, t.shape[-1], h // p, w // p)
        return ViTTokens(patches, t[:, 0], t[:, 1:n_prefix])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).patches
