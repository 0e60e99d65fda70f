"""PASCAL VOC 2012: the real split lists, and a tiny VOC-layout tree built from real MSRC photos.

There are no VOC images in the shared data, so the tree below reuses MSRC images and their
ground truth (MSRC classes mapped to the VOC classes they correspond to) under real VOC ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import DataError, VOCSegmentation, build_dataset, read_index_png, write_mask
from maskcontrast.data.base import read_id_list
from maskcontrast.data.voc import VOC_CLASSES

pytestmark = pytest.mark.data

# MSRC raw class -> VOC class index (unlisted MSRC classes are VOC background, void is ignore)
MSRC_TO_VOC = {0: 255, 4: 10, 5: 13, 6: 17, 9: 1, 11: 15, 12: 7, 13: 2, 16: 3, 18: 9, 20: 8, 21: 12, 22: 15, 23: 4}
MSRC_IDS = [
    "1_8_s",
    "4_1_s",
    "7_1_s",
    "9_1_s",
    "12_2_s",
    "15_1_s",
    "16_1_s",
    "1_23_s",
]  # cow, plane, car, sheep, bird, cat, dog+boat, horse


def test_real_split_lists(shared_root):
    seg = shared_root("voc_splits") / "ImageSets" / "Segmentation"
    val = read_id_list(seg / "val.txt")
    train_aug = read_id_list(seg / "train_aug.txt")
    assert len(val) == 1449 and len(set(val)) == 1449
    assert val[:2] == ["2007_000033", "2007_000042"]
    assert len(train_aug) == 10582 and len(set(train_aug)) == 10582
    assert set(val).isdisjoint(train_aug)
    assert all(len(i) == 11 and i[4] == "_" for i in val[:50] + train_aug[:50])
    # the reader finds the lists (and says which image is missing in this image-less copy)
    ds = build_dataset("voc", shared_root("voc_splits"), "train_aug")
    assert ds.ids == train_aug and ds.info.classes == VOC_CLASSES
    assert len(build_dataset("voc", shared_root("voc_splits"))) == 1449  # val is the default
    with pytest.raises(DataError, match=r"JPEGImages/2007_000033\.jpg: file not found"):
        build_dataset("voc", shared_root("voc_splits"), "val").load("2007_000033")
    with pytest.raises(DataError, match=r"split list not found: .*ImageSets/Segmentation/train\.txt"):
        build_dataset("voc", shared_root("voc_splits"), "train")


def _voc_label(msrc_gt: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for raw, voc in MSRC_TO_VOC.items():
        lut[raw] = voc
    return lut[msrc_gt]


def build_tiny_voc(shared_root, base: Path) -> tuple[Path, list[str], list[str]]:
    """``base/VOCdevkit/VOC2012`` with 4 val and 4 train_aug ids (real ids, MSRC pixels)."""
    msrc = shared_root("msrc")
    seg = shared_root("voc_splits") / "ImageSets" / "Segmentation"
    val_ids = read_id_list(seg / "val.txt")[:4]
    aug_ids = read_id_list(seg / "train_aug.txt")[:4]
    root = base / "VOCdevkit" / "VOC2012"
    for d in (
        "JPEGImages",
        "SegmentationClass",
        "SegmentationClassAug",
        "ImageSets/Segmentation",
        "saliency_unsupervised_model",
    ):
        (root / d).mkdir(parents=True)
    palette = VOCSegmentation.info.palette_array()
    for voc_id, msrc_id in zip(val_ids + aug_ids, MSRC_IDS):
        Image.open(msrc / "Images" / f"{msrc_id}.png").convert("RGB").save(root / "JPEGImages" / f"{voc_id}.jpg")
        label = _voc_label(read_index_png(msrc / "GroundTruth" / f"{msrc_id}_GT.png"))
        if voc_id in val_ids:
            write_mask(root / "SegmentationClass" / f"{voc_id}.png", label, palette=palette)
        # SegmentationClassAug holds train_aug AND val ids; for val its copy is all background here,
        # so the test can tell which of the two folders a split reads
        aug = label if voc_id in aug_ids else np.zeros_like(label)
        write_mask(root / "SegmentationClassAug" / f"{voc_id}.png", aug, palette=palette)
        sal = ((label > 0) & (label < 255)).astype(np.uint8) * 255
        write_mask(root / "saliency_unsupervised_model" / f"{voc_id}.png", sal)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val_ids) + "\n")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(aug_ids) + "\n")
    return root, val_ids, aug_ids


def test_tiny_voc_tree(shared_root, tmp_path):
    root, val_ids, aug_ids = build_tiny_voc(shared_root, tmp_path)
    for given in (tmp_path, tmp_path / "VOCdevkit", root):  # the usual parents are accepted
        assert build_dataset("voc", given).root == root
    val = build_dataset("voc", tmp_path, "val")
    assert val.ids == val_ids and val.info.num_classes == 21
    for sid in val_ids:
        s = val.load(sid)
        assert s.image.dtype == np.uint8 and s.label.shape == s.image.shape[:2]
        assert s.mask is None
        assert np.array_equal(s.label, read_index_png(root / "SegmentationClass" / f"{sid}.png"))
    # the palette PNG reads as indices, not colours; the cow image really holds cows (VOC 10)
    cow = val.load(val_ids[0]).label
    assert set(np.unique(cow).tolist()) <= set(range(21)) | {255}
    assert 10 in cow

    train_aug = build_dataset("voc", tmp_path, "train_aug")
    assert train_aug.ids == aug_ids
    for sid in aug_ids:
        s = train_aug.load(sid)
        assert s.label.max() > 0  # the real label, from SegmentationClassAug

    with_masks = build_dataset("voc", tmp_path, "val", masks="unsupervised")
    s = with_masks.load(val_ids[0])
    assert s.mask is not None and set(np.unique(s.mask).tolist()) <= {0, 1}
    assert np.array_equal(s.mask, ((s.label > 0) & (s.label < 255)).astype(np.uint8))
    with pytest.raises(DataError, match="saliency_supervised_model"):
        build_dataset("voc", tmp_path, "val", masks="supervised")


def test_tiny_voc_errors_name_the_file(shared_root, tmp_path):
    root, val_ids, _ = build_tiny_voc(shared_root, tmp_path)
    lab = read_index_png(root / "SegmentationClass" / f"{val_ids[1]}.png")
    lab[0, 0] = 42  # a value that is neither a class nor ignore
    write_mask(root / "SegmentationClass" / f"{val_ids[1]}.png", lab)
    img = Image.open(root / "JPEGImages" / f"{val_ids[2]}.jpg")
    img.resize((img.width // 2, img.height // 2)).save(root / "JPEGImages" / f"{val_ids[2]}.jpg")
    ds = build_dataset("voc", root, "val")
    with pytest.raises(DataError, match=rf"{val_ids[1]}\.png: label values \[42\] are outside 0..20"):
        ds.load(val_ids[1])
    with pytest.raises(DataError, match=rf"SegmentationClass/{val_ids[2]}\.png: size .* differs from its image"):
        ds.load(val_ids[2])
