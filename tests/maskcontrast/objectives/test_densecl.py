"""DenseCL: the MoCo layout with the dense head, chaining into MaskContrast, both losses, queues."""

from __future__ import annotations

import pytest
import torch

from maskcontrast.api import load_model
from maskcontrast.config import DenseCLModelConfig, DenseCLObjectiveConfig, ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.data.views import Views
from maskcontrast.models import build_model, detect_layout, read_checkpoint
from maskcontrast.objectives import DenseCLObjective
from maskcontrast.train import train

from .conftest import build, objective_cfg


def test_forward_losses_metrics_and_queues():
    obj = DenseCLObjective(
        DenseCLModelConfig(arch="resnet18", output_stride=8, dim=16),
        DenseCLObjectiveConfig(queue_size=8, dense_weight=0.5),
    )
    torch.manual_seed(0)
    loss, m = obj(Views(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)))
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx(0.5 * float(m["loss_global"]) + 0.5 * float(m["loss_dense"]), rel=1e-6)
    assert int(obj.bank.ptr) == 4 and int(obj.dense_bank.ptr) == 4  # one global and one dense key per image
    assert torch.allclose(obj.dense_bank.queue[:4].norm(dim=1), torch.ones(4), atol=1e-5)
    loss.backward()
    assert obj.encoder_q.dense[0].weight.grad is not None and obj.encoder_q.fc[0].weight.grad is not None
    with pytest.raises(ValueError, match="dense_weight"):
        DenseCLObjective(DenseCLModelConfig(arch="resnet18"), DenseCLObjectiveConfig(dense_weight=1.5))


def test_checkpoint_keeps_the_moco_layout_plus_the_dense_head(shapes, tmp_path):
    cfg = objective_cfg("densecl", shapes, tmp_path / "run", "trainer.max_steps=2", "objective.queue_size=16")
    path = train(cfg, build("densecl", cfg), "densecl").checkpoint
    ckpt = read_checkpoint(path)
    sd = ckpt["state_dict"]
    assert detect_layout(ckpt) == "moco"
    assert {
        "module.encoder_q.fc.0.weight",
        "module.encoder_q.fc.2.weight",
        "module.dense_head_q.0.weight",
        "module.dense_head_k.2.weight",
        "module.queue",
        "module.queue_ptr",
        "module.dense_queue",
        "module.dense_queue_ptr",
    } <= set(sd)
    assert sd["module.queue"].shape == (64, 16) and sd["module.dense_queue"].shape == (64, 16)  # dim x K, as MoCo
    mcfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", f"backbone.init={path}"])
    model = build_model(mcfg)
    assert torch.equal(model.backbone.conv1.weight, sd["module.encoder_q.conv1.weight"])
    assert load_model(path, device="cpu").embed(torch.rand(1, 3, 32, 32)).shape[:2] == (1, 512)
    resumed = objective_cfg(
        "densecl", shapes, tmp_path / "run", "trainer.max_steps=3", "trainer.resume=auto", "objective.queue_size=16"
    )
    assert train(resumed, build("densecl", resumed), "densecl").steps == 3
