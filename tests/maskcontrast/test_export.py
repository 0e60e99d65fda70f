"""maskcontrast.export: ONNX and TorchScript files of a (random) ResNet-18 maskcontrast model give
torch's outputs on inputs of two sizes, and eval.segment runs from the exported file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskcontrast.api import load_model
from maskcontrast.export import load_exported, main, weights_digest

SIZES = [(64, 96), (40, 56)]


@pytest.fixture(scope="module")
def model(maskcontrast_ckpt):
    return load_model(maskcontrast_ckpt, "cpu")


@pytest.fixture(scope="module")
def onnx_file(maskcontrast_ckpt, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    main(["--checkpoint", str(maskcontrast_ckpt), "--format", "onnx", "--out", str(out)])
    return out


@pytest.mark.parametrize("hw", SIZES)
def test_onnxruntime_equals_torch(model, onnx_file, hw):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *hw)
    ref = model(x)
    got = load_exported(onnx_file)(x)
    assert got.saliency is not None
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4, rtol=1e-4)


def test_torchscript_equals_torch(model, maskcontrast_ckpt, tmp_path):
    out = tmp_path / "model.ts.pt"
    meta = main(["--checkpoint", str(maskcontrast_ckpt), "--format", "torchscript", "--out", str(out)])
    exported = load_exported(out)
    assert exported.weights_digest == meta["weights_digest"] == weights_digest(model.net)
    for hw in SIZES:
        x = torch.randn(1, 3, *hw)
        for a, b in zip(model(x), exported(x)):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["--checkpoint", str(maskcontrast_ckpt), "--format", "torchscript", "--out", str(out)])


def test_exported_model_has_the_api(model, onnx_file):
    exported = load_exported(onnx_file, size=48)
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3)).astype(np.uint8)
    model.size = 48
    try:
        np.testing.assert_allclose(exported.embed(img).numpy(), model.embed(img).numpy(), atol=1e-4)
        np.testing.assert_allclose(exported.saliency(img).numpy(), model.saliency(img).numpy(), atol=1e-4)
    finally:
        model.size = None
    assert exported.embed_dim == model.embed_dim and exported.has_saliency


def test_segment_runs_from_the_onnx_file(maskcontrast_ckpt, onnx_file, tmp_path):
    from PIL import Image

    from eval.segment import main as segment

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)).save(images / f"im{i}.png")
    common = [
        "--images",
        str(images),
        "--size",
        "40",
        "--workers",
        "0",
        "--no-progress",
        "--protocol",
        "pixel",
        "--fit-pixels",
        "1000",
        "--nredo",
        "1",
    ]
    segment(["--checkpoint", str(maskcontrast_ckpt), "--k", "3", "--out", str(tmp_path / "ckpt"), *common])
    # the checkpoint's clusters apply to its exported file (same weights) and give the same labels
    segment(
        [
            "--model",
            str(onnx_file),
            "--clusters",
            str(tmp_path / "ckpt" / "clusters.pt"),
            "--out",
            str(tmp_path / "onnx"),
            *common,
        ]
    )
    a = json.loads((tmp_path / "ckpt" / "segment.json").read_text())
    b = json.loads((tmp_path / "onnx" / "segment.json").read_text())
    assert [im["clusters"] for im in a["images"]] == [im["clusters"] for im in b["images"]]
    from maskcontrast.data import read_index_png

    same = [
        (
            read_index_png(tmp_path / "ckpt" / "labels" / f"im{i}.png")
            == read_index_png(tmp_path / "onnx" / "labels" / f"im{i}.png")
        ).mean()
        for i in range(4)
    ]
    assert min(same) > 0.999  # equal up to ties at 1e-7


def test_load_exported_errors(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_exported(tmp_path / "missing.onnx")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_exported(tmp_path / "junk.pt")
