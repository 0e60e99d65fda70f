import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import maskcontrast
from maskcontrast.api import FeatureModel, NoSaliencyHeadError
from maskcontrast.config import ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.images import to_image_tensor
from maskcontrast.models import CheckpointError, build_model, model_checkpoint
from maskcontrast.utils import atomic_save

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def ckpt(maskcontrast_ckpt):
    """The shared tiny maskcontrast checkpoint (tests/conftest.py)."""
    return maskcontrast_ckpt


@pytest.fixture(scope="module")
def model(ckpt):
    return maskcontrast.load_model(ckpt, "cpu")


def test_load_model_is_frozen_eval_mode(model):
    assert isinstance(model, maskcontrast.FeatureModel)
    assert not model.training and not model.net.training
    model.train()
    assert not model.net.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.kind == "maskcontrast" and model.has_saliency and model.embed_dim == 8 and model.feature_dim == 256


def test_shapes_and_dtypes_for_every_input_type(model, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    inputs = [
        rgb,
        rgb.astype(np.float32) / 255,
        Image.fromarray(rgb),
        tmp_path / "x.png",
        torch.from_numpy(rgb).permute(2, 0, 1),
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    ]
    ref = model.embed(inputs[0])
    assert ref.shape == (1, 8, 40, 56) and ref.dtype == torch.float32
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(1, 40, 56))
    for x in inputs[1:]:
        torch.testing.assert_close(model.embed(x), ref, atol=1e-5, rtol=1e-4)
    sal = model.saliency(rgb)
    assert sal.shape == (1, 1, 40, 56) and float(sal.min()) >= 0 and float(sal.max()) <= 1
    feats = model.features(rgb, resolution="feature")
    assert feats.shape == (1, 256, 5, 7)
    # grayscale numpy images become RGB
    assert model.embed(rgb[..., 0]).shape == (1, 8, 40, 56)


def test_batches_lists_and_resolution(model):
    batch = torch.rand(3, 3, 32, 48)
    out = model.embed(batch)
    assert out.shape == (3, 8, 32, 48)
    # batching does not change results
    single = torch.cat([model.embed(b) for b in batch])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-4)
    mixed = model.embed([torch.rand(3, 32, 48), np.zeros((24, 24, 3), np.uint8)])
    assert isinstance(mixed, list) and mixed[0].shape == (8, 32, 48) and mixed[1].shape == (8, 24, 24)
    low = model.embed(batch, resolution="feature")
    assert low.shape == (3, 8, 4, 6)
    resized = model.features(batch, size=(64, 64), resolution="feature")
    assert resized.shape == (3, 256, 8, 8)
    # size resizes the network input; "input" resolution still returns the image size
    assert model.saliency(batch, size=16).shape == (3, 1, 32, 48)


