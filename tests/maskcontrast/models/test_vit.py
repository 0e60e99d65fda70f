"""ViT backbones through timm and the public checkpoint layouts: each layout is built from a
random-init model of its family in the published key names, saved, loaded and compared tensor by
tensor; wrong files are refused with errors naming the file, the layout and the keys."""

import argparse
import logging

import pytest
import torch
import torchvision
from timm.layers import resample_abs_pos_embed

from maskcontrast.api import load_model
from maskcontrast.config import ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.models import (
    CheckpointError,
    MaskContrastModel,
    ResNetBackbone,
    ViTBackbone,
    build_model,
    detect_layout,
    infer_backbone_arch,
    load_backbone,
    model_checkpoint,
    model_from_checkpoint,
)
from maskcontrast.models.vit import create_timm_vit

DIM, DEPTH = 64, 2  # tiny ViTs: 1 head of 64, 2 blocks


def tiny_vit(arch="vit_small_patch16_224", img_size=32, seed=0):
    torch.manual_seed(seed)
    net = create_timm_vit(arch, img_size, DIM, DEPTH)
    with torch.no_grad():  # timm zero-inits some tensors; random values make the comparisons meaningful
        for p in net.parameters():
            p.normal_()
    return net


def assert_loaded(backbone, sd, skip=()):
    own = backbone.vit.state_dict()
    for k, v in sd.items():
        if k not in skip:
            assert torch.equal(own[k], v), k


def vit_cfg(arch="vit_small_patch16_224", img_size=32, *extra):
    return load_config(
        ModelConfig,
        overrides=[
            f"backbone.arch={arch}",
            f"backbone.vit.img_size={img_size}",
            f"backbone.vit.dim={DIM}",
            f"backbone.vit.depth={DEPTH}",
            *extra,
        ],
    )


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["vit_small_patch16_224", "vit_small_patch8_224", "vit_small_patch14_reg4_dinov2"])
def test_patch_token_map_cls_and_registers_at_any_size(arch):
    bb = ViTBackbone(arch, 32, DIM, DEPTH)
    p = bb.output_stride
    x = torch.randn(2, 3, 2 * p, 5 * p)  # not the size the position embedding is stored at
    t = bb.tokens(x)
    assert t.patches.shape == (2, DIM, 2, 5) and t.cls.shape == (2, DIM)
    assert t.registers.shape == (2, 4 if "reg4" in arch else 0, DIM)
    assert torch.equal(bb(x), t.patches)
    assert bb.output_stride == int(arch.split("patch")[1][:2].rstrip("_"))


def test_model_head_choice_and_resnet_unchanged():
    vit = build_model(vit_cfg())
    assert type(vit.decoder).__name__ == "LightHead"
    out = vit(torch.randn(2, 3, 32, 48))
    assert out.embedding.shape == (2, 32, 32, 48) and out.features.shape == (2, 256, 2, 3)
    assert type(build_model(vit_cfg("vit_small_patch16_224", 32, "head=deeplab")).decoder).__name__ == "DeepLabV3Head"
    res = build_model(load_config(ModelConfig, overrides=["backbone.arch=resnet18"]))
    assert type(res.decoder).__name__ == "DeepLabV3Head" and isinstance(res.backbone, ResNetBackbone)


