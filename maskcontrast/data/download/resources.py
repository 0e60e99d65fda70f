"""Archives and where their content goes (:class:`Resource`), and installing them: download, verify,
extract each one that is not installed yet (:func:`install`); :func:`select_resources` picks the
archives of a dataset and replaces the mirrors or the digest of one.

Example::

    install([Resource("x", ("https://a.example/x.zip",), "x.zip", dest="x", md5="0123...")], "/data")
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from maskcontrast.data.download.archives import extract_atomic
from maskcontrast.data.download.fetching import DownloadError, fetch, file_digest

__all__ = ["Resource", "install", "select_resources"]

log = logging.getLogger(__name__)


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
