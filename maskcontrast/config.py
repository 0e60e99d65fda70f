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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "BackboneConfig",
    "ModelConfig",
    "load_config",
    "save_config",
    "config_to_dict",
    "add_config_arguments",
    "resolve_config",
    "DataSourceConfig",
    "DataConfig",
    "AugmentConfig",
    "OptimConfig",
    "TrainerConfig",
    "MaskContrastObjectiveConfig",
    "PretrainConfig",
    "MocoModelConfig",
    "MocoObjectiveConfig",
    "MocoConfig",
]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (unknown key, wrong type, bad value)."""


# ----------------------------------------------------------------------------------------------
# Shared schemas
# ----------------------------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    """A dilated torchvision ResNet.

    ``init`` is ``random``, ``torchvision`` (torchvision's own ImageNet weights, needs internet
    or a warm torch hub cache) or the path to a checkpoint file: an official MoCo v2 file, a
    torchvision state dict, or a maskcontrast checkpoint. The layout of a file is detected.
    """

    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    output_stride: int = 8  # 8 (paper) or 16
    init: str = "random"


@dataclass
class ModelConfig:
    """DeepLabv3 head on a dilated ResNet with an embedding head and a saliency head."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head_channels: int = 256
    aspp_rates: list[int] | None = None  # None: 12/24/36 at OS8, 6/12/18 at OS16
    embed_dim: int = 32
    saliency_head: bool = True


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


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
    missing = object()
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        # list items are addressed by index: data.sources.0.masks=DIR
        if OmegaConf.select(base, key, default=missing, throw_on_missing=False) is missing:
            raise ConfigError(f"override '{item}': unknown key '{key}'; check the spelling against the schema "
                              "(--help lists every key)")  # fmt: skip
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
    return base


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
    limit: int = 0  # > 0: use only this many images, evenly spaced over the (sorted) ids


@dataclass
class DataConfig:
    """Where training images (and object masks) come from and how they are loaded on the CPU."""

    sources: list[DataSourceConfig] = field(default_factory=list)
    masks: str | None = None  # default masks folder for sources that set none
    image_size: int = 224  # side of every augmented view
    load_size: int = 0  # longer image side kept in memory before cropping; 0 = 1.5 x image_size
    min_mask_fraction: float = 0.01  # an image whose object mask covers less is skipped (counted)
    num_workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    cache_images: bool = False  # keep resized images in RAM after their first load (best with num_workers=0)


@dataclass
class AugmentConfig:
    """Paired view augmentation (batched with kornia on the training device)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    min_mask_area: float = 0.01  # a view is redrawn until its mask covers at least this fraction ...
    max_mask_area: float = 0.99  # ... and at most this fraction of the crop
    view_attempts: int = 3  # redraws per view before another image is drawn
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])  # brightness, contrast, sat, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0  # MoCo v2: 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    flip_p: float = 0.5
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay, and its learning-rate schedule."""

    batch_size: int = 64  # global batch (split evenly over DDP processes)
    lr: float = 0.004
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "poly"  # poly | cosine | constant
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear warm-up from 0


@dataclass
class TrainerConfig:
    """The training loop, its run folder and its hardware settings."""

    run_dir: str = "runs/pretrain"
    epochs: int = 40
    max_steps: int = 0  # > 0: a step budget; the schedule spans this many steps
    resume: str = "none"  # none | auto (continue from <run_dir>/last.pt when it exists) | path to a last.pt
    overwrite: bool = False  # allow starting afresh in a run folder that already holds a run
    save_every_epochs: int = 10  # also keep epoch_<n>.pt every n epochs (0 = never)
    save_every_steps: int = 0  # refresh last.pt every n steps (0 = at epoch ends and at the end only)
    log_every_steps: int = 10  # TensorBoard scalars every n steps
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:1 ...
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    channels_last: bool = False
    seed: int = 0
    threads: int = 0  # torch CPU threads per process (0 = torch's default)
    progress: bool = True  # tqdm progress bar


@dataclass
class MaskContrastObjectiveConfig:
    """The MaskContrast loss: pixel-to-prototype contrast plus balanced BCE on saliency."""

    temperature: float = 0.5
    queue_size: int = 128  # memory bank of past prototypes (paper: 128 or 256)
    momentum: float = 0.999  # key network EMA
    contrastive_weight: float = 1.0
    saliency_weight: float = 1.0
    class_weighting: str = "enet"  # enet (1 / log(1.02 + p), p per batch) | none
    freeze_early_layers: bool = False  # freeze conv1 .. layer2 (the supervised-saliency recipe)


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
    """Image-level MoCo v2 encoder: a standard (undilated) torchvision ResNet with an MLP head."""

    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 (resnet101 works too)
    dim: int = 128  # output dimension of the projection
    mlp: bool = True  # MoCo v2: Linear(C, C) + ReLU + Linear(C, dim); False: MoCo v1's Linear(C, dim)
    init: str = "random"  # random | a checkpoint path of any known layout (backbone only)


@dataclass
class MocoObjectiveConfig:
    """InfoNCE against a queue of past keys."""

    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999


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
        raise ConfigError(f"{source}: required keys have no value: {', '.join(missing)}; set them in the file "
                          f"or as overrides, e.g. {missing[0]}=...")  # fmt: skip
    return cfg
