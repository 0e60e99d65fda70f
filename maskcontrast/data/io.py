"""Decoding and encoding of images and masks, with errors that name the file.

Every reader and every tool reads pixels through these functions, so that grayscale, RGBA, CMYK,
palette and 16-bit files are handled one way everywhere.

Huge images: a file whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels (default 100
million, e.g. 10,000 x 10,000; ``MASKCONTRAST_MAX_IMAGE_PIXELS`` changes it) is refused with a
:class:`DataError` naming it, before its pixels are decoded (a decompression bomb: a few kilobytes
that decode to gigabytes). Importing this module also sets Pillow's own limit so that any other
``PIL.Image.open`` in the process refuses the same files (``DecompressionBombError``).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskcontrast.data.record import DataError
from maskcontrast.utils import atomic_write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "open_image",
    "image_size",
    "read_image",
    "read_index_png",
    "read_binary_mask",
    "write_mask",
    "write_panel",
    "list_images",
    "read_skipped",
    "SKIPPED_LIST",
    "to_uint8_rgb",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _max_pixels() -> int:
    text = os.environ.get("MASKCONTRAST_MAX_IMAGE_PIXELS", "100000000")
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"MASKCONTRAST_MAX_IMAGE_PIXELS must be a positive pixel count, got {text!r}")
    return value


#: the largest image (width x height) that is decoded; larger files are refused by name
MAX_IMAGE_PIXELS = _max_pixels()
# Pillow warns above its limit and raises above twice that: it now raises above ours
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS // 2


def _too_large(path: Path, size: tuple[int, int] | str) -> DataError:
    what = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels" if isinstance(size, tuple) else size
    return DataError(
        f"{path}: refused, the image is too large ({what}; the limit is {MAX_IMAGE_PIXELS:,} pixels, "
        "a guard against decompression bombs); downscale the file, or raise MASKCONTRAST_MAX_IMAGE_PIXELS "
        "if it is genuine",
        path=str(path),
    )


def open_image(path: str | Path, *, decode: bool = True) -> Image.Image:
    """Open an image file, refusing one over :data:`MAX_IMAGE_PIXELS` before its pixels are decoded.

    ``decode``: decode the pixels now (a truncated file fails here); False reads the header only
    (size, mode).

    Raises:
        DataError: the file is missing, too large, or cannot be decoded; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found", path=str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below decides
            img = Image.open(path)  # the header only
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                img.close()
                raise _too_large(path, (w, h))
            if decode:
                img.load()  # force decoding now, so a truncated file fails here
        return img
    except Image.DecompressionBombError as err:
        raise _too_large(path, str(err).split(",")[0]) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode ({err}); re-export or remove the file", path=str(path)) from err


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` from the header of an image file (nothing decoded; too large files are refused)."""
    img = open_image(path, decode=False)
    w, h = img.size
    img.close()
    return h, w


_open = open_image


def to_uint8_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit or float grayscale: PIL's convert('RGB') clips these, so scale by hand.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
            arr = arr / 257.0  # 16-bit (older Pillow opens 16-bit PNGs as mode I; PNG has no 32-bit gray)
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite transparent pixels over black, the same as dropping alpha for opaque ones.
        img = img.convert("RGBA")
        arr = np.asarray(img, dtype=np.uint16)
        rgb = arr[..., :3] * arr[..., 3:4] // 255
        return rgb.astype(np.uint8)
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Read any image file as ``H x W x 3`` uint8 RGB.

    Raises:
        DataError: the file is missing or cannot be decoded (truncated, not an image).
    """
    path = Path(path)
    return to_uint8_rgb(_open(path))


def read_index_png(path: str | Path) -> np.ndarray:
    """Read a label or mask file as its raw ``H x W`` integer values (palette indices for mode P).

    Mode ``1`` becomes 0/1, ``L``/``P`` keep their values, RGB files are refused (a colour-coded
    mask has to be mapped by the reader that knows its palette).
    """
    path = Path(path)
    img = _open(path)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        return np.asarray(img).astype(np.int64)
    if img.mode == "LA":
        return np.asarray(img.getchannel(0), dtype=np.uint8).copy()
    raise DataError(
        f"{path}: a label/mask file must be a single-channel PNG (mode L, P or 1), got mode {img.mode}",
        path=str(path),
    )


def read_binary_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """Read a binary object mask stored as 0/255, 0/1, mode ``1`` or JPEG, as uint8 0/1.

    Values above ``threshold`` are foreground; a 0/1 file (maximum 1) is taken as is.
    """
    path = Path(path)
    img = _open(path)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode not in ("L", "P"):
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.max() <= 1:
        return arr.copy()
    return (arr > threshold).astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an ``H x W`` integer mask (values 0..255) as a PNG, atomically.

    With ``palette`` (``256 x 3`` uint8) the file is a palette PNG, so it shows in colour while
    its pixel values stay the indices.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"mask values must lie in 0..255, got {arr.min()}..{arr.max()}")
    arr8 = np.ascontiguousarray(arr.astype(np.uint8))
    if palette is None:
        img = Image.fromarray(arr8)
    else:
        img = Image.frombytes("P", (arr8.shape[1], arr8.shape[0]), arr8.tobytes())
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_panel(path: str | Path, parts: list[np.ndarray], gap: int = 4) -> None:
    """Write ``H x W x 3`` uint8 pictures side by side, separated by ``gap`` white columns, as a PNG
    (atomically). Used for ``image | ground truth | prediction`` panels."""
    sep = np.full((parts[0].shape[0], gap, 3), 255, dtype=np.uint8)
    row = [parts[0]]
    for part in parts[1:]:
        row += [sep, part]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(row, axis=1)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


#: the file, inside an object-mask folder, that lists the ids a mask generator skipped on purpose:
#: ``<id>\t<reason>`` per line (as ``saliency.generate`` writes it). Those ids have no ``<id>.png``.
SKIPPED_LIST = "skipped.txt"


def read_skipped(path: str | Path, *, bare_ids: bool = True) -> dict[str, str]:
    """``skipped.txt`` -> ``{id: reason}`` (empty when the file does not exist).

    A line without a tab is a bare id (reason ``""``) when ``bare_ids``; otherwise it is ignored,
    as the half-written last line of an interrupted writer would be. ``#`` lines are comments.
    """
    path = Path(path)
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        sid, tab, reason = line.partition("\t")
        sid = sid.strip()
        if not sid or sid.startswith("#") or (not tab and not bare_ids) or (tab and not reason):
            continue
        out[sid] = reason
    return out


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found", path=str(folder))
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in folder.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
