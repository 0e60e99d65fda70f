"""DAVIS-2016 (single salient object per frame, binary masks).

Layout (``root`` is the folder holding ``DAVIS/`` or ``DAVIS`` itself)::

    JPEGImages/480p/<seq>/<frame>.jpg
    Annotations/480p/<seq>/<frame>.png      0/255
    ImageSets/480p/{train,val,trainval}.txt "<image path> <mask path>" per line

Sample ids are ``<seq>/<frame>``. Labels: background 0, object 1; the object mask is the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskcontrast.data.base import SampleFiles, SegmentationDataset, read_id_list, register_dataset
from maskcontrast.data.io import read_binary_mask
from maskcontrast.data.record import DatasetInfo

__all__ = ["DAVIS2016"]


@register_dataset("davis2016")
class DAVIS2016(SegmentationDataset):
    info = DatasetInfo("davis2016", ("background", "object"), ((0, 0, 0), (255, 0, 0)))
    splits = ("train", "val", "trainval")
    default_split = "val"

    def _resolve_root(self, root: Path) -> Path:
        return root / "DAVIS" if (root / "DAVIS" / "JPEGImages").is_dir() else root

    def _list_ids(self) -> list[str]:
        paths = read_id_list(self.root / "ImageSets" / "480p" / f"{self.split}.txt")
        # "/JPEGImages/480p/<seq>/<frame>.jpg" -> "<seq>/<frame>"
        return ["/".join(Path(p).with_suffix("").parts[-2:]) for p in paths]

    def files(self, sample_id: str) -> SampleFiles:
        return SampleFiles(
            image=self.root / "JPEGImages" / "480p" / f"{sample_id}.jpg",
            label=self.root / "Annotations" / "480p" / f"{sample_id}.png",
        )

    def read_label_file(self, path: Path) -> np.ndarray:
        return read_binary_mask(path)

    def object_mask_from_label(self, label: np.ndarray) -> np.ndarray:
        return label.astype(np.uint8)
