"""maskcontrast.config_loading: schema defaults, YAML, overrides, deprecated keys, and errors that name the key."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import torch
from omegaconf import DictConfig

from maskcontrast.config import BackboneConfig, MocoConfig, ModelConfig, PretrainConfig
from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import add_config_arguments, config_to_dict, load_config, save_config


@dataclass
class Optim:
    lr: float = 0.004
    momentum: float = 0.9


@dataclass
class Cfg:
    name: str = "run"
    epochs: int = 40
    use_amp: bool = False
    optim: Optim = field(default_factory=Optim)
    model: ModelConfig = field(default_factory=ModelConfig)


def test_defaults_come_from_the_schema():
    cfg = load_config(ModelConfig)
    assert isinstance(cfg, DictConfig)
    assert cfg.backbone.arch == "resnet50" and cfg.backbone.output_stride == 8 and cfg.backbone.init == "random"
    assert cfg.head_channels == 256 and cfg.embed_dim == 32 and cfg.aspp_rates is None and cfg.saliency_head
    assert load_config(BackboneConfig(arch="resnet18")).arch == "resnet18"  # an instance works too


def test_yaml_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 10\noptim:\n  lr: 0.1\nmodel:\n  backbone:\n    arch: resnet18\n")
    cfg = load_config(Cfg, y, ["optim.lr=0.01", "model.aspp_rates=[6,12,18]", "use_amp=true", "name=x"])
    assert cfg.epochs == 10  # from the file
    assert cfg.optim.lr == 0.01  # the override wins over the file
    assert cfg.optim.momentum == 0.9  # untouched default
    assert cfg.model.backbone.arch == "resnet18"
    assert list(cfg.model.aspp_rates) == [6, 12, 18]
    assert cfg.use_amp is True and cfg.name == "x"
    assert isinstance(load_config(Cfg, overrides=["epochs=3"]).epochs, int)


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, y)
    msg = str(err.value)
    assert "bad.yaml" in msg and "lrr" in msg and "unknown" in msg
    y.write_text("model:\n  backbone:\n    depth: 50\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*depth"):
        load_config(Cfg, y)


def test_unknown_key_in_override_names_key():
    with pytest.raises(ConfigError, match=r"override 'optim.lrr=0.1': unknown .*lrr"):
        load_config(Cfg, overrides=["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"override 'epoch=3'.*epoch"):
        load_config(Cfg, overrides=["epoch=3"])


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'epochs=many'.*epochs"):
        load_config(Cfg, overrides=["epochs=many"])
    with pytest.raises(ConfigError, match=r"use_amp"):
        load_config(Cfg, overrides=["use_amp=sometimes"])
    y = tmp_path / "t.yaml"
    y.write_text("model:\n  head_channels: wide\n")
    with pytest.raises(ConfigError, match=r"t\.yaml.*head_channels"):
        load_config(Cfg, y)
    y.write_text("optim: 3\n")  # a value where a section belongs
    with pytest.raises(ConfigError, match=r"t\.yaml"):
        load_config(Cfg, y)


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(Cfg, tmp_path / "nope.yaml")
    y = tmp_path / "broken.yaml"
    y.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(Cfg, y)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Cfg, overrides=["epochs"])


def test_struct_mode_refuses_new_keys_after_loading():
    cfg = load_config(Cfg)
    with pytest.raises(Exception, match="new_key"):
        cfg.new_key = 1
    assert isinstance(cfg, DictConfig)


def test_save_load_round_trip_and_plain_dict(tmp_path):
    cfg = load_config(Cfg, overrides=["optim.lr=0.5", "model.backbone.arch=resnet34"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(Cfg, tmp_path / "saved.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    d = config_to_dict(cfg)
    assert type(d) is dict and d["optim"]["lr"] == 0.5 and d["model"]["backbone"]["arch"] == "resnet34"
    # a plain dict survives a weights_only checkpoint
    torch.save({"cfg": d}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["cfg"] == d
    assert config_to_dict({"a": 1}) == {"a": 1}


def test_add_config_arguments():
    p = argparse.ArgumentParser()
    add_config_arguments(p, default="configs/x.yaml")
    args = p.parse_args(["optim.lr=0.1", "epochs=2"])
    assert args.config == "configs/x.yaml" and args.overrides == ["optim.lr=0.1", "epochs=2"]
    args = p.parse_args(["--config", "y.yaml"])
    assert args.config == "y.yaml" and args.overrides == []


def test_list_items_are_overridden_by_index(tmp_path):
    yaml = tmp_path / "p.yaml"
    yaml.write_text("data:\n  sources:\n    - {name: msrc, root: /a}\n    - {name: pet, root: /b}\n")
    cfg = load_config(PretrainConfig, yaml, ["data.sources.1.masks=/m", "data.sources.0.limit=5"])
    assert cfg.data.sources[1].masks == "/m" and cfg.data.sources[0].limit == 5
    assert cfg.data.sources[0].masks is None
    with pytest.raises(ConfigError, match=r"data\.sources\.2\.masks"):
        load_config(PretrainConfig, yaml, ["data.sources.2.masks=/m"])
    with pytest.raises(ConfigError, match="limit"):
        load_config(PretrainConfig, yaml, ["data.sources.0.limit=many"])
    # a mapping where the schema has a list is a clear error, not a crash
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sources: {name: msrc}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(PretrainConfig, bad)


def test_a_key_reading_an_unset_environment_variable_can_be_overridden(monkeypatch):
    """configs/pretrain/voc_unsup_saliency.yaml sets backbone.init from $MOCO_CKPT; overriding the
    key must not need the variable, and an unknown key is still refused."""
    monkeypatch.delenv("MOCO_CKPT", raising=False)
    cfg = load_config(PretrainConfig, "configs/pretrain/voc_unsup_saliency.yaml", ["model.backbone.init=x.pth"])
    assert cfg.model.backbone.init == "x.pth"
    with pytest.raises(ConfigError, match=r"unknown key 'model\.backbone\.inti'"):
        load_config(PretrainConfig, "configs/pretrain/voc_unsup_saliency.yaml", ["model.backbone.inti=x.pth"])
    with pytest.raises(ConfigError, match=r"unknown key 'data\.sources\.5\.root'"):
        load_config(PretrainConfig, "configs/pretrain/voc_unsup_saliency.yaml", ["data.sources.5.root=x"])


def test_objective_momentum_is_a_deprecated_alias_of_key_momentum(caplog):
    with pytest.warns(DeprecationWarning, match=r"objective\.momentum' is deprecated, use 'objective\.key_momentum'"):
        cfg = load_config(PretrainConfig, None, ["objective.momentum=0.9"])
    assert cfg.objective.key_momentum == 0.9 and cfg.objective.momentum is None
    assert load_config(MocoConfig, "configs/moco/cpu_shared.yaml").objective.key_momentum == 0.99
    assert load_config(PretrainConfig, None, ["objective.key_momentum=0.5"]).objective.key_momentum == 0.5
    with pytest.raises(ConfigError, match=r"objective\.momentum"):
        load_config(PretrainConfig, None, ["objective.momentum=2.0"])
