"""Configuration: dataclass-backed OmegaConf schemas, YAML files and ``key=value`` overrides.

Every stage declares its options as a dataclass. :func:`load_config` merges, in order, the
schema defaults, a YAML file and command-line overrides. The merged config is in struct mode,
so an unknown key anywhere is an error that names the key and where it came from, and a value of
the wrong type is an error that names the key and the expected type.

Example::

    from dataclasses import dataclass, field
    from maskcontrast.config import load_config

    @dataclass
    class Cfg:
        lr: float = 0.1
        model: ModelConfig = field(default_factory=ModelConfig)

    cfg = load_config(Cfg, "configs/x.yaml", ["lr=0.01", "model.backbone.arch=resnet18"])
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "bounded",
    "checks",
    "check_values",
    "RESNET_ARCHS",
    "VIT_ARCHS",
    "ViTConfig",
    "BackboneConfig",
    "ModelConfig",
    "load_config",
    "DEPRECATED_KEYS",
    "apply_deprecated_keys",
    "save_config",
    "config_to_dict",
    "add_config_arguments",
    "resolve_config",
    "DataSourceConfig",
    "RegionsConfig",
    "DataConfig",
    "AugmentConfig",
    "OptimConfig",
    "TrainerConfig",
    "MaskContrastObjectiveConfig",
    "PretrainConfig",
    "MocoModelConfig",
    "MocoObjectiveConfig",
    "MocoConfig",
    "DetConModelConfig",
    "DetConObjectiveConfig",
    "DetConConfig",
    "DenseCLModelConfig",
    "DenseCLObjectiveConfig",
    "DenseCLConfig",
    "StegoObjectiveConfig",
    "StegoConfig",
]


#: the ImageNet normalisation every network of the project expects (RGB in [0, 1])
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (unknown key, wrong type, bad value)."""


# ----------------------------------------------------------------------------------------------
# Value checks declared in the schema
# ----------------------------------------------------------------------------------------------


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    each: bool = False,
) -> Any:
    """A dataclass field with a default and the values it accepts, checked by :func:`check_values`
    (every :func:`load_config` and :func:`resolve_config`); None passes when the field's type allows it.

    ``each=True``: the bounds apply to every item of a list value. ``default`` may be a callable
    (a default factory, for lists).
    """
    meta = checks(ge=ge, gt=gt, le=le, lt=lt, choices=choices, each=each)
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def checks(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    each: bool = False,
) -> dict[str, Any]:
    """The ``metadata`` of a field with bounds (as :func:`bounded`), for ``field(default_factory=...,
    metadata=checks(...))``."""
    return {
        "check": {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices else None, "each": each}
    }


def _value_problem(value: Any, rule: dict[str, Any]) -> str | None:
    if rule["choices"] is not None and value not in rule["choices"]:
        return f"must be one of {', '.join(map(str, rule['choices']))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and math.isnan(value):
        return "must be a number, got nan"
    for op, bound, ok in (
        ("ge", ">=", lambda a, b: a >= b),
        ("gt", ">", lambda a, b: a > b),
        ("le", "<=", lambda a, b: a <= b),
        ("lt", "<", lambda a, b: a < b),
    ):
        if rule[op] is not None and not ok(value, rule[op]):
            return f"must be {bound} {rule[op]}"
    return None


def check_values(cfg: DictConfig, source: str = "config", prefix: str = "") -> None:
    """Check every value against the bounds its schema field declares (:func:`bounded`).

    Interpolations that are not resolved yet are skipped (:func:`resolve_config` checks again).

    Raises:
        ConfigError: the first value out of range; the message names the key, the rule and the value.
    """
    from omegaconf import ListConfig

    schema = OmegaConf.get_type(cfg)
    rules = (
        {f.name: f.metadata["check"] for f in dataclasses.fields(schema) if "check" in f.metadata}
        if schema is not None and dataclasses.is_dataclass(schema)
        else {}
    )
    for key in list(cfg):
        key = str(key)
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        node = cfg._get_node(key)  # type: ignore[union-attr]
        value = cfg[key]
        if isinstance(value, DictConfig):
            check_values(value, source, f"{prefix}{key}.")
            continue
        if isinstance(value, ListConfig):
            for i, item in enumerate(value):
                if isinstance(item, DictConfig):
                    check_values(item, source, f"{prefix}{key}.{i}.")
        rule = rules.get(key)
        if rule is None or value is None or node is None:
            continue
        items = list(value) if rule["each"] and isinstance(value, ListConfig) else [value]
        for item in items:
            problem = _value_problem(item, rule)
            if problem:
                shown = list(value) if isinstance(value, ListConfig) else value
                raise ConfigError(
                    f"{source}: key '{prefix}{key}' {problem}, got {shown!r}; fix it in the config file "
                    f"or as an override ({prefix}{key}=...)"
                )


