"""maskcontrast.data.check: a deliberately broken copy is reported by id (exit 1), real sets pass (exit 0)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import build_dataset, read_index_png, write_mask
from maskcontrast.data.check import check_dataset, main

pytestmark = pytest.mark.data

PET_IDS = ["Abyssinian_1", "Abyssinian_3", "american_bulldog_10", "american_bulldog_100", "Bengal_58", "Bengal_6"]


def pet_copy(shared_root, dst: Path) -> Path:
    src = shared_root("pet")
    (dst / "images").mkdir(parents=True)
    (dst / "annotations" / "trimaps").mkdir(parents=True)
    for sid in PET_IDS:
        shutil.copy(src / "images" / f"{sid}.jpg", dst / "images")
        shutil.copy(src / "annotations" / "trimaps" / f"{sid}.png", dst / "annotations" / "trimaps")
    return dst


def break_copy(root: Path) -> dict[str, str]:
    """Truncate a JPEG, resize a trimap, put a stray value in another, delete an image.
    Returns id -> a fragment its problem message must contain."""
    jpg = root / "images" / f"{PET_IDS[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:5000])
    tri = root / "annotations" / "trimaps" / f"{PET_IDS[1]}.png"
    t = Image.open(tri)
    t.resize((t.width - 7, t.height), Image.NEAREST).save(tri)
    tri2 = root / "annotations" / "trimaps" / f"{PET_IDS[2]}.png"
    raw = read_index_png(tri2)
    raw[5, 5] = 9
    write_mask(tri2, raw)
    (root / "images" / f"{PET_IDS[3]}.jpg").unlink()
    return {
        PET_IDS[0]: f"{PET_IDS[0]}.jpg: cannot decode",
        PET_IDS[1]: f"{PET_IDS[1]}.png: size",
        PET_IDS[2]: f"{PET_IDS[2]}.png: trimap values must be 1, 2 or 3, found [1, 2, 3, 9]",
        PET_IDS[3]: f"{PET_IDS[3]}.jpg: image file not found",
    }


def test_check_reports_broken_copy_by_id(shared_root, tmp_path, capsys):
    root = pet_copy(shared_root, tmp_path / "pet")
    assert main(["--dataset", "pet", "--root", str(root), "--no-progress"]) == 0
    assert "problems  none: OK" in capsys.readouterr().out

    expected = break_copy(root)
    out_json = tmp_path / "report.json"
    rc = main(["--dataset", "pet", "--root", str(root), "--json", str(out_json), "--no-progress"])
    assert rc == 1
    printed = capsys.readouterr().out
    assert f"report written to {out_json}" in printed
    report = json.loads(out_json.read_text())
    assert set(report) == {"dataset", "split", "images", "with_labels", "num_classes", "classes", "problems"}
    assert report["dataset"] == "pet" and report["split"] == "all"
    assert report["images"] == 6 and report["with_labels"] == 6
    assert report["num_classes"] == 2 and report["classes"] == ["background", "pet"]
    by_id = {p["id"]: p["problem"] for p in report["problems"]}
    assert set(by_id) == set(expected), report["problems"]  # every problem, not only the first
    for sid, fragment in expected.items():
        assert fragment in by_id[sid]
        assert sid in printed
    # the resized trimap names both sizes
    assert "differs from its image" in by_id[PET_IDS[1]]

    # an existing report is not overwritten without --overwrite
    with pytest.raises(SystemExit) as err:
        main(["--dataset", "pet", "--root", str(root), "--json", str(out_json)])
    assert err.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "--dataset",
                "pet",
                "--root",
                str(root),
                "--json",
                str(out_json),
                "--overwrite",
                "--workers",
                "1",
                "--option",
                "target=species",
                "--no-progress",
            ]
        )
        == 1
    )
    assert json.loads(out_json.read_text())["classes"] == ["background", "cat", "dog"]


def test_check_cli_exit_status_in_a_subprocess(shared_root, tmp_path):
    root = pet_copy(shared_root, tmp_path / "pet")
    break_copy(root)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    cmd = [sys.executable, "-m", "maskcontrast.data.check", "--dataset", "pet", "--root", str(root)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "problems  4:" in res.stdout


def test_check_object_mask_folder(shared_root, tmp_path, capsys):
    """--masks: a resized object mask is a problem; ids without a mask are counted, skipped.txt honoured."""
    root = pet_copy(shared_root, tmp_path / "pet")
    masks = tmp_path / "masks"
    ds = build_dataset("pet", root)
    for sid in PET_IDS[:3]:
        write_mask(masks / f"{sid}.png", ds.load(sid).mask * 255)
    m = Image.open(masks / f"{PET_IDS[1]}.png")
    m.resize((m.width // 2, m.height // 2), Image.NEAREST).save(masks / f"{PET_IDS[1]}.png")
    (masks / "skipped.txt").write_text(f"{PET_IDS[3]}\tsmall: mask under 1% of the image\n")
    report = check_dataset(build_dataset("pet", root, masks=masks), progress=False)
    assert [p.id for p in report.problems] == [PET_IDS[1]]
    assert f"masks/{PET_IDS[1]}.png: size" in report.problems[0].problem
    assert "3 of 6 ids" in report.notes[0] and "1 without a mask are listed in skipped.txt" in report.notes[0]
    assert "2 are not" in report.notes[0]
    assert main(["--dataset", "pet", "--root", str(root), "--masks", str(masks), "--no-progress"]) == 1
    assert "object masks in" in capsys.readouterr().out


def test_check_dataset_validates_ranges_even_when_reader_does_not(tmp_path):
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("0 1 person\n")
    for sid in ("a", "b", "c"):
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "images" / "train2017" / f"{sid}.jpg")
    lab = np.zeros((6, 6), np.uint8)
    write_mask(tmp_path / "masks" / "train2017" / "a.png", lab)
    lab[2, 2] = 5  # a stray value: only 0 (background) and 1 (person) exist
    write_mask(tmp_path / "masks" / "train2017" / "b.png", lab)
    (tmp_path / "images" / "train2017" / "c.jpg").write_bytes(b"not an image")
    ds = build_dataset("coco128", tmp_path, validate=False)
    report = check_dataset(ds, workers=2, progress=False)
    assert [p.id for p in report.problems] == ["b", "c", "c"]
    assert "b.png: label values [5] are outside 0..1" in report.problems[0].problem
    assert "masks/train2017/c.png: label file not found" in report.problems[1].problem
    assert "images/train2017/c.jpg: cannot decode" in report.problems[2].problem
    assert report.with_labels == 2
    assert ds.validate is False  # restored
    with pytest.raises(ValueError, match="workers"):
        check_dataset(ds, workers=0)


def test_check_unopenable_dataset(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--dataset", "voc", "--root", str(tmp_path / "nowhere"), "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["images"] == 0 and report["problems"][0]["id"] is None
    assert "dataset folder not found" in report["problems"][0]["problem"]
    with pytest.raises(SystemExit) as err:
        main(["--dataset", "pet"])  # no --root
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["--dataset", "pet", "--root", str(tmp_path), "--option", "target"])


def test_check_shared_real_sets_ok(shared_root, tmp_path, capsys, monkeypatch):
    """Every real image of every shared set decodes, matches its label in size, and has legal labels."""
    data_root = shared_root("msrc").parent
    monkeypatch.setenv("MASKCONTRAST_DATA", str(data_root))
    out = tmp_path / "shared.json"
    assert main(["--shared", "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "all OK" in printed
    reports = {(r["dataset"], r["split"]): r for r in json.loads(out.read_text())["datasets"]}
    counts = {k: (r["images"], r["with_labels"], r["num_classes"]) for k, r in reports.items()}
    assert counts[("msrc", "all")] == (443, 443, 21)
    assert counts[("pet", "all")] == (449, 449, 4)  # --shared checks pet with target=breed
    assert counts[("coco128", "train2017")] == (94, 94, 81)
    assert counts[("davis2016", "val")] == (100, 100, 2)
    assert counts[("weizmann", "all")] == (246, 246, 2)
    assert counts[("saliency_folder", "all")] == (225, 225, 2)
    assert counts[("voc", "val")][0] == 1449 and counts[("voc", "train_aug")][0] == 10582
    assert all(not r["problems"] for r in reports.values())
