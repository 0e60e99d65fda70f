"""The self-trained refiner: loss on confident pixels, target updates, a short real run, resume."""

from __future__ import annotations

import pytest
import torch

from maskcontrast.config import ConfigError, load_config
from maskcontrast.data import build_dataset
from maskcontrast.models.checkpoint import CheckpointError
from maskcontrast.utils import atomic_save
from saliency.generate import generate
from saliency.refine import (
    RefineConfig,
    RefinerNet,
    RefinerNetConfig,
    RefinerPredictor,
    confident_bce,
    main,
    train_refiner,
    update_targets,
)

TINY = "configs/saliency/refine_tiny.yaml"


def test_confident_bce_counts_only_confident_pixels():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = torch.rand(2, 1, 4, 4)
    conf = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    conf[:, :, :2] = True
    loss = confident_bce(logits, target, conf)
    changed = logits.detach().clone()
    changed[:, :, 2:] += 5.0  # unconfident pixels do not matter
    assert confident_bce(changed, target, conf) == pytest.approx(loss.item())
    manual = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :, :2], (target[:, :, :2] >= 0.5).float())
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    loss.backward()
    assert logits.grad[:, :, 2:].abs().max() == 0
    zero = confident_bce(logits, target, torch.zeros_like(conf))
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        confident_bce(logits, target[:, :, :2], conf)


def test_update_targets_moving_average():
    t = torch.tensor([[[1.0, 0.0, 0.6]]])
    p = torch.tensor([[[1.0, 1.0, 0.6]]])
    avg, targets, conf = update_targets(t, p, momentum=0.5, margin=0.25)
    torch.testing.assert_close(avg, torch.tensor([[[1.0, 0.5, 0.6]]]))
    torch.testing.assert_close(targets, avg)
    assert conf.tolist() == [[[True, False, False]]]
    avg, _, _ = update_targets(t, p, momentum=0.0, margin=0.25)
    torch.testing.assert_close(avg, p)
    # anchored: a pixel the fused label calls background cannot turn into confident foreground
    fused = torch.tensor([[[1.0, 0.0, 0.0]]])
    avg, targets, conf = update_targets(p, p, momentum=0.0, margin=0.25, anchor=fused, anchor_weight=0.5)
    torch.testing.assert_close(targets, torch.tensor([[[1.0, 0.5, 0.3]]]))
    assert conf.tolist() == [[[True, False, False]]]
    with pytest.raises(ValueError, match="target_momentum"):
        update_targets(t, p, momentum=1.0, margin=0.2)
    with pytest.raises(ValueError, match="anchor"):
        update_targets(t, p, momentum=0.5, margin=0.2, anchor_weight=0.5)


def test_network_shapes_and_config_errors():
    net = RefinerNet(RefinerNetConfig(decoder_channels=16))
    assert net(torch.randn(2, 3, 64, 80)).shape == (2, 1, 64, 80)
    with pytest.raises(ConfigError, match="unknown"):
        load_config(RefineConfig, TINY, ["rounds_typo=2"])
    with pytest.raises(ConfigError, match="batch_size"):
        train_refiner([], "/nonexistent-out", load_config(RefineConfig, TINY, ["batch_size=1"]))


def test_predictor_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"format": "maskcontrast", "format_version": 1}, path)
    with pytest.raises(CheckpointError, match="not a saliency refiner"):
        RefinerPredictor(path)


@pytest.mark.data
def test_short_refine_run_on_real_images_lowers_its_loss(shared_root, tmp_path):
    root = shared_root("weizmann")
    out = tmp_path / "run"
    cfg = load_config(RefineConfig, TINY, ["max_images=16", "epochs_per_round=4", "threads=1"])
    summary = train_refiner([("weizmann", str(root))], out, cfg)
    hist = summary["history"]
    assert summary["n_images"] == 16 and len(hist) == 2 * 4
    round1 = [h["loss"] for h in hist if h["round"] == 1]
    assert round1[-1] < round1[0] * 0.9, round1
    for name in ("refiner.pt", "last.pt", "pseudo_labels.pt", "config.yaml", "history.json"):
        assert (out / name).is_file()

    # a finished run is not overwritten; --resume finds nothing left to do
    with pytest.raises(FileExistsError, match="--resume"):
        train_refiner([("weizmann", str(root))], out, cfg)
    again = train_refiner([("weizmann", str(root))], out, cfg, resume=True)
    assert again["history"] == hist
    with pytest.raises(ConfigError, match="differs"):
        train_refiner([("weizmann", str(root))], out, load_config(RefineConfig, TINY, ["lr=0.1"]), resume=True)

    predict = RefinerPredictor(out / "refiner.pt")
    ds = build_dataset("weizmann", root)
    image = ds.read_sample_image(ds.files(ds.ids[0]), ds.ids[0])
    soft = predict(image)
    assert soft.shape == image.shape[:2] and soft.min() >= 0 and soft.max() <= 1
    counts = generate(tmp_path / "masks", "refined", dataset="weizmann", root=root, checkpoint=out / "refiner.pt",
                      limit=2, progress=False)  # fmt: skip
    assert counts["written"] + counts["skipped"] == 2 and counts["errors"] == 0


def test_cli_needs_a_source(tmp_path):
    assert main(["--out", str(tmp_path / "r")]) == 2
    assert main(["--dataset", "weizmann", "--out", str(tmp_path / "r")]) == 2


def test_backbone_init_from_a_checkpoint_file(tmp_path):
    from maskcontrast.models import ResNetBackbone, init_backbone

    source = ResNetBackbone("resnet18", 8)
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # torchvision layout (no fc)
    net = RefinerNet(RefinerNetConfig(decoder_channels=16))
    assert init_backbone(net.backbone, str(path)) == "torchvision"
    torch.testing.assert_close(net.backbone.conv1.weight, source.conv1.weight)
