"""One loader for every checkpoint layout the project meets, loaded strictly and reported.

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
layout and the first such keys. Every load logs one paragraph (:meth:`LoadReport.paragraph`).

Every file is read with ``torch.load(..., weights_only=True)`` (``argparse.Namespace``, which DINO
and MAE store as ``args``, is the one class allowed besides plain data).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from maskcontrast.config import ModelConfig
from maskcontrast.models.vit import ViTSpec, arch_for_spec, infer_vit_spec

__all__ = [
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "LAYOUTS",
    "IGNORABLE",
    "LoadReport",
    "Extracted",
    "read_checkpoint",
    "detect_layout",
    "extract_backbone",
    "backbone_state_dict",
    "infer_resnet_arch",
    "infer_backbone_arch",
    "load_backbone",
    "load_backbone_weights",
    "model_config_from_checkpoint",
    "model_from_checkpoint",
    "zoo_model_config",
    "model_checkpoint",
]

log = logging.getLogger(__name__)

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

#: target-side keys a backbone may keep from its own init (a MoCo encoder's projection head)
_OWN_SKIP = re.compile(r"(fc|head)\.")


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


def _section(
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
    section, entry, prefix = _section(ckpt, layout, init_key, source)
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


def _pos_grid(n_tokens: int) -> tuple[int, int] | None:
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
    grid = _pos_grid(int(pos.shape[1])) if isinstance(pos, torch.Tensor) and pos.ndim == 3 else None
    img_size = grid[1] * spec.patch if grid else 224
    return {"arch": arch, "vit": {"img_size": img_size, "dim": dim, "depth": depth}}


def _describe_file_backbone(sd: Mapping[str, torch.Tensor]) -> str:
    try:
        found = infer_backbone_arch(sd)
    except CheckpointError as err:
        return str(err)
    spec = infer_vit_spec(sd)
    return found["arch"] + (f" ({spec.describe()})" if spec is not None else "")


@dataclass
class LoadReport:
    """What one load did (:meth:`paragraph` is the log line)."""

    source: str
    layout: str
    arch: str
    loaded: int
    ignored: dict[str, list[str]] = field(default_factory=dict)
    entry: str | None = None
    other_entries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def paragraph(self) -> str:
        parts = [f"{self.source}: {self.layout} layout ({LAYOUTS.get(self.layout, '')})"]
        if self.entry:
            parts.append(f"read entry '{self.entry}'")
        parts.append(f"loaded {self.loaded} tensors into {self.arch}")
        if self.ignored:
            groups = ", ".join(f"{name}: {len(keys)} ({_glob(keys)})" for name, keys in self.ignored.items())
            parts.append(f"ignored {sum(map(len, self.ignored.values()))} keys [{groups}]")
        else:
            parts.append("ignored no keys")
        if self.other_entries:
            parts.append(f"entries not read: {', '.join(self.other_entries)}")
        parts.extend(self.notes)
        return "; ".join(parts)


def _glob(keys: list[str]) -> str:
    """A short pattern for a key group: their common dotted prefix + ``*``, or the single key."""
    if len(keys) == 1:
        return keys[0]
    split = [k.split(".") for k in keys]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common) + ".*" if common else ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")


def _first(keys: list[str], n: int = 10) -> str:
    keys = sorted(keys)
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def _load_target(backbone: nn.Module) -> nn.Module:
    """The module whose keys a file's backbone weights match: a ViTBackbone's timm model, else itself."""
    return getattr(backbone, "vit", backbone)


def _fit_pos_embed(sd: dict[str, torch.Tensor], target: nn.Module, notes: list[str]) -> None:
    """Make a ViT file's class token / position embedding fit ``target`` (a timm ViT), in place.

    A file that stores the class position in ``pos_embed`` while ``target`` keeps none
    (``no_embed_class``: DINOv2 with registers) gets it added to ``cls_token``; a grid of another
    size (DINOv2: 37 x 37 for 518 px) is interpolated bicubically to the target's grid.
    """
    from timm.layers import resample_abs_pos_embed

    pos, own = sd.get("pos_embed"), target.state_dict().get("pos_embed")
    if not isinstance(pos, torch.Tensor) or own is None or tuple(pos.shape) == tuple(own.shape):
        return
    have, want = _pos_grid(int(pos.shape[1])), _pos_grid(int(own.shape[1]))
    if have is None or want is None or pos.shape[-1] != own.shape[-1]:
        return  # left for the shape check to report
    if have[0] == 1 and want[0] == 0 and "cls_token" in sd:
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        pos = pos[:, 1:]
        have = (0, have[1])
        notes.append("class position embedding added to cls_token (the model keeps none)")
    if have[0] != want[0]:
        return
    if have[1] != want[1]:
        pos = resample_abs_pos_embed(pos.float(), [want[1], want[1]], [have[1], have[1]], num_prefix_tokens=have[0])
        notes.append(
            f"position embedding interpolated from {have[1]}x{have[1]} to {want[1]}x{want[1]} tokens (bicubic)"
        )
    sd["pos_embed"] = pos.to(own.dtype)


def load_backbone(
    backbone: nn.Module, source: str | Path | Mapping[str, Any], init_key: str = "teacher", name: str | None = None
) -> LoadReport:
    """Load the backbone weights of ``source`` (a path or a loaded checkpoint) into ``backbone``
    strictly, and log one paragraph about it.

    ``backbone`` is a :class:`~maskcontrast.models.ResNetBackbone`, a
    :class:`~maskcontrast.models.ViTBackbone`, or a MoCo encoder (torchvision ResNet / timm ViT,
    whose own ``fc`` / ``head`` keep their init). ``init_key`` picks the DINO network.

    Raises:
        CheckpointError: unknown layout, a file of another family or variant than ``backbone``, or
            keys outside the layout's :data:`IGNORABLE` list; the message names the file, the
            layout and the first keys that did not fit.
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "checkpoint")
    ckpt = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    layout = detect_layout(ckpt, name)
    ex = extract_backbone(ckpt, layout, init_key, name)
    target = _load_target(backbone)
    own = {k: v for k, v in target.state_dict().items() if not _OWN_SKIP.match(k)}
    arch = str(getattr(backbone, "arch", type(backbone).__name__))
    theirs = _describe_file_backbone(ex.sd)
    own_spec: ViTSpec | None = infer_vit_spec(own)
    file_spec = infer_vit_spec(ex.sd)
    what = f"{name}: looked like {LAYOUTS[layout].split(' (')[0]} ({layout} layout)"
    if (own_spec is None) != (file_spec is None) and ex.sd:
        want = f"a ViT ({own_spec.describe()})" if own_spec else "a ResNet"
        raise CheckpointError(
            f"{what} holding {theirs}, but the model's backbone is {arch}, {want}; set "
            f"model.backbone.arch to the file's variant"
        )
    if own_spec is not None and file_spec is not None and own_spec != file_spec:
        raise CheckpointError(
            f"{what} holding {theirs}, but model.backbone.arch is {arch} ({own_spec.describe()}); "
            "set model.backbone.arch (and backbone.vit.dim/depth) to the file's variant"
        )
    if own_spec is not None:
        _fit_pos_embed(ex.sd, target, ex.notes)
    missing = [k for k in own if k not in ex.sd]
    unexpected = ex.unexpected + [k for k in ex.sd if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{what} but does not fit the {arch} backbone (the file looks like {theirs}); "
            f"missing keys {_first(missing)}, unexpected keys {_first(unexpected)}; only these may be left out "
            f"for this layout: {[rx for _, rx in IGNORABLE[layout]]}"
        )
    bad = [
        f"{k} {tuple(ex.sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if tuple(ex.sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{what} but its shapes do not fit the {arch} backbone (file vs model): {bad[:10]}")
    result = target.load_state_dict(ex.sd, strict=False)
    assert not result.unexpected_keys and all(_OWN_SKIP.match(k) for k in result.missing_keys)
    report = LoadReport(name, layout, arch, len(ex.sd), ex.ignored, ex.entry, ex.other_entries, ex.notes)
    log.info("%s", report.paragraph())
    return report


