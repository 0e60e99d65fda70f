"""Weizmann Horse database (Borenstein & Ullman): side-view horses with figure/ground masks.

Layout (``root`` holds ``weizmann_horse_db/`` or is that folder)::

    rgb/horseNNN.jpg            colour image, at a different scale than the mask
    figure_ground/horseNNN.jpg  JPEG mask (threshold 127)
    gray/horseNNN.jpg           grayscale image at the mask's scale (unused)

As the release requires, ``rgb`` is resized (bilinear) to the size of its mask.
Labels: background 0, horse 1; the object mask is the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maskcontrast.data.base import SampleFiles, SegmentationDataset, read_id_list, register_dataset
from maskcontrast.data.io import image_size, list_images, read_binary_mask, read_image
from maskcontrast.data.record import DatasetInfo

__all__ = ["WeizmannHorse"]


@register_dataset("weizmann")
class WeizmannHorse(SegmentationDataset):
    info = DatasetInfo("weizmann", ("background", "horse"), ((0, 0, 0), (255, 0, 0)))

    def _resolve_root(self, root: Path) -> Path:
        return root / "weizmann_horse_db" if (root / "weizmann_horse_db").is_dir() else root

    def _list_ids(self) -> list[str]:
        ids_file = self.root.parent / "ids.txt"
        if ids_file.is_file():
            return read_id_list(ids_file)
        return [p.stem for p in list_images(self.root / "figure_ground")]

    def files(self, sample_id: str) -> SampleFiles:
        return SampleFiles(
            image=self.root / "rgb" / f"{sample_id}.jpg",
            label=self.root / "figure_ground" / f"{sample_id}.jpg",
        )

    def read_sample_image(self, files: SampleFiles, sample_id: str) -> np.ndarray:
        image = read_image(files.image)
        assert files.label is not None
        h, w = image_size(files.label)
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        return image

    def image_size(self, sample_id: str) -> tuple[int, int]:
        return image_size(self.files(sample_id).label)

    def read_label_file(self, path: Path) -> np.ndarray:
        return read_binary_mask(path)

    def object_mask_from_label(self, label: np.ndarray) -> np.ndarray:
        return label.astype(np.uint8)
