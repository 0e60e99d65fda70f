"""The datasets that can be downloaded: their archives (mirrors, digests, layout), the checks of
their extracted content, and one installer each (:func:`download_voc`, :func:`download_msrc`,
:func:`download_pet`), listed in :data:`DOWNLOADERS`.

Example::

    voc_root = download_voc("/data/voc")      # -> /data/voc/VOCdevkit/VOC2012
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from maskcontrast.data.base import read_id_list
from maskcontrast.data.download.fetching import DownloadError
from maskcontrast.data.download.resources import Resource, install, select_resources
from maskcontrast.utils import atomic_write_bytes

__all__ = [
    "VOC_RESOURCES",
    "MSRC_RESOURCES",
    "MSRC_MD5",
    "MSRC_OFFICIAL_IMAGES",
    "PET_RESOURCES",
    "check_msrc_folder",
    "write_train_aug_list",
    "download_voc",
    "download_msrc",
    "download_pet",
    "DOWNLOADERS",
]

log = logging.getLogger(__name__)


#: PASCAL VOC 2012 trainval (MD5 as listed in torchvision's VOCSegmentation) and the SBD
#: augmented labels (SegmentationClassAug.zip, DrSleep's release; no published checksum).
VOC_RESOURCES: tuple[Resource, ...] = (
    Resource(
        name="voc2012",
        urls=(
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
        ),
        filename="VOCtrainval_11-May-2012.tar",
        dest="VOCdevkit/VOC2012",
        subdir="VOCdevkit/VOC2012",
        marker="JPEGImages",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
    ),
    Resource(
        name="aug",
        urls=("https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",),
        filename="SegmentationClassAug.zip",
        dest="VOCdevkit/VOC2012/SegmentationClassAug",
        subdir="SegmentationClassAug",
        marker=".",
    ),
)


#: the MD5 of the official ``msrc_objcategimagedatabase_v2.zip`` (as a public dataset loader pins it;
#: the only published value we found) and the number of images it holds
MSRC_MD5 = "8fcd292c7f1e69f91a2ef513746bd52c"
MSRC_OFFICIAL_IMAGES = 591

#: MSRC-v2, official release: two mirrors of the same zip, tried in order. The folder holding
#: ``Images/`` and ``GroundTruth/`` becomes ``<root>/msrc_v2``, whatever its name in the zip.
MSRC_RESOURCES: tuple[Resource, ...] = (
    Resource(
        name="msrc",
        urls=(
            "https://download.microsoft.com/download/3/3/9/339D8A24-47D7-412F-A1E8-1A415BC48A15/"
            "msrc_objcategimagedatabase_v2.zip",
            "http://research.microsoft.com/en-us/um/people/antcrim/data_objrec/msrc_objcategimagedatabase_v2.zip",
        ),
        filename="msrc_objcategimagedatabase_v2.zip",
        dest="msrc_v2",
        marker="Images",
        md5=MSRC_MD5,
        locate=("Images", "GroundTruth"),
    ),
)

#: Oxford-IIIT Pet (torchvision's URLs and MD5s), into torchvision's ``oxford-iiit-pet/`` layout.
PET_RESOURCES: tuple[Resource, ...] = (
    Resource(
        name="images",
        urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",),
        filename="images.tar.gz",
        dest="oxford-iiit-pet/images",
        subdir="images",
        md5="5c4f3ee8e5d25df40f4fd59a7f44e54c",
    ),
    Resource(
        name="annotations",
        urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",),
        filename="annotations.tar.gz",
        dest="oxford-iiit-pet/annotations",
        subdir="annotations",
        marker="trimaps",
        md5="95a8c909bbe2e81eed6a22bccdf3f68f",
    ),
)


def write_train_aug_list(voc_root: str | Path, overwrite: bool = False) -> Path | None:
    """Write ``ImageSets/Segmentation/train_aug.txt``: the ids of ``SegmentationClassAug`` minus
    those of ``val.txt`` (10,582 for the standard release). Returns the path, or None when the
    inputs are missing. An existing list is kept unless ``overwrite``."""
    voc_root = Path(voc_root)
    out = voc_root / "ImageSets" / "Segmentation" / "train_aug.txt"
    aug = voc_root / "SegmentationClassAug"
    val = voc_root / "ImageSets" / "Segmentation" / "val.txt"
    if out.is_file() and not overwrite:
        return out
    if not aug.is_dir() or not val.is_file():
        return None
    val_ids = set(read_id_list(val))
    ids = sorted(p.stem for p in aug.glob("*.png") if not p.name.startswith(".") and p.stem not in val_ids)
    atomic_write_bytes(out, ("\n".join(ids) + "\n").encode("utf-8"))
    log.info("wrote %s (%d ids)", out, len(ids))
    return out


def download_voc(
    root: str | Path,
    *,
    only: Sequence[str] | None = None,
    resources: Sequence[Resource] = VOC_RESOURCES,
    aug_sha256: str | None = None,
    urls: Sequence[str] | None = None,
    md5: str | None = None,
    **install_kwargs,
) -> Path:
    """Install PASCAL VOC 2012 trainval and SegmentationClassAug under ``root``; idempotent.

    Args:
        root: install folder; the data ends up in ``<root>/VOCdevkit/VOC2012``.
        only: names of the resources to install (``voc2012``, ``aug``); None = all.
        resources: the archives (tests pass loopback URLs here).
        aug_sha256: pin the SHA-256 of SegmentationClassAug.zip (no official value exists).
        urls, md5: mirrors and digest of the one archive named in ``only``.
        install_kwargs: passed to :func:`install` (``download_dir``, ``keep_archives``, ``retries``, ...).

    Returns:
        The VOC2012 folder, ready for ``build_dataset("voc", ...)``.
    """
    chosen = select_resources(resources, only, urls=urls, md5=md5)
    if aug_sha256:
        chosen = [replace(r, sha256=aug_sha256) if r.name == "aug" else r for r in chosen]
    root = Path(root).expanduser()
    install(chosen, root, **install_kwargs)
    voc_root = root / "VOCdevkit" / "VOC2012"
    write_train_aug_list(voc_root)
    return voc_root


def check_msrc_folder(folder: Path, expected_images: int | None = None) -> None:
    """Check an extracted MSRC-v2 release: every ``Images/<id>.bmp`` has its
    ``GroundTruth/<id>_GT.bmp``, and there are ``expected_images`` images (when given).

    Raises:
        DownloadError: naming the first missing ground truths, or the count found.
    """
    images = sorted(p.stem for p in (folder / "Images").glob("*.bmp") if not p.name.startswith("."))
    if not images:
        raise DownloadError(f"MSRC-v2: no Images/*.bmp in the archive (found {sorted(os.listdir(folder))[:10]})")
    missing = [i for i in images if not (folder / "GroundTruth" / f"{i}_GT.bmp").is_file()]
    if missing:
        raise DownloadError(
            f"MSRC-v2: {len(missing)} of {len(images)} images have no GroundTruth/<id>_GT.bmp in the archive, "
            f"e.g. {missing[:3]}; the archive is incomplete, get another copy"
        )
    if expected_images is not None and len(images) != expected_images:
        raise DownloadError(
            f"MSRC-v2: the archive holds {len(images)} images, the official release {expected_images}; "
            "get another copy (an archive you pass with its own --md5 may hold fewer)"
        )


def download_msrc(
    root: str | Path,
    *,
    urls: Sequence[str] | None = None,
    md5: str | None = None,
    expected_images: int | None = None,
    resources: Sequence[Resource] = MSRC_RESOURCES,
    **install_kwargs,
) -> Path:
    """Install the official MSRC-v2 release under ``root``; idempotent.

    Args:
        root: install folder; the data ends up in ``<root>/msrc_v2`` (``Images/*.bmp``,
            ``GroundTruth/*_GT.bmp``), so ``MASKCONTRAST_DATA=<root>`` finds it.
        urls: mirrors to try in order instead of the official ones.
        md5: the archive's digest instead of :data:`MSRC_MD5`.
        expected_images: the number of images the archive must hold; None = 591
            (:data:`MSRC_OFFICIAL_IMAGES`) when the digest is the official one, no count otherwise.
        install_kwargs: passed to :func:`install`.

    Returns:
        The MSRC-v2 folder, ready for ``build_dataset("msrc", ...)``.
    """
    (res,) = select_resources(resources, urls=urls, md5=md5)
    if expected_images is None and res.md5 == MSRC_MD5:
        expected_images = MSRC_OFFICIAL_IMAGES
    res = replace(res, check=lambda folder: check_msrc_folder(folder, expected_images))
    root = Path(root).expanduser()
    install([res], root, **install_kwargs)
    return root / res.dest


def _check_pet_part(folder: Path, pattern: str, what: str) -> None:
    if not any(folder.glob(pattern)):
        raise DownloadError(f"Oxford-IIIT Pet: no {what} ({pattern}) in the extracted {folder.name}/ folder")


def download_pet(
    root: str | Path,
    *,
    only: Sequence[str] | None = None,
    urls: Sequence[str] | None = None,
    md5: str | None = None,
    resources: Sequence[Resource] = PET_RESOURCES,
    **install_kwargs,
) -> Path:
    """Install Oxford-IIIT Pet (images and trimaps) under ``root``; idempotent.

    Args:
        root: install folder; the data ends up in ``<root>/oxford-iiit-pet/{images,annotations}``,
            torchvision's ``OxfordIIITPet`` layout (``build_dataset("pet", root)`` finds it).
        only: ``images`` and/or ``annotations``; None = both.
        urls, md5: mirrors and digest of the one archive named in ``only``.
        install_kwargs: passed to :func:`install`.

    Returns:
        The ``oxford-iiit-pet`` folder.
    """
    checks = {"images": ("*.jpg", "images"), "annotations": ("trimaps/*.png", "trimaps")}
    chosen = [
        replace(r, check=lambda f, c=checks[r.name]: _check_pet_part(f, *c)) if r.name in checks else r
        for r in select_resources(resources, only, urls=urls, md5=md5)
    ]
    root = Path(root).expanduser()
    install(chosen, root, **install_kwargs)
    return root / "oxford-iiit-pet"


#: dataset name -> (installer, its archives, one line for --help)
DOWNLOADERS: dict[str, tuple[Callable[..., Path], tuple[Resource, ...], str]] = {
    "voc": (download_voc, VOC_RESOURCES, "PASCAL VOC 2012 trainval + SegmentationClassAug (ROOT/VOCdevkit/VOC2012)"),
    "msrc": (download_msrc, MSRC_RESOURCES, "MSRC-v2, the official release (ROOT/msrc_v2)"),
    "pet": (download_pet, PET_RESOURCES, "Oxford-IIIT Pet images + trimaps (ROOT/oxford-iiit-pet)"),
}
