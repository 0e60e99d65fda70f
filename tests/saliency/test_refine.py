"""The self-trained refiner: loss on confident pixels, target updates, diagnostics, checkpoint
versions, the ensemble output, a short real run, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import config_to_dict, load_config
from maskcontrast.data import build_dataset
from maskcontrast.models.checkpoint import CheckpointError
from maskcontrast.utils import atomic_save
from saliency.fusion import FusionConfig, fuse, fuse_with
from saliency.generate import generate
from saliency.refine import (
    FORMAT,
    RefineConfig,
    RefinerNet,
    RefinerNetConfig,
    RefinerPredictor,
    align_mean,
    confident_bce,
    main,
    target_diagnostics,
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


def test_confident_bce_soft_targets_on_unconfident_pixels():
    logits = torch.randn(1, 1, 2, 2)
    target = torch.tensor([[[[0.9, 0.3], [0.2, 0.6]]]])
    conf = torch.tensor([[[[True, True], [False, False]]]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    hard = bce(logits[..., 0, :], torch.tensor([[[1.0, 0.0]]]), reduction="sum")
    soft = bce(logits[..., 1, :], target[..., 1, :], reduction="sum")  # the soft targets 0.2 and 0.6
    loss = confident_bce(logits, target, conf, unconfident_weight=0.5)
    assert loss.item() == pytest.approx(((hard + 0.5 * soft) / 3.0).item(), rel=1e-5)
    assert confident_bce(logits, target, conf, 0.0).item() == pytest.approx((hard / 2).item(), rel=1e-5)
    # with weight 1 and nothing confident it is the plain soft cross-entropy
    none = torch.zeros_like(conf)
    assert confident_bce(logits, target, none, 1.0).item() == pytest.approx(bce(logits, target).item(), rel=1e-5)
    with pytest.raises(ValueError, match="unconfident_weight"):
        confident_bce(logits, target, conf, 1.5)


def test_target_diagnostics_by_hand():
    fused = torch.tensor([[[0.9, 0.8, 0.1, 0.2]]])
    pred = torch.tensor([[[0.7, 0.2, 0.1, 0.6]]])
    conf = torch.tensor([[[True, True, True, False]]])
    d = target_diagnostics(pred, fused, conf)
    assert d["foreground_share"] == pytest.approx(0.5)
    assert d["fused_foreground_share"] == pytest.approx(0.5)
    assert d["confident_agreement"] == pytest.approx(2 / 3)
    assert d["unconfident_foreground"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        target_diagnostics(pred, fused[..., :2], conf)


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
    for stem_skip in (True, False):
        net = RefinerNet(RefinerNetConfig(decoder_channels=16, stem_skip=stem_skip))
        assert net(torch.randn(2, 3, 64, 80)).shape == (2, 1, 64, 80)
        assert hasattr(net, "fine") == stem_skip
    with pytest.raises(ConfigError, match="unknown"):
        load_config(RefineConfig, TINY, ["rounds_typo=2"])
    with pytest.raises(ConfigError, match="batch_size"):
        train_refiner([], "/nonexistent-out", load_config(RefineConfig, TINY, ["batch_size=1"]))


def test_predictor_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"format": "maskcontrast", "format_version": 1}, path)
    with pytest.raises(CheckpointError, match="not a saliency refiner"):
        RefinerPredictor(path)
    atomic_save({"format": FORMAT, "format_version": 99, "config": {}, "model": {}}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        RefinerPredictor(path)
    cfg = config_to_dict(load_config(RefineConfig, TINY))
    atomic_save({"format": FORMAT, "format_version": 2, "config": cfg, "model": {"x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        RefinerPredictor(path)


def _v1_config() -> dict:
    """A refiner config as version 1 wrote it (no stem_skip, fused_weight, unconfident_weight, precision)."""
    cfg = config_to_dict(load_config(RefineConfig, TINY))
    for key in ("fused_weight", "unconfident_weight", "precision", "align_mean", "combine", "tta_scales"):
        del cfg[key]
    del cfg["model"]["stem_skip"]
    return cfg


def test_version_1_checkpoint_predicts_as_before(tmp_path, scene_factory):
    torch.manual_seed(0)
    net = RefinerNet(RefinerNetConfig(decoder_channels=16, stem_skip=False)).eval()
    path = tmp_path / "v1.pt"
    state = {k: v.clone() for k, v in net.state_dict().items()}
    atomic_save({"format": FORMAT, "format_version": 1, "config": _v1_config(), "model": state}, path)
    predict = RefinerPredictor(path, device="cpu")
    assert predict.fused_weight == 0.0 and predict.dtype is None and not predict.net.stem_skip
    image, _ = scene_factory(64, 64)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        want = (torch.sigmoid(net(x)) + torch.sigmoid(net(x.flip(-1))).flip(-1))[0, 0] / 2
    np.testing.assert_allclose(predict(image), want.numpy(), atol=1e-5)


def test_predictor_ensembles_with_the_fused_map(tmp_path, scene_factory):
    cfg = load_config(RefineConfig, TINY, ["precision=fp32", "fused_weight=0.5", "align_mean=false", "combine=blend"])
    net = RefinerNet(RefinerNetConfig(decoder_channels=16)).eval()
    path = tmp_path / "r.pt"
    atomic_save({"format": FORMAT, "format_version": 3, "config": config_to_dict(cfg), "model": net.state_dict()}, path)
    predict = RefinerPredictor(path, device="cpu")
    image, _ = scene_factory(72, 96, seed=3)
    alone = predict.network(image)
    fused = fuse(image, FusionConfig(**config_to_dict(cfg.fusion))).saliency
    both = predict(image)
    assert both.shape == (72, 96) and both.dtype == np.float32
    np.testing.assert_allclose(both, 0.5 * alone + 0.5 * fused, atol=1e-5)
    np.testing.assert_allclose(RefinerPredictor(path, device="cpu", fused_weight=0.0)(image), alone, atol=1e-6)
    with pytest.raises(ValueError, match="fused_weight"):
        RefinerPredictor(path, fused_weight=2.0)


def test_align_mean_matches_a_root_found_by_scipy():
    from scipy.optimize import brentq
    from scipy.special import expit, logit

    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 9, 7, generator=gen) ** 3
    p[2] = 0.5  # a constant map: the shift alone sets its value
    goal = torch.tensor([0.3, 0.05, 0.8])
    got = align_mean(p, goal)
    assert got.shape == p.shape and got.dtype == torch.float32
    for n in range(3):
        z = logit(np.clip(p[n].double().numpy(), 1e-6, 1 - 1e-6))
        b = brentq(lambda b, z=z, n=n: expit(z + b).mean() - goal[n].item(), -30, 30, xtol=1e-12)
        np.testing.assert_allclose(got[n].numpy(), expit(z + b), atol=1e-5)
        # the order of the pixels is kept: only the amount of foreground moves
        order = np.argsort(p[n].flatten().numpy(), kind="stable")
        assert (np.diff(got[n].flatten().numpy()[order]) >= -1e-7).all()
    torch.testing.assert_close(got.mean(dim=(1, 2)), goal, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="N means"):
        align_mean(p, goal[:2])


def test_predictor_aligns_the_network_and_fuses_it(tmp_path, scene_factory):
    cfg = load_config(RefineConfig, TINY, ["precision=fp32", "fused_weight=0.5", "combine=blend"])
    assert cfg.align_mean  # the default
    net = RefinerNet(RefinerNetConfig(decoder_channels=16)).eval()
    path = tmp_path / "r.pt"
    atomic_save({"format": FORMAT, "format_version": 3, "config": config_to_dict(cfg), "model": net.state_dict()}, path)
    predict = RefinerPredictor(path, device="cpu")
    image, _ = scene_factory(72, 96, seed=5)
    fusion = FusionConfig(**config_to_dict(cfg.fusion))
    result = fuse(image, fusion)
    fused = result.saliency
    aligned = align_mean(torch.from_numpy(predict.network(image))[None], torch.tensor([float(fused.mean())]))[0]
    np.testing.assert_allclose(predict(image), 0.5 * aligned.numpy() + 0.5 * fused, atol=1e-5)
    alone = RefinerPredictor(path, device="cpu", fused_weight=0.0)(image)
    assert alone.mean() == pytest.approx(float(fused.mean()), abs=1e-4)
    # combine=fusion (the default): the aligned map joins the classical fusion as an estimator
    joined = RefinerPredictor(path, device="cpu", combine="fusion")(image)
    np.testing.assert_allclose(joined, fuse_with(result, {"network": aligned.numpy()}, fusion), atol=1e-5)
    # output(): the same rules from a network map and a fusion already computed
    np.testing.assert_allclose(predict.output(predict.network(image), result, combine="fusion"), joined, atol=1e-6)
    with pytest.raises(ValueError, match="combine"):
        predict.output(predict.network(image), result, combine="mean")
    assert load_config(RefineConfig).combine == "fusion"
    with pytest.raises(ValueError, match="combine"):
        RefinerPredictor(path, combine="mean")
    with pytest.raises(ConfigError, match="combine"):
        train_refiner([], "/nonexistent-out", load_config(RefineConfig, TINY, ["combine=mean"]))
    # a version-2 checkpoint (written before align_mean existed) predicts as version-2 code did
    v2 = config_to_dict(cfg)
    del v2["align_mean"], v2["combine"], v2["tta_scales"]
    atomic_save({"format": FORMAT, "format_version": 2, "config": v2, "model": net.state_dict()}, path)
    old = RefinerPredictor(path, device="cpu")
    assert not old.align_mean
    np.testing.assert_allclose(old(image), 0.5 * old.network(image) + 0.5 * fused, atol=1e-5)


def test_predictor_averages_the_maps_of_its_tta_scales(tmp_path, scene_factory):
    net = RefinerNet(RefinerNetConfig(decoder_channels=16)).eval()

    def predictor(input_size: int, **kw) -> RefinerPredictor:
        over = ["precision=fp32", f"input_size={input_size}"]
        cfg = config_to_dict(load_config(RefineConfig, TINY, over))
        path = tmp_path / f"r{input_size}.pt"
        atomic_save({"format": FORMAT, "format_version": 3, "config": cfg, "model": net.state_dict()}, path)
        return RefinerPredictor(path, device="cpu", **kw)

    image, _ = scene_factory(60, 90, seed=7)
    assert predictor(64).tta_scales == [1.0]  # the default: one scale, version 3's maps
    # the same weights at 0.5 x 64 and 1 x 64 px: the map at scales [0.5, 1] is their mean
    want = (predictor(32).network(image) + predictor(64).network(image)) / 2
    got = predictor(64, tta_scales=(0.5, 1.0)).network(image)
    assert got.shape == (60, 90) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="tta_scales"):
        predictor(64, tta_scales=[])
    with pytest.raises(ValueError, match="tta_scales"):
        predictor(64, tta_scales=[0.0])


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
    ends = [h for h in hist if h["epoch"] == 4]  # label-free diagnostics at every round's end
    assert len(ends) == 2 and all(0.0 <= h["confident_agreement"] <= 1.0 for h in ends)
    assert all(0.0 < h["fused_foreground_share"] < 1.0 for h in ends)
    for name in ("refiner.pt", "last.pt", "pseudo_labels.pt", "config.yaml", "history.json"):
        assert (out / name).is_file()
    # align_mean (the default): every image's moving average keeps its fused map's mean
    fused = torch.load(out / "pseudo_labels.pt", weights_only=True)["targets"].float().mean(dim=(1, 2))
    average = torch.load(out / "last.pt", weights_only=True)["average"].float().mean(dim=(1, 2))
    torch.testing.assert_close(average, fused, atol=1.0, rtol=0)  # uint8 storage: within 1/255

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
    counts = generate(
        tmp_path / "masks",
        "refined",
        dataset="weizmann",
        root=root,
        checkpoint=out / "refiner.pt",
        limit=2,
        progress=False,
    )
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


def test_validate_uses_the_schema_bounds_and_names_the_key() -> None:
    from saliency.refine.config import RefineConfig, RefinerNetConfig, validate

    validate(RefineConfig())  # the defaults pass, as a dataclass and as a structured config
    validate(load_config(RefineConfig))
    with pytest.raises(ConfigError, match="key 'lr' must be > 0"):
        validate(RefineConfig(lr=0.0))
    with pytest.raises(ConfigError, match=r"key 'model\.output_stride' must be one of 8, 16, 32"):
        validate(RefineConfig(model=RefinerNetConfig(output_stride=12)))
    with pytest.raises(ConfigError, match="key 'tta_scales'"):
        validate(RefineConfig(tta_scales=[1.0, 5.0]))
    with pytest.raises(ConfigError, match="non-empty"):
        validate(RefineConfig(tta_scales=[]))
