"""Reading and writing configs: schema defaults, a YAML file and ``key=value`` overrides merged into one
checked ``DictConfig``; deprecated keys moved to their new names; interpolations resolved; the result
written back as YAML or a plain dict.

:func:`load_config` merges, in order, the schema defaults, a YAML file and command-line overrides.
The merged config is in struct mode, so an unknown key anywhere is an error that names the key and
where it came from, and a value of the wrong type is an error that names the key and the expected
type. The schemas themselves live in :mod:`maskcontrast.config`.

Example::

    from dataclasses import dataclass, field
    from maskcontrast.config import ModelConfig
    from maskcontrast.config_loading import load_config

    @dataclass
    class Cfg:
        lr: float = 0.1
        model: ModelConfig = field(default_factory=ModelConfig)

    cfg = load_config(Cfg, "configs/x.yaml", ["lr=0.01", "model.backbone.arch=resnet18"])
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from maskcontrast.config_checks import ConfigError, check_values
from maskcontrast.keyvalues import split_key_value

T = TypeVar("T")

__all__ = [
    "load_config",
    "resolve_config",
    "DEPRECATED_KEYS",
    "apply_deprecated_keys",
    "save_config",
    "config_to_dict",
    "add_config_arguments",
]

#: old key -> its new name; the old key still works for one release, with a warning
DEPRECATED_KEYS = {"objective.momentum": "objective.key_momentum"}

_MISSING = object()


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
    return isinstance(node, ListConfig) and last.isdigit() and int(last) < len(node)


def _merge_file(base: DictConfig, path: Path) -> DictConfig:
    """``base`` with the YAML file at ``path`` merged in; every failure is a :class:`ConfigError` naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as err:  # yaml errors have several types
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return OmegaConf.merge(base, file_cfg)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ConfigError(f"{path}: unknown {_describe(err)}; check the spelling against the schema") from err
    except (ValidationError, OmegaConfBaseException) as err:
        raise ConfigError(f"{path}: {_describe(err)}") from err
    except (TypeError, ValueError) as err:  # e.g. a mapping where the schema has a list
        raise ConfigError(f"{path}: {err}") from err


def _apply_override(base: DictConfig, item: str) -> None:
    """Set one dotted ``key=value`` override in ``base`` (list items by index: ``data.sources.0.masks=DIR``);
    the value is parsed as YAML, as OmegaConf's dotlist does."""
    try:
        key, value = split_key_value(item, "override")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if not _has_key(base, key):
        raise ConfigError(
            f"override '{item}': unknown key '{key}'; check the spelling against the schema (--help lists every key)"
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
        base = _merge_file(base, path)
    for item in overrides:
        _apply_override(base, item)
    OmegaConf.set_struct(base, True)
    source = " with ".join(([str(path)] if path is not None else []) + (["overrides"] if overrides else [])) or "config"
    check_values(base, source)  # first: an error names the key as it was written
    apply_deprecated_keys(base, source)
    return base


def apply_deprecated_keys(cfg: DictConfig, source: str = "config") -> None:
    """Move the value of every deprecated key that is set (not None) to its new key, with a warning
    naming both (:data:`DEPRECATED_KEYS`); the old key is then None."""
    for old, new in DEPRECATED_KEYS.items():
        value = OmegaConf.select(cfg, old, default=None, throw_on_missing=False)
        if value is None or OmegaConf.select(cfg, new, default=_MISSING, throw_on_missing=False) is _MISSING:
            continue
        message = f"{source}: '{old}' is deprecated, use '{new}' (its value {value} is used as {new})"
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        logging.getLogger(__name__).warning(message)
        OmegaConf.update(cfg, new, value, merge=True)
        OmegaConf.update(cfg, old, None, merge=True)


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
