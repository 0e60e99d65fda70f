"""Every checkpoint layout the project meets: reading a file, detecting its layout and taking its
backbone weights apart (:func:`extract_backbone`). :mod:`maskcontrast.models.loading` loads them into
a network, strictly and reported.

Layouts (detected from the file's contents, never from its name; :data:`LAYOUTS` describes them):

* ``maskcontrast``: written by our trainers, ``{"format": "maskcontrast", "format_version": 1,
  "model_config": {...}, "model": state_dict, ...}``.
* ``moco``: the official MoCo (v1/v2) release and our ``maskcontrast.moco`` stage,
  ``{"state_dict": {"module.encoder_q.<key>": ...}, "arch": ..., "epoch": ...}``.
* ``torchvision``: a plain ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...,
  ``fc.weight``), optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``.
* ``timm_vit``: a ViT state dict in timm's key names, e.g. DINO's backbone-only ``*_pretrain.pth``.
* ``dino_full``: a full DINO training checkpoint ``{"teacher", "student", "optimizer", "epoch",
  "args", "dino_loss"}`` whose networks hold ``[module.]backbone.*`` and the DINO ``head.*``.
* ``dinov2``: a DINOv2 state dict (``mask_token``, ``ls1``/``ls2`` gammas, ``register_tokens``
  in the reg variants, a position embedding for 518 px).
* ``mae``: ``{"model": ViT encoder + MAE decoder}`` (the decoder is ignored).
* ``maskcontrast_zoo``: the official MaskContrast pretrained file, ``{"model": sd}`` or ``sd``
  with ``module.model_q.{backbone,decoder,head,classification_head}.*``, ``module.model_k.*``,
  ``module.queue``, ``module.queue_ptr``.
* ``maskcontrast_zoo_linear``: the official linear-finetuned file, ``backbone.*`` and ``decoder.*``
  where ``decoder.4`` is the 21-class 1x1 conv.

Each layout has ONE list of keys that may be ignored (:data:`IGNORABLE`); any other key the
backbone does not take, and any backbone key the file lacks, is an error naming the file, the
layout and the first such keys. Every load logs one paragraph (:meth:`maskcontrast.models.loading.LoadReport.paragraph`).

Every file is read with ``torch.load(..., weights_only=True)`` (``argparse.Namespace``, which DINO
and MAE store as ``args``, is the one class allowed besides plain data).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskcontrast.models.vit import arch_for_spec, infer_vit_spec

__all__ = [
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "MOCO_PREFIX",
    "ZOO_PREFIX",
    "LAYOUTS",
    "IGNORABLE",
    "Extracted",
    "read_checkpoint",
    "detect_layout",
    "layout_section",
    "extract_backbone",
    "backbone_state_dict",
    "infer_resnet_arch",
    "pos_grid",
    "infer_backbone_arch",
    "describe_backbone",
]

FORMAT = "maskcontrast"
FORMAT_VERSION = 1
MOCO_PREFIX = "module.encoder_q."
ZOO_PREFIX = "module.model_q."

#: layout -> what such a file looks like (for messages and docs/BACKBONES.md)
LAYOUTS: dict[str, str] = {
    "maskcontrast": "a maskcontrast checkpoint ({'format': 'maskcontrast', 'model_config', 'model'})",
    "maskcontrast_zoo": "the official MaskContrast pretrained file (module.model_q.backbone/decoder/head/"
    "classification_head, module.model_k, module.queue)",
    "maskcontrast_zoo_linear": "the official MaskContrast linear-finetuned file (backbone.*, decoder.0-3 DeepLab "
    "head, decoder.4 class conv)",
    "moco": "an official MoCo file ({'state_dict': {'module.encoder_q.*', 'module.encoder_k.*', 'module.queue'}})",
    "dino_full": "a full DINO training checkpoint ({'teacher', 'student'} with [module.]backbone.* and head.*)",
    "dinov2": "a DINOv2 state dict (mask_token, ls1/ls2 gammas, register_tokens in the reg variants)",
    "mae": "an MAE (or DeiT-style) file ({'model': ViT encoder [+ MAE decoder]})",
    "timm_vit": "a timm / DINO backbone-only ViT state dict (cls_token, pos_embed, patch_embed.*, blocks.*, norm.*)",
    "torchvision": "a torchvision ResNet state dict (conv1.*, layer1-4.*, fc.*)",
}

_MAE_DECODER = r"(mask_token$|decoder_embed\.|decoder_pos_embed$|decoder_blocks\.|decoder_norm\.|decoder_pred\.)"

#: layout -> the ONE list of (group name, regex on the file's key) that loading may leave out.
#: Keys are those of the state dict the layout loads from (``model``, ``state_dict``, the DINO
#: ``teacher`` / ``student`` entry, or the file itself), before any prefix is removed.
IGNORABLE: dict[str, tuple[tuple[str, str], ...]] = {
    "maskcontrast": (
        ("decoder", r"decoder\."),
        ("embedding head", r"embed_head\."),
        ("saliency head", r"saliency_head\."),
    ),
    "maskcontrast_zoo": (
        ("DeepLab head (decoder)", r"module\.model_q\.decoder\."),
        ("embedding head", r"module\.model_q\.head\."),
        ("saliency head", r"module\.model_q\.classification_head\."),
        ("momentum key model", r"module\.model_k\."),
        ("prototype queue", r"module\.queue(_ptr)?$"),
    ),
    "maskcontrast_zoo_linear": (("DeepLab head and class conv (decoder)", r"decoder\."),),
    # also DenseCL's and DetCon's files (maskcontrast.densecl / maskcontrast.detcon), which keep this layout
    "moco": (
        ("projection head", r"module\.encoder_q\.(fc|head)\."),
        ("momentum key encoder", r"module\.encoder_k\."),
        ("key queue", r"module\.queue(_ptr)?$"),
        ("DenseCL dense heads", r"module\.dense_head_[qk]\."),
        ("DenseCL dense queue", r"module\.dense_queue(_ptr)?$"),
        ("DetCon projectors and predictor", r"module\.(projector_[qk]|predictor)\."),
    ),
    "dino_full": (("DINO projection head", r"(module\.)?head\."),),
    "dinov2": (("iBOT mask token", r"mask_token$"),),
    "mae": (("MAE decoder", _MAE_DECODER), ("classifier", r"(head|fc_norm)\.")),
    "timm_vit": (("classifier", r"head\."),),
    "torchvision": (("ImageNet classifier", r"(module\.)?fc\."),),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not have the expected layout."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors have many types
        if "Weights only load failed" in str(err):
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: holds Python code or objects{what} beyond tensors and plain values, so it is refused: "
                "loading it would run code from the file. Save the weights as a plain state dict "
                "(tensors, numbers, strings, lists, dicts) and pass that file instead"
            ) from None
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); expected a complete file written by torch.save "
            "(a truncated or partial download fails like this: download it again)"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _is_resnet_state(sd: Any) -> bool:
    """A ResNet state dict, with or without DataParallel's ``module.`` prefix."""
    if not isinstance(sd, Mapping):
        return False
    keys = [k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k for k in sd]
    return "conv1.weight" in keys and any(isinstance(k, str) and k.startswith("layer1.") for k in keys)


