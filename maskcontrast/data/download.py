"""Download datasets: streamed, resumable, checksum-verified, extracted atomically, idempotent.

``python -m maskcontrast.data.download voc --root DIR`` fetches

* the PASCAL VOC 2012 trainval tar (1.9 GB; MD5 as published with torchvision's ``VOCSegmentation``),
  extracted to ``DIR/VOCdevkit/VOC2012``;
* ``SegmentationClassAug.zip`` (the SBD-augmented labels of 12,031 images, in DrSleep's widely
  used Dropbox release), extracted to ``DIR/VOCdevkit/VOC2012/SegmentationClassAug``; no
  authoritative checksum is published for it, so only the zip's own CRCs are verified unless
  you pin one (``--aug-sha256``);

and writes ``ImageSets/Segmentation/train_aug.txt`` (the 10,582 ids of SegmentationClassAug that
are not in ``val.txt``) when it is missing.

How each step is safe to interrupt:

* download: bytes stream (1 MiB chunks) into ``<file>.part``; a dropped connection is retried,
  and a later call resumes with an HTTP ``Range`` request where it stopped;
* verification: MD5/SHA-256 of the whole file before it is renamed to its final name; a file
  that fails is moved aside to ``<file>.bad`` and the error says so;
* extraction: into a hidden temporary folder beside the target, then renamed into place; a
  failure leaves nothing half-extracted under the target;
* a second call finds the extracted data (its marker folder) and does nothing, without network.

Library use::

    from maskcontrast.data.download import download_voc
    voc_root = download_voc("/data/voc")    # -> /data/voc/VOCdevkit/VOC2012
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
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from maskcontrast.data.base import read_id_list
from maskcontrast.utils import atomic_write_bytes, setup_logging

__all__ = [
    "DownloadError",
    "Resource",
    "VOC_RESOURCES",
    "file_digest",
    "fetch",
    "extract_atomic",
    "install",
    "write_train_aug_list",
    "download_voc",
    "main",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "maskcontrast-download/1"


class DownloadError(RuntimeError):
    """A download, verification or extraction that failed. The message names the URL or file."""


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
    """

    name: str
    urls: tuple[str, ...]
    filename: str
    dest: str
    subdir: str = ""
    marker: str = "."
    md5: str | None = None
    sha256: str | None = None

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


def _verify(path: Path, md5: str | None, sha256: str | None) -> None:
    """Raise DownloadError (after moving the file to ``<name>.bad``) when a digest differs."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if not expected:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            name = path.name.removesuffix(".part")
            bad = path.with_name(name + ".bad")
            os.replace(path, bad)
            raise DownloadError(
                f"{name}: {algorithm} checksum mismatch (expected {expected}, got {actual}); the file was "
                f"moved to {bad} (delete it and run again to download afresh)"
            )


_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


class _Incomplete(ConnectionError):
    """The server closed the connection before the announced length."""


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
    file is verified (``md5``/``sha256``) and only then renamed to ``path``.

    Raises:
        DownloadError: every mirror failed (the ``.part`` file is kept for a later resume), or a
            checksum differs (the file is moved to ``<path>.bad``).
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
    raise DownloadError(f"could not download {path.name}: " + "; ".join(errors[-4:]) + kept)


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


def extract_atomic(
    archive: str | Path, dest: str | Path, *, subdir: str = "", marker: str = ".", ignore: Sequence[str] = ("__MACOSX",)
) -> Path:
    """Extract ``subdir`` of ``archive`` so that it becomes ``dest``, all or nothing.

    The archive is extracted into a hidden temporary folder beside ``dest`` and renamed into
    place (one ``rename`` when ``dest`` does not exist yet). When ``dest`` exists (e.g. the VOC tar
    arrives after SegmentationClassAug was put inside ``VOC2012``), the new entries are renamed
    in one by one, the one holding ``marker`` last, and an entry that exists on both sides stops
    the extraction before anything is moved. A failure removes the temporary folder.

    Returns:
        ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        _extract_all(archive, tmp)
        src = tmp / subdir if subdir else tmp
        if not src.is_dir():
            top = sorted(p.name for p in tmp.iterdir() if p.name not in ignore)
            raise DownloadError(f"{archive}: expected a folder '{subdir}' in the archive, found {top[:10]}")
        for name in ignore:
            shutil.rmtree(src / name, ignore_errors=True)
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
    extraction unless ``keep_archives``.

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
        extract_atomic(archive, root / res.dest, subdir=res.subdir, marker=res.marker)
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


def download_voc(
    root: str | Path,
    *,
    only: Sequence[str] | None = None,
    resources: Sequence[Resource] = VOC_RESOURCES,
    aug_sha256: str | None = None,
    **install_kwargs,
) -> Path:
    """Install PASCAL VOC 2012 trainval and SegmentationClassAug under ``root``; idempotent.

    Args:
        root: install folder; the data ends up in ``<root>/VOCdevkit/VOC2012``.
        only: names of the resources to install (``voc2012``, ``aug``); None = all.
        resources: the archives (tests pass loopback URLs here).
        aug_sha256: pin the SHA-256 of SegmentationClassAug.zip (no official value exists).
        install_kwargs: passed to :func:`install` (``download_dir``, ``keep_archives``, ``retries``, ...).

    Returns:
        The VOC2012 folder, ready for ``build_dataset("voc", ...)``.
    """
    chosen = list(resources)
    if only:
        names = {r.name for r in chosen}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ValueError(f"unknown resource(s) {unknown}; choose from {sorted(names)}")
        chosen = [r for r in chosen if r.name in only]
    if aug_sha256:
        chosen = [replace(r, sha256=aug_sha256) if r.name == "aug" else r for r in chosen]
    root = Path(root).expanduser()
    install(chosen, root, **install_kwargs)
    voc_root = root / "VOCdevkit" / "VOC2012"
    write_train_aug_list(voc_root)
    return voc_root


#: dataset name -> installer (the CLI's positional argument)
DOWNLOADERS: dict[str, Callable[..., Path]] = {"voc": download_voc}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.data.download",
        description=(
            "Download and extract a dataset: streamed, resumable (run again after an interruption), "
            "checksum-verified, extracted atomically; a second run finds the data and does nothing."
        ),
    )
    p.add_argument("dataset", choices=sorted(DOWNLOADERS), help="voc: PASCAL VOC 2012 trainval + SegmentationClassAug")
    p.add_argument("--root", type=Path, required=True, help="install folder (VOC ends up in ROOT/VOCdevkit/VOC2012)")
    p.add_argument(
        "--only",
        action="append",
        choices=[r.name for r in VOC_RESOURCES],
        help="install only this part (repeatable): voc2012 (the trainval tar) or aug (SegmentationClassAug.zip)",
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
        "--aug-sha256", default=None, help="expected SHA-256 of SegmentationClassAug.zip (none is published)"
    )
    p.add_argument("--retries", type=int, default=3, help="retries per mirror after a dropped connection (default: 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default: 60)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 failed, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    try:
        out = DOWNLOADERS[args.dataset](
            args.root,
            only=args.only,
            aug_sha256=args.aug_sha256,
            download_dir=args.download_dir,
            keep_archives=args.keep_archives,
            retries=args.retries,
            timeout=args.timeout,
            progress=False if args.no_progress else None,
        )
    except DownloadError as err:
        log.error("%s", err)
        return 1
    print(f"{args.dataset} is ready in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