# ----------------------------------------------------------------------------------------------
# Shared schemas
# ----------------------------------------------------------------------------------------------


RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: timm ViT names ``model.backbone.arch`` accepts (their shapes: ``maskcontrast.models.vit.VIT_SPECS``)
VIT_ARCHS = (
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_small_patch8_224",
    "vit_base_patch8_224",
    "vit_small_patch14_dinov2",
    "vit_base_patch14_dinov2",
    "vit_large_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2",
    "vit_base_patch14_reg4_dinov2",
    "vit_large_patch14_reg4_dinov2",
)


@dataclass
class ViTConfig:
    """Options that only a ViT backbone reads (see docs/BACKBONES.md).

    ``img_size`` is the input side at which the position embedding is stored; any other input
    size (a multiple of the patch size) interpolates it on the fly, and a checkpoint stored at
    another size (DINOv2: 518 px) is interpolated to it when loaded. ``dim`` / ``depth`` (0 = the
    arch's own) shrink a ViT for tests and quick experiments; heads are ``max(1, dim // 64)``.
    """

    img_size: int = bounded(224, ge=8)
    dim: int = bounded(0, ge=0)
    depth: int = bounded(0, ge=0)
    drop_path_rate: float = bounded(0.0, ge=0.0, lt=1.0)


@dataclass
class BackboneConfig:
    """A dilated torchvision ResNet or a timm ViT.

    ``init`` is ``random``, ``torchvision`` (torchvision's own ImageNet weights, needs internet
    or a warm torch hub cache; ResNets only) or the path to a checkpoint file of any layout of
    docs/BACKBONES.md (MoCo, torchvision, DINO, DINOv2, MAE, the official MaskContrast zoo, ours).
    The layout of a file is detected from its contents. ``init_key`` picks the network of a full
    DINO training checkpoint (``teacher``, the default, or ``student``).

    ``output_stride`` applies to ResNets; a ViT's feature stride is its patch size.
    """

    arch: str = bounded("resnet50", choices=RESNET_ARCHS + VIT_ARCHS)
    output_stride: int = bounded(8, choices=(8, 16))  # 8 (paper) or 16; ResNets only
    init: str = "random"
    init_key: str = bounded("teacher", choices=("teacher", "student"))
    vit: ViTConfig = field(default_factory=ViTConfig)


@dataclass
class ModelConfig:
    """Backbone -> head (DeepLabv3, light or STEGO) -> embedding head and saliency head.

    ``head``: ``deeplab`` (ASPP + 3x3 conv, the paper), ``light`` (1x1 + 3x3 conv), ``stego``
    (docs/OBJECTIVES.md) or ``auto``
    (deeplab on a ResNet, light on a ViT: a ViT's tokens already mix the whole image through
    self-attention, so ASPP's atrous context adds little, and on a 14-16 px token grid its
    dilations mostly sample padding).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head_channels: int = bounded(256, ge=1)
    aspp_rates: list[int] | None = None  # None: 12/24/36 at OS8, 6/12/18 at OS16
    embed_dim: int = bounded(32, ge=1)
    saliency_head: bool = True
    # deeplab: ASPP decoder -> 1x1 embedding (MaskContrast); light: 1x1 + 3x3 conv decoder (docs/BACKBONES.md);
    # auto: deeplab on a ResNet, light on a ViT; stego: a linear plus a nonlinear 1x1 branch straight on the
    # backbone features (the STEGO head, docs/OBJECTIVES.md)
    head: str = bounded("auto", choices=("auto", "deeplab", "light", "stego"))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` (list items by index) exists, without resolving interpolations, so
    that a key whose value reads an unset environment variable can still be overridden."""
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    if isinstance(node, DictConfig):
        return last in node
    from omegaconf import ListConfig

    return isinstance(node, ListConfig) and last.isdigit() and int(last) < len(node)