def test_embed_matches_the_network(model):
    x = torch.rand(2, 3, 32, 32)
    norm = (x - torch.tensor(maskcontrast.api.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        maskcontrast.api.IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.net(norm)
    torch.testing.assert_close(
        model.embed(x), torch.nn.functional.normalize(out.embedding, dim=1), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(model.saliency(x), torch.sigmoid(out.saliency), atol=1e-5, rtol=1e-4)


def test_bad_inputs_are_clear_errors(model):
    with pytest.raises(ValueError, match="channels-first"):
        model.embed(torch.rand(32, 32, 3))
    with pytest.raises(ValueError, match="dtype"):
        to_image_tensor(torch.zeros(3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="empty"):
        model.embed([])
    with pytest.raises(ValueError, match="unsupported image type"):
        model.embed(42)
    with pytest.raises(ValueError, match="resolution"):
        model.embed(torch.rand(3, 8, 8), resolution="full")


def test_moco_and_torchvision_checkpoints_are_backbone_only(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    moco = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    moco["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    moco["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": moco, "optimizer": {}}, tmp_path / "moco.pth.tar")
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    for name, layout in (("moco.pth.tar", "moco"), ("tv.pth", "torchvision")):
        m = maskcontrast.load_model(tmp_path / name, "cpu")
        assert m.layout == layout and m.kind == "backbone" and not m.has_saliency
        torch.testing.assert_close(m.net.conv1.weight, net.conv1.weight)
        feats = m.features(torch.rand(1, 3, 64, 64), resolution="feature")
        assert feats.shape == (1, 512, 8, 8)
        emb = m.embed(torch.rand(1, 3, 64, 64))
        assert emb.shape == (1, 512, 64, 64)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(1, 64, 64))
        with pytest.raises(NoSaliencyHeadError, match="no saliency head"):
            m.saliency(torch.rand(1, 3, 64, 64))
    assert maskcontrast.load_model(tmp_path / "tv.pth", "cpu", output_stride=16).features(
        torch.rand(1, 3, 64, 64), resolution="feature"
    ).shape == (1, 512, 4, 4)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        maskcontrast.load_model(tmp_path / "junk.pt")


def test_model_without_saliency_head(tmp_path):
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "saliency_head=false"])
    atomic_save(model_checkpoint(build_model(cfg), cfg), tmp_path / "nosal.pt")
    m = maskcontrast.load_model(tmp_path / "nosal.pt", "cpu")
    assert not m.has_saliency and m.embed(torch.rand(1, 3, 32, 32)).shape == (1, 32, 32, 32)
    with pytest.raises(NoSaliencyHeadError):
        m.saliency(torch.rand(1, 3, 32, 32))


def test_wrapping_a_module_directly():
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18"])
    fm = FeatureModel(build_model(cfg), size=32, batch_size=2)
    assert fm.embed(torch.rand(3, 3, 50, 50)).shape == (3, 32, 50, 50)
    with pytest.raises(ValueError, match="wraps"):
        FeatureModel(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_by_default(ckpt):
    m = maskcontrast.load_model(ckpt)
    assert m.device.type == "cuda"
    assert m.embed(np.zeros((32, 32, 3), np.uint8)).device.type == "cuda"


def test_import_stays_light():
    code = (
        "import sys, maskcontrast; maskcontrast.load_model; maskcontrast.build_dataset; "
        "heavy = [m for m in ('faiss', 'sklearn', 'tensorboard') if m in sys.modules]; "
        "print(maskcontrast.__version__); assert not heavy, heavy"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == maskcontrast.__version__


# -- segment_like -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_backbone():
    """A random-init ResNet-18 backbone-only model (512-d features)."""
    torch.manual_seed(0)
    from maskcontrast.models import ResNetBackbone

    return FeatureModel(ResNetBackbone("resnet18", 8))


def _two_regions(left=(200, 30, 30), right=(30, 30, 200), hw=(64, 128)):
    img = np.zeros((*hw, 3), np.uint8)
    img[:, : hw[1] // 2] = left
    img[:, hw[1] // 2 :] = right
    mask = np.zeros(hw, bool)
    mask[:, : hw[1] // 2] = True
    return img, mask


def test_segment_like_finds_the_red_region(random_backbone):
    # two flat-coloured regions; red is the foreground of both shots, once left and once right,
    # so the position that a random network's features also encode averages out
    a, ma = _two_regions()
    b, mb = a[:, ::-1].copy(), ma[:, ::-1].copy()
    out = random_backbone.segment_like([a, b], [ma, mb], [a, b])
    assert out.masks.shape == (2, 64, 128) and out.masks.dtype == torch.bool
    assert out.soft.shape == (2, 64, 128) and float(out.soft.min()) >= 0 and float(out.soft.max()) <= 1
    # away from the colour edge (24 px = 3 feature cells) and the image border (8 px)
    rows, cols = np.r_[8:56], np.r_[8:40, 88:120]
    for k, want in enumerate((ma, mb)):
        np.testing.assert_array_equal(out.masks[k].numpy()[np.ix_(rows, cols)], want[np.ix_(rows, cols)])


def test_segment_like_equals_features_built_by_hand(random_backbone, model):
    a, ma = _two_regions()
    b, mb = a[:, ::-1].copy(), ma[:, ::-1].copy()
    mb = mb.astype(np.uint8)
    mb[:8] = 255  # ignored rows: in neither prototype
    query = np.random.default_rng(0).integers(0, 255, (48, 72, 3), dtype=np.uint8)
    for m in (random_backbone, model):  # backbone features and maskcontrast embeddings
        out = m.segment_like([a, b], [ma, mb], query, temperature=0.2)
        fgs, bgs = [], []
        for img, fg, valid in ((a, ma, np.ones_like(ma)), (b, mb == 1, mb != 255)):
            e = m.embed(img)[0]  # D x H x W, unit norm, input resolution
            fg_t, bg_t = torch.from_numpy(fg & valid), torch.from_numpy(~fg & valid)
            fgs.append(torch.nn.functional.normalize(e[:, fg_t].sum(1), dim=0))
            bgs.append(torch.nn.functional.normalize(e[:, bg_t].sum(1), dim=0))
        fg = torch.nn.functional.normalize(torch.stack(fgs).mean(0), dim=0)
        bg = torch.nn.functional.normalize(torch.stack(bgs).mean(0), dim=0)
        q = m.embed(query, resolution="feature")  # 1 x D x h x w, unit norm
        score = torch.einsum("bdhw,d->bhw", q, fg) - torch.einsum("bdhw,d->bhw", q, bg)
        up = torch.nn.functional.interpolate(score[:, None], size=(48, 72), mode="bilinear", align_corners=False)
        soft = torch.sigmoid(up[:, 0] / 0.2)
        torch.testing.assert_close(out.soft, soft, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.masks, soft > 0.5)
        high = m.segment_like([a, b], [ma, mb], query, threshold=0.9, temperature=0.2)
        torch.testing.assert_close(high.masks, soft > 0.9)


def test_segment_like_lists_for_different_sizes(model):
    a, ma = _two_regions(hw=(32, 48))
    out = model.segment_like(
        a, torch.from_numpy(ma), [np.zeros((32, 40, 3), np.uint8), np.zeros((24, 24, 3), np.uint8)]
    )
    assert isinstance(out.masks, list) and out.masks[0].shape == (32, 40) and out.soft[1].shape == (24, 24)
    stacked = model.segment_like([a, a], np.stack([ma, ma]), torch.rand(2, 3, 16, 16))  # K x H x W masks
    assert stacked.masks.shape == (2, 16, 16)


def test_segment_like_bad_inputs(model):
    a, ma = _two_regions(hw=(32, 48))
    with pytest.raises(ValueError, match="support mask 1 has no foreground"):
        model.segment_like([a, a], [ma, np.zeros_like(ma)], a)
    with pytest.raises(ValueError, match="no support mask has a background"):
        model.segment_like([a], [np.ones_like(ma)], a)
    with pytest.raises(ValueError, match=r"support mask 0 has shape \(32, 40\)"):
        model.segment_like([a], [ma[:, :40]], a)
    with pytest.raises(ValueError, match="2 support images but 1 support masks"):
        model.segment_like([a, a], [ma], a)
    with pytest.raises(ValueError, match="threshold"):
        model.segment_like([a], [ma], a, threshold=1.5)
