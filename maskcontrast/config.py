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
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([item]))
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(f"override '{item}': unknown {_describe(err)}") from err
        except (ValidationError, OmegaConfBaseException) as err:
            raise ConfigError(f"override '{item}': {_describe(err)}") from err
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
