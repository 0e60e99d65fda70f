"""Saved training state: atomic saves with a full disk, RNG state round trips."""

import errno

import pytest
import torch

from maskcontrast import utils
from maskcontrast.models import read_checkpoint
from maskcontrast.run_state import capture_rng_state, restore_rng_state, save_state


def test_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_state(path, {"step": 1})
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 95")

    monkeypatch.setattr(utils.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"last\.pt: the disk is full \(\d+ MiB free") as err:
        save_state(path, {"step": 2})
    assert err.value.errno == errno.ENOSPC and "previous last.pt is intact" in str(err.value)
    assert "inline_container" not in str(err.value)
    monkeypatch.setattr(utils.torch, "save", real_save)
    assert read_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))  # the partial temporary is gone too


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    def broken(obj, f, *a, **k):
        raise TypeError("cannot pickle")

    monkeypatch.setattr(utils.torch, "save", broken)
    with pytest.raises(TypeError, match="cannot pickle"):
        save_state(tmp_path / "x.pt", {"a": 1})


def test_rng_state_round_trip_and_legacy_tensor():
    state = capture_rng_state()
    a = torch.rand(3)
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    legacy = torch.get_rng_state()
    b = torch.rand(2)
    restore_rng_state(legacy)
    assert torch.equal(torch.rand(2), b)
