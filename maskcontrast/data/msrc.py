"""MSRC-v2 (the 591-image MSRC 21-class database), in its official layout or as stored in the shared data.

Two layouts are read, and may be mixed file by file (the ``.png`` is taken when both exist):

* ``official``: the release ``msrc_objcategimagedatabase_v2.zip`` (``python -m
  maskcontrast.data.download msrc``)::

      Images/<id>.bmp
      GroundTruth/<id>_GT.bmp     colour-coded: the MSRC colour table below, void black

* ``shared``: our shared copy (``$MASKCONTRAST_DATA/msrc_v2``, see its SOURCES.md)::

      Images/<id>.png
      GroundTruth/<id>_GT.png     palette PNG, value = MSRC class index (0 = void, 1..23)
      ids.txt                     (optional) the image ids

The usual 21-class protocol (``protocol="21"``, the default) ignores void, horse (5) and
mountain (8): they become 255. The other 21 classes keep their MSRC order and are numbered
0..20: building 0, grass 1, tree 2, cow 3, sheep 4, sky 5, aeroplane 6, water 7, face 8, car 9,
bicycle 10, flower 11, sign 12, bird 13, book 14, chair 15, road 16, cat 17, dog 18, body 19,
boat 20. Background-like classes (grass, sky, road, ...) are ordinary classes, so this dataset
has no background class. ``protocol="23"`` keeps horse and mountain too (0..22).
MSRC has no official split; use ``ids=`` (see ``eval.linear``'s seeded split) for one.

In a colour-coded file, a pixel whose colour is not in the table is void (ignored), as in the
usual MSRC loaders; a file where more than :data:`MAX_UNKNOWN_COLOUR_FRACTION` of the pixels
have such colours is refused (it is not an MSRC ground truth, e.g. a JPEG-compressed copy).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from maskcontrast.data.base import SampleFiles, SegmentationDataset, read_id_list, register_dataset
from maskcontrast.data.io import list_images, open_image, read_image, read_index_png
from maskcontrast.data.record import IGNORE_INDEX, DataError, DatasetInfo

__all__ = [
    "MSRCv2",
    "MSRC_RAW_CLASSES",
    "MSRC_LAYOUTS",
    "MAX_UNKNOWN_COLOUR_FRACTION",
    "msrc_colour_to_index",
    "msrc_layout",
]

log = logging.getLogger(__name__)

# (raw index, name, RGB) of the MSRC ground-truth colour table
MSRC_RAW_CLASSES = (
    (0, "void", (0, 0, 0)),
    (1, "building", (128, 0, 0)),
    (2, "grass", (0, 128, 0)),
    (3, "tree", (128, 128, 0)),
    (4, "cow", (0, 0, 128)),
    (5, "horse", (128, 0, 128)),
    (6, "sheep", (0, 128, 128)),
    (7, "sky", (128, 128, 128)),
    (8, "mountain", (64, 0, 0)),
    (9, "aeroplane", (192, 0, 0)),
    (10, "water", (64, 128, 0)),
    (11, "face", (192, 128, 0)),
    (12, "car", (64, 0, 128)),
    (13, "bicycle", (192, 0, 128)),
    (14, "flower", (64, 128, 128)),
    (15, "sign", (192, 128, 128)),
    (16, "bird", (0, 64, 0)),
    (17, "book", (128, 64, 0)),
    (18, "chair", (0, 192, 0)),
    (19, "road", (128, 64, 128)),
    (20, "cat", (0, 192, 128)),
    (21, "dog", (128, 192, 128)),
    (22, "body", (64, 64, 0)),
    (23, "boat", (192, 64, 0)),
)

#: layout name -> (image suffix, ground-truth suffix, description)
MSRC_LAYOUTS = {
    "official": (".bmp", "_GT.bmp", "Images/*.bmp, colour-coded GroundTruth/*_GT.bmp (the official release)"),
    "shared": (".png", "_GT.png", "Images/*.png, index-PNG GroundTruth/*_GT.png (the shared copy)"),
}

#: a colour-coded file with more pixels of unknown colours than this is refused
MAX_UNKNOWN_COLOUR_FRACTION = 0.01

_UNKNOWN = 255
_CODES = np.array([(r << 16) | (g << 8) | b for _, _, (r, g, b) in MSRC_RAW_CLASSES], dtype=np.int64)
_ORDER = np.argsort(_CODES)
_SORTED_CODES = _CODES[_ORDER]
_SORTED_RAW = np.array([MSRC_RAW_CLASSES[i][0] for i in _ORDER], dtype=np.uint8)


def msrc_colour_to_index(rgb: np.ndarray) -> np.ndarray:
    """Colour-coded MSRC ground truth -> raw MSRC class indices.

    Args:
        rgb: ``H x W x 3`` uint8.

    Returns:
        ``H x W`` uint8: ``0`` void (black), ``1..23`` the classes of :data:`MSRC_RAW_CLASSES`,
        ``255`` for a colour that is not in the table.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
    c = rgb.astype(np.int64)
    code = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    pos = np.clip(np.searchsorted(_SORTED_CODES, code), 0, len(_SORTED_CODES) - 1)
    return np.where(_SORTED_CODES[pos] == code, _SORTED_RAW[pos], _UNKNOWN).astype(np.uint8)


