"""MSRC-v2 (the 591-image MSRC 21-class database), as stored in the shared data.

Layout::

    Images/<id>.png (or .bmp)
    GroundTruth/<id>_GT.png     palette PNG, value = MSRC class index (0 = void, 1..23)
    ids.txt                     (optional) the image ids

The usual 21-class protocol (``protocol="21"``, the default) ignores void, horse (5) and
mountain (8): they become 255. The other 21 classes keep their MSRC order and are numbered
0..20: building 0, grass 1, tree 2, cow 3, sheep 4, sky 5, aeroplane 6, water 7, face 8, car 9,
bicycle 10, flower 11, sign 12, bird 13, book 14, chair 15, road 16, cat 17, dog 18, body 19,
boat 20. Background-like classes (grass, sky, road, ...) are ordinary classes, so this dataset
has no background class. ``protocol="23"`` keeps horse and mountain too (0..22).
MSRC has no official split; use ``ids=`` (see ``eval.linear``'s seeded split) for one.
"""

from __future__ import annotations

import numpy as np

from maskcontrast.data.base import SampleFiles, SegmentationDataset, read_id_list, register_dataset
from maskcontrast.data.io import list_images
from maskcontrast.data.record import IGNORE_INDEX, DataError, DatasetInfo

__all__ = ["MSRCv2", "MSRC_RAW_CLASSES"]

# (raw index, name, RGB) of the MSRC ground-truth colour table
MSRC_RAW_CLASSES = (
    (0, "void", (0, 0, 0)), (1, "building", (128, 0, 0)), (2, "grass", (0, 128, 0)), (3, "tree", (128, 128, 0)),
    (4, "cow", (0, 0, 128)), (5, "horse", (128, 0, 128)), (6, "sheep", (0, 128, 128)), (7, "sky", (128, 128, 128)),
    (8, "mountain", (64, 0, 0)), (9, "aeroplane", (192, 0, 0)), (10, "water", (64, 128, 0)),
    (11, "face", (192, 128, 0)), (12, "car", (64, 0, 128)), (13, "bicycle", (192, 0, 128)),
    (14, "flower", (64, 128, 128)), (15, "sign", (192, 128, 128)), (16, "bird", (0, 64, 0)),
    (17, "book", (128, 64, 0)), (18, "chair", (0, 192, 0)), (19, "road", (128, 64, 128)),
    (20, "cat", (0, 192, 128)), (21, "dog", (128, 192, 128)), (22, "body", (64, 64, 0)), (23, "boat", (192, 64, 0)),
)  # fmt: skip


def _lut(dropped: tuple[int, ...]) -> tuple[np.ndarray, tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    names, colours = [], []
    for raw, name, rgb in MSRC_RAW_CLASSES:
        if raw == 0 or raw in dropped:
            continue
        lut[raw] = len(names)
        names.append(name)
        colours.append(rgb)
    return lut, tuple(names), tuple(colours)


_LUT21, _NAMES21, _PAL21 = _lut((5, 8))
_LUT23, _NAMES23, _PAL23 = _lut(())


@register_dataset("msrc")
class MSRCv2(SegmentationDataset):
    """MSRC-v2, 21-class protocol. See the module docstring for the mapping."""

    info = DatasetInfo("msrc", _NAMES21, _PAL21, background=None)

    def __init__(self, root, split=None, *, protocol: str = "21", **kwargs) -> None:
        if protocol not in ("21", "23"):
            raise ValueError(f"MSRC protocol must be '21' or '23', got {protocol!r}")
        self.protocol = protocol
        if protocol == "23":
            self.info = DatasetInfo("msrc", _NAMES23, _PAL23, background=None)
        self._lut = _LUT21 if protocol == "21" else _LUT23
        super().__init__(root, split, **kwargs)

    def _list_ids(self) -> list[str]:
        if (self.root / "ids.txt").is_file():
            return read_id_list(self.root / "ids.txt")
        return [p.stem for p in list_images(self.root / "Images")]

    def files(self, sample_id: str) -> SampleFiles:
        image = self.root / "Images" / f"{sample_id}.png"
        if not image.is_file() and (self.root / "Images" / f"{sample_id}.bmp").is_file():
            image = self.root / "Images" / f"{sample_id}.bmp"
        return SampleFiles(image=image, label=self.root / "GroundTruth" / f"{sample_id}_GT.png")

    def decode_label(self, raw: np.ndarray, sample_id: str) -> np.ndarray:
        if raw.max() > 23:
            raise DataError(
                f"{self.files(sample_id).label}: MSRC class index {int(raw.max())} > 23; "
                "expected the index PNG (value = MSRC class), not a colour image",
            )
        return self._lut[raw]