def load_config(
    schema: type[T] | T,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Merge ``schema`` defaults, the YAML file at ``path`` and ``key=value`` overrides.

    Args:
        schema: a dataclass type or instance declaring every allowed key.
        path: an optional YAML file.
        overrides: dotted ``key=value`` strings, e.g. ``["optim.lr=0.01"]``.

    Returns:
        A read-only-structure ``DictConfig`` (struct mode: new keys are refused).

    Raises:
        ConfigError: a missing file, invalid YAML, an unknown key or a value of the wrong type.
            The message names the file or the override and the key.
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as err:  # yaml errors have several types
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        try:
            base = OmegaConf.merge(base, file_cfg)
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(f"{path}: unknown {_describe(err)}; check the spelling against the schema") from err
        except (ValidationError, OmegaConfBaseException) as err:
            raise ConfigError(f"{path}: {_describe(err)}") from err
        except (TypeError, ValueError) as err:  # e.g. a mapping where the schema has a list
            raise ConfigError(f"{path}: {err}") from err
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        # list items are addressed by index: data.sources.0.masks=DIR
        if not _has_key(base, key):
            raise ConfigError(
                f"override '{item}': unknown key '{key}'; check the spelling against the schema "
                "(--help lists every key)"
            )
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]), resolve=False)["v"]  # type: ignore[index]
            OmegaConf.update(base, key, parsed, merge=True)
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(f"override '{item}': unknown {_describe(err)}") from err
        except (ValidationError, OmegaConfBaseException, TypeError, ValueError) as err:
            raise ConfigError(
                f"override '{item}': {_describe(err) if isinstance(err, OmegaConfBaseException) else err}"
            ) from err
    OmegaConf.set_struct(base, True)
    source = " with ".join(([str(path)] if path is not None else []) + (["overrides"] if overrides else [])) or "config"
    check_values(base, source)  # first: an error names the key as it was written
    apply_deprecated_keys(base, source)
    return base


#: old key -> its new name; the old key still works for one release, with a warning
DEPRECATED_KEYS = {"objective.momentum": "objective.key_momentum"}


def apply_deprecated_keys(cfg: DictConfig, source: str = "config") -> None:
    """Move the value of every deprecated key that is set (not None) to its new key, with a warning
    naming both (:data:`DEPRECATED_KEYS`); the old key is then None."""
    import warnings

    for old, new in DEPRECATED_KEYS.items():
        value = OmegaConf.select(cfg, old, default=None, throw_on_missing=False)
        if value is None or OmegaConf.select(cfg, new, default=_MISSING, throw_on_missing=False) is _MISSING:
            continue
        message = f"{source}: '{old}' is deprecated, use '{new}' (its value {value} is used as {new})"
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        logging.getLogger(__name__).warning(message)
        OmegaConf.update(cfg, new, value, merge=True)
        OmegaConf.update(cfg, old, None, merge=True)


_MISSING = object()


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")


