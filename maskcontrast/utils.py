"""Small runtime helpers shared by every entry point: device, seeding, logging, atomic files."""

from __future__ import annotations

import copy
import logging
import os
import random
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "get_device",
    "seed_everything",
    "setup_logging",
    "atomic_save",
    "atomic_write_bytes",
    "peak_rss_mib",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "to_cpu",
    "configure_cuda_backends",
]

log = logging.getLogger("maskcontrast")


def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stderr``, so that replacing it
    (pytest's capture, notebooks) never leaves the handler writing to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; we always follow sys.stderr
        pass


def setup_logging(level: int | str = logging.INFO, file: str | Path | None = None) -> None:
    """Log to stderr (and to ``file``) with a short, timestamped format. Idempotent."""
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S")
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(fmt)
        handler._maskcontrast = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if file is not None:
        fh = logging.FileHandler(file)
        fh.setFormatter(fmt)
        fh._maskcontrast = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    root.setLevel(level)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside it (nested dicts, lists, tuples; optimizer states too) moved
    to the CPU; everything else as it is. Tensors already on the CPU are kept (no copy).

    A checkpoint written on a GPU then loads with a plain ``torch.load(..., weights_only=True)`` on a
    machine without one.
    """
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps the type and attributes (a state dict's ``_metadata``)
        for k, v in obj.items():
            out[k] = to_cpu(v)
        return out
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves
    a half-written checkpoint under ``path``. Every tensor is written from the CPU (:func:`to_cpu`)."""
    obj = to_cpu(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, from ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(
    precision: str,
    device: torch.device | None = None,
    choices: tuple[str, ...] = ("fp32", "bf16", "fp16", "auto"),
    key: str = "precision",
    fp16_fallback: bool = False,
) -> torch.dtype | None:
    """A precision setting -> the autocast dtype, or None for fp32.

    ``auto`` picks bfloat16 where it is native (CUDA devices that support it; CPUs with
    AVX512-BF16 or AMX), else fp32: emulated bfloat16 is slower than fp32.

    ``bf16`` on a CUDA device without bfloat16 (V100, T4: ``torch.cuda.is_bf16_supported()`` is
    False) would make autocast raise at the first step. It is checked here, at start-up: with
    ``fp16_fallback`` (a caller that scales the loss with a GradScaler for fp16) it becomes fp16
    with a warning; without, a ConfigError says what to set.

    Args:
        precision: one of ``choices``.
        device: needed for ``auto`` and for the bf16 check (None: no check).
        choices: the values this setting accepts.
        key: the setting's name, for the error message.
        fp16_fallback: fall back to fp16 where bf16 is not supported (the caller must enable a
            GradScaler when the result is ``torch.float16``).

    Raises:
        ConfigError: ``precision`` is not one of ``choices``, or bf16 on a GPU without it.
    """
    from maskcontrast.config_checks import ConfigError

    if precision not in choices or (precision != "auto" and precision not in _AUTOCAST_DTYPES):
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {precision!r}")
    if precision == "bf16" and device is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
        if fp16_fallback:
            log.warning(
                "%s=bf16: %s does not support bfloat16; training in fp16 with loss scaling instead "
                "(set %s=fp16 to silence this, or fp32)",
                key,
                name,
                key,
            )
            return torch.float16
        fp16 = "fp16" in choices
        raise ConfigError(
            f"{key}=bf16: {name} does not support bfloat16 (pre-Ampere GPUs such as V100 and T4); "
            f"set {key}={'fp16 or ' if fp16 else ''}fp32"
        )
    if precision != "auto":
        return _AUTOCAST_DTYPES[precision]
    if device is None:
        raise ValueError("precision 'auto' needs the device")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def configure_cuda_backends(device: torch.device) -> None:
    """Speed settings for a run on ``device`` whose input sizes stay fixed (training views):
    ``cudnn.benchmark`` picks the fastest convolution algorithm once per shape. Nothing on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
