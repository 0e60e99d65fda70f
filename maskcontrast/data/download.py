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

Library use::

    from maskcontrast.data.download import download_msrc, download_pet, download_voc
    voc_root = download_voc("/data/voc")      # -> /data/voc/VOCdevkit/VOC2012
    msrc_root = download_msrc("/data")        # -> /data/msrc_v2
    pet_root = download_pet("/data")          # -> /data/oxford-iiit-pet
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from maskcontrast.data.base import read_id_list
from maskcontrast.utils import atomic_write_bytes, setup_logging

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
    "extract_atomic",
    "install",
    "select_resources",
    "check_msrc_folder",
    "write_train_aug_list",
    "download_voc",
    "download_msrc",
    "download_pet",
    "DOWNLOADERS",
    "main",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "maskcontrast-download/1"


class DownloadError(RuntimeError):
    """A download, verification or extraction that failed. The message names the URL or file.

    ``urls`` holds the URLs that were tried when every mirror failed (empty otherwise)."""

    def __init__(self, message: str, urls: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.urls = tuple(urls)


class ChecksumMismatch(DownloadError):
    """A downloaded file whose digest differs from the expected one; it was moved to ``bad``."""

    def __init__(self, message: str, *, algorithm: str, expected: str, actual: str, bad: Path) -> None:
        super().__init__(message)
        self.algorithm, self.expected, self.actual, self.bad = algorithm, expected, actual, bad


@dataclass(frozen=True)
class Resource:
    """One archive and where its content goes.

    Attributes:
        name: a short name for messages and ``--only``.
        urls: mirrors, tried in order.
        filename: the archive's file name in the download folder.
        dest: the folder (relative to the install root) that receives ``subdir`` of the archive.
        subdir: the folder inside the archive whose content becomes ``dest`` ("" = the archive root).
        marker: a path relative to ``dest`` whose presence means "already installed".
        md5, sha256: expected digests (hex); both None means "no published checksum" (zip CRCs
            are still verified for zip archives).
        locate: when set, the folder of the archive that holds all these entries (searched a few
            levels deep) becomes ``dest`` instead of ``subdir``: for archives whose top folder
            name is not certain.
        check: called with the extracted folder before it is moved into place; raises
            :class:`DownloadError` when the content is not what was expected.
    """

    name: str
    urls: tuple[str, ...]
    filename: str
    dest: str
    subdir: str = ""
    marker: str = "."
    md5: str | None = None
    sha256: str | None = None
    locate: tuple[str, ...] = ()
    check: Callable[[Path], None] | None = field(default=None, compare=False, repr=False)

    def installed(self, root: Path) -> bool:
        return (root / self.dest / self.marker).exists()


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


# ------------------------------------------------------------------------------------------------
# Download
# ------------------------------------------------------------------------------------------------


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path: Path, md5: str | None, sha256: str | None) -> tuple[str, str, str] | None:
    """The first ``(algorithm, expected, actual)`` whose digest differs, None when all match."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if not expected:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            return algorithm, expected, actual
    return None


def _verify(path: Path, md5: str | None, sha256: str | None) -> None:
    """Raise ChecksumMismatch (after moving the file to ``<name>.bad``) when a digest differs."""
    wrong = _mismatch(path, md5, sha256)
    if wrong is None:
        return
    algorithm, expected, actual = wrong
    name = path.name.removesuffix(".part")
    bad = path.with_name(name + ".bad")
    os.replace(path, bad)
    raise ChecksumMismatch(
        f"{name}: {algorithm} checksum mismatch (expected {expected}, got {actual}); the file "
        f"({bad.stat().st_size} bytes) was moved to {bad} (delete it and run again to download afresh)",
        algorithm=algorithm,
        expected=expected,
        actual=actual,
        bad=bad,
    )


_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


class _Incomplete(ConnectionError):
    """The server closed the connection before the announced length."""


class _NotTheFile(Exception):
    """The server answered with a web page instead of the file (e.g. a retired URL redirected to a
    landing page): the next mirror is tried, nothing is written."""


def _content_range_start(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    if not value:
        return None, None
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value)
    if m:
        return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)
    m = re.match(r"bytes\s+\*/(\d+)", value)
    if m:
        return None, int(m.group(1))
    return None, None


def _stream_once(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """Download ``url`` into ``part``, continuing from its current size with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            _, total = _content_range_start(err.headers.get("Content-Range"))
            if total is None or total == offset:
                log.info("%s: already complete (%d bytes)", part.name, offset)
                return
            part.unlink()  # our partial file is longer than the remote file: start again
            raise _Incomplete(f"{url}: partial file larger than the remote file; restarting") from err
        raise
    with resp:
        status = resp.status
        content_type = (resp.headers.get("Content-Type") or "").lower()
        if content_type.startswith(("text/html", "application/xhtml")):
            raise _NotTheFile(f"{resp.geturl()}: the server sent a web page ({content_type}), not the file")
        if status == 206:
            start, total = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url}: server answered a range starting at {start}, asked for {offset}")
            mode = "ab"
        else:  # 200: the server ignored the Range header (or none was sent): start from zero
            if offset:
                log.info("%s: server does not support resuming; restarting from zero", url)
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with (
            open(part, mode) as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar,
        ):
            received = offset
            while True:
                chunk = resp.read(CHUNK_BYTES)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and received != total:
        raise _Incomplete(f"{url}: connection closed after {received} of {total} bytes")


