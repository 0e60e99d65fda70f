"""Checkpoint layouts: official MoCo v2, torchvision, maskcontrast round trip, and clear errors."""

import pytest
import torch
import torchvision

from maskcontrast.config import ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.models import (
    CheckpointError,
    ResNetBackbone,
    build_model,
    detect_layout,
    infer_resnet_arch,
    load_backbone_weights,
    model_checkpoint,
    model_from_checkpoint,
)


def official_moco_file(path, net, extra=None, drop=None):
    """A file in exactly the official MoCo v2 release layout (encoder with the MLP head)."""
    c = net.fc.in_features
    net.fc = torch.nn.Sequential(torch.nn.Linear(c, c), torch.nn.ReLU(), torch.nn.Linear(c, 128))
    sd = {}
    for enc in ("encoder_q", "encoder_k"):
        sd.update({f"module.{enc}.{k}": v.clone() for k, v in net.state_dict().items()})
    sd["module.queue"] = torch.randn(128, 16)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    sd.update(extra or {})
    for k in drop or []:
        del sd[k]
    torch.save(
        {"epoch": 800, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    return net


def test_official_moco_v2_layout_loads_with_only_fc_left_out(tmp_path):
    torch.manual_seed(0)
    net = official_moco_file(tmp_path / "moco.pth.tar", torchvision.models.resnet18())
    bb = ResNetBackbone("resnet18", 8)
    assert load_backbone_weights(bb, tmp_path / "moco.pth.tar") == "moco"
    for k, v in bb.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", f"backbone.init={tmp_path / 'moco.pth.tar'}"])
    assert torch.equal(build_model(cfg).backbone.layer3[1].conv2.weight, net.layer3[1].conv2.weight)


def test_moco_file_with_wrong_keys_is_an_error_listing_them(tmp_path):
    official_moco_file(
        tmp_path / "extra.pth",
        torchvision.models.resnet18(),
        extra={"module.encoder_q.layer5.0.weight": torch.zeros(1)},
    )
    with pytest.raises(CheckpointError, match=r"unexpected keys \['layer5.0.weight'\]"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "extra.pth")
    official_moco_file(
        tmp_path / "missing.pth", torchvision.models.resnet18(), drop=["module.encoder_q.layer1.0.conv1.weight"]
    )
    with pytest.raises(CheckpointError, match=r"missing keys \['layer1.0.conv1.weight'\]"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="resnet18"):
        load_backbone_weights(ResNetBackbone("resnet34"), tmp_path / "extra.pth")


def test_torchvision_layout(tmp_path):
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    bb = ResNetBackbone("resnet18", 16)
    assert load_backbone_weights(bb, tmp_path / "tv.pth") == "torchvision"
    assert torch.equal(bb.conv1.weight, net.conv1.weight)
    assert infer_resnet_arch(net.state_dict()) == "resnet18"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "wrapped.pth")
    assert load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "wrapped.pth") == "torchvision"


def test_maskcontrast_round_trip(tmp_path):
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "embed_dim=8", "backbone.output_stride=16"])
    model = build_model(cfg).eval()
    torch.save(model_checkpoint(model, cfg, epoch=3), tmp_path / "mc.pt")
    again = model_from_checkpoint(tmp_path / "mc.pt").eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.saliency, b.saliency)
    assert again.backbone.output_stride == 16
    bb = ResNetBackbone("resnet18", 8)
    assert load_backbone_weights(bb, tmp_path / "mc.pt") == "maskcontrast"


def test_wrong_layouts_are_clear_errors(tmp_path):
    torch.save({"foo": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint layout \(top-level keys \['foo'\]\)"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "odd.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="version"):
        detect_layout({"format": "maskcontrast", "format_version": 99})
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, tmp_path / "tv.pt")
    with pytest.raises(CheckpointError, match="not a maskcontrast checkpoint"):
        model_from_checkpoint(tmp_path / "tv.pt")


def test_init_torchvision_reads_torchs_download_cache_and_explains_a_failed_download(tmp_path, monkeypatch):
    from urllib.error import URLError

    from maskcontrast.models import init_backbone

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1])
    bb = ResNetBackbone("resnet18", 8)
    assert init_backbone(bb, "torchvision") == "torchvision"  # from the cache, no download
    assert torch.equal(bb.conv1.weight, net.conv1.weight)

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match="download them elsewhere"):
        init_backbone(ResNetBackbone("resnet34", 8), "torchvision")


def test_weights_holding_nan_or_inf_are_refused_naming_the_file_and_the_tensors(tmp_path):
    """A diverged training's weights would make every output NaN (eval.segment then reported "0 object
    prototypes"); both loaders refuse them by name. Integer buffers (num_batches_tracked) are not checked."""
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "embed_dim=8"])
    model = build_model(cfg)
    ckpt = model_checkpoint(model, cfg)
    ckpt["model"]["backbone.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(
        CheckpointError, match=r"nan\.pt \(maskcontrast layout\): 1 of its weight tensors hold NaN or Inf"
    ):
        model_from_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"\['layer2\.0\.conv1\.weight'\]"):
        load_backbone_weights(ResNetBackbone("resnet18", 8), tmp_path / "nan.pt")
    net = torchvision.models.resnet18()
    with torch.no_grad():
        net.layer1[0].bn1.running_var[3] = float("inf")
    official_moco_file(tmp_path / "moco.pth.tar", net)
    with pytest.raises(
        CheckpointError,
        match=r"moco\.pth\.tar: looked like .*1 of its weight tensors hold NaN or Inf \(\['layer1\.0\.bn1\.running_var'\]\)",
    ):
        load_backbone_weights(ResNetBackbone("resnet18", 8), tmp_path / "moco.pth.tar")  # a buffer, of encoder_q
    ckpt["model"]["backbone.layer2.0.conv1.weight"][0, 0, 0, 0] = 0.0
    torch.save(ckpt, tmp_path / "fine.pt")
    model_from_checkpoint(tmp_path / "fine.pt")
