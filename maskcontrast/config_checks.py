"""The values a config schema accepts: :class:`ConfigError`, and the bounds a dataclass field declares
(:func:`bounded`, :func:`checks`) that :func:`check_values` checks after every load and resolve.

Example::

    @dataclass
    class OptimConfig:
        lr: float = bounded(0.004, gt=0.0)
        crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0], metadata=checks(gt=0.0, each=True))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["ConfigError", "bounded", "checks", "check_values"]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (unknown key, wrong type, bad value)."""


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
    (every :func:`~maskcontrast.config_loading.load_config` and
    :func:`~maskcontrast.config_loading.resolve_config`); None passes when the field's type allows it.

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

    Interpolations that are not resolved yet are skipped (:func:`~maskcontrast.config_loading.resolve_config` checks again).

    Raises:
        ConfigError: the first value out of range; the message names the key, the rule and the value.
    """

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
