"""Download datasets: streamed, resumable, checksum-verified, extracted atomically, idempotent.

``python -m maskcontrast.data.download DATASET --root DIR`` with DATASET one of

* ``voc``: the PASCAL VOC 2012 trainval tar (1.9 GB; MD5 as published with torchvision's
  ``VOCSegmentation``), extracted to ``DIR/VOCdevkit/VOC2012``, and ``SegmentationClassAug.zip``
  (the SBD-augmented labels of 12,031 images, in DrSleep's widely used Dropbox release), extracted
  to ``DIR/VOCdevkit/VOC2012/SegmentationClassAug``; no authoritative checksum is published for
  it, so only the zip's own CRCs are verified unless you pin one (``--aug-sha256``). It writes
  ``ImageSets/Segmentation/train_aug.txt`` (the 10,582 ids of SegmentationClassAug that are not in
  ``val.txt``) when it is missing;
* ``msrc``: the official MSRC-v2 release ``msrc_objcategimagedatabase_v2.zip`` (591 images,
  colour-coded ground truth), extracted to ``DIR/msrc_v2`` (``Images/*.bmp``,
  ``GroundTruth/*_GT.bmp``), so that ``MASKCONTRAST_DATA=DIR`` finds it like the shared copy;
  every image must have its ``_GT.bmp``, and the official archive must hold 591 images;
* ``pet``: the Oxford-IIIT Pet ``images.tar.gz`` and ``annotations.tar.gz`` (torchvision's MD5s),
  extracted to ``DIR/oxford-iiit-pet/{images,annotations}`` (torchvision's ``OxfordIIITPet``
  layout, which the ``pet`` reader reads: ``--root DIR`` or ``DIR/oxford-iiit-pet``).

``--url URL`` (repeatable: mirrors tried in order, replacing the defaults) and ``--md5 HEX``
replace the sources and the digest of one archive (with ``--only PART`` where a dataset has two).

How each step is safe to interrupt:

* download: bytes stream (1 MiB chunks) into ``<file>.part``; a dropped connection is retried,
  and a later call resumes with an HTTP ``Range`` request where it stopped;
* verification: MD5/SHA-256 of the whole file before it is renamed to its final name; a file
  that fails is moved aside to ``<file>.bad`` and the error (:class:`ChecksumMismatch`) names
  both digests; a later call that expects the digest of that ``.bad`` file uses it instead of
  downloading again;
* extraction: into a hidden temporary folder beside the target, the content checked there, then
  renamed into place; a failure leaves nothing half-extracted under the target;
* a second call finds the extracted data (its marker folder) and does nothing, without network.

The package, by job: :mod:`~maskcontrast.data.download.fetching` (download and verify one file),
:mod:`~maskcontrast.data.download.archives` (extract an archive atomically),
:mod:`~maskcontrast.data.download.resources` (archives and installing them),
:mod:`~maskcontrast.data.download.datasets` (the per-dataset tables and installers) and
:mod:`~maskcontrast.data.download.cli` (the command line). This module is its public API.

Library use::

    from maskcontrast.data.download import download_msrc, download_pet, download_voc
    voc_root = download_voc("/data/voc")      # -> /data/voc/VOCdevkit/VOC2012
    msrc_root = download_msrc("/data")        # -> /data/msrc_v2
    pet_root = download_pet("/data")          # -> /data/oxford-iiit-pet
"""

from maskcontrast.data.download.archives import extract_atomic
from maskcontrast.data.download.cli import build_parser, main
from maskcontrast.data.download.datasets import (
    DOWNLOADERS,
    MSRC_MD5,
    MSRC_OFFICIAL_IMAGES,
    MSRC_RESOURCES,
    PET_RESOURCES,
    VOC_RESOURCES,
    check_msrc_folder,
    download_msrc,
    download_pet,
    download_voc,
    write_train_aug_list,
)
from maskcontrast.data.download.fetching import ChecksumMismatch, DownloadError, fetch, file_digest, mismatch_hint
from maskcontrast.data.download.resources import Resource, install, select_resources

__all__ = [
    "DownloadError",
    "ChecksumMismatch",
    "Resource",
    "VOC_RESOURCES",
    "MSRC_RESOURCES",
    "MSRC_MD5",
    "MSRC_OFFICIAL_IMAGES",
    "PET_RESOURCES",
    "file_digest",
    "fetch",
    "mismatch_hint",
    "extract_atomic",
    "install",
    "select_resources",
    "check_msrc_folder",
    "write_train_aug_list",
    "download_voc",
    "download_msrc",
    "download_pet",
    "DOWNLOADERS",
    "build_parser",
    "main",
]
