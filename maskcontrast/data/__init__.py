"""Datasets: one common record (:class:`Sample`) and a reader per dataset.

Example::

    from maskcontrast.data import build_dataset
    ds = build_dataset("msrc", "/data/msrc_v2")
    s = ds[0]          # Sample(id, image HxWx3 uint8, label HxW int64 (255 = ignore), mask)
    ds.info.classes    # class names; ds.info.num_classes, ds.info.palette
"""

from maskcontrast.data.base import DATASETS, SampleFiles, SegmentationDataset, build_dataset, register_dataset
from maskcontrast.data.coco128 import COCO128Seg
from maskcontrast.data.davis import DAVIS2016
from maskcontrast.data.folders import ImageFolder, SaliencyFolder
from maskcontrast.data.io import list_images, read_binary_mask, read_image, read_index_png, write_mask
from maskcontrast.data.msrc import MSRCv2
from maskcontrast.data.paths import data_root, shared_dataset_root
from maskcontrast.data.pet import OxfordIIITPet
from maskcontrast.data.record import IGNORE_INDEX, DataError, DatasetInfo, Sample
from maskcontrast.data.voc import VOCSegmentation
from maskcontrast.data.weizmann import WeizmannHorse

__all__ = [
    "DATASETS",
    "SampleFiles",
    "SegmentationDataset",
    "build_dataset",
    "register_dataset",
    "COCO128Seg",
    "DAVIS2016",
    "ImageFolder",
    "SaliencyFolder",
    "MSRCv2",
    "OxfordIIITPet",
    "VOCSegmentation",
    "WeizmannHorse",
    "list_images",
    "read_binary_mask",
    "read_image",
    "read_index_png",
    "write_mask",
    "data_root",
    "shared_dataset_root",
    "IGNORE_INDEX",
    "DataError",
    "DatasetInfo",
    "Sample",
]
