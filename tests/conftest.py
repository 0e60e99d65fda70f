"""Shared fixtures. Tests that need the real data use ``shared_root(name)`` and skip cleanly
when ``MASKCONTRAST_DATA`` is unset or lacks that dataset."""

from __future__ import annotations

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
