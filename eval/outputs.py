"""What the evaluations write: JSON (atomically, NaN as null), pictures, and refusing to overwrite files."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskcontrast.data import DatasetInfo, write_mask
from maskcontrast.data.io import write_panel
from maskcontrast.utils import atomic_write_bytes

__all__ = [
    "add_output_arguments",
    "vis_folder",
    "quiet_faiss",
    "ensure_new_file",
    "jsonable",
    "write_json",
    "colorize",
    "save_panel",
    "safe_name",
]


def add_output_arguments(parser: argparse.ArgumentParser, vis: str | None = None) -> argparse._ArgumentGroup:
    """The "outputs" group of every evaluation CLI: ``--json``, ``--vis N`` and ``--vis-dir`` (when
    ``vis``, the help of ``--vis``, is given), ``--overwrite`` and ``--no-progress``. Returns the
    group, for a command's own output flags."""
    o = parser.add_argument_group("outputs")
    o.add_argument("--json", default=None, help="write the results as JSON here")
    if vis is not None:
        o.add_argument("--vis", type=int, default=0, help=vis)
        o.add_argument("--vis-dir", default=None, help="folder for --vis (default: <json without .json>_vis)")
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --json file" + (" and --vis folder" if vis is not None else ""),
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return o


def vis_folder(args: argparse.Namespace) -> Path | None:
    """The folder for ``--vis`` pictures (``--vis-dir``, or ``<json without .json>_vis``), None
    without ``--vis``; checked before any long work.

    Raises:
        ValueError: ``--vis`` without a folder to write to.
        FileExistsError: the folder holds pictures and ``--overwrite`` is not given.
    """
    if args.vis <= 0:
        return None
    if args.vis_dir is None and args.json is None:
        raise ValueError("--vis needs --vis-dir DIR (or --json, whose name it borrows)")
    folder = Path(args.vis_dir) if args.vis_dir else Path(args.json).parent / (Path(args.json).stem + "_vis")
    if folder.exists() and any(folder.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{folder} is not empty; pass --overwrite to replace its pictures")
    return folder


def quiet_faiss() -> None:
    """faiss logs which CPU build it loads at INFO level; keep CLI output readable."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)


def ensure_new_file(path: str | Path | None, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse an existing output file unless ``overwrite`` (checked before any long work)."""
    if path is not None and Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass {flag} to replace it")


def jsonable(obj: Any) -> Any:
    """Numpy/torch scalars and arrays -> Python; NaN and inf -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode("utf-8"))


def colorize(label: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """``H x W`` class ids -> ``H x W x 3`` uint8 with the dataset palette (ignore = white)."""
    table = info.palette_array()
    return table[np.clip(np.asarray(label), 0, 255).astype(np.uint8)]


def save_panel(path: str | Path, image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, info: DatasetInfo) -> None:
    """Write ``image | ground truth | prediction`` side by side as a PNG (atomically), and the raw
    prediction (class indices, palette PNG) as ``pred/<same name>`` beside it, so that other tools
    (e.g. the demo report) can compose their own pictures."""
    path = Path(path)
    pred_arr = np.asarray(pred)
    write_mask(
        path.parent / "pred" / path.name, np.where(pred_arr < 0, info.ignore_index, pred_arr), info.palette_array()
    )
    image = np.asarray(image, dtype=np.uint8)
    gt_rgb = colorize(gt, info) if gt is not None else np.zeros_like(image)
    write_panel(path, [image, gt_rgb, colorize(pred, info)])


def safe_name(sample_id: str) -> str:
    """A file name for an id that may contain ``/`` (DAVIS ``seq/frame``)."""
    return sample_id.replace(os.sep, "__").replace("/", "__")
