import json

import numpy as np
import pytest
import torch

from eval import linear
from eval.linear import (
    AffineParams,
    AugmentConfig,
    LinearConfig,
    affine_grid,
    main,
    sample_affine,
    warp_features,
    warp_image,
    warp_label,
)
from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import load_config


def test_identity_view_keeps_image_and_label():
    img = torch.rand(1, 3, 16, 16)
    lab = torch.randint(0, 5, (16, 16))
    p = AffineParams(1.0, 0.0, False, 0.0, 0.0)
    torch.testing.assert_close(warp_image(img, p, 16), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp_label(lab, p, 16), lab)


def test_flip_and_padding():
    lab = torch.arange(16).reshape(4, 4)
    flipped = warp_label(lab, AffineParams(1.0, 0.0, True, 0.0, 0.0), 4)
    torch.testing.assert_close(flipped, lab.flip(1))
    # a crop larger than the image: the outside is ignore (255)
    padded = warp_label(lab, AffineParams(1.0, 0.0, False, 0.0, 0.0), 6)
    torch.testing.assert_close(padded[:4, :4], lab)
    assert (padded[4:] == 255).all() and (padded[:, 4:] == 255).all()


def test_features_and_labels_stay_aligned():
    # a feature map that equals the label at stride 4 must land where the label lands
    rng = np.random.default_rng(0)
    lab = torch.zeros(64, 64, dtype=torch.long)
    lab[16:48, 8:40] = 1
    feats = lab[2::4, 2::4].float()[None, None]  # 16 x 16 "features"
    aug = AugmentConfig(crop_size=48, scale_min=0.8, scale_max=1.2, rotate_degrees=5, flip=True)
    for _ in range(5):
        p = sample_affine(rng, (64, 64), 48, aug)
        wl = warp_label(lab, p, 48)
        wf = warp_features(feats, p, (64, 64), 48, 4)[0, 0]
        sub = wl[2::4, 2::4]
        valid = (sub != 255) & ((wf - 0.5).abs() > 0.25)
        agree = ((wf[valid] > 0.5).long() == sub[valid]).float().mean()
        assert agree > 0.95


def test_affine_grid_identity_is_pixel_centres():
    grid = affine_grid(AffineParams(1.0, 0.0, False, 0.0, 0.0), (4, 8), 4, (4, 4))
    assert grid.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(grid[0, 0, :, 0].numpy(), [-7 / 8, -5 / 8, -3 / 8, -1 / 8])
    np.testing.assert_allclose(grid[0, :, 0, 1].numpy(), [-3 / 4, -1 / 4, 1 / 4, 3 / 4])


def test_configs_load_and_unknown_keys_fail():
    paper = load_config(LinearConfig, "configs/eval/linear_voc.yaml")
    assert paper.batch_size == 16 and paper.epochs == 60 and paper.optim.lr == 0.1
    assert list(paper.optim.milestones) == [25] and paper.augment.crop_size == 512
    assert paper.data.train_split == "train_aug" and paper.augment.rotate_degrees == 5
    cpu = load_config(LinearConfig, "configs/eval/linear_cpu.yaml")
    assert cpu.cache_features and cpu.data.train_split is None
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(LinearConfig, None, ["optim.lrr=1"])


def test_run_linear_probe_checks_a_python_built_config(tmp_path):
    """A LinearConfig built in Python gets the schema's bounds too, before any data is touched."""
    from eval.linear import run_linear_probe

    with pytest.raises(ConfigError, match="key 'batch_size' must be >= 1"):
        run_linear_probe(None, None, None, LinearConfig(batch_size=0), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"key 'augment\.crop_size'"):
        run_linear_probe(None, None, None, LinearConfig(augment=AugmentConfig(crop_size=0)), tmp_path)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_crf_missing_gives_a_clear_skip(monkeypatch):
    ok, why = linear.crf_available()
    if ok:
        pytest.skip("pydensecrf is installed here")
    assert "pip install pydensecrf2" in why


