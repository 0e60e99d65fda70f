"""The MoCo v2 stage: official checkpoint layout, loading through the MoCo v2 loader, resume, loss on real images."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskcontrast.config import MocoConfig, MocoModelConfig, MocoObjectiveConfig, ModelConfig
from maskcontrast.config_loading import load_config, resolve_config
from maskcontrast.moco import main as moco_main
from maskcontrast.models import (
    CheckpointError,
    ResNetBackbone,
    build_model,
    detect_layout,
    load_backbone_weights,
    read_checkpoint,
)
from maskcontrast.objectives import MocoObjective, moco_encoder
from maskcontrast.train import train

TINY = "configs/moco/tiny.yaml"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("moco_images")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(root / f"im{i}.jpg")
    return root


def cfg_for(images, run_dir, *extra):  # on the CPU: resume equivalence is a CPU property
    return resolve_config(
        load_config(
            MocoConfig,
            TINY,
            [
                f"data.sources=[{{name: image_folder, root: {images}}}]",
                f"trainer.run_dir={run_dir}",
                "data.image_size=32",
                "optim.batch_size=4",
                "objective.queue_size=8",
                "trainer.progress=false",
                "trainer.threads=1",
                "trainer.device=cpu",
                *extra,
            ],
        )
    )


def build(cfg):
    return lambda: MocoObjective(cfg.model, cfg.objective)


def test_encoder_layout_matches_moco_v2():
    enc = moco_encoder("resnet18", 128, mlp=True)
    keys = set(enc.state_dict())
    assert {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"} <= keys
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert moco_encoder("resnet18", 64, mlp=False).fc.out_features == 64
    with pytest.raises(ValueError, match="arch"):
        moco_encoder("vgg16")


def test_checkpoint_has_official_layout_and_loads_through_moco_loader(images, tmp_path):
    cfg = cfg_for(images, tmp_path / "run", "trainer.max_steps=2")
    path = train(cfg, build(cfg), "moco").checkpoint
    ckpt = read_checkpoint(path)  # weights_only=True
    assert {"epoch", "arch", "state_dict", "optimizer"} <= set(ckpt) and ckpt["arch"] == "resnet18"
    sd = ckpt["state_dict"]
    assert all(k.startswith(("module.encoder_q.", "module.encoder_k.", "module.queue")) for k in sd)
    assert sd["module.queue"].shape == (128, 8) and sd["module.queue_ptr"].tolist() == [0]  # 2 steps x 4 keys
    assert detect_layout(ckpt) == "moco"
    # the MoCo v2 loader of the pretraining: only fc.* (the MLP head) is left out
    backbone = ResNetBackbone("resnet18", output_stride=8)
    assert load_backbone_weights(backbone, path) == "moco"
    q_keys = {k[len("module.encoder_q.") :] for k in sd if k.startswith("module.encoder_q.")}
    assert q_keys - set(backbone.state_dict()) == {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"}
    assert torch.equal(backbone.state_dict()["layer4.1.conv2.weight"], sd["module.encoder_q.layer4.1.conv2.weight"])
    # chaining: backbone.init of the pretraining points at our MoCo output
    mcfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", f"backbone.init={path}"])
    model = build_model(mcfg)
    assert torch.equal(model.backbone.conv1.weight, sd["module.encoder_q.conv1.weight"])
    with pytest.raises(ValueError, match="resnet50"):
        load_backbone_weights(ResNetBackbone("resnet50"), path)
    # the evaluation tools read it as a backbone-only baseline (eval.kmeans / eval.linear use load_model)
    api = pytest.importorskip("maskcontrast.api")
    fm = api.load_model(path, device="cpu")
    assert fm.embed(torch.rand(1, 3, 32, 32)).shape[:2] == (1, 512)


def test_moco_resume_equivalence(images, tmp_path):
    full = cfg_for(images, tmp_path / "full", "trainer.max_steps=3")
    train(full, build(full), "moco")
    first = cfg_for(images, tmp_path / "half", "trainer.max_steps=1")
    train(first, build(first), "moco")
    rest = cfg_for(images, tmp_path / "half", "trainer.max_steps=3", "trainer.resume=auto")
    train(rest, build(rest), "moco")
    a = read_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "half" / "last.pt")["state_dict"]
    bad = [k for k in a if not torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6)]
    assert not bad, bad[:5]


def test_cli_and_objective_errors(images, tmp_path, capsys):
    args = [
        "--config",
        TINY,
        f"data.sources=[{{name: image_folder, root: {images}}}]",
        f"trainer.run_dir={tmp_path / 'cli'}",
        "data.image_size=32",
        "optim.batch_size=4",
        "trainer.max_steps=1",
        "trainer.progress=false",
        "objective.queue_size=8",
    ]
    assert moco_main(args) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert moco_main([*args, "optim.batch_size=64"]) == 2  # refuses the existing run folder first
    assert moco_main([*args, "--overwrite", "optim.batch_size=64"]) == 2  # 8 images < one batch
    assert "batch" in capsys.readouterr().err
    assert (tmp_path / "cli" / "last.pt").is_file()  # the failed --overwrite run deleted nothing
    with pytest.raises(ValueError, match="temperature"):
        MocoObjective(MocoModelConfig(arch="resnet18"), MocoObjectiveConfig(temperature=0))


@pytest.mark.data
@pytest.mark.slow
def test_infonce_goes_down_on_real_images(shared_root, tmp_path):
    """32 Pet images (labels unused), queue of 16, no colour augmentation (random init, 30 steps)."""
    pet = shared_root("pet")
    cfg = resolve_config(
        load_config(
            MocoConfig,
            TINY,
            [
                f"data.sources=[{{name: pet, root: {pet}, limit: 32}}]",
                f"trainer.run_dir={tmp_path / 'm'}",
                "trainer.max_steps=30",
                "trainer.progress=false",
                "trainer.threads=1",
                "objective.queue_size=16",
                "optim.lr=0.1",
                "augment.color_jitter_p=0",
                "augment.grayscale_p=0",
                "augment.blur_p=0",
                "data.cache_images=true",
            ],
        )
    )
    losses = []

    class Recording(MocoObjective):
        def forward(self, views):
            loss, metrics = super().forward(views)
            losses.append(float(metrics["loss_infonce"]))
            return loss, metrics

    train(cfg, lambda: Recording(cfg.model, cfg.objective), "moco")
    first, last = np.mean(losses[2:8]), np.mean(losses[-6:])  # from step 2 on the queue holds real keys
    assert last < first - 0.05, f"InfoNCE did not go down: {first:.3f} -> {last:.3f} ({losses})"


def test_moco_on_a_vit_and_its_backbone_starts_maskcontrast(images, tmp_path):
    """MoCo trains a timm ViT (class token -> MLP); its file initialises a ViT MaskContrast model."""
    vit = ["model.arch=vit_small_patch16_224", "model.vit.img_size=32", "model.vit.dim=64", "model.vit.depth=2"]
    cfg = cfg_for(images, tmp_path / "vit", "trainer.max_steps=2", *vit)
    obj = MocoObjective(cfg.model, cfg.objective)
    assert "head.0.weight" in obj.encoder_q.state_dict() and obj.encoder_q(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    res = train(cfg, build(cfg), "moco")
    assert res.steps == 2
    path = tmp_path / "vit" / "last.pt"
    assert detect_layout(read_checkpoint(path)) == "moco"
    mcfg = load_config(
        ModelConfig,
        overrides=[
            "backbone.arch=vit_small_patch16_224",
            "backbone.vit.img_size=32",
            "backbone.vit.dim=64",
            "backbone.vit.depth=2",
            f"backbone.init={path}",
        ],
    )
    model = build_model(mcfg)
    sd = read_checkpoint(path)["state_dict"]
    assert torch.equal(model.backbone.vit.blocks[1].mlp.fc2.weight, sd["module.encoder_q.blocks.1.mlp.fc2.weight"])
    with pytest.raises(CheckpointError, match="a ResNet"):
        load_backbone_weights(ResNetBackbone("resnet18"), path)
