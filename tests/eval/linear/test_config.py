"""The probe's config schema: the shipped configs load, unknown keys fail."""

import pytest

from eval.linear.config import LinearConfig
from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import load_config


def test_configs_load_and_unknown_keys_fail():
    paper = load_config(LinearConfig, "configs/eval/linear_voc.yaml")
    assert paper.batch_size == 16 and paper.epochs == 60 and paper.optim.lr == 0.1
    assert list(paper.optim.milestones) == [25] and paper.augment.crop_size == 512
    assert paper.data.train_split == "train_aug" and paper.augment.rotate_degrees == 5
    cpu = load_config(LinearConfig, "configs/eval/linear_cpu.yaml")
    assert cpu.cache_features and cpu.data.train_split is None
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(LinearConfig, None, ["optim.lrr=1"])
