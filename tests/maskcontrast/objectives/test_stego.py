"""The STEGO head: a frozen backbone, the feature bank and its neighbours, a checkpoint the eval tools
read, and the bad-input errors."""

from __future__ import annotations

import pytest
import torch

from maskcontrast.api import load_model
from maskcontrast.models import read_checkpoint
from maskcontrast.train import train

from .conftest import build, objective_cfg


def test_head_trains_backbone_stays_frozen_and_eval_reads_the_checkpoint(shapes, moco_backbone, tmp_path):
    cfg = objective_cfg("stego", shapes, tmp_path / "run", "trainer.max_steps=3", init=moco_backbone)
    holder = {}

    def factory():
        holder["obj"] = build("stego", cfg)()
        holder["before"] = {k: v.clone() for k, v in holder["obj"].model.state_dict().items()}
        return holder["obj"]

    result = train(cfg, factory, "stego")
    obj, before = holder["obj"], holder["before"]
    after = obj.model.state_dict()
    changed = [k for k in after if k.startswith("backbone.") and not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]  # BN statistics too
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("embed_head."))
    bank = obj.bank
    assert bank.features.shape[0] == 64 and bank.neighbours.shape == (64, 7)
    assert not (bank.neighbours == torch.arange(64)[:, None]).any()  # never the image itself
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt["objective"] == "stego" and ckpt["model_config"]["head"] == "stego"
    fm = load_model(result.checkpoint, device="cpu")
    assert fm.embed_dim == 16 and fm.embed(torch.rand(1, 3, 32, 32)).shape == (1, 16, 32, 32)
    assert fm.feature_dim == 512 and not fm.has_saliency


def test_bad_backbones_are_refused_by_key(shapes, tmp_path):
    with pytest.raises(ValueError, match=r"model\.backbone\.init"):
        build("stego", objective_cfg("stego", shapes, tmp_path / "r", init="random"))()
    # a file whose backbone gives the same features for every image has no usable features
    from maskcontrast.models import ResNetBackbone

    flat = ResNetBackbone("resnet18")
    for p in flat.parameters():
        torch.nn.init.zeros_(p)
    torch.save(flat.state_dict(), tmp_path / "flat.pth")
    cfg = objective_cfg("stego", shapes, tmp_path / "run", "trainer.max_steps=1", init=tmp_path / "flat.pth")
    with pytest.raises(ValueError, match="no usable features"):
        train(cfg, build("stego", cfg), "stego")
    not_a_checkpoint = tmp_path / "x.pth"
    not_a_checkpoint.write_bytes(b"not torch")
    from maskcontrast.models import CheckpointError

    with pytest.raises(CheckpointError, match=r"x\.pth"):
        build("stego", objective_cfg("stego", shapes, tmp_path / "r2", init=not_a_checkpoint))()
