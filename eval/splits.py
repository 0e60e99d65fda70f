"""Seeded train/val splits for datasets without official ones, saved beside the run and reused."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcontrast.data import DataError
from maskcontrast.utils import atomic_write_bytes

__all__ = ["seeded_split", "resolve_split"]

log = logging.getLogger(__name__)


def seeded_split(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (train, val) with a seeded permutation of the sorted ids.

    The result depends only on the set of ids, ``val_fraction`` and ``seed``. Both parts keep the
    sorted order. Example: ``seeded_split([f"{i}" for i in range(10)], 0.3, 0)`` -> 7 and 3 ids.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    ordered = sorted(set(ids))
    if len(ordered) < 2:
        raise ValueError(f"need at least 2 images for a train/val split, got {len(ordered)}")
    n_val = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered))))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val = set(perm[:n_val].tolist())
    return [i for j, i in enumerate(ordered) if j not in val], [i for j, i in enumerate(ordered) if j in val]


def resolve_split(
    all_ids: Sequence[str],
    out_dir: Path,
    val_fraction: float,
    seed: int,
    split_dir: str | Path | None = None,
) -> tuple[list[str], list[str]]:
    """A reusable seeded split: read ``split_dir`` (or ``out_dir``) ``/split_{train,val}.txt`` when
    they exist, else make one with :func:`seeded_split` and save it to ``out_dir``."""
    src = Path(split_dir) if split_dir is not None else out_dir
    train_f, val_f = src / "split_train.txt", src / "split_val.txt"
    if train_f.is_file() and val_f.is_file():
        train = [s for s in train_f.read_text(encoding="utf-8").split() if s]
        val = [s for s in val_f.read_text(encoding="utf-8").split() if s]
        known = set(all_ids)
        missing = [i for i in train + val if i not in known]
        if missing:
            raise DataError(f"{src}: split lists name {len(missing)} ids the dataset lacks, e.g. {missing[:3]}")
        log.info("reusing the split in %s (%d train / %d val)", src, len(train), len(val))
    else:
        if split_dir is not None:
            raise DataError(f"split files not found: {train_f} and {val_f}", path=str(src))
        train, val = seeded_split(all_ids, val_fraction, seed)
        log.info(
            "made a seeded split (seed %d, val fraction %.2f): %d train / %d val",
            seed,
            val_fraction,
            len(train),
            len(val),
        )
    if src != out_dir or not (out_dir / "split_train.txt").is_file():
        atomic_write_bytes(out_dir / "split_train.txt", ("\n".join(train) + "\n").encode())
        atomic_write_bytes(out_dir / "split_val.txt", ("\n".join(val) + "\n").encode())
    return train, val