def msrc_layout(root: str | Path) -> str:
    """Which layout an MSRC-v2 folder holds: ``"official"``, ``"shared"``, ``"mixed"`` (both kinds
    of ground truth) or ``"unknown"`` (no ``GroundTruth/*_GT.{bmp,png}``)."""
    gt = Path(root) / "GroundTruth"
    found = [name for name, (_, suffix, _) in MSRC_LAYOUTS.items() if gt.is_dir() and any(gt.glob(f"*{suffix}"))]
    if len(found) == 2:
        return "mixed"
    return found[0] if found else "unknown"


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
    """MSRC-v2, 21-class protocol, in either layout. See the module docstring for the mapping."""

    info = DatasetInfo("msrc", _NAMES21, _PAL21, background=None)

    def __init__(self, root, split=None, *, protocol: str = "21", **kwargs) -> None:
        if protocol not in ("21", "23"):
            raise ValueError(f"MSRC protocol must be '21' or '23', got {protocol!r}")
        self.protocol = protocol
        if protocol == "23":
            self.info = DatasetInfo("msrc", _NAMES23, _PAL23, background=None)
        self._lut = _LUT21 if protocol == "21" else _LUT23
        super().__init__(root, split, **kwargs)
        self.layout = msrc_layout(self.root)

    @property
    def layout_note(self) -> str:
        """One line for ``data.check``: the layout this folder holds."""
        if self.layout in MSRC_LAYOUTS:
            return f"layout {self.layout}: {MSRC_LAYOUTS[self.layout][2]}"
        if self.layout == "mixed":
            return (
                "layout mixed: both colour-coded *_GT.bmp and index *_GT.png files (the .png is used where both exist)"
            )
        return "layout unknown: no GroundTruth/*_GT.bmp or *_GT.png found"

    def _list_ids(self) -> list[str]:
        if (self.root / "ids.txt").is_file():
            return read_id_list(self.root / "ids.txt")
        return sorted({p.stem for p in list_images(self.root / "Images")})

    def files(self, sample_id: str) -> SampleFiles:
        images, gt = self.root / "Images", self.root / "GroundTruth"
        official, shared = MSRC_LAYOUTS["official"], MSRC_LAYOUTS["shared"]
        image = images / f"{sample_id}{shared[0]}"
        if not image.is_file() and (images / f"{sample_id}{official[0]}").is_file():
            image = images / f"{sample_id}{official[0]}"
        label = gt / f"{sample_id}{shared[1]}"
        if not label.is_file() and (gt / f"{sample_id}{official[1]}").is_file():
            label = gt / f"{sample_id}{official[1]}"
        return SampleFiles(image=image, label=label)

    def read_label_file(self, path: Path) -> np.ndarray:
        """Raw MSRC class indices (0..23) of either kind of file: an index (``P``/``L``) PNG as it is,
        anything else (the official ``_GT.bmp``, an RGB PNG) through the colour table."""
        if path.suffix.lower() == ".png":
            try:
                mode = open_image(path, decode=False).mode
            except DataError:
                mode = "P"  # unreadable or too large: read_index_png raises the DataError that names the file
            if mode in ("P", "L"):
                return read_index_png(path)
        rgb = read_image(path)
        raw = msrc_colour_to_index(rgb)
        unknown = raw == _UNKNOWN
        if unknown.any():
            frac = float(unknown.mean())
            colours = np.unique(rgb[unknown], axis=0)[:5].tolist()
            if frac > MAX_UNKNOWN_COLOUR_FRACTION:
                raise DataError(
                    f"{path}: {100 * frac:.1f} % of the pixels have colours outside the MSRC colour table "
                    f"(e.g. {colours}); expected a colour-coded MSRC ground truth (void black) or an index PNG",
                    path=str(path),
                )
            log.warning(
                "%s: %d pixels of colours outside the MSRC table (e.g. %s) are void", path, unknown.sum(), colours
            )
            raw[unknown] = 0
        return raw

    def decode_label(self, raw: np.ndarray, sample_id: str) -> np.ndarray:
        if raw.max() > 23:
            raise DataError(
                f"{self.files(sample_id).label}: MSRC class index {int(raw.max())} > 23; "
                "expected an index PNG (value = MSRC class) or a colour-coded _GT.bmp",
            )
        return self._lut[raw]
