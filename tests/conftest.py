"""Shared fixtures. Tests that need the real data use ``shared_root(name)`` and skip cleanly
when ``MASKCONTRAST_DATA`` is unset or lacks that dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from maskcontrast.data.paths import data_root, shared_dataset_root

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