def _has_prefix(sd: Any, prefix: str) -> bool:
    return isinstance(sd, Mapping) and any(isinstance(k, str) and k.startswith(prefix) for k in sd)


def _dino_entry(ckpt: Mapping[str, Any], key: str) -> Any:
    entry = ckpt.get(key)
    return entry if _has_prefix(entry, "backbone.") or _has_prefix(entry, "module.backbone.") else None


def detect_layout(ckpt: Mapping[str, Any], source: str = "checkpoint") -> str:
    """The layout of a loaded checkpoint: a key of :data:`LAYOUTS`.

    Raises:
        CheckpointError: none of them; the message names the source and lists the first top-level keys.
    """
    if ckpt.get("format") == FORMAT:
        version = ckpt.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: maskcontrast format version {version} is not supported "
                f"(this code reads version {FORMAT_VERSION})"
            )
        return "maskcontrast"
    if _dino_entry(ckpt, "teacher") is not None or _dino_entry(ckpt, "student") is not None:
        return "dino_full"
    if _has_prefix(ckpt.get("state_dict"), MOCO_PREFIX):
        return "moco"
    if _has_prefix(ckpt.get("model"), ZOO_PREFIX) or _has_prefix(ckpt, ZOO_PREFIX):
        return "maskcontrast_zoo"
    if "backbone.conv1.weight" in ckpt and "decoder.4.weight" in ckpt:
        return "maskcontrast_zoo_linear"
    model = ckpt.get("model")
    if isinstance(model, Mapping) and "patch_embed.proj.weight" in model:
        return "mae"
    if "patch_embed.proj.weight" in ckpt:
        dinov2 = "mask_token" in ckpt or "register_tokens" in ckpt or any(".ls1.gamma" in str(k) for k in ckpt)
        return "dinov2" if dinov2 else "timm_vit"
    for cand in (ckpt, ckpt.get("state_dict"), model):
        if _is_resnet_state(cand):
            return "torchvision"
    keys = list(ckpt)[:8]
    raise CheckpointError(
        f"{source}: unknown checkpoint layout (top-level keys {keys}); expected one of: "
        + "; ".join(f"{name}: {what}" for name, what in LAYOUTS.items())
        + " (see docs/BACKBONES.md)"
    )


