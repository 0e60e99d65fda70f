"""The refiner stops on SIGTERM inside an epoch with a complete last.pt at that step; --resume
continues bit-exactly (the augmentation stream included)."""

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from maskcontrast.config_loading import load_config
from maskcontrast.preemption import Preempted
from saliency.refine import training
from saliency.refine.config import RefineConfig
from saliency.refine.training import train_refiner

TINY = "configs/saliency/refine_tiny.yaml"


def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        img = rng.integers(0, 60, (48, 56, 3), dtype=np.uint8)
        y, x = rng.integers(4, 20, size=2)
        img[y : y + 20, x : x + 24] = rng.integers(150, 255, 3)
        Image.fromarray(img).save(images / f"im{i}.png")
    cfg = load_config(RefineConfig, TINY, ["threads=1", "workers=0", "rounds=2", "epochs_per_round=2"])
    sources = [("image_folder", str(images))]
    train_refiner(sources, tmp_path / "full", cfg)

    real, calls = training.confident_bce, {"n": 0}

    def signal_in_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # round 2, epoch 1, step 1 of 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "confident_bce", signal_in_step_five)
    with pytest.raises(Preempted) as info:
        train_refiner(sources, tmp_path / "cut", cfg)
    assert info.value.code == 143 and "round 2, epoch 1, step 1" in str(info.value)
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (state["round"], state["epoch"], state["step"]) == (1, 0, 1)
    monkeypatch.setattr(training, "confident_bce", real)
    train_refiner(sources, tmp_path / "cut", cfg, resume=True)
    a = torch.load(tmp_path / "full" / "refiner.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "refiner.pt", weights_only=True)["model"]
    assert not [k for k in a if not torch.equal(a[k], b[k])]
