"""Fixtures for the evaluation tests: checkpoints written by the tests themselves, and a tiny
synthetic dataset + model whose embeddings separate the classes perfectly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from maskcontrast.api import FeatureOutput
from maskcontrast.data import DatasetInfo, Sample, SegmentationDataset


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every eval test runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def moco_ckpt(tmp_path_factory) -> Path:
    """A ResNet-18 file in exactly the official MoCo v2 layout (encoder_q with the MLP head)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    sd = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    sd["module.encoder_q.fc.0.bias"] = torch.zeros(512)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    sd["module.encoder_q.fc.2.bias"] = torch.zeros(128)
    for k, v in net.state_dict().items():
        if not k.startswith("fc."):
            sd[f"module.encoder_k.{k}"] = v.clone()
    path = tmp_path_factory.mktemp("ckpt") / "moco_v2_r18.pth.tar"
    torch.save(
        {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    return path


class SyntheticDataset(SegmentationDataset):
    """Images whose pixels carry their class in the red channel (class * 20); one object class per
    image on a background square, every class present. Labels: 0 = background, 1..C-1 objects."""

    def __init__(self, root, n_classes: int = 4, n_images: int = 12, size: int = 24, seed: int = 0) -> None:
        self.info = DatasetInfo("synthetic", tuple(f"c{i}" for i in range(n_classes)))
        rng = np.random.default_rng(seed)
        self._samples = {}
        for i in range(n_images):
            cls = 1 + i % (n_classes - 1)
            label = np.zeros((size, size + 4), np.int64)
            y, x = rng.integers(2, size // 2, size=2)
            label[y : y + size // 2, x : x + size // 2] = cls
            label[0, :3] = 255  # a few ignored pixels
            image = np.zeros((*label.shape, 3), np.uint8)
            image[..., 0] = np.where(label == 255, 0, label) * 20
            image[..., 1] = rng.integers(0, 5, size=label.shape)
            self._samples[f"s{i:02d}"] = Sample(f"s{i:02d}", image, label, (label > 0).astype(np.uint8))
        (Path(root) / "README").write_text("synthetic test data, held in memory\n")
        super().__init__(root)

    def _list_ids(self):
        return sorted(self._samples)

    def load(self, sample_id):
        return self._samples[sample_id]


class SyntheticModel:
    """Duck-typed FeatureModel: one-hot class embeddings (plus noise) at the input resolution and
    saliency logits +-8, read from the red channel of the image."""

    def __init__(self, n_classes: int, noise: float = 0.05) -> None:
        self.embed_dim = n_classes
        self.batch_size = 3
        self.device = torch.device("cpu")
        self.has_saliency = True
        self.kind = "synthetic"
        self.layout = "synthetic"
        self.source = "synthetic"
        self.n_classes = n_classes
        self.noise = noise
        self.gen = torch.Generator().manual_seed(0)

    def run(self, images, *, size=None):
        for i, im in enumerate(images):
            cls = torch.from_numpy(np.asarray(im)[..., 0].astype(np.int64) // 20)
            emb = torch.nn.functional.one_hot(cls, self.n_classes).permute(2, 0, 1).float()[None]
            emb = emb + self.noise * torch.randn(emb.shape, generator=self.gen)
            sal = (cls > 0).float()[None, None] * 16 - 8
            yield i, FeatureOutput(emb, emb, sal), tuple(cls.shape)


@pytest.fixture
def synthetic(tmp_path):
    ds = SyntheticDataset(tmp_path, n_classes=4, n_images=12)
    return ds, SyntheticModel(4)