def config_to_dict(cfg: DictConfig | Any) -> dict:
    """A plain ``dict`` of the config (safe to store in a ``weights_only`` checkpoint)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """Add ``--config FILE`` and positional ``key=value`` overrides to a parser."""
    parser.add_argument("--config", default=default, help="YAML config file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01")


# ----------------------------------------------------------------------------------------------
# Training schemas (pretraining and the MoCo stage share data, augmentation, optimiser, trainer)
# ----------------------------------------------------------------------------------------------


@dataclass
class DataSourceConfig:
    """One image collection: a registered dataset reader (``maskcontrast.data.build_dataset``).

    ``masks`` is a folder of object masks ``<masks>/<id>.png`` (0 = background, 1..n = objects,
    or 0/255), e.g. the output of ``python -m saliency.generate`` or the official precomputed
    masks; None falls back to ``data.masks`` and then to the dataset's own object masks
    (Pet trimaps, DAVIS, Weizmann, SOD, coco128).
    """

    name: str = "???"  # voc | msrc | pet | coco128 | davis2016 | weizmann | saliency_folder | image_folder
    root: str = "???"
    split: str | None = None  # None: the reader's default split
    masks: str | None = None
    ids: str | None = None  # optional text file with the ids to use, one per line
    limit: int = bounded(0, ge=0)  # > 0: use only this many images, evenly spaced over the (sorted) ids


@dataclass
class RegionsConfig:
    """Region masks made from the image itself (``data.mask_source: felzenszwalb | grid``), see
    :mod:`maskcontrast.data.regions`. Felzenszwalb runs on the image as kept in memory
    (``data.load_size``), once per image, cached under ``cache_dir``."""

    grid_cells: int = bounded(4, ge=1, le=15)  # grid: cells per side
    scale: float = bounded(100.0, gt=0.0)  # felzenszwalb: larger -> larger segments
    sigma: float = bounded(0.8, ge=0.0)  # felzenszwalb: Gaussian pre-smoothing
    min_size: int = bounded(50, ge=1)  # felzenszwalb: smallest segment, pixels at data.load_size
    max_regions: int = bounded(32, ge=1, le=255)  # felzenszwalb: the smallest segments are merged down to this
    cache_dir: str | None = "~/.cache/maskcontrast/regions"  # null: recompute every time (no disk cache)


@dataclass
class DataConfig:
    """Where training images (and object masks) come from and how they are loaded on the CPU."""

    sources: list[DataSourceConfig] = field(default_factory=list)
    masks: str | None = None  # default masks folder for sources that set none
    image_size: int = bounded(224, ge=8)  # side of every augmented view
    load_size: int = bounded(0, ge=0)  # longer image side kept in memory before cropping; 0 = 1.5 x image_size
    min_mask_fraction: float = bounded(
        0.01, ge=0.0, le=1.0
    )  # an image whose object mask covers less is skipped (counted)
    num_workers: int = bounded(2, ge=0)  # DataLoader worker processes (0 = load in the main process)
    cache_images: bool = False  # keep resized images in RAM after their first load (best with num_workers=0)
    # the masks of an objective that needs them: masks (the sources' masks folders / own masks, e.g.
    # saliency.generate's), felzenszwalb (segments of the image) or grid (data.regions.grid_cells^2 cells)
    mask_source: str = bounded("masks", choices=("masks", "felzenszwalb", "grid"))
    regions: RegionsConfig = field(default_factory=RegionsConfig)


@dataclass
class AugmentConfig:
    """Paired view augmentation (batched with kornia on the training device)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0], metadata=checks(gt=0.0, le=1.0, each=True))
    crop_ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0], metadata=checks(gt=0.0, each=True))
    # a view is redrawn until its mask covers at least min_mask_area of the crop and at most max_mask_area
    min_mask_area: float = bounded(0.01, ge=0.0, le=1.0)
    max_mask_area: float = bounded(0.99, ge=0.0, le=1.0)
    # redraws per view before another image is drawn
    view_attempts: int = bounded(3, ge=1)
    # brightness, contrast, saturation, hue
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    color_jitter_p: float = bounded(0.8, ge=0.0, le=1.0)
    grayscale_p: float = bounded(0.2, ge=0.0, le=1.0)
    # MoCo v2: 0.5
    blur_p: float = bounded(0.0, ge=0.0, le=1.0)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0], metadata=checks(gt=0.0, each=True))
    flip_p: float = bounded(0.5, ge=0.0, le=1.0)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay, and its learning-rate schedule (:mod:`maskcontrast.schedules`)."""

    # global batch (split evenly over DDP processes)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(0.004, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    nesterov: bool = False
    schedule: str = bounded("poly", choices=("poly", "cosine", "constant"))
    poly_power: float = bounded(0.9, gt=0.0)
    # linear warm-up from 0
    warmup_steps: int = bounded(0, ge=0)
    # step: the schedule moves every step; epoch: it holds for a whole epoch (the official poly schedule)
    schedule_unit: str = bounded("step", choices=("step", "epoch"))


@dataclass
class TrainerConfig:
    """The training loop, its run folder and its hardware settings."""

    run_dir: str = "runs/pretrain"
    epochs: int = bounded(40, ge=0)
    max_steps: int | None = bounded(0, ge=0)  # > 0: a step budget; the schedule spans this many steps (0 or null: none)
    resume: str = "none"  # none | auto (continue from <run_dir>/last.pt when it exists) | path to a last.pt
    overwrite: bool = False  # allow starting afresh in a run folder that already holds a run
    save_every_epochs: int = bounded(10, ge=0)  # also keep epoch_<n>.pt every n epochs (0 = never)
    save_every_steps: int = bounded(0, ge=0)  # refresh last.pt every n steps (0 = at epoch ends and at the end only)
    log_every_steps: int = bounded(10, ge=1)  # TensorBoard scalars every n steps
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:1 ...
    precision: str = bounded("fp32", choices=("fp32", "bf16", "fp16"))  # autocast
    channels_last: bool = True  # NHWC: the fast path (fp32 loss within 1e-5 of NCHW, tests/maskcontrast/test_train.py)
    seed: int = 0
    threads: int = bounded(0, ge=0)  # torch CPU threads per process (0 = torch's default)
    progress: bool = True  # tqdm progress bar


@dataclass
class MaskContrastObjectiveConfig:
    """The MaskContrast loss: pixel-to-prototype contrast plus balanced BCE on saliency."""

    temperature: float = bounded(0.5, gt=0.0)
    queue_size: int = bounded(128, ge=0)  # memory bank of past prototypes (paper: 128 or 256)
    key_momentum: float = bounded(0.999, ge=0.0, le=1.0)  # key network EMA
    momentum: float | None = bounded(None, ge=0.0, le=1.0)  # deprecated alias of key_momentum
    contrastive_weight: float = bounded(1.0, ge=0.0)
    saliency_weight: float = bounded(1.0, ge=0.0)
    class_weighting: str = bounded("enet", choices=("enet", "none"))  # enet: 1 / log(1.02 + p), p per batch
    freeze_early_layers: bool = False  # freeze conv1 .. layer2 (the supervised-saliency recipe)
    # negatives of a pixel under DDP: global (the prototypes of every process + the queue) or local
    # (its own process's prototypes + the queue, as the official code); the queue always gets every process's
    negatives: str = bounded("global", choices=("global", "local"))


@dataclass
class PretrainConfig:
    """``python -m maskcontrast.pretrain``: every option of a MaskContrast pretraining run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: MaskContrastObjectiveConfig = field(default_factory=MaskContrastObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class MocoModelConfig:
    """Image-level MoCo v2 encoder: a standard (undilated) torchvision ResNet, or a timm ViT (its
    class token), with an MLP head."""

    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 (resnet101 works too) | a ViT of VIT_ARCHS
    dim: int = bounded(128, ge=1)  # output dimension of the projection
    mlp: bool = True  # MoCo v2: Linear(C, C) + ReLU + Linear(C, dim); False: MoCo v1's Linear(C, dim)
    init: str = "random"  # random | a checkpoint path of any known layout (backbone only)
    init_key: str = bounded("teacher", choices=("teacher", "student"))  # full DINO checkpoints
    vit: ViTConfig = field(default_factory=ViTConfig)


@dataclass
class MocoObjectiveConfig:
    """InfoNCE against a queue of past keys."""

    temperature: float = bounded(0.2, gt=0.0)
    queue_size: int = bounded(65536, ge=0)
    key_momentum: float = bounded(0.999, ge=0.0, le=1.0)  # key encoder EMA
    momentum: float | None = bounded(None, ge=0.0, le=1.0)  # deprecated alias of key_momentum


@dataclass
class MocoConfig:
    """``python -m maskcontrast.moco``: every option of a MoCo v2 run."""

    model: MocoModelConfig = field(default_factory=MocoModelConfig)
    objective: MocoObjectiveConfig = field(default_factory=MocoObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(blur_p=0.5))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(batch_size=256, lr=0.03, schedule="cosine", weight_decay=1e-4)
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_dir="runs/moco", epochs=200))