def test_maskcontrast_vit_round_trip(tmp_path):
    cfg = vit_cfg("vit_small_patch14_reg4_dinov2", 28)
    model = build_model(cfg).eval()
    torch.save(model_checkpoint(model, cfg), tmp_path / "mc.pt")
    again = model_from_checkpoint(tmp_path / "mc.pt").eval()
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    # its backbone initialises another model of the same variant
    other = build_model(vit_cfg("vit_small_patch14_reg4_dinov2", 28, f"backbone.init={tmp_path / 'mc.pt'}"))
    assert torch.equal(other.backbone.vit.blocks[1].attn.qkv.weight, model.backbone.vit.blocks[1].attn.qkv.weight)


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def test_dino_backbone_only_file(tmp_path, caplog):
    net = tiny_vit("vit_small_patch16_224")
    torch.save(net.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    bb = ViTBackbone("vit_small_patch16_224", 32, DIM, DEPTH)
    with caplog.at_level(logging.INFO, logger="maskcontrast.models.checkpoint"):
        report = load_backbone(bb, tmp_path / "dino_deitsmall16_pretrain.pth")
    assert report.layout == "timm_vit" and report.loaded == len(net.state_dict())
    assert_loaded(bb, net.state_dict())
    assert "timm_vit layout" in caplog.text and f"loaded {report.loaded} tensors" in caplog.text
    assert infer_backbone_arch(net.state_dict()) == {
        "arch": "vit_small_patch16_224",
        "vit": {"img_size": 32, "dim": DIM, "depth": DEPTH},
    }


def test_layout_is_read_from_contents_not_the_name(tmp_path):
    net = tiny_vit("vit_small_patch16_224")
    torch.save(net.state_dict(), tmp_path / "resnet50_moco.pth.tar")
    assert (
        load_backbone(ViTBackbone("vit_small_patch16_224", 32, DIM, DEPTH), tmp_path / "resnet50_moco.pth.tar").layout
        == "timm_vit"
    )


@pytest.mark.parametrize("key", ["teacher", "student"])
def test_full_dino_checkpoint_teacher_default_student_selectable(tmp_path, key):
    teacher, student = tiny_vit(seed=1), tiny_vit(seed=2)
    head = {
        "head.mlp.0.weight": torch.randn(8, DIM),
        "head.mlp.0.bias": torch.randn(8),
        "head.last_layer.weight_g": torch.randn(16, 1),
        "head.last_layer.weight_v": torch.randn(16, 8),
    }
    ckpt = {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
        "student": {
            **{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
            **{f"module.{k}": v for k, v in head.items()},
        },
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16),
        "dino_loss": {"center": torch.zeros(1, 16)},
    }
    torch.save(ckpt, tmp_path / "dino_full_checkpoint.pth")
    cfg = vit_cfg(
        "vit_small_patch16_224",
        32,
        f"backbone.init={tmp_path / 'dino_full_checkpoint.pth'}",
        *([f"backbone.init_key={key}"] if key == "student" else []),
    )
    model = build_model(cfg)
    assert_loaded(model.backbone, (teacher if key == "teacher" else student).state_dict())
    report = load_backbone(
        ViTBackbone("vit_small_patch16_224", 32, DIM, DEPTH), tmp_path / "dino_full_checkpoint.pth", key
    )
    assert report.layout == "dino_full" and report.entry == key
    assert report.ignored == {"DINO projection head": [("module." if key == "student" else "") + k for k in head]}
    assert "args" in report.other_entries and ("student" if key == "teacher" else "teacher") in report.other_entries
    fm = load_model(tmp_path / "dino_full_checkpoint.pth", "cpu", init_key=key)
    assert torch.equal(fm.net.vit.cls_token, (teacher if key == "teacher" else student).cls_token)


def dinov2_file(net, grid_prefix_cls=True):
    """The published DINOv2 layout of a timm DINOv2 model: ``mask_token``, ``register_tokens``, the
    class position inside ``pos_embed`` (timm keeps the reg variants' class position in cls_token)."""
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    dim = sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.randn(1, dim)
    if "reg_token" in sd:
        sd["register_tokens"] = sd.pop("reg_token")
        cls_pos = torch.randn(1, 1, dim)
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    return sd


@pytest.mark.parametrize("arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_dinov2_518px_file_loads_for_a_224_model(tmp_path, arch, caplog):
    net = tiny_vit(arch, img_size=518)
    sd = dinov2_file(net)
    assert sd["pos_embed"].shape[1] == 1 + 37 * 37
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    assert detect_layout(sd) == "dinov2"
    # same size: every tensor as in the file (registers renamed, the class position folded into cls_token)
    same = ViTBackbone(arch, 518, DIM, DEPTH)
    report = load_backbone(same, tmp_path / "dinov2_vits14_pretrain.pth")
    assert report.ignored == {"iBOT mask token": ["mask_token"]}
    assert_loaded(same, net.state_dict(), skip=("cls_token", "pos_embed"))
    if "reg4" in arch:
        assert torch.equal(same.vit.reg_token, sd["register_tokens"])
        assert torch.equal(same.vit.cls_token, sd["cls_token"] + sd["pos_embed"][:, :1])
        assert torch.equal(same.vit.pos_embed, sd["pos_embed"][:, 1:])
    else:
        assert torch.equal(same.vit.pos_embed, sd["pos_embed"])
    # a 224 px model: the 37 x 37 grid is interpolated to 16 x 16
    small = build_model(vit_cfg(arch, 224, f"backbone.init={tmp_path / 'dinov2_vits14_pretrain.pth'}")).backbone
    pos = sd["pos_embed"][:, 1:] if "reg4" in arch else sd["pos_embed"]
    expect = resample_abs_pos_embed(pos, [16, 16], [37, 37], num_prefix_tokens=0 if "reg4" in arch else 1)
    torch.testing.assert_close(small.vit.pos_embed, expect)
    with caplog.at_level(logging.INFO, logger="maskcontrast.models.checkpoint"):
        load_backbone(ViTBackbone(arch, 224, DIM, DEPTH), tmp_path / "dinov2_vits14_pretrain.pth")
    assert "interpolated from 37x37 to 16x16" in caplog.text
    # load_model infers the variant (registers, layer scale, patch 14) and keeps the 518 px grid
    fm = load_model(tmp_path / "dinov2_vits14_pretrain.pth", "cpu")
    assert fm.net.arch == arch and fm.output_stride == 14 and fm.net.img_size == 518
    assert fm.features(torch.rand(1, 3, 56, 70), resolution="feature").shape == (1, DIM, 4, 5)


def test_mae_file_decoder_ignored(tmp_path):
    net = tiny_vit("vit_small_patch16_224")
    decoder = {
        "mask_token": torch.randn(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, DIM),
        "decoder_pos_embed": torch.randn(1, 5, 32),
        "decoder_blocks.0.norm1.weight": torch.randn(32),
        "decoder_norm.weight": torch.randn(32),
        "decoder_pred.weight": torch.randn(768, 32),
    }
    torch.save({"model": {**net.state_dict(), **decoder}}, tmp_path / "mae_visualize_vit_small.pth")
    bb = ViTBackbone("vit_small_patch16_224", 32, DIM, DEPTH)
    report = load_backbone(bb, tmp_path / "mae_visualize_vit_small.pth")
    assert report.layout == "mae" and report.ignored == {"MAE decoder": list(decoder)}
    assert_loaded(bb, net.state_dict())


def zoo_state(seed=0):
    """A resnet18 MaskContrast model and its state in the official pretrained file's names."""
    torch.manual_seed(seed)
    model = MaskContrastModel(load_config(ModelConfig, overrides=["backbone.arch=resnet18"]))
    ours = model.state_dict()
    names = {"embed_head.": "head.", "saliency_head.": "classification_head."}
    q = {}
    for k, v in ours.items():
        for a, b in names.items():
            if k.startswith(a):
                k = b + k[len(a) :]
        q[k] = v
    sd = {f"module.model_q.{k}": v for k, v in q.items()}
    sd.update({f"module.model_k.{k}": v.clone() for k, v in q.items()})
    sd["module.queue"], sd["module.queue_ptr"] = torch.randn(128, 32), torch.zeros(1, dtype=torch.long)
    return model, sd


@pytest.mark.parametrize("wrapped", [True, False])
def test_official_maskcontrast_pretrained_file(tmp_path, wrapped):
    model, sd = zoo_state()
    torch.save({"model": sd} if wrapped else sd, tmp_path / "VOCSegmentation_unsupervised_saliency_model.pth.tar")
    path = tmp_path / "VOCSegmentation_unsupervised_saliency_model.pth.tar"
    loaded = model_from_checkpoint(path)
    assert loaded.backbone.arch == "resnet18" and loaded.embed_dim == 32 and loaded.saliency_head is not None
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    fm = load_model(path, "cpu")
    assert fm.has_saliency and fm.embed(torch.rand(1, 3, 32, 32)).shape == (1, 32, 32, 32)
    # as a backbone init
    bb = ResNetBackbone("resnet18")
    report = load_backbone(bb, path)
    assert report.layout == "maskcontrast_zoo" and set(report.ignored) == {
        "DeepLab head (decoder)",
        "embedding head",
        "saliency head",
        "momentum key model",
        "prototype queue",
    }
    assert torch.equal(bb.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)


def test_official_maskcontrast_linear_finetuned_file(tmp_path):
    torch.manual_seed(0)
    model = MaskContrastModel(load_config(ModelConfig, overrides=["backbone.arch=resnet18", "saliency_head=false"]))
    sd = {k: v for k, v in model.state_dict().items() if k.startswith(("backbone.", "decoder."))}
    sd["decoder.4.weight"], sd["decoder.4.bias"] = torch.randn(21, 256, 1, 1), torch.randn(21)
    torch.save(sd, tmp_path / "linear_finetuned.pth.tar")
    fm = load_model(tmp_path / "linear_finetuned.pth.tar", "cpu")
    assert fm.layout == "maskcontrast_zoo_linear" and fm.feature_dim == 256 and fm.embed_dim == 21
    assert not fm.has_saliency
    assert torch.equal(fm.net.embed_head.weight, sd["decoder.4.weight"])
    for k, v in sd.items():
        if not k.startswith("decoder.4."):
            assert torch.equal(fm.net.state_dict()[k], v), k


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_renamed_key_is_refused_by_name(tmp_path):
    sd = tiny_vit().state_dict()
    sd["blocks.0.attn.qkv_renamed.weight"] = sd.pop("blocks.0.attn.qkv.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone(ViTBackbone("vit_small_patch16_224", 32, DIM, DEPTH), tmp_path / "renamed.pth")
    msg = str(err.value)
    assert "renamed.pth" in msg and "timm_vit layout" in msg
    assert (
        "missing keys ['blocks.0.attn.qkv.weight']" in msg
        and "unexpected keys ['blocks.0.attn.qkv_renamed.weight']" in msg
    )


def test_wrong_family_variant_unknown_layout_and_truncated_file(tmp_path):
    torch.save(tiny_vit().state_dict(), tmp_path / "vit.pth")
    with pytest.raises(
        CheckpointError, match=r"vit\.pth: .*vit_small_patch16_224.*the model's backbone is resnet18, a ResNet"
    ):
        load_backbone(ResNetBackbone("resnet18"), tmp_path / "vit.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "rn.pth")
    with pytest.raises(CheckpointError, match=r"rn\.pth: .*resnet18.*a ViT \(patch 16"):
        load_backbone(ViTBackbone("vit_small_patch16_224", 32, DIM, DEPTH), tmp_path / "rn.pth")
    torch.save(tiny_vit("vit_small_patch8_224").state_dict(), tmp_path / "p8.pth")
    with pytest.raises(
        CheckpointError,
        match=r"p8\.pth: .*vit_small_patch8_224 \(patch 8.*model.backbone.arch is "
        r"vit_small_patch16_224 \(patch 16",
    ):
        build_model(vit_cfg("vit_small_patch16_224", 32, f"backbone.init={tmp_path / 'p8.pth'}"))
    torch.save({"encoder": {"w": torch.zeros(1)}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: unknown checkpoint layout.*dinov2"):
        load_model(tmp_path / "odd.pth", "cpu")
    data = (tmp_path / "vit.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot be read.*truncated"):
        load_model(tmp_path / "cut.pth", "cpu")
