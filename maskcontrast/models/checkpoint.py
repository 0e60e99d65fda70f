"""One loader for every checkpoint layout the project meets.

Layouts (detected from the file's contents, never from its name):

* ``maskcontrast``: written by our trainers, ``{"format": "maskcontrast", "format_version": 1,
  "model_config": {...}, "model": state_dict, ...}``.
* ``moco``: the official MoCo (v1/v2) release and our ``maskcontrast.moco`` stage,
  ``{"state_dict": {"module.encoder_q.<resnet key>": ...}, "arch": ..., "epoch": ...}``.
* ``torchvision``: a plain ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...,
  ``fc.weight``), optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``.

Every file is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from maskcontrast.config import ModelConfig

__all__ = [
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "read_checkpoint",
    "detect_layout",
    "backbone_state_dict",
    "infer_resnet_arch",
    "load_backbone_weights",
    "model_config_from_checkpoint",
    "model_from_checkpoint",
    "model_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "maskcontrast"
FORMAT_VERSION = 1
MOCO_PREFIX = "module.encoder_q."


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not have the expected layout."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
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
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _is_resnet_state(sd: Mapping[str, Any]) -> bool:
    """A ResNet state dict, with or without DataParallel's ``module.`` prefix."""
    if not isinstance(sd, Mapping):
        return False
    keys = [k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k for k in sd]
    return "conv1.weight" in keys and any(isinstance(k, str) and k.startswith("layer1.") for k in keys)


def detect_layout(ckpt: Mapping[str, Any], source: str = "checkpoint") -> str:
    """``"maskcontrast"``, ``"moco"`` or ``"torchvision"``.

    Raises:
        CheckpointError: none of them; the message lists the first top-level keys.
    """
    if ckpt.get("format") == FORMAT:
        version = ckpt.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{source}: maskcontrast format version {version} is not supported "
                                  f"(this code reads version {FORMAT_VERSION})")  # fmt: skip
        return "maskcontrast"
    sd = ckpt.get("state_dict")
    if isinstance(sd, Mapping) and any(str(k).startswith(MOCO_PREFIX) for k in sd):
        return "moco"
    for cand in (ckpt, sd, ckpt.get("model")):
        if isinstance(cand, Mapping) and _is_resnet_state(cand):
            return "torchvision"
    keys = list(ckpt)[:8]
    raise CheckpointError(
        f"{source}: unknown checkpoint layout (top-level keys {keys}); expected a maskcontrast "
        "checkpoint, an official MoCo file ({'state_dict': {'module.encoder_q.*'}}) or a torchvision ResNet state dict"
    )


def backbone_state_dict(ckpt: Mapping[str, Any], layout: str | None = None) -> dict[str, torch.Tensor]:
    """The ResNet weights of a checkpoint with torchvision names (``fc.*`` kept when present)."""
    layout = layout or detect_layout(ckpt)
    if layout == "maskcontrast":
        return {k[len("backbone.") :]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    if layout == "moco":
        return {k[len(MOCO_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MOCO_PREFIX)}
    for cand in (ckpt, ckpt.get("state_dict"), ckpt.get("model")):
        if isinstance(cand, Mapping) and _is_resnet_state(cand):
            return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in cand.items()}
    raise CheckpointError("no ResNet weights found")  # pragma: no cover - detect_layout guards


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


def load_backbone_weights(backbone: nn.Module, source: str | Path | Mapping[str, Any]) -> str:
    """Load the ResNet weights of ``source`` (a path or a loaded checkpoint) into ``backbone``.

    Only ``fc.*`` keys may be unexpected (the classifier or MoCo's MLP) or missing; any other
    mismatch is an error that lists the keys. Returns the detected layout.
    """
    name = str(source) if isinstance(source, (str, Path)) else "checkpoint"
    ckpt = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    layout = detect_layout(ckpt, name)
    sd = backbone_state_dict(ckpt, layout)
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in sd and not k.startswith("fc."))
    unexpected = sorted(k for k in sd if k not in own and not k.startswith("fc."))
    if missing or unexpected:
        arch = getattr(backbone, "arch", "?")
        try:
            theirs = infer_resnet_arch(sd)
        except CheckpointError:
            theirs = "unknown"
        raise CheckpointError(
            f"{name}: {layout} checkpoint does not fit the {arch} backbone (checkpoint looks like {theirs}); "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    bad_shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad_shapes:
        raise CheckpointError(f"{name}: shape mismatch for {bad_shapes[:10]}")
    backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)
    log.info("loaded %s backbone weights from %s", layout, name)
    return layout


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


def model_from_checkpoint(source: str | Path | Mapping[str, Any]) -> nn.Module:
    """Rebuild a :class:`MaskContrastModel` from a maskcontrast checkpoint, weights loaded strictly."""
    from maskcontrast.models.segmenter import MaskContrastModel

    name = str(source) if isinstance(source, (str, Path)) else "checkpoint"
    ckpt = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    if detect_layout(ckpt, name) != "maskcontrast":
        raise CheckpointError(f"{name}: not a maskcontrast checkpoint")
    model = MaskContrastModel(model_config_from_checkpoint(ckpt, name))
    result = model.load_state_dict(ckpt["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{name}: weights do not fit the stored model_config; missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}"
        )
    return model
