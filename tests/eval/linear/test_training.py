"""Training the probe: the config's bounds are checked first, and a SIGTERM/SIGINT inside an epoch
stops with a complete state at that batch, from which the rerun continues bit-exactly."""

import os
import signal

import pytest
import torch

from eval.linear import training as linear
from eval.linear.config import LinearConfig, ProbeAugmentConfig
from eval.linear.training import run_linear_probe
from maskcontrast.api import load_model
from maskcontrast.config_checks import ConfigError
from maskcontrast.preemption import Preempted

from ..conftest import SyntheticDataset


def test_run_linear_probe_checks_a_python_built_config(tmp_path):
    """A LinearConfig built in Python gets the schema's bounds too, before any data is touched."""

    with pytest.raises(ConfigError, match="key 'batch_size' must be >= 1"):
        run_linear_probe(None, None, None, LinearConfig(batch_size=0), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"key 'augment\.crop_size'"):
        run_linear_probe(None, None, None, LinearConfig(augment=ProbeAugmentConfig(crop_size=0)), tmp_path)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cached", [False, True])
def test_signal_inside_an_epoch_resumes_bit_exactly(moco_ckpt, tmp_path, monkeypatch, cached):
    ds = SyntheticDataset(tmp_path, n_classes=4, n_images=12)
    model = load_model(moco_ckpt, "cpu", batch_size=4)
    cfg = LinearConfig(batch_size=4, epochs=2, cache_features=cached, seed=3)
    cfg.augment.crop_size = 24
    full = run_linear_probe(model, ds, ds, cfg, tmp_path / "full", progress=False)

    name = "train_batch_from_cache" if cached else "train_batch_from_images"
    real, calls = getattr(linear, name), {"n": 0}

    def signal_in_batch_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, batch 2 of 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(linear, name, signal_in_batch_five)
    with pytest.raises(Preempted) as info:
        run_linear_probe(model, ds, ds, cfg, tmp_path / "cut", progress=False)
    assert info.value.code == 143 and "batch 2 of epoch 2" in str(info.value)
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 2)
    monkeypatch.setattr(linear, name, real)
    resumed = run_linear_probe(model, ds, ds, cfg, tmp_path / "cut", progress=False)
    a = torch.load(tmp_path / "full" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert all(torch.equal(a["probe"][k], b["probe"][k]) for k in a["probe"])
    assert resumed["history"] == [full["history"][1]]  # the interrupted epoch's loss counts its first batches
    assert resumed["miou"] == full["miou"]


def test_the_evaluation_refuses_an_image_too_large_for_the_network_by_name(moco_ckpt, tmp_path, monkeypatch):
    from maskcontrast import images
    from maskcontrast.data import DataError

    ds = SyntheticDataset(tmp_path, n_classes=4, n_images=4)
    model = load_model(moco_ckpt, "cpu", batch_size=4)
    cfg = LinearConfig(batch_size=4, epochs=1, seed=3)
    cfg.augment.crop_size = 24  # training sees 24 px crops; the evaluation runs the images at their own size
    h, w = ds.load(ds.ids[0]).size
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", h * w - 1)
    with pytest.raises(DataError, match=rf"image '{ds.ids[0]}': the image \({h} x {w}\) at its own size"):
        run_linear_probe(model, ds, ds, cfg, tmp_path / "probe", progress=False)
