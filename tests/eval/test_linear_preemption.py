"""The linear probe stops on SIGTERM/SIGINT inside an epoch with a complete state at that batch,
and the rerun continues bit-exactly."""

import os
import signal

import pytest
import torch

from eval import linear
from eval.linear import LinearConfig, run_linear_probe
from maskcontrast.api import load_model
from maskcontrast.preemption import Preempted

from .conftest import SyntheticDataset


@pytest.mark.parametrize("cached", [False, True])
def test_signal_inside_an_epoch_resumes_bit_exactly(moco_ckpt, tmp_path, monkeypatch, cached):
    ds = SyntheticDataset(tmp_path, n_classes=4, n_images=12)
    model = load_model(moco_ckpt, "cpu", batch_size=4)
    cfg = LinearConfig(batch_size=4, epochs=2, cache_features=cached, seed=3)
    cfg.augment.crop_size = 24
    full = run_linear_probe(model, ds, ds, cfg, tmp_path / "full", progress=False)

    name = "_train_batch_from_cache" if cached else "_train_batch_from_images"
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
