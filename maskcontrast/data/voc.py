"""PASCAL VOC 2012 segmentation, with the SBD augmented labels (``SegmentationClassAug``).

Layout (``root`` is ``VOC2012``; ``VOCdevkit`` or its parent are accepted too)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png            palette PNG: 0..20, 255 = border/ignore
    SegmentationClassAug/<id>.png         (optional) SBD labels, same values
    ImageSets/Segmentation/{train,val,trainval,train_aug}.txt
    saliency_unsupervised_model/<id>.png  (optional) object masks of the official release
    saliency_supervised_model/<id>.png

``train_aug`` (10,582 ids) reads ``SegmentationClassAug``; the other splits read
``SegmentationClass`` and fall back to ``SegmentationClassAug`` for ids it lacks.
``masks="unsupervised"`` / ``"supervised"`` picks the official saliency folders.
"""

from __future__ import annotations

from pathlib import Path

from maskcontrast.data.base import SampleFiles, SegmentationDataset, read_id_list, register_dataset
from maskcontrast.data.record import DatasetInfo, default_palette

__all__ = ["VOCSegmentation", "VOC_CLASSES"]

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

SALIENCY_FOLDERS = {"unsupervised": "saliency_unsupervised_model", "supervised": "saliency_supervised_model"}


@register_dataset("voc")
class VOCSegmentation(SegmentationDataset):
    info = DatasetInfo("voc", VOC_CLASSES, tuple(default_palette(21)))
    splits = ("train", "val", "trainval", "train_aug")
    default_split = "val"

    def _resolve_root(self, root: Path) -> Path:
        for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (cand / "JPEGImages").is_dir() or (cand / "ImageSets").is_dir():
                return cand
        return root

    def _resolve_mask_dir(self, masks: str | Path) -> Path:
        if str(masks) in SALIENCY_FOLDERS:
            return self.root / SALIENCY_FOLDERS[str(masks)]
        return Path(masks).expanduser()

    def split_file(self) -> Path:
        seg = self.root / "ImageSets" / "Segmentation"
        if self.split == "train_aug":
            for cand in (
                seg / "train_aug.txt",
                self.root / "ImageSets" / "SegmentationAug" / "train_aug.txt",
                self.root / "train_aug.txt",
            ):
                if cand.is_file():
                    return cand
        return seg / f"{self.split}.txt"

    def _list_ids(self) -> list[str]:
        return read_id_list(self.split_file())

    def files(self, sample_id: str) -> SampleFiles:
        plain = self.root / "SegmentationClass" / f"{sample_id}.png"
        aug = self.root / "SegmentationClassAug" / f"{sample_id}.png"
        if self.split == "train_aug":
            label = aug if aug.is_file() or not plain.is_file() else plain
        else:
            label = plain if plain.is_file() or not aug.is_file() else aug
        return SampleFiles(image=self.root / "JPEGImages" / f"{sample_id}.jpg", label=label)