def resolve_config(cfg: DictConfig, source: str = "config") -> DictConfig:
    """Resolve every interpolation (``${oc.env:MASKCONTRAST_DATA}``, ``${data.image_size}``) in place.

    Raises:
        ConfigError: an interpolation that cannot be resolved, e.g. an unset environment
            variable, or a required key (``???``) without a value; the message names the key.
    """
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        hint = ""
        if "Environment variable" in msg:
            hint = " (set it, e.g. `export MASKCONTRAST_DATA=/path/to/shared/data`, or override the key)"
        raise ConfigError(f"{source}: cannot resolve key '{key}': {msg}{hint}") from err
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{source}: required keys have no value: {', '.join(missing)}; set them in the file "
            f"or as overrides, e.g. {missing[0]}=..."
        )
    check_values(cfg, source)
    return cfg


# ----------------------------------------------------------------------------------------------
# The other dense objectives (docs/OBJECTIVES.md): DetCon, DenseCL, a STEGO-style head
# ----------------------------------------------------------------------------------------------


@dataclass
class DetConModelConfig:
    """A ResNet (plain, output stride 32 as the paper, or dilated as MaskContrast's backbone) with
    DetCon's MLP projector (and predictor for DetConB). Checkpoints keep the MoCo layout
    (``module.encoder_q.<resnet key>``), so ``model.backbone.init`` of MaskContrast reads them."""

    arch: str = bounded("resnet50", choices=RESNET_ARCHS + VIT_ARCHS)  # a ViT: its patch map (stride = patch)
    output_stride: int = bounded(32, choices=(8, 16, 32))  # 32: the paper; 8: 8x finer regions at small views
    init: str = "random"  # random | torchvision | a checkpoint of any known layout (backbone only)
    init_key: str = bounded("teacher", choices=("teacher", "student"))  # full DINO checkpoints
    vit: ViTConfig = field(default_factory=ViTConfig)  # ViT archs only
    proj_hidden: int = bounded(4096, ge=1)  # projector / predictor: Linear(C, hidden) BN ReLU Linear(hidden, dim)
    proj_dim: int = bounded(256, ge=1)


