"""Images in, network-ready tensors out: any image as a ``3 x H x W`` float tensor, a batch as a
list of single images, and the network input size of an image.

:class:`maskcontrast.FeatureModel` accepts what :func:`to_image_tensor` accepts: PIL images (any
mode), paths, ``H x W x 3`` / ``H x W`` numpy arrays and ``3 x H x W`` tensors (uint8, or float in
``[0, 1]``), and lists or ``B x 3 x H x W`` batches of these (:func:`flatten_images`).

The network input of one image is at most :data:`MAX_INPUT_PIXELS` pixels (default 4096 x 4096;
``MASKCONTRAST_MAX_INPUT_PIXELS`` changes it). The decoding limit of :mod:`maskcontrast.data.io`
does not bound it: resizing the shorter side of a 2 x 3,000 strip to 512 would make a 512 x 768,000
input and exhaust the memory of any machine; :func:`target_size` refuses it instead
(:class:`InputTooLargeError`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_INPUT_PIXELS", "InputTooLargeError", "to_image_tensor", "flatten_images", "target_size"]


def _max_input_pixels() -> int:
    text = os.environ.get("MASKCONTRAST_MAX_INPUT_PIXELS", str(4096 * 4096))
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"MASKCONTRAST_MAX_INPUT_PIXELS must be a positive pixel count, got {text!r}")
    return value


#: the largest network input (height x width after resizing) of one image
MAX_INPUT_PIXELS = _max_input_pixels()


class InputTooLargeError(ValueError):
    """An image whose network input (after resizing) would be over :data:`MAX_INPUT_PIXELS`."""


def to_image_tensor(image: Any) -> torch.Tensor:
    """One image as a ``3 x H x W`` float32 tensor in ``[0, 1]`` (on the tensor's own device).

    Accepts a PIL image (any mode), a path, an ``H x W x 3`` / ``H x W`` numpy array (uint8, or
    float in ``[0, 1]``) or a ``3 x H x W`` / ``1 x H x W`` tensor (uint8, or float in ``[0, 1]``).

    Raises:
        ValueError: an unsupported type, shape or dtype (the message says what was given).
    """
    from PIL import Image

    if isinstance(image, (str, Path)):
        from maskcontrast.data.io import read_image

        return torch.from_numpy(read_image(image)).permute(2, 0, 1).float().div_(255.0)
    if isinstance(image, Image.Image):
        from maskcontrast.data.io import to_uint8_rgb

        return torch.from_numpy(to_uint8_rgb(image)).permute(2, 0, 1).float().div_(255.0)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise ValueError(f"numpy images must be H x W x 3 (or H x W), got shape {arr.shape}")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)
        return _scale_tensor(t, "numpy image")
    if isinstance(image, torch.Tensor):
        t = image
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(
                f"tensor images must be channels-first 3 x H x W (or B x 3 x H x W as a batch), got shape "
                f"{tuple(image.shape)}; for an H x W x 3 tensor use .permute(2, 0, 1)"
            )
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return _scale_tensor(t, "tensor image")
    raise ValueError(
        f"unsupported image type {type(image).__name__}; pass a PIL image, a path, a numpy array or a tensor"
    )


def _scale_tensor(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.is_floating_point():
        return t.float()
    raise ValueError(f"{what}: dtype {t.dtype} is not supported; use uint8 (0..255) or float (0..1)")


def flatten_images(images: Any) -> list[Any]:
    """A single image, a batch tensor, or a list of them -> a list of single images."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, (list, tuple)):
        out: list[Any] = []
        for im in images:
            if isinstance(im, torch.Tensor) and im.ndim == 4:
                out.extend(im.unbind(0))
            else:
                out.append(im)
        if not out:
            raise ValueError("no images given (empty list)")
        return out
    return [images]


def target_size(hw: tuple[int, int], size: int | Sequence[int] | None, stride: int) -> tuple[int, int]:
    """The network input size for an image of size ``hw``.

    ``size=None`` keeps the image size, an int resizes the shorter side to ``size`` (aspect kept),
    ``(H, W)`` resizes to exactly that. Each side is then rounded to the nearest multiple of
    ``stride`` (halves up; at least ``stride``).

    Example: ``target_size((375, 500), 256, 8) == (256, 344)``.

    Raises:
        InputTooLargeError: the result is over :data:`MAX_INPUT_PIXELS` pixels (the message gives
            both sizes and how to fix it, but not the file: callers that know it add it).
    """
    h, w = hw
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if size is None:
        th, tw = float(h), float(w)
    elif isinstance(size, int):
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(h, w)
        th, tw = h * scale, w * scale
    else:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be an int or (H, W) with positive values, got {size}")
        th, tw = float(size[0]), float(size[1])
    out = max(stride, math.floor(th / stride + 0.5) * stride), max(stride, math.floor(tw / stride + 0.5) * stride)
    if out[0] * out[1] > MAX_INPUT_PIXELS:
        how = (
            "at its own size"
            if size is None
            else f"resized to {'shorter side ' if isinstance(size, int) else ''}{size}"
        )
        raise InputTooLargeError(
            f"the image ({h} x {w}) {how} would be a network input of {out[0]} x {out[1]} = "
            f"{out[0] * out[1]:,} pixels, over the limit of {MAX_INPUT_PIXELS:,} (MASKCONTRAST_MAX_INPUT_PIXELS); "
            "crop it or give a smaller size (--size H W)"
        )
    return out
