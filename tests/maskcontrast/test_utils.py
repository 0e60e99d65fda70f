"""maskcontrast.utils: device choice, seeding, logging, atomic writes, memory."""

from __future__ import annotations

import io
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskcontrast.config import ConfigError
from maskcontrast.utils import (
    atomic_save,
    atomic_write_bytes,
    autocast_dtype,
    get_device,
    peak_rss_mib,
    seed_everything,
    setup_logging,
)


def test_get_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device().type == expected
    assert get_device("auto").type == expected
    assert get_device("cpu") == torch.device("cpu")
    assert get_device(torch.device("cpu")) == torch.device("cpu")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(123)
    a = draw()
    seed_everything(123)
    assert draw() == a
    seed_everything(124)
    assert draw() != a
    seed_everything(2**40 + 5)  # large seeds are folded for NumPy


def test_setup_logging_is_idempotent(tmp_path):
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging()
        setup_logging()
        ours = [
            h for h in root.handlers if getattr(h, "_maskcontrast", False) and not isinstance(h, logging.FileHandler)
        ]
        assert len(ours) == 1
        setup_logging(logging.DEBUG, file=tmp_path / "log.txt")
        logging.getLogger("maskcontrast.test").info("hello file")
        for h in root.handlers:
            h.flush()
        assert "hello file" in (tmp_path / "log.txt").read_text()
        assert root.level == logging.DEBUG
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]  # no temp file left


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"w": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))  # untouched
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["ckpt.pt"]


def test_peak_rss_mib():
    assert 10 < peak_rss_mib() < 1_000_000


def test_setup_logging_follows_a_replaced_stderr(monkeypatch):
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging()
        buf = io.StringIO()
        monkeypatch.setattr(sys, "stderr", buf)
        setup_logging()  # e.g. a CLI's main() called again under a new capture
        logging.getLogger("maskcontrast.test").warning("to the new stderr")
        assert "to the new stderr" in buf.getvalue()
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        monkeypatch.undo()
        setup_logging()  # point any remaining handler of ours back at the real stderr


def test_autocast_dtype():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16", cpu) is torch.float16
    assert autocast_dtype("auto", cpu) in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="needs the device"):
        autocast_dtype("auto")
    # each setting accepts its own values, and the error names the setting
    with pytest.raises(ConfigError, match=r"trainer\.precision must be one of fp32, bf16, fp16, got 'auto'"):
        autocast_dtype("auto", cpu, choices=("fp32", "bf16", "fp16"), key="trainer.precision")
    with pytest.raises(ConfigError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        autocast_dtype("fp16", cpu, choices=("auto", "bf16", "fp32"))
    with pytest.raises(ConfigError, match="got 'fp64'"):
        autocast_dtype("fp64", cpu, choices=("fp64",))
