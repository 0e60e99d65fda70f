"""Every consumer of ``--checkpoint`` (load_model and its methods, the eval CLIs through
``eval.arguments.model_from_args``, and ``maskcontrast.extract``) works on tiny ViT checkpoints:
a maskcontrast model on a ViT and a bare DINOv2 backbone file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskcontrast.api import load_model
from maskcontrast.config import ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.models import build_model, model_checkpoint
from maskcontrast.models.vit import create_timm_vit


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    """A tiny ViT-S/16-shaped maskcontrast model (64 wide, 2 blocks, light head, saliency head)."""
    torch.manual_seed(0)
    cfg = load_config(
        ModelConfig,
        overrides=[
            "backbone.arch=vit_small_patch16_224",
            "backbone.vit.img_size=64",
            "backbone.vit.dim=64",
            "backbone.vit.depth=2",
            "embed_dim=8",
        ],
    )
    path = tmp_path_factory.mktemp("vit") / "vit_maskcontrast.pt"
    torch.save(model_checkpoint(build_model(cfg), cfg), path)
    return path


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory):
    """A tiny DINOv2-with-registers file in the published layout (518 px position embedding)."""
    torch.manual_seed(0)
    net = create_timm_vit("vit_small_patch14_reg4_dinov2", 518, 64, 2)
    sd = dict(net.state_dict())
    sd["register_tokens"] = sd.pop("reg_token")
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, 64), sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, 64)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(sd, path)
    return path


def test_api_methods_on_vit_checkpoints(vit_ckpt, dinov2_file):
    m = load_model(vit_ckpt, "cpu")
    assert m.output_stride == 16 and m.kind == "maskcontrast"
    x = torch.rand(2, 3, 50, 70)  # rounded to 48 x 64 for the network, results at 50 x 70
    assert m.embed(x).shape == (2, 8, 50, 70) and m.saliency(x).shape == (2, 1, 50, 70)
    assert m.features(x, resolution="feature").shape == (2, 256, 3, 4)
    masks = torch.zeros(1, 50, 70, dtype=torch.uint8)
    masks[0, 10:30, 10:40] = 1
    out = m.segment_like(x[:1], masks, x)
    assert out.masks.shape == (2, 50, 70)
    d = load_model(dinov2_file, "cpu")
    assert d.kind == "backbone" and d.output_stride == 14 and d.layout == "dinov2"
    assert d.features(x, resolution="feature").shape == (2, 64, 4, 5)
    assert d.segment_like(x[:1], masks, x).soft.shape == (2, 50, 70)


@pytest.mark.data
def test_eval_clis_on_a_vit_checkpoint(shared_root, vit_ckpt, dinov2_file, tmp_path):
    from eval.kmeans import main as kmeans
    from eval.linear import main as linear
    from eval.oneshot import main as oneshot
    from eval.propagation import main as propagation
    from eval.retrieval import main as retrieval

    weizmann = shared_root("weizmann")
    common = ["--dataset", "weizmann", "--root", str(weizmann), "--limit", "6", "--workers", "0", "--no-progress"]
    for ckpt in (vit_ckpt, dinov2_file):
        km = kmeans(
            [
                "--checkpoint",
                str(ckpt),
                *common,
                "--size",
                "64",
                "--k",
                "2",
                "--seeds",
                "1",
                "--saliency-source",
                "gt",
                "--json",
                str(tmp_path / f"km_{ckpt.stem}.json"),
            ]
        )
        assert 0.0 <= km["miou_mean"] <= 1.0
    km = kmeans(
        [
            "--checkpoint",
            str(vit_ckpt),
            *common,
            "--size",
            "64",
            "--k",
            "2",
            "--seeds",
            "1",
            "--protocol",
            "pixel",
            "--json",
            str(tmp_path / "km_pixel.json"),
        ]
    )
    assert 0.0 <= km["miou_mean"] <= 1.0
    lin = linear(
        [
            "--config",
            "configs/eval/linear_cpu.yaml",
            "--checkpoint",
            str(dinov2_file),
            *common,
            "--out",
            str(tmp_path / "linear"),
            "epochs=1",
            "base_size=56",
            "eval_size=56",
            "augment.crop_size=56",
        ]
    )
    assert lin["layout"] == "dinov2" and lin["feature_dim"] == 64 and 0.0 <= lin["miou"] <= 1.0
    ret = retrieval(
        [
            "--checkpoint",
            str(vit_ckpt),
            *common,
            "--size",
            "64",
            "--saliency-source",
            "gt",
            "--topk",
            "2",
            "--json",
            str(tmp_path / "ret" / "r.json"),
        ]
    )
    assert 0.0 <= ret["miou"] <= 1.0
    pet = shared_root("pet")
    one = oneshot(
        [
            "--checkpoint",
            str(vit_ckpt),
            "--dataset",
            "pet",
            "--root",
            str(pet),
            "--dataset-arg",
            "target=species",
            "--limit",
            "6",
            "--size",
            "64",
            "--workers",
            "0",
            "--no-progress",
            "--classes",
            "cat",
            "--shots",
            "1",
            "--episodes",
            "1",
        ]
    )
    assert 0.0 <= one["miou"] <= 1.0
    davis = shared_root("davis2016")
    prop = propagation(
        [
            "--checkpoint",
            str(dinov2_file),
            "--dataset",
            "davis2016",
            "--root",
            str(davis),
            "--sequences",
            "car-shadow",
            "--size",
            "56",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert 0.0 <= prop["jf_mean"] <= 1.0


def test_extract_on_a_vit_checkpoint(vit_ckpt, tmp_path):
    from maskcontrast.extract import main as extract

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    extract(
        [
            "--checkpoint",
            str(vit_ckpt),
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "0",
            "--no-progress",
            "--what",
            "embed",
        ]
    )
    files = sorted((tmp_path / "out").rglob("*.npy"))
    assert len(files) == 2 and np.load(files[0]).shape == (8, 3, 4)  # 48 x 64 input / patch 16
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "init_key" not in json.dumps(manifest.get("settings", {}))
