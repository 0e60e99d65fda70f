"""DetCon: checkpoint layout and chaining into MaskContrast, both variants, region bookkeeping, bad input."""

from __future__ import annotations

import pytest
import torch

from maskcontrast.api import load_model
from maskcontrast.config import DetConModelConfig, DetConObjectiveConfig, ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.data import DataError
from maskcontrast.data.views import Views
from maskcontrast.models import build_model, detect_layout, read_checkpoint
from maskcontrast.objectives import DetConObjective
from maskcontrast.train import train

from .conftest import build, objective_cfg


def tiny(variant="b", **kw):
    return DetConObjective(
        DetConModelConfig(arch="resnet18", output_stride=8, proj_hidden=32, proj_dim=16),
        DetConObjectiveConfig(variant=variant, regions_per_image=4, **kw),
    )


def views_with(mask_q, mask_k, b=2, size=32):
    torch.manual_seed(0)
    return Views(torch.randn(b, 3, size, size), torch.randn(b, 3, size, size), mask_q, mask_k)


def halves(b=2, size=32):
    m = torch.zeros(b, size, size, dtype=torch.long)
    m[:, :, size // 2 :] = 1
    return m


@pytest.mark.parametrize("variant", ["s", "b"])
def test_both_variants_give_a_finite_loss_and_gradients_to_the_online_network(variant):
    obj = tiny(variant)
    loss, metrics = obj(views_with(halves(), halves()))
    assert torch.isfinite(loss) and metrics["regions"] == 2.0 and metrics["regions_dropped"] == 0
    loss.backward()
    assert obj.encoder_q.conv1.weight.grad is not None and obj.projector_q[0].weight.grad is not None
    pairs = obj.momentum_pairs()
    assert (len(pairs) == 2) == (variant == "b")
    if variant == "b":
        assert obj.predictor[0].weight.grad is not None and obj.encoder_k.conv1.weight.grad is None


def test_a_region_missing_from_one_view_is_dropped_and_counted():
    q, k = halves(), halves()
    q[0, :4, :4] = 5  # region 5 only in the query view of image 0
    _, metrics = tiny()(views_with(q, k))
    assert float(metrics["regions_dropped"]) == 1.0 and float(metrics["regions"]) == 2.0


def test_bad_input_names_the_key():
    with pytest.raises(ValueError, match=r"data\.mask_source"):
        tiny()(Views(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)))
    q, k = halves(), halves()
    k[:] = 7  # no id shared by the two views of any image
    with pytest.raises(DataError, match=r"data\.mask_source"):
        tiny()(views_with(q, k))
    with pytest.raises(ValueError, match="variant"):
        DetConObjective(DetConModelConfig(arch="resnet18"), DetConObjectiveConfig(variant="x"))


def test_checkpoint_has_the_moco_layout_and_starts_maskcontrast(shapes, tmp_path):
    cfg = objective_cfg(
        "detcon",
        shapes,
        tmp_path / "run",
        "trainer.max_steps=2",
        "data.mask_source=grid",
        "augment.min_mask_area=0.0",
        "augment.max_mask_area=1.0",
    )
    path = train(cfg, build("detcon", cfg), "detcon").checkpoint
    ckpt = read_checkpoint(path)
    assert detect_layout(ckpt) == "moco" and ckpt["arch"] == "resnet18"
    prefixes = {k.split(".")[1] for k in ckpt["state_dict"]}
    assert prefixes == {"encoder_q", "projector_q", "predictor", "encoder_k", "projector_k"}
    mcfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", f"backbone.init={path}"])
    model = build_model(mcfg)  # MaskContrast's model.backbone.init reads it
    assert torch.equal(
        model.backbone.layer4[1].conv2.weight, ckpt["state_dict"]["module.encoder_q.layer4.1.conv2.weight"]
    )
    fm = load_model(path, device="cpu")  # the eval commands read it as a backbone
    assert fm.embed(torch.rand(1, 3, 32, 32)).shape[:2] == (1, 512)
    # resume reads it back
    resumed = objective_cfg(
        "detcon",
        shapes,
        tmp_path / "run",
        "trainer.max_steps=3",
        "trainer.resume=auto",
        "data.mask_source=grid",
        "augment.min_mask_area=0.0",
        "augment.max_mask_area=1.0",
    )
    assert train(resumed, build("detcon", resumed), "detcon").steps == 3


def test_detcon_and_densecl_train_a_vit_whose_file_starts_a_vit_maskcontrast(tmp_path):
    """A tiny ViT (patch 16, 64-d, 2 blocks) under both objectives; their MoCo-layout files hold timm
    keys, which a ViT MaskContrast model reads through model.backbone.init."""
    from maskcontrast.config import DenseCLModelConfig, DenseCLObjectiveConfig
    from maskcontrast.objectives import DenseCLObjective

    vit = {"arch": "vit_small_patch16_224", "output_stride": 8}
    tiny_vit = {"img_size": 32, "dim": 64, "depth": 2, "drop_path_rate": 0.0}
    mcfg = load_config(
        DetConModelConfig,
        overrides=[
            f"arch={vit['arch']}",
            "proj_hidden=16",
            "proj_dim=8",
            *(f"vit.{k}={v}" for k, v in tiny_vit.items()),
        ],
    )
    detcon = DetConObjective(mcfg, DetConObjectiveConfig(variant="b", regions_per_image=2))
    loss, _ = detcon(views_with(halves(size=64), halves(size=64), size=64))
    loss.backward()
    dcfg = load_config(
        DenseCLModelConfig, overrides=[f"arch={vit['arch']}", "dim=8", *(f"vit.{k}={v}" for k, v in tiny_vit.items())]
    )
    densecl = DenseCLObjective(dcfg, DenseCLObjectiveConfig(queue_size=4))
    loss2, _ = densecl(Views(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)))
    assert torch.isfinite(loss) and torch.isfinite(loss2)
    for obj in (detcon, densecl):
        path = tmp_path / f"{type(obj).__name__}.pt"
        torch.save(obj.checkpoint(), path)
        assert "module.encoder_q.blocks.1.mlp.fc2.weight" in torch.load(path, weights_only=True)["state_dict"]
        model = build_model(
            load_config(
                ModelConfig,
                overrides=[
                    f"backbone.arch={vit['arch']}",
                    *(f"backbone.vit.{k}={v}" for k, v in tiny_vit.items()),
                    f"backbone.init={path}",
                ],
            )
        )
        assert torch.equal(
            model.backbone.vit.blocks[1].mlp.fc2.weight,
            torch.load(path, weights_only=True)["state_dict"]["module.encoder_q.blocks.1.mlp.fc2.weight"],
        )
