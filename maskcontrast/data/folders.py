"""Generic folders: a saliency set (``images/`` + ``masks/``) and a plain image folder.

``saliency_folder`` (SOD, and any user set)::

    images/<stem>.<jpg|png|...>
    masks/<stem>.<png|jpg|bmp>     binary: 0/255, 0/1, mode 1 or JPEG (threshold 127)

Labels: background 0, foreground 1; the object mask is the same.

``image_folder``: every image under ``root`` (recursively); ids are the relative paths without
extension. No labels. Object masks come from ``masks=DIR`` (``<DIR>/<id>.png``), e.g. the
output of ``python -m saliency.generate``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from maskcontrast.data.base import SampleFiles, SegmentationDataset, register_dataset
from maskcontrast.data.io import list_images, read_binary_mask
from maskcontrast.data.record import DatasetInfo

__all__ = ["SaliencyFolder", "ImageFolder"]

_MASK_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif")


@register_dataset("saliency_folder")
class SaliencyFolder(SegmentationDataset):
    info = DatasetInfo("saliency_folder", ("background", "foreground"), ((0, 0, 0), (255, 0, 0)))

    @cached_property
    def _images(self) -> dict[str, Path]:
        return {p.stem: p for p in list_images(self.root / "images")}

    def _list_ids(self) -> list[str]:
        return sorted(self._images)

    def files(self, sample_id: str) -> SampleFiles:
        label = self.root / "masks" / f"{sample_id}.png"
        if not label.is_file():
            for ext in _MASK_EXTS:
                if (self.root / "masks" / f"{sample_id}{ext}").is_file():
                    label = self.root / "masks" / f"{sample_id}{ext}"
                    break
        image = self._images.get(sample_id, self.root / "images" / f"{sample_id}.jpg")
        return SampleFiles(image=image, label=label)

    def read_label_file(self, path: Path) -> np.ndarray:
        return read_binary_mask(path)

    def object_mask_from_label(self, label: np.ndarray) -> np.ndarray:
        return label.astype(np.uint8)


@register_dataset("image_folder")
class ImageFolder(SegmentationDataset):
    info = DatasetInfo("image_folder", (), (), background=None)

    @cached_property
    def _images(self) -> dict[str, Path]:
        return {p.relative_to(self.root).with_suffix("").as_posix(): p for p in list_images(self.root, recursive=True)}

    def _list_ids(self) -> list[str]:
        return sorted(self._images)

    def files(self, sample_id: str) -> SampleFiles:
        return SampleFiles(image=self._images[sample_id])
