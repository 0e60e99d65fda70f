"""Loading a checkpoint's weights into a network, strictly, with one logged paragraph per load
(:class:`LoadReport`); and the checkpoint our trainers write (:func:`model_checkpoint`).

The layouts, their detection and the backbone weights of each are :mod:`maskcontrast.models.checkpoint`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from maskcontrast.config import ModelConfig
from maskcontrast.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    IGNORABLE,
    LAYOUTS,
    ZOO_PREFIX,
    CheckpointError,
    describe_backbone,
    detect_layout,
    extract_backbone,
    infer_resnet_arch,
    layout_section,
    pos_grid,
    read_checkpoint,
)
from maskcontrast.models.vit import ViTSpec, infer_vit_spec

__all__ = [
    "LoadReport",
    "check_finite",
    "load_backbone",
    "load_backbone_weights",
    "model_config_from_checkpoint",
    "model_from_checkpoint",
    "zoo_model_config",
    "model_checkpoint",
]

# the logger of every load's paragraph, the same as the layouts' (users filter on it)
log = logging.getLogger("maskcontrast.models.checkpoint")

#: target-side keys a backbone may keep from its own init (a MoCo encoder's projection head)
_OWN_SKIP = re.compile(r"(fc|head)\.")


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
    have, want = pos_grid(int(pos.shape[1])), pos_grid(int(own.shape[1]))
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


def check_finite(weights: Mapping[str, Any], what: str) -> None:
    """Refuse weights holding NaN or Inf (a training that diverged before it was saved): every later
    output would be NaN, and an evaluation would fail far from the cause.

    Raises:
        CheckpointError: naming ``what`` (the file and its layout), how many tensors are bad and the first keys.
    """
    bad = [
        k
        for k, v in weights.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"{what}: {len(bad)} of its weight tensors hold NaN or Inf ({_first(bad, 5)}); the training that "
            "wrote it diverged: use an earlier checkpoint (e.g. last.prev.pt or an epoch file of the run)"
        )


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
    theirs = describe_backbone(ex.sd)
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
    check_finite(ex.sd, what)
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
        section, entry, _ = layout_section(ckpt, layout, "teacher", name)
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
    check_finite(weights, f"{name} ({layout} layout)")
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
