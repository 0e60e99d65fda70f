"""Where the shared real data lives: ``$MASKCONTRAST_DATA`` and the folder of each dataset in it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "shared_dataset_root", "SHARED_LAYOUT"]

#: dataset name -> (sub-folder of $MASKCONTRAST_DATA, default split)
SHARED_LAYOUT: dict[str, tuple[str, str | None]] = {
    "msrc": ("msrc_v2", None),
    "pet": ("oxford_iiit_pet", None),
    "coco128": ("coco128_seg", None),
    "davis2016": ("davis2016", None),
    "weizmann": ("weizmann_horse", None),
    "sod": ("saliency/SOD", None),
    "voc_splits": ("voc2012_splits", None),
}


def data_root() -> Path | None:
    """``$MASKCONTRAST_DATA`` as an absolute path when it is set and exists, else None (absolute,
    so commands built from it, which resumable stages compare, do not depend on how it was spelled)."""
    value = os.environ.get("MASKCONTRAST_DATA")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    return path if path.is_dir() else None


def shared_dataset_root(name: str) -> Path | None:
    """The folder of dataset ``name`` under ``$MASKCONTRAST_DATA`` (None when absent)."""
    root = data_root()
    if root is None or name not in SHARED_LAYOUT:
        return None
    path = root / SHARED_LAYOUT[name][0]
    return path if path.is_dir() else None
