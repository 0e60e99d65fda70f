"""Shared fixtures. Tests that need the real data use ``shared_root(name)`` and skip cleanly
when ``MASKCONTRAST_DATA`` is unset or lacks that dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from maskcontrast.config import ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.data.paths import data_root, shared_dataset_root
from maskcontrast.models import build_model, model_checkpoint
from maskcontrast.utils import atomic_save

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def shared_root():
    """``shared_root("msrc")`` -> the dataset folder under MASKCONTRAST_DATA, or skip."""

    def get(name: str) -> Path:
        if data_root() is None:
            pytest.skip("MASKCONTRAST_DATA is not set (or does not exist)")
        path = shared_dataset_root(name)
        if path is None:
            pytest.skip(f"{name} is not under MASKCONTRAST_DATA")
        return path

    return get


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """CLIs called in-process add log handlers (and file handlers) to the root logger: undo that."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            if isinstance(h, logging.FileHandler):
                h.close()
    root.setLevel(level)


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and a busy shared CPU makes two OpenMP threads
    spin against each other (measured: 6x slower under load). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def maskcontrast_ckpt(tmp_path_factory) -> Path:
    """A ResNet-18 maskcontrast checkpoint (random weights) in our trainers' layout."""
    torch.manual_seed(0)
    cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "embed_dim=8"])
    path = tmp_path_factory.mktemp("ckpt") / "maskcontrast.pt"
    atomic_save(model_checkpoint(build_model(cfg), cfg), path)
    return path
