"""coco128-seg: the first 128 COCO train2017 images with Ultralytics polygon labels, rasterised.

Layout::

    images/train2017/<id>.jpg
    masks/train2017/<id>.png      value = YOLO class + 1; 0 = no annotated instance
    classes.txt                   "<yolo_id> <mask_value> <name>" per line

Labels are the mask values: 0 = ``background`` (everything not annotated, stuff included),
1..80 the COCO classes. The object mask is every annotated pixel (binary).
"""

from __future__ import annotations

import numpy as np

from maskcontrast.data.base import (
    SampleFiles,
    SegmentationDataset,
    empty_folder_error,
    ensure_dataset_folder,
    register_dataset,
)
from maskcontrast.data.io import list_images
from maskcontrast.data.record import DataError, DatasetInfo, default_palette

__all__ = ["COCO128Seg"]


@register_dataset("coco128")
class COCO128Seg(SegmentationDataset):
    splits = ("train2017", "all")
    default_split = "train2017"

    def __init__(self, root, split=None, **kwargs) -> None:
        root_path = ensure_dataset_folder(root, type(self).__name__)
        classes_file = root_path / "classes.txt"
        if not classes_file.is_file():
            raise empty_folder_error(root_path, type(self).__name__) or DataError(
                f"class list not found: {classes_file}", path=str(classes_file)
            )
        names: dict[int, str] = {}
        for line in classes_file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                _, value, name = line.split(maxsplit=2)
                names[int(value)] = name.strip()
        classes = ("background", *(names[v] for v in range(1, max(names) + 1)))
        self.info = DatasetInfo("coco128", classes, tuple(default_palette(len(classes))))
        super().__init__(root, split, **kwargs)

    def _list_ids(self) -> list[str]:
        return [p.stem for p in list_images(self.root / "images" / "train2017")]

    def files(self, sample_id: str) -> SampleFiles:
        return SampleFiles(
            image=self.root / "images" / "train2017" / f"{sample_id}.jpg",
            label=self.root / "masks" / "train2017" / f"{sample_id}.png",
        )

    def object_mask_from_label(self, label: np.ndarray) -> np.ndarray:
        return (label > 0).astype(np.uint8)