def load_backbone_weights(
    backbone: nn.Module, source: str | Path | Mapping[str, Any], init_key: str = "teacher"
) -> str:
    """:func:`load_backbone`, returning only the detected layout."""
    return load_backbone(backbone, source, init_key).layout


def model_checkpoint(model: nn.Module, model_cfg: ModelConfig | Any, **extra: Any) -> dict[str, Any]:
    """The dict our trainers save: format tag, the model config as plain data, the weights and
    any ``extra`` entries (optimizer, queue, ...). All values are weights-only loadable."""
    cfg = (
        OmegaConf.to_container(OmegaConf.structured(model_cfg), resolve=True)
        if not isinstance(model_cfg, dict)
        else model_cfg
    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": cfg,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def model_config_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> ModelConfig:
    """The :class:`ModelConfig` stored in a maskcontrast checkpoint (unknown keys are errors)."""
    try:
        base = OmegaConf.structured(ModelConfig)
        OmegaConf.set_struct(base, True)
        merged = OmegaConf.merge(base, ckpt["model_config"])
    except Exception as err:
        raise CheckpointError(f"{source}: invalid model_config ({err})") from err
    cfg: ModelConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.backbone.init = "random"  # the weights come from the checkpoint itself
    return cfg


def zoo_model_config(sd: Mapping[str, torch.Tensor], layout: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The :class:`ModelConfig` of an official MaskContrast zoo state dict and its weights in our names.

    ``maskcontrast_zoo`` (pretrained): ``module.model_q.{backbone,decoder}.*`` keep their names,
    ``head`` (the 1x1 embedding conv) becomes ``embed_head``, ``classification_head`` becomes
    ``saliency_head``. ``maskcontrast_zoo_linear``: ``decoder.4`` (the class conv) becomes
    ``embed_head``, so ``features`` are the 256-d decoder features and ``embed`` the normalised class
    scores; no saliency head. Both: dilated ResNet (depth from the blocks) at output stride 8 with
    the DeepLab head (ASPP 12/24/36), as the official code builds it.
    """
    if layout == "maskcontrast_zoo":
        q = {k[len(ZOO_PREFIX) :]: v for k, v in sd.items() if k.startswith(ZOO_PREFIX)}
        renames = {"head.": "embed_head.", "classification_head.": "saliency_head."}
    else:
        q = dict(sd)
        renames = {"decoder.4.": "embed_head."}
    weights: dict[str, torch.Tensor] = {}
    for k, v in q.items():
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        weights[k] = v
    bb = {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")}
    cfg = ModelConfig()
    cfg.backbone.arch = infer_resnet_arch(bb)
    cfg.backbone.output_stride = 8
    cfg.head = "deeplab"
    if "embed_head.weight" not in weights:
        raise CheckpointError("no embedding head / class conv (head.weight or decoder.4.weight) in the zoo file")
    cfg.embed_dim = int(weights["embed_head.weight"].shape[0])
    cfg.saliency_head = "saliency_head.weight" in weights
    return cfg, weights


def model_from_checkpoint(source: str | Path | Mapping[str, Any], name: str | None = None) -> nn.Module:
    """Rebuild a :class:`MaskContrastModel` from a maskcontrast checkpoint or an official MaskContrast
    zoo file (pretrained or linear-finetuned), weights loaded strictly; logs one report paragraph.

    Raises:
        CheckpointError: another layout, or weights that do not fit (naming the first keys).
    """
    from maskcontrast.models.segmenter import MaskContrastModel

    name = name or (str(source) if isinstance(source, (str, Path)) else "checkpoint")
    ckpt = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    layout = detect_layout(ckpt, name)
    ignored: dict[str, list[str]] = {}
    entry = None
    if layout == "maskcontrast":
        cfg = model_config_from_checkpoint(ckpt, name)
        weights = ckpt["model"]
        entry = "model"
    elif layout in ("maskcontrast_zoo", "maskcontrast_zoo_linear"):
        section, entry, _ = _section(ckpt, layout, "teacher", name)
        keep = ("module.model_q.",) if layout == "maskcontrast_zoo" else ("backbone.", "decoder.")
        drop = [
            (g, re.compile(rx))
            for g, rx in IGNORABLE["maskcontrast_zoo"]
            if g in ("momentum key model", "prototype queue")
        ]
        for k in section:
            group = next((g for g, rx in drop if rx.match(k)), None) if layout == "maskcontrast_zoo" else None
            if group:
                ignored.setdefault(group, []).append(k)
        try:
            cfg, weights = zoo_model_config({k: v for k, v in section.items() if k.startswith(keep)}, layout)
        except CheckpointError as err:
            raise CheckpointError(f"{name}: looked like {LAYOUTS[layout]} but {err}") from None
        dropped = {k for ks in ignored.values() for k in ks}
        weights.update({k: v for k, v in section.items() if not k.startswith(keep) and k not in dropped})  # unexpected
    else:
        raise CheckpointError(
            f"{name}: not a maskcontrast checkpoint: a {layout} file holds a backbone only; use it as "
            "model.backbone.init, or load_model() for features"
        )
    model = MaskContrastModel(cfg)
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{name}: looked like {LAYOUTS[layout]} ({layout} layout) but its weights do not fit the model "
            f"({cfg.backbone.arch}, {cfg.head} head); missing keys {_first(result.missing_keys)}, "
            f"unexpected keys {_first(result.unexpected_keys)}"
        )
    other = [str(k) for k in ckpt if k != entry] if entry else []
    report = LoadReport(name, layout, f"the full {cfg.backbone.arch} model", len(weights), ignored, entry, other)
    log.info("%s", report.paragraph())
    return model
