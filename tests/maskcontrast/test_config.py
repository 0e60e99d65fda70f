"""maskcontrast.config: the bounds every schema declares, checked on load and after resolving, with
errors that name the key."""

from __future__ import annotations

import re

import pytest

from maskcontrast.config import MocoConfig, PretrainConfig
from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import load_config, resolve_config


@pytest.mark.parametrize(
    ("override", "key", "rule"),
    [
        ("optim.batch_size=0", "optim.batch_size", ">= 1"),
        ("trainer.max_steps=-1", "trainer.max_steps", ">= 0"),
        ("optim.lr=0", "optim.lr", "> 0"),
        ("augment.flip_p=1.5", "augment.flip_p", "<= 1"),
        ("augment.crop_scale=[0.2,1.5]", "augment.crop_scale", "<= 1"),
        ("objective.temperature=-0.1", "objective.temperature", "> 0"),
        ("optim.schedule=step", "optim.schedule", "one of poly, cosine, constant"),
        ("model.backbone.output_stride=32", "model.backbone.output_stride", "one of 8, 16"),
        ("data.sources=[{name: pet, root: x, limit: -1}]", "data.sources.0.limit", ">= 0"),
    ],
)
def test_values_out_of_range_name_the_key(override, key, rule):
    with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}' must be {re.escape(rule)}"):
        load_config(PretrainConfig, None, [override])


def test_max_steps_may_be_null_and_interpolations_are_checked_once_resolved(tmp_path):
    assert load_config(PretrainConfig, None, ["trainer.max_steps=null"]).trainer.max_steps is None
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  batch_size: ${trainer.threads}\n")
    cfg = load_config(MocoConfig, path)  # an interpolation is checked after resolving
    with pytest.raises(ConfigError, match=r"key 'optim\.batch_size' must be >= 1, got 0"):
        resolve_config(cfg)


@pytest.mark.parametrize("override", ["optim.lr=nan", "objective.temperature=nan", "augment.flip_p=nan"])
def test_nan_config_values_are_refused_naming_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])
