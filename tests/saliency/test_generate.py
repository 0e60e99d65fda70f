"""saliency.generate: layout, resume after interruption, refusal to mix runs, bad images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import build_dataset, read_index_png
from maskcontrast.data.io import read_skipped
from saliency.generate import MANIFEST, OutputConflict, generate, main


@pytest.fixture
def image_dir(tmp_path, scene_factory) -> Path:
    d = tmp_path / "images"
    (d / "seq1").mkdir(parents=True)
    for i in range(3):
        img, _ = scene_factory(h=64, w=80, seed=i)
        Image.fromarray(img).save(d / f"img{i}.png")
    img, _ = scene_factory(h=64, w=80, seed=5)
    Image.fromarray(img).save(d / "seq1" / "00010.jpg", quality=95)
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(d / "flat.png")  # no object: skipped
    (d / "broken.jpg").write_bytes(b"not an image")
    return d


def test_layout_resume_and_unreadable(image_dir, tmp_path):
    out, soft = tmp_path / "masks", tmp_path / "soft"
    first = generate(out, "mbd", images=image_dir, soft_out=soft, limit=3, progress=False)
    assert first["total"] == 6 and first["remaining"] == 3
    assert first["written"] + first["skipped"] + first["unreadable"] == 3
    done = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert done, "the interrupted run wrote nothing"

    second = generate(out, "mbd", images=image_dir, soft_out=soft, progress=False)
    # finished images are not redone; the unreadable one is retried (and fails again)
    assert second["done_before"] == first["written"] + first["skipped"]
    assert second["unreadable"] == 1 and second["remaining"] == 0
    for p, t in done.items():
        assert p.stat().st_mtime_ns == t, f"{p} was rewritten on resume"
    assert (out / "seq1" / "00010.png").is_file()  # nested ids keep their folders
    assert (soft / "seq1" / "00010.png").is_file()
    skipped = read_skipped(out / "skipped.txt")
    assert skipped["broken"].startswith("unreadable") and "broken.jpg" in skipped["broken"]
    assert skipped["flat"].startswith("small")
    mask = read_index_png(out / "img0.png")
    assert set(np.unique(mask)) <= {0, 255} and mask.shape == (64, 80)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["method"] == "mbd" and manifest["rule"]["threshold"] == 0.5
    third = generate(out, "mbd", images=image_dir, soft_out=soft, progress=False)
    assert third["done_before"] == 5 and third["written"] == 0

    # the pretraining reads the masks through maskcontrast.data
    ds = build_dataset("image_folder", image_dir, masks=out)
    sample = ds.load("img0")
    assert sample.mask is not None and set(np.unique(sample.mask)) <= {0, 1}
    assert ds.load("flat").mask is None


def test_refuses_other_method_and_foreign_folders(image_dir, tmp_path):
    out = tmp_path / "masks"
    generate(out, "spectral", images=image_dir, limit=1, progress=False)
    with pytest.raises(OutputConflict, match="other settings"):
        generate(out, "mbd", images=image_dir, progress=False)
    with pytest.raises(OutputConflict, match="other settings"):
        generate(out, "spectral", images=image_dir, multi_object=True, progress=False)
    counts = generate(out, "mbd", images=image_dir, overwrite=True, progress=False)
    assert counts["done_before"] == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflict, match=r"no saliency\.json"):
        generate(foreign, "mbd", images=image_dir, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_multi_object_ids(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    img = np.full((80, 100, 3), 60, np.uint8)
    img[10:35, 10:35] = (230, 230, 40)
    img[45:75, 60:95] = (230, 230, 40)
    Image.fromarray(img).save(d / "two.png")
    out = tmp_path / "masks"
    generate(out, "mbd", images=d, multi_object=True, progress=False)
    mask = read_index_png(out / "two.png")
    assert set(np.unique(mask)) == {0, 1, 2}


def test_cli_and_worker_pool(image_dir, tmp_path, capsys):
    out = tmp_path / "masks"
    rc = main(["--images", str(image_dir), "--out", str(out), "--method", "spectral", "--workers", "2"])
    assert rc == 0
    assert str(out.resolve()) in capsys.readouterr().out
    assert len(list(out.rglob("*.png"))) + len(read_skipped(out / "skipped.txt")) == 6
    assert main(["--images", str(image_dir), "--out", str(out), "--method", "rbd"]) == 2  # conflict
    assert main(["--images", str(image_dir), "--out", str(out), "--method", "rbd", "scales=[50]"]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])


def test_bad_arguments(image_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        generate(tmp_path / "o", "nope", images=image_dir)
    with pytest.raises(ValueError, match="either images"):
        generate(tmp_path / "o", "mbd")
    with pytest.raises(ValueError, match="checkpoint"):
        generate(tmp_path / "o", "refined", images=image_dir)
    with pytest.raises(ValueError, match="min_component"):
        generate(tmp_path / "o", "mbd", images=image_dir, min_component=3.0)


def test_sigterm_stops_after_the_current_image_and_the_rerun_finishes(image_dir, tmp_path, monkeypatch):
    """SIGTERM in image 2: its mask is written, the job ends with 143, the rerun does the rest."""
    import os
    import signal

    from maskcontrast.preemption import Preempted
    from saliency import generate as gen_module

    real, calls = gen_module._work, {"n": 0}

    def signal_in_image_two(sid):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(sid)

    monkeypatch.setattr(gen_module, "_work", signal_in_image_two)
    out = tmp_path / "masks"
    with pytest.raises(Preempted) as info:
        generate(out, "rbd", images=image_dir, progress=False)
    assert info.value.code == 143 and "after 2 of 6 images" in str(info.value)
    assert json.loads((out / MANIFEST).read_text())["counts"]["total"] == 6
    monkeypatch.setattr(gen_module, "_work", real)
    counts = generate(out, "rbd", images=image_dir, progress=False)
    assert counts["done_before"] + counts["written"] + counts["skipped"] + counts["unreadable"] == 6
    assert counts["done_before"] >= 1


def test_sigterm_while_waiting_for_the_worker_pool(image_dir, tmp_path):
    import os
    import signal
    import threading

    from maskcontrast.preemption import Preempted

    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()  # while the workers start
    with pytest.raises(Preempted):
        generate(tmp_path / "masks", "rbd", images=image_dir, workers=2, progress=False)
    assert generate(tmp_path / "masks", "rbd", images=image_dir, workers=0, progress=False)["total"] == 6
