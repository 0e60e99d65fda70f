"""``python -m eval.linear`` on real labelled data: it fits, resumes and refuses other settings."""

import json

import numpy as np
import pytest
import torch

from eval.linear.cli import main


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