def fetch(
    urls: str | Sequence[str],
    path: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff_s: float = 2.0,
    progress: bool | None = None,
) -> Path:
    """Download to ``path`` (streamed, resumable, verified) unless a verified copy is already there.

    The bytes go to ``<path>.part``; a dropped connection is retried ``retries`` times, each time
    resuming with an HTTP Range request; mirrors in ``urls`` are tried in order. The finished
    file is verified (``md5``/``sha256``) and only then renamed to ``path``. A ``<path>.bad``
    left by an earlier mismatch is used, without network, when it has the digest now expected
    (the way to accept a file whose digest you checked yourself).

    Raises:
        DownloadError: every mirror failed (the ``.part`` file is kept for a later resume; the
            error's ``urls`` are the URLs tried).
        ChecksumMismatch: a checksum differs (the file is moved to ``<path>.bad``).
    """
    path = Path(path)
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("fetch needs at least one URL")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if progress is None:
        progress = sys.stderr.isatty()
    if path.is_file():
        log.info("%s: found, verifying", path)
        _verify(path, md5, sha256)
        return path
    bad = path.with_name(path.name + ".bad")
    if (md5 or sha256) and bad.is_file() and _mismatch(bad, md5, sha256) is None:
        log.info("%s: the file moved aside earlier has the expected digest; using it", bad)
        os.replace(bad, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    errors: list[str] = []
    for url in url_list:
        finished = False
        for attempt in range(retries + 1):
            try:
                _stream_once(url, part, timeout, progress, desc=path.name)
                finished = True
                break
            except urllib.error.HTTPError as err:
                errors.append(f"{url}: HTTP {err.code} {err.reason}")
                if err.code < 500:
                    break  # 404 & co: this mirror will not get better
            except _NotTheFile as err:
                errors.append(str(err))
                break
            except _RETRYABLE as err:
                errors.append(f"{url}: {err}")
            if attempt < retries:
                wait = backoff_s * (2**attempt)
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", path.name, attempt + 1, errors[-1], wait)
                time.sleep(wait)
        if finished:
            _verify(part, md5, sha256)
            os.replace(part, path)
            log.info("%s: downloaded and verified", path)
            return path
    kept = f"; {part.stat().st_size} bytes kept in {part}, run again to resume" if part.exists() else ""
    raise DownloadError(f"could not download {path.name}: " + "; ".join(errors[-4:]) + kept, urls=url_list)


# ------------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------------


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts


def _extract_all(archive: Path, into: Path) -> None:
    """Extract a tar or zip archive into ``into``, refusing members that would escape it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()  # verifies every member's CRC
            if bad is not None:
                raise DownloadError(f"{archive}: member {bad} is corrupt (CRC mismatch); delete the file and retry")
            for info in zf.infolist():
                if not _safe_member_name(info.filename):
                    raise DownloadError(f"{archive}: unsafe member path {info.filename!r}; refusing to extract")
            zf.extractall(into)
        return
    try:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(into, filter="data")
            else:  # Python without extraction filters: check names, skip links and devices
                members = []
                for m in tf.getmembers():
                    if not _safe_member_name(m.name):
                        raise DownloadError(f"{archive}: unsafe member path {m.name!r}; refusing to extract")
                    if m.isfile() or m.isdir():
                        members.append(m)
                tf.extractall(into, members=members)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive}: cannot extract ({err}); delete the file and run again") from err


def _merge_plan(src: Path, dst: Path, plan: list[tuple[Path, Path]], conflicts: list[Path]) -> None:
    """Moves that bring ``src`` into the existing folder ``dst`` (recursing into shared folders)."""
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if not target.exists():
            plan.append((child, target))
        elif child.is_dir() and target.is_dir():
            _merge_plan(child, target, plan, conflicts)
        else:
            conflicts.append(target)


def _locate(top: Path, entries: Sequence[str], ignore: Sequence[str], max_depth: int = 3) -> Path | None:
    """The shallowest folder under ``top`` (``top`` included, ``max_depth`` levels down) that holds
    every name in ``entries``; None when there is none."""
    level = [top]
    for _ in range(max_depth + 1):
        for folder in level:
            if all((folder / e).exists() for e in entries):
                return folder
        level = sorted(c for f in level for c in f.iterdir() if c.is_dir() and c.name not in ignore)
    return None


def extract_atomic(
    archive: str | Path,
    dest: str | Path,
    *,
    subdir: str = "",
    marker: str = ".",
    ignore: Sequence[str] = ("__MACOSX",),
    locate: Sequence[str] = (),
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Extract ``subdir`` of ``archive`` so that it becomes ``dest``, all or nothing.

    The archive is extracted into a hidden temporary folder beside ``dest`` and renamed into
    place (one ``rename`` when ``dest`` does not exist yet). When ``dest`` exists (e.g. the VOC tar
    arrives after SegmentationClassAug was put inside ``VOC2012``), the new entries are renamed
    in one by one, the one holding ``marker`` last, and an entry that exists on both sides stops
    the extraction before anything is moved. A failure removes the temporary folder.

    Args:
        locate: instead of ``subdir``, use the folder of the archive that holds all these entries
            (the archive root or up to 3 levels down).
        check: called with the extracted folder before anything is moved into place; a
            :class:`DownloadError` it raises leaves ``dest`` untouched.

    Returns:
        ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        _extract_all(archive, tmp)
        if locate:
            found = _locate(tmp, locate, ignore)
            if found is None:
                top = sorted(p.name for p in tmp.iterdir() if p.name not in ignore)
                raise DownloadError(
                    f"{archive}: expected a folder holding {list(locate)} in the archive, found {top[:10]} at its top"
                )
            src = found
        else:
            src = tmp / subdir if subdir else tmp
        if not src.is_dir():
            top = sorted(p.name for p in tmp.iterdir() if p.name not in ignore)
            raise DownloadError(f"{archive}: expected a folder '{subdir}' in the archive, found {top[:10]}")
        for name in ignore:
            shutil.rmtree(src / name, ignore_errors=True)
        if check is not None:
            check(src)
        if not dest.exists():
            os.replace(src, dest)
        else:
            if not dest.is_dir():
                raise DownloadError(f"{dest} exists and is not a folder; move it away and run again")
            plan: list[tuple[Path, Path]] = []
            conflicts: list[Path] = []
            _merge_plan(src, dest, plan, conflicts)
            if conflicts:
                raise DownloadError(
                    f"cannot extract {archive.name} into {dest}: {len(conflicts)} entries exist already, e.g. "
                    f"{[str(c) for c in conflicts[:3]]}; move them away (or the whole {dest}) and run again"
                )
            first_part = PurePosixPath(marker).parts[0] if marker not in (".", "") else None
            plan.sort(key=lambda m: first_part is not None and m[1] == dest / first_part)
            for s, d in plan:
                os.replace(s, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


def install(
    resources: Sequence[Resource],
    root: str | Path,
    *,
    download_dir: str | Path | None = None,
    keep_archives: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
    backoff_s: float = 2.0,
    progress: bool | None = None,
) -> list[Resource]:
    """Download, verify and extract each resource that is not installed under ``root`` yet.

    Archives go to ``download_dir`` (default ``<root>/downloads``); an archive you put there
    yourself is verified and used instead of downloading. They are deleted after a successful
    extraction unless ``keep_archives``; one that cannot be extracted or fails its content check
    is moved to ``<archive>.rejected``, so the next run downloads afresh.

    Returns:
        The resources that were installed by this call (empty when everything was there).
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dl_dir = Path(download_dir).expanduser() if download_dir is not None else root / "downloads"
    done = []
    for res in resources:
        if res.installed(root):
            log.info("%s: already installed in %s", res.name, root / res.dest)
            continue
        archive = fetch(
            res.urls,
            dl_dir / res.filename,
            md5=res.md5,
            sha256=res.sha256,
            retries=retries,
            timeout=timeout,
            backoff_s=backoff_s,
            progress=progress,
        )
        if not (res.md5 or res.sha256):
            log.warning(
                "%s: no published checksum; verified the archive's own CRCs only. sha256 of this copy: %s",
                res.filename,
                file_digest(archive, "sha256"),
            )
        log.info("%s: extracting %s", res.name, archive.name)
        try:
            extract_atomic(
                archive, root / res.dest, subdir=res.subdir, marker=res.marker, locate=res.locate, check=res.check
            )
        except DownloadError as err:
            # a bad archive must not be found and used again by the next run: move it aside
            rejected = archive.with_name(archive.name + ".rejected")
            os.replace(archive, rejected)
            raise DownloadError(f"{err} (the archive was moved to {rejected}; the next run downloads afresh)") from err
        if not res.installed(root):
            raise DownloadError(f"{res.name}: extracted {archive.name} but {root / res.dest / res.marker} is missing")
        if not keep_archives:
            archive.unlink()
        done.append(res)
    return done


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


def select_resources(
    resources: Sequence[Resource],
    only: Sequence[str] | None = None,
    *,
    urls: Sequence[str] | None = None,
    md5: str | None = None,
) -> list[Resource]:
    """The resources named in ``only`` (None = all), with ``urls`` (mirrors, in order) and ``md5``
    replacing the defaults of the one archive they are meant for.

    Raises:
        ValueError: an unknown name in ``only``, a malformed ``md5``, or ``urls``/``md5`` given
            while more than one archive is chosen (name one with ``only``).
    """
    chosen = list(resources)
    names = [r.name for r in chosen]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown resource(s) {unknown}; choose from {names}")
        chosen = [r for r in chosen if r.name in only]
    if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"--md5 must be 32 hex digits, got {md5!r}")
    if urls or md5:
        if len(chosen) != 1:
            raise ValueError(
                f"--url/--md5 apply to one archive, but {[r.name for r in chosen]} are chosen; "
                f"name one with --only ({' or '.join(names)})"
            )
        res = chosen[0]
        chosen = [replace(res, urls=tuple(urls) if urls else res.urls, md5=md5.lower() if md5 else res.md5)]
    return chosen


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.data.download",
        description=(
            "Download and extract a dataset: streamed, resumable (run again after an interruption), "
            "checksum-verified, extracted atomically; a second run finds the data and does nothing."
        ),
    )
    p.add_argument(
        "dataset", choices=sorted(DOWNLOADERS), help="; ".join(f"{k}: {v[2]}" for k, v in sorted(DOWNLOADERS.items()))
    )
    p.add_argument("--root", type=Path, required=True, help="install folder (the data ends up in a folder inside it)")
    parts = sorted({f"{r.name}" for _, res, _ in DOWNLOADERS.values() for r in res if len(res) > 1})
    p.add_argument(
        "--only",
        action="append",
        choices=parts,
        help="install only this part (repeatable): voc2012 or aug for voc, images or annotations for pet",
    )
    p.add_argument(
        "--url",
        action="append",
        default=None,
        metavar="URL",
        help="download from this URL instead of the default mirrors (repeatable: tried in order); for a dataset "
        "of two archives, name the one with --only",
    )
    p.add_argument(
        "--md5", default=None, metavar="HEX", help="expected MD5 of the archive instead of the published one"
    )
    p.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="where archives are stored (default: ROOT/downloads); put an archive you already have here to skip "
        "its download (it is still verified)",
    )
    p.add_argument("--keep-archives", action="store_true", help="keep the archives after extraction")
    p.add_argument(
        "--aug-sha256", default=None, help="voc: expected SHA-256 of SegmentationClassAug.zip (none is published)"
    )
    p.add_argument("--retries", type=int, default=3, help="retries per mirror after a dropped connection (default: 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default: 60)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def mismatch_hint(err: ChecksumMismatch, accept: str) -> str:
    """How to accept a file that failed its checksum. ``accept`` shows how the expected digest is
    set, with ``{actual}`` for the digest: ``"--md5 {actual}"``, ``"MASKCONTRAST_MSRC_MD5={actual}"``."""
    return (
        f"If you trust this copy (e.g. the source publishes the digest {err.actual}), accept it with "
        f"{accept.format(actual=err.actual)}: the file moved aside is then used without downloading again. "
        f"Otherwise delete {err.bad} and run again."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 failed, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    install_fn, resources, _ = DOWNLOADERS[args.dataset]
    names = [r.name for r in resources]
    if args.only and len(resources) > 1 and set(args.only) - set(names):
        parser.error(f"--only {sorted(set(args.only) - set(names))}: {args.dataset} has the parts {names}")
    if args.only and len(resources) == 1:
        parser.error(f"--only: {args.dataset} is a single archive")
    if args.aug_sha256 and args.dataset != "voc":
        parser.error("--aug-sha256 is for voc")
    kwargs: dict = {"urls": args.url, "md5": args.md5}
    if len(resources) > 1:
        kwargs["only"] = args.only
    if args.dataset == "voc":
        kwargs["aug_sha256"] = args.aug_sha256
    try:
        select_resources(resources, kwargs.get("only"), urls=args.url, md5=args.md5)
    except ValueError as err:
        parser.error(str(err))
    try:
        out = install_fn(
            args.root,
            **kwargs,
            download_dir=args.download_dir,
            keep_archives=args.keep_archives,
            retries=args.retries,
            timeout=args.timeout,
            progress=False if args.no_progress else None,
        )
    except ChecksumMismatch as err:
        flag = "--aug-sha256" if err.algorithm == "sha256" else "--md5"
        log.error("%s\n%s", err, mismatch_hint(err, flag + " {actual}"))
        return 1
    except DownloadError as err:
        log.error("%s", err)
        return 1
    print(f"{args.dataset} is ready in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