def test_dense_crf_snaps_noisy_labels_to_image_edges():
    """Runs where ``pip install pydensecrf2`` has built (it ships an sdist only)."""
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(0)
    h, w = 48, 64
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 220
    truth = np.zeros((h, w), np.int64)
    image.flags.writeable = False  # as the datasets give them
    truth[:, w // 2 :] = 1
    p = np.clip(np.where(truth == 1, 0.65, 0.35) + rng.normal(0, 0.25, (h, w)), 0.01, 0.99)
    probs = np.stack([1 - p, p]).astype(np.float32)
    raw = (probs.argmax(0) == truth).mean()
    out = linear.dense_crf(image, probs, linear.CRFConfig())
    assert out.shape == (h, w)
    assert (out == truth).mean() > max(raw + 0.15, 0.95), (raw, (out == truth).mean())


def _trivial_background_miou(val_ids, root):
    from maskcontrast.data import build_dataset

    ds = build_dataset("weizmann", root, ids=val_ids)
    bg = fg = 0
    for s in ds:
        valid = s.label != 255
        bg += int(((s.label == 0) & valid).sum())
        fg += int(((s.label == 1) & valid).sum())
    return (bg / (bg + fg)) / 2  # all-background prediction: IoU_bg = bg share, IoU_fg = 0


@pytest.mark.data
def test_probe_fits_real_labelled_set_well_above_chance(shared_root, maskcontrast_ckpt, tmp_path):
    root = shared_root("weizmann")
    out = tmp_path / "run"
    args = [
        "--config",
        "configs/eval/linear_cpu.yaml",
        "--checkpoint",
        str(maskcontrast_ckpt),
        "--dataset",
        "weizmann",
        "--root",
        str(root),
        "--limit",
        "30",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
        "--vis",
        "2",
        "epochs=20",
        "optim.lr=1.0",
        "optim.milestones=[15]",
        "base_size=96",
        "eval_size=96",
        "augment.crop_size=96",
        "crf.enabled=true",
    ]
    result = main(args)
    val_ids = (out / "split_val.txt").read_text().split()
    assert len(val_ids) == 6 and len((out / "split_train.txt").read_text().split()) == 24
    chance = _trivial_background_miou(val_ids, root)
    assert result["miou"] > chance + 0.12, (result["miou"], chance)
    assert result["crf"] in ("applied",) or result["crf"].startswith("skipped: pydensecrf is not importable")
    if result["crf"] == "applied":  # where pydensecrf2 is built: both scores are there
        assert 0.0 < result["crf_scores"]["miou"] <= 1.0 and set(result["crf_scores"]["per_class"]) == {
            "background",
            "horse",
        }
    saved = json.loads((out / "results.json").read_text())
    assert saved["miou"] == pytest.approx(result["miou"])
    assert len(list((out / "vis").glob("*.png"))) == 2
    assert len(list((out / "features" / "train").glob("*.pt"))) == 24
    # a finished run is not redone without --overwrite
    with pytest.raises(FileExistsError, match="finished run"):
        main(args)


@pytest.mark.data
def test_moco_checkpoint_probe_resumes(shared_root, moco_ckpt, tmp_path):
    root = shared_root("weizmann")
    out = tmp_path / "run"
    base = [
        "--config",
        "configs/eval/linear_cpu.yaml",
        "--checkpoint",
        str(moco_ckpt),
        "--dataset",
        "weizmann",
        "--root",
        str(root),
        "--limit",
        "10",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
        "base_size=64",
        "eval_size=64",
        "augment.crop_size=64",
    ]
    first = main([*base, "epochs=2"])
    assert first["layout"] == "moco" and first["feature_dim"] == 512
    # other settings in the same folder are refused ...
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    (out / "results.json").unlink()
    with pytest.raises(FileExistsError, match="other settings"):
        main([*base, "epochs=3", "optim.lr=0.5"])
    # ... and an interrupted run resumes from its last epoch (the saved run.json decides "same")
    run = json.loads((out / "run.json").read_text())
    run["config"]["epochs"] = 3
    (out / "run.json").write_text(json.dumps(run))
    resumed = main([*base, "epochs=3"])
    assert [h["epoch"] for h in resumed["history"]] == [3]


@pytest.mark.data
def test_image_space_augmentation_path(shared_root, maskcontrast_ckpt, tmp_path):
    """The paper's path (no feature cache): augment images, run the frozen network every step."""
    root = shared_root("weizmann")
    result = main(
        [
            "--checkpoint",
            str(maskcontrast_ckpt),
            "--dataset",
            "weizmann",
            "--root",
            str(root),
            "--limit",
            "6",
            "--out",
            str(tmp_path / "run"),
            "--workers",
            "0",
            "--no-progress",
            "data.train_split=null",
            "data.val_split=null",
            "epochs=2",
            "eval_every=1",
            "batch_size=3",
            "base_size=64",
            "eval_size=64",
            "augment.crop_size=64",
        ]
    )
    assert result["n_train"] + result["n_val"] == 6 and len(result["history"]) == 2
    assert np.isfinite(result["history"][-1]["loss"]) and 0.0 <= result["miou"] <= 1.0
    assert not (tmp_path / "run" / "features").exists()
