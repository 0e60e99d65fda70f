import json

import numpy as np
import pytest
import torch
from PIL import Image

import maskcontrast
from maskcontrast.data import DataError
from maskcontrast.extract import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def ckpt(maskcontrast_ckpt):
    """The shared tiny maskcontrast checkpoint (tests/conftest.py)."""
    return maskcontrast_ckpt


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "sub" / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 48), dtype=np.uint8)).save(folder / "c.png")
    return folder


def run(ckpt, images, out, *extra):
    return main(
        [
            "--checkpoint",
            str(ckpt),
            "--images",
            str(images),
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


def test_npy_fp16_matches_the_api(ckpt, images, tmp_path):
    out = tmp_path / "out"
    run(ckpt, images, out, "--fp16")
    a = np.load(out / "a.npy")
    assert a.shape == (8, 6, 8) and a.dtype == np.float16
    assert np.load(out / "sub" / "b.npy").shape == (8, 5, 5)
    ref = maskcontrast.load_model(ckpt, "cpu").embed(Image.open(images / "a.png"), resolution="feature")[0]
    np.testing.assert_allclose(a.astype(np.float32), ref.numpy(), atol=2e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_images"] == 3 and manifest["settings"]["dtype"] == "float16"


def test_resume_and_refusals(ckpt, images, tmp_path):
    out = tmp_path / "out"
    run(ckpt, images, out)
    before = (out / "a.npy").stat().st_mtime_ns
    (out / "c.npy").unlink()
    run(ckpt, images, out)  # resumes: only c is recomputed
    assert (out / "c.npy").is_file() and (out / "a.npy").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other settings"):
        run(ckpt, images, out, "--what", "features")
    run(ckpt, images, out, "--what", "features", "--overwrite")
    assert np.load(out / "a.npy").shape == (256, 6, 8)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="manifest"):
        run(ckpt, images, other)


def test_pt_saliency_at_input_resolution(ckpt, images, tmp_path):
    out = tmp_path / "out"
    run(ckpt, images, out, "--what", "saliency", "--format", "pt", "--resolution", "input", "--size", "32")
    sal = torch.load(out / "a.pt", weights_only=True)
    assert sal.shape == (1, 48, 64) and sal.dtype == torch.float32 and 0 <= float(sal.min()) <= float(sal.max()) <= 1


def test_backbone_checkpoint_has_no_saliency(images, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    with pytest.raises(ValueError, match="no saliency head"):
        run(tmp_path / "tv.pth", images, tmp_path / "o1", "--what", "saliency")
    run(tmp_path / "tv.pth", images, tmp_path / "o2", "--what", "features")
    assert np.load(tmp_path / "o2" / "a.npy").shape == (512, 6, 8)


def test_sigterm_stops_after_the_batch_keeps_the_files_and_the_rerun_finishes(ckpt, images, tmp_path, monkeypatch):
    import os
    import signal

    from maskcontrast.api import FeatureModel
    from maskcontrast.preemption import Preempted

    out = tmp_path / "out"
    real, calls = FeatureModel.run, {"n": 0}

    def signal_at_the_first_image(self, batch, **kwargs):
        for item in real(self, batch, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    monkeypatch.setattr(FeatureModel, "run", signal_at_the_first_image)
    with pytest.raises(Preempted) as info:
        run(ckpt, images, out, "--batch-size", "1")
    assert info.value.code == 143 and "extract stopped by SIGTERM (after 1 of 3 images)" in str(info.value)
    assert sorted(p.name for p in out.rglob("*.npy")) == ["a.npy"]  # files are sorted: a, c, sub/b
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(FeatureModel, "run", real)
    run(ckpt, images, out, "--batch-size", "1")
    assert sorted(p.name for p in out.rglob("*.npy")) == ["a.npy", "b.npy", "c.npy"]
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_an_image_too_large_for_the_network_is_refused_by_name(ckpt, images, tmp_path, monkeypatch):
    from maskcontrast import images as images_module

    Image.fromarray(np.zeros((4, 200, 3), np.uint8)).save(images / "strip.png")
    monkeypatch.setattr(images_module, "MAX_INPUT_PIXELS", 32 * 1600 - 1)
    with pytest.raises(DataError, match=r"strip\.png: the image \(4 x 200\) resized to shorter side 32"):
        run(ckpt, images, tmp_path / "out", "--size", "32")