@dataclass
class DetConObjectiveConfig:
    """DetCon's region contrastive loss (DetConS: SimCLR-style; DetConB: predictor + momentum target)."""

    variant: str = bounded("b", choices=("s", "b"))
    temperature: float = bounded(0.1, gt=0.0)  # paper: 0.1
    regions_per_image: int = bounded(16, ge=1)  # paper: 16 masks sampled per image
    key_momentum: float = bounded(0.996, ge=0.0, le=1.0)  # DetConB target EMA (paper: BYOL's 0.996, cosine to 1)


@dataclass
class DetConConfig:
    """``python -m maskcontrast.detcon``: every option of a DetCon run."""

    model: DetConModelConfig = field(default_factory=DetConModelConfig)
    objective: DetConObjectiveConfig = field(default_factory=DetConObjectiveConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(mask_source="felzenszwalb"))
    # region masks cover the image: no object-area constraint on the crops
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(blur_p=0.5, min_mask_area=0.0, max_mask_area=1.0)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            batch_size=256, lr=0.3, schedule="cosine", weight_decay=1e-6, warmup_steps=0
        )
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_dir="runs/detcon", epochs=300))


@dataclass
class DenseCLModelConfig:
    """A ResNet with DenseCL's two heads: the global MLP of MoCo v2 (``fc``) and a dense 1x1-conv MLP.
    Checkpoints keep the MoCo layout plus ``module.dense_head_q.*``."""

    arch: str = bounded("resnet50", choices=RESNET_ARCHS + VIT_ARCHS)  # a ViT: its patch map (stride = patch)
    output_stride: int = bounded(32, choices=(8, 16, 32))  # 32: the paper (7x7 dense grid at 224 px)
    init: str = "random"
    init_key: str = bounded("teacher", choices=("teacher", "student"))  # full DINO checkpoints
    vit: ViTConfig = field(default_factory=ViTConfig)  # ViT archs only
    dim: int = bounded(128, ge=1)


@dataclass
class DenseCLObjectiveConfig:
    """MoCo v2's global InfoNCE plus the dense InfoNCE over matched locations."""

    temperature: float = bounded(0.2, gt=0.0)
    queue_size: int = bounded(65536, ge=0)  # global and dense queues (paper: 65,536 each)
    key_momentum: float = bounded(0.999, ge=0.0, le=1.0)
    dense_weight: float = bounded(0.5, ge=0.0, le=1.0)  # lambda: (1 - lambda) L_global + lambda L_dense


@dataclass
class DenseCLConfig:
    """``python -m maskcontrast.densecl``: every option of a DenseCL run."""

    model: DenseCLModelConfig = field(default_factory=DenseCLModelConfig)
    objective: DenseCLObjectiveConfig = field(default_factory=DenseCLObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(blur_p=0.5))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=256, lr=0.03, schedule="cosine"))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_dir="runs/densecl", epochs=200))


@dataclass
class StegoObjectiveConfig:
    """STEGO's correspondence loss over three kinds of pairs, each with its weight and shift ``b``."""

    neighbours: int = bounded(7, ge=1)  # K nearest neighbours by frozen global feature (paper: 7)
    self_weight: float = bounded(0.67, ge=0.0)
    self_shift: float = 0.18
    knn_weight: float = bounded(0.25, ge=0.0)
    knn_shift: float = 0.12
    random_weight: float = bounded(0.63, ge=0.0)
    random_shift: float = 0.46
    pointwise: bool = True  # centre the feature correlation per location (STEGO's pointwise option)


@dataclass
class StegoConfig:
    """``python -m maskcontrast.stego``: a STEGO-style head on a frozen backbone (``model.head=stego``)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(head="stego", embed_dim=70, saliency_head=False))
    objective: StegoObjectiveConfig = field(default_factory=StegoObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(batch_size=32, lr=0.01, schedule="constant", weight_decay=0.0)
    )
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(run_dir="runs/stego", epochs=0, max_steps=5000)
    )
