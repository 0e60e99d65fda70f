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

from maskcontrast.config_checks import ConfigError
from maskcontrast.utils import (
    atomic_save,
    atomic_write_bytes,
    autocast_dtype,
    configure_cuda_backends,
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


@pytest.fixture
def meta_to_cpu(monkeypatch):
    """``Tensor.cpu`` of a ``meta`` tensor (which holds no data) gives zeros of its shape on the CPU,
    standing in for a GPU tensor on a machine without one; ``.calls`` counts those copies."""
    real = torch.Tensor.cpu
    calls = []

    def cpu(self, *args, **kwargs):
        if self.is_meta:
            calls.append(tuple(self.shape))
            return torch.zeros(self.shape, dtype=self.dtype)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    return calls


def test_checkpoints_hold_only_cpu_tensors_optimizer_state_included(tmp_path, meta_to_cpu):
    """A checkpoint of networks and an optimizer on another device (``meta`` here) is written with
    every tensor on the CPU, so ``torch.load(..., weights_only=True)`` reads it without that device."""
    from maskcontrast.config import MaskContrastObjectiveConfig, ModelConfig
    from maskcontrast.objectives import MaskContrastObjective
    from maskcontrast.run_state import optim_state, save_state

    model_cfg = ModelConfig()
    model_cfg.backbone.arch = "resnet18"
    with torch.device("meta"):
        obj = MaskContrastObjective(model_cfg, MaskContrastObjectiveConfig(queue_size=8))
        params = [p for p in obj.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()  # momentum buffers on the meta device
    ckpt = {**obj.checkpoint(), **optim_state(opt), "trainer": {"rng": torch.empty(3, device="meta")}}
    assert any(t.is_meta for t in ckpt["optimizer"]["state"][0].values())
    save_state(tmp_path / "c.pt", ckpt)
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    seen = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            seen.append(x.device.type)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(back)
    assert len(seen) > 100 and set(seen) == {"cpu"}
    assert back["optimizer"]["state"][0]["momentum_buffer"].shape == params[0].shape
    assert back["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert hasattr(back["model"], "_metadata") or isinstance(back["model"], dict)
    # tensors already on the CPU are written as they are, without a copy
    t = torch.ones(3)
    n = len(meta_to_cpu)
    atomic_save({"a": [t, (t, 1)]}, tmp_path / "d.pt")
    assert len(meta_to_cpu) == n and torch.load(tmp_path / "d.pt", weights_only=True)["a"][1][1] == 1


def test_bf16_on_a_gpu_without_it_falls_back_or_says_what_to_set(monkeypatch, caplog):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100 or T4
    with caplog.at_level(logging.WARNING):
        got = autocast_dtype(
            "bf16", cuda, choices=("fp32", "bf16", "fp16"), key="trainer.precision", fp16_fallback=True
        )
    assert got is torch.float16
    assert "does not support bfloat16" in caplog.text and "trainer.precision=fp16" in caplog.text
    with pytest.raises(ConfigError, match=r"precision=bf16: .* set precision=fp32"):
        autocast_dtype("bf16", cuda, choices=("fp32", "bf16"))
    assert autocast_dtype("auto", cuda) is None  # auto picks fp32 there
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16  # the check is for CUDA only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("bf16", cuda, fp16_fallback=True) is torch.bfloat16


def test_cudnn_benchmark_is_set_for_cuda_runs_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_cuda_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure_cuda_backends(torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark is True