@dataclass
class Extracted:
    """The backbone weights of a checkpoint, in the backbone's own key names (timm's for a ViT,
    torchvision's for a ResNet), and what was left out.

    Attributes:
        sd: the backbone state dict.
        ignored: group name -> the file keys of that :data:`IGNORABLE` group.
        unexpected: file keys neither in the backbone nor ignorable (an error when loading).
        entry: the checkpoint entry read (``model``, ``state_dict``, ``teacher`` ...; None: the file).
        other_entries: top-level entries not read (optimizer, epoch, args, the other DINO network ...).
        notes: renames done on the way (DINOv2 register tokens, the class position folded in).
    """

    sd: dict[str, torch.Tensor]
    ignored: dict[str, list[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    entry: str | None = None
    other_entries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def layout_section(
    ckpt: Mapping[str, Any], layout: str, init_key: str, source: str
) -> tuple[Mapping[str, Any], str | None, str]:
    """``(state dict, entry name, prefix of the backbone keys)`` of ``layout``."""
    if layout == "maskcontrast":
        model = ckpt["model"]
        return model, "model", "backbone.vit." if _has_prefix(model, "backbone.vit.") else "backbone."
    if layout == "moco":
        return ckpt["state_dict"], "state_dict", MOCO_PREFIX
    if layout == "dino_full":
        if init_key not in ("teacher", "student"):
            raise CheckpointError(f"{source}: init_key must be teacher or student, got {init_key!r}")
        entry = _dino_entry(ckpt, init_key)
        if entry is None:
            raise CheckpointError(
                f"{source}: full DINO checkpoint without a '{init_key}' network "
                f"(entries {sorted(ckpt)}); choose another init_key"
            )
        return entry, init_key, "module.backbone." if _has_prefix(entry, "module.backbone.") else "backbone."
    if layout == "maskcontrast_zoo":
        model = ckpt.get("model")
        return (
            (model, "model", ZOO_PREFIX + "backbone.")
            if _has_prefix(model, ZOO_PREFIX)
            else (ckpt, None, ZOO_PREFIX + "backbone.")
        )
    if layout == "maskcontrast_zoo_linear":
        return ckpt, None, "backbone."
    if layout == "mae":
        return ckpt["model"], "model", ""
    if layout in ("dinov2", "timm_vit"):
        return ckpt, None, ""
    for name in (None, "state_dict", "model"):
        cand = ckpt if name is None else ckpt.get(name)
        if _is_resnet_state(cand):
            prefix = "module." if all(str(k).startswith("module.") for k in cand) else ""
            return cand, name, prefix
    raise CheckpointError(f"{source}: no ResNet weights found")  # pragma: no cover - detect_layout guards


def extract_backbone(
    ckpt: Mapping[str, Any], layout: str | None = None, init_key: str = "teacher", source: str = "checkpoint"
) -> Extracted:
    """Split a checkpoint into backbone weights, ignorable keys (grouped) and unexpected keys.

    DINOv2's ``register_tokens`` become timm's ``reg_token``; ``mask_token`` is ignored.
    """
    layout = layout or detect_layout(ckpt, source)
    section, entry, prefix = layout_section(ckpt, layout, init_key, source)
    rules = [(name, re.compile(rx)) for name, rx in IGNORABLE[layout]]
    out = Extracted({}, entry=entry)
    out.other_entries = [str(k) for k in ckpt if k != entry] if entry is not None else []
    for key, value in section.items():
        key = str(key)
        group = next((name for name, rx in rules if rx.match(key)), None)
        if group is not None:
            out.ignored.setdefault(group, []).append(key)
        elif key.startswith(prefix) and isinstance(value, torch.Tensor):
            out.sd[key[len(prefix) :]] = value
        else:
            out.unexpected.append(key)
    if "register_tokens" in out.sd:
        out.sd["reg_token"] = out.sd.pop("register_tokens")
        out.notes.append("register_tokens renamed reg_token")
    return out


def backbone_state_dict(
    ckpt: Mapping[str, Any], layout: str | None = None, init_key: str = "teacher"
) -> dict[str, torch.Tensor]:
    """The backbone weights of a checkpoint with torchvision (ResNet) or timm (ViT) names."""
    return extract_backbone(ckpt, layout, init_key).sd


def infer_resnet_arch(sd: Mapping[str, torch.Tensor]) -> str:
    """resnet18/34/50/101 from the block counts and block type of a ResNet state dict."""
    bottleneck = "layer1.0.conv3.weight" in sd
    blocks = tuple(len({m.group(1) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in range(1, 5))
    table = {
        (False, (2, 2, 2, 2)): "resnet18",
        (False, (3, 4, 6, 3)): "resnet34",
        (True, (3, 4, 6, 3)): "resnet50",
        (True, (3, 4, 23, 3)): "resnet101",
    }
    try:
        return table[(bottleneck, blocks)]
    except KeyError:
        raise CheckpointError(f"not a known ResNet: blocks per stage {blocks}, bottleneck={bottleneck}") from None


def pos_grid(n_tokens: int) -> tuple[int, int] | None:
    """``(prefix positions, grid side)`` of a square position embedding of ``n_tokens`` rows."""
    for prefix in (0, 1):
        side = math.isqrt(n_tokens - prefix)
        if side * side == n_tokens - prefix and side > 0:
            return prefix, side
    return None


def infer_backbone_arch(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The backbone config of a bare backbone state dict, from its tensors.

    Returns ``{"arch": ...}`` for a ResNet, ``{"arch", "vit": {"img_size", "dim", "depth"}}`` for
    a ViT (``dim`` / ``depth`` 0 for a published variant; ``img_size`` where the stored position
    embedding needs no interpolation).

    Raises:
        CheckpointError: neither a known ResNet nor a ViT of a known family.
    """
    spec = infer_vit_spec(sd)
    if spec is None:
        return {"arch": infer_resnet_arch(sd)}
    found = arch_for_spec(spec)
    if found is None:
        raise CheckpointError(f"not a ViT variant this project builds ({spec.describe()}); see docs/BACKBONES.md")
    arch, dim, depth = found
    pos = sd.get("pos_embed")
    grid = pos_grid(int(pos.shape[1])) if isinstance(pos, torch.Tensor) and pos.ndim == 3 else None
    img_size = grid[1] * spec.patch if grid else 224
    return {"arch": arch, "vit": {"img_size": img_size, "dim": dim, "depth": depth}}


def describe_backbone(sd: Mapping[str, torch.Tensor]) -> str:
    """The backbone a bare state dict holds, in words (for messages), or why it is none we know."""
    try:
        found = infer_backbone_arch(sd)
    except CheckpointError as err:
        return str(err)
    spec = infer_vit_spec(sd)
    return found["arch"] + (f" ({spec.describe()})" if spec is not None else "")
