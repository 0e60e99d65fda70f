"""saliency.evaluate: matching by stem and relative path, GT formats, missing files, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saliency.evaluate import evaluate_folders, load_ground_truth, main, match_files


def _gt(h=20, w=30):
    g = np.zeros((h, w), np.uint8)
    g[5:15, 8:20] = 1
    return g


def test_match_files():
    assert match_files(["a", "s/b"], ["s/b", "c"]) == {"s/b": "s/b"}
    assert match_files(["x/a", "x/b"], ["a", "b", "c"]) == {"a": "x/a", "b": "x/b"}
    assert match_files(["x/a", "y/a"], ["a"]) == {}  # ambiguous stems are not matched


@pytest.mark.parametrize("fmt", ["0-255", "0-1", "mode1", "jpeg"])
def test_gt_formats_give_perfect_scores(tmp_path, fmt):
    g = _gt()
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    Image.fromarray(g * 255).save(pred_dir / "im.png")
    if fmt == "0-255":
        Image.fromarray(g * 255).save(gt_dir / "im.png")
    elif fmt == "0-1":
        Image.fromarray(g).save(gt_dir / "im.png")
    elif fmt == "mode1":
        Image.fromarray(g.astype(bool)).convert("1").save(gt_dir / "im.png")
    else:
        Image.fromarray(g * 255).save(gt_dir / "im.jpg", quality=90)
    r = evaluate_folders(pred_dir, gt_dir)
    assert r["n_images"] == 1
    assert r["max_fbeta"] == pytest.approx(1.0)
    assert r["iou"] == pytest.approx(1.0)
    assert r["mae"] == pytest.approx(0.0)


def test_nested_ids_missing_and_resize(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for seq in ("bear", "cows"):
        (pred_dir / seq).mkdir(parents=True), (gt_dir / seq).mkdir(parents=True)
    g = _gt()
    Image.fromarray(g * 255).save(gt_dir / "bear" / "00000.png")
    Image.fromarray(g * 255).save(gt_dir / "cows" / "00000.png")  # same stem, another sequence
    Image.fromarray(g * 255).save(gt_dir / "cows" / "00010.png")
    half = np.asarray(Image.fromarray(g * 255).resize((60, 40), Image.NEAREST))
    Image.fromarray(half).save(pred_dir / "bear" / "00000.png")  # 2x larger: resized
    Image.fromarray(np.zeros_like(g)).save(pred_dir / "cows" / "00000.png")  # wrong: all background
    r = evaluate_folders(pred_dir, gt_dir, per_image=True)
    assert r["n_images"] == 3 and r["n_missing"] == 1 and r["n_resized"] == 1
    assert r["images"]["bear/00000"]["iou"] == pytest.approx(1.0)
    assert r["images"]["cows/00000"]["iou"] == 0.0
    assert r["images"]["cows/00010"]["mae"] == pytest.approx(g.mean())  # missing -> all background
    skipped = evaluate_folders(pred_dir, gt_dir, missing="skip")
    assert skipped["n_images"] == 2
    with pytest.raises(ValueError, match="no prediction"):
        evaluate_folders(pred_dir, gt_dir, missing="error")
    truths = load_ground_truth(gt_dir)  # the same ground truth, for scripts
    assert sorted(truths) == ["bear/00000", "cows/00000", "cows/00010"]
    mask, valid = truths["cows/00010"]()
    assert mask.dtype == bool and valid is None and (mask == g.astype(bool)).all()


def test_no_match_is_an_error(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    Image.fromarray(_gt() * 255).save(pred_dir / "a.png")
    Image.fromarray(_gt() * 255).save(gt_dir / "b.png")
    with pytest.raises(ValueError, match="matches a ground truth"):
        evaluate_folders(pred_dir, gt_dir)


def test_dataset_ground_truth_and_cli_json(tmp_path, capsys):
    # a saliency_folder dataset: GT read through maskcontrast.data
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True), (root / "masks").mkdir()
    g = _gt()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "x.jpg")
    Image.fromarray(g * 255).save(root / "masks" / "x.png")
    pred = tmp_path / "pred"
    pred.mkdir()
    soft = (g * 200 + 20).astype(np.uint8)
    Image.fromarray(soft).save(pred / "x.png")
    out = tmp_path / "r.json"
    assert main(["--pred", str(pred), "--gt", str(root), "--gt-dataset", "saliency_folder", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["max_fbeta"] == pytest.approx(1.0) and r["mae"] == pytest.approx(0.0)  # min-max normalised
    assert "results written to" in capsys.readouterr().out
    assert main(["--pred", str(pred), "--gt", str(root), "--gt-dataset", "saliency_folder", "--json", str(out)]) == 2
    assert (
        main(["--pred", str(pred), "--gt", str(root / "masks"), "--json", str(out), "--overwrite", "--no-normalize"])
        == 0
    )
    # 20 % object pixels off by 35/255, 80 % background off by 20/255
    assert json.loads(out.read_text())["mae"] == pytest.approx((0.2 * 35 + 0.8 * 20) / 255)
