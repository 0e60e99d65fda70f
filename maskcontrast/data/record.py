"""The common record every dataset reader returns, and dataset metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Sample", "DatasetInfo", "DataError", "IGNORE_INDEX", "default_palette"]

IGNORE_INDEX = 255


class DataError(Exception):
    """A dataset file that cannot be used. The message names the file (or split list) and why."""

    def __init__(self, message: str, path: str | None = None, sample_id: str | None = None):
        super().__init__(message)
        self.path = path
        self.sample_id = sample_id


@dataclass
class Sample:
    """One image with its optional annotations.

    Attributes:
        id: the image id, unique within a dataset (usually the file stem).
        image: ``H x W x 3`` uint8 RGB.
        label: ``H x W`` int64 semantic labels in ``0..num_classes-1``, ``255`` = ignore; or None.
        mask: ``H x W`` uint8 object mask, ``0`` = background, ``1..n`` = objects; or None.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved), for ``n`` classes."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


@dataclass(frozen=True)
class DatasetInfo:
    """What a reader knows about its labels.

    Attributes:
        name: registry name of the dataset.
        classes: class names, index = label value. Empty for datasets without labels.
        palette: an RGB colour per class, for visualisation.
        ignore_index: the label value that means "not evaluated".
        background: the index of the background class, or None when no class plays that role.
    """

    name: str
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = field(default=())
    ignore_index: int = IGNORE_INDEX
    background: int | None = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def palette_array(self) -> np.ndarray:
        """``256 x 3`` uint8 colour table: class colours, ignore = white, other values black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        pal = self.palette or tuple(default_palette(self.num_classes))
        for i, c in enumerate(pal[: self.num_classes]):
            table[i] = c
        table[self.ignore_index] = (255, 255, 255)
        return table
