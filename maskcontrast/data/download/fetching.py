"""Download one file: streamed in 1 MiB chunks into ``<file>.part``, retried and resumed with HTTP
``Range`` requests, mirrors tried in order, verified (MD5/SHA-256) before it takes its final name.

A file that fails its digest is moved aside to ``<file>.bad`` (:class:`ChecksumMismatch` names both
digests); a later call that expects the digest of that ``.bad`` file uses it instead of downloading
again (:func:`mismatch_hint` tells the user how).

Example::

    path = fetch(["https://a.example/x.zip", "https://b.example/x.zip"], "downloads/x.zip", md5="0123...")
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

__all__ = ["CHUNK_BYTES", "DownloadError", "ChecksumMismatch", "file_digest", "fetch", "mismatch_hint"]

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


def mismatch_hint(err: ChecksumMismatch, accept: str) -> str:
    """How to accept a file that failed its checksum. ``accept`` shows how the expected digest is
    set, with ``{actual}`` for the digest: ``"--md5 {actual}"``, ``"MASKCONTRAST_MSRC_MD5={actual}"``."""
    return (
        f"If you trust this copy (e.g. the source publishes the digest {err.actual}), accept it with "
        f"{accept.format(actual=err.actual)}: the file moved aside is then used without downloading again. "
        f"Otherwise delete {err.bad} and run again."
    )
