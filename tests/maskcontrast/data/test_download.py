"""maskcontrast.data.download against a loopback HTTP server (Range support, dropped connections).

Nothing here reaches the internet: every URL points at 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import build_dataset
from maskcontrast.data.download import (
    VOC_RESOURCES,
    DownloadError,
    Resource,
    download_voc,
    extract_atomic,
    fetch,
    main,
)


class Server:
    """Serves ``files`` (URL path -> bytes) with HTTP Range support and fault injection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                if rng and server.honour_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the connection closes after

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


def test_resume_after_dropped_connection(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.drop_after["/a.bin"] = 100_000
    dest = tmp_path / "dl" / "a.bin"
    with pytest.raises(DownloadError, match=r"connection closed after 100000 of 300000 bytes.*run again to resume"):
        fetch(server.url("/a.bin"), dest, md5=md5(PAYLOAD), retries=0, progress=False)
    part = dest.with_name("a.bin.part")
    assert not dest.exists() and part.stat().st_size == 100_000
    # a later call resumes where it stopped, with a Range request
    assert fetch(server.url("/a.bin"), dest, md5=md5(PAYLOAD), retries=0, progress=False) == dest
    assert server.requests[-1] == ("/a.bin", "bytes=100000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    # a verified file is not downloaded again
    n = len(server.requests)
    fetch(server.url("/a.bin"), dest, md5=md5(PAYLOAD), progress=False)
    assert len(server.requests) == n


def test_retry_resumes_within_one_call_and_sha256(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.drop_after["/a.bin"] = 123_457
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=sha, retries=2, backoff_s=0, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=123457-"]


def test_complete_part_file_and_server_without_range(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)  # complete but not yet renamed: server answers 416
    fetch(server.url("/a.bin"), tmp_path / "a.bin", md5=md5(PAYLOAD), retries=0, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    server.honour_range = False  # a server that ignores Range: start again from zero, do not append
    (tmp_path / "b.bin.part").write_bytes(PAYLOAD[:5000])
    fetch(server.url("/a.bin"), tmp_path / "b.bin", md5=md5(PAYLOAD), retries=0, progress=False)
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_is_an_error_and_moves_the_file_aside(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match=r"a\.bin: md5 checksum mismatch \(expected 0+, got [0-9a-f]{32}\)"):
        fetch(server.url("/a.bin"), dest, md5="0" * 32, retries=0, progress=False)
    assert not dest.exists() and not (tmp_path / "a.bin.part").exists()
    assert (tmp_path / "a.bin.bad").read_bytes() == PAYLOAD


def test_mirrors_and_http_errors(server, tmp_path):
    server.files["/good.bin"] = PAYLOAD
    dest = fetch([server.url("/missing.bin"), server.url("/good.bin")], tmp_path / "x.bin", retries=0, progress=False)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/missing.bin"), tmp_path / "y.bin", retries=2, backoff_s=0, progress=False)
    assert [p for p, _ in server.requests].count("/missing.bin") == 2  # a 404 is not retried
    with pytest.raises(ValueError, match="retries"):
        fetch(server.url("/good.bin"), tmp_path / "z.bin", retries=-1)


# -- extraction ---------------------------------------------------------------------------------------


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".extract-" in p.name)


def test_extract_atomic_success_and_failures(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(make_tar({"top/inner/x.txt": b"x", "top/inner/sub/y.txt": b"y", "top/other.txt": b"o"}))
    out = tmp_path / "out"
    out.mkdir()
    dest = extract_atomic(archive, out / "data", subdir="top/inner")
    assert (dest / "x.txt").read_bytes() == b"x" and (dest / "sub" / "y.txt").read_bytes() == b"y"
    assert sorted(p.name for p in out.iterdir()) == ["data"]  # the rest of the archive and the temp folder are gone

    # a truncated archive: nothing appears under the target, no temp folder is left
    archive.write_bytes(archive.read_bytes()[:700])
    with pytest.raises(DownloadError, match=r"a\.tar"):
        extract_atomic(archive, out / "broken", subdir="top/inner")
    assert not (out / "broken").exists() and leftovers(out) == []

    # the expected folder is not in the archive
    archive.write_bytes(make_tar({"elsewhere/x.txt": b"x"}))
    with pytest.raises(DownloadError, match=r"expected a folder 'top/inner'.*elsewhere"):
        extract_atomic(archive, out / "missing", subdir="top/inner")
    assert not (out / "missing").exists() and leftovers(out) == []

    # a zip with a corrupted member (CRC mismatch)
    z = bytearray(make_zip({"d/x.txt": b"hello hello hello hello"}))
    i = z.index(b"d/x.txt") + len(b"d/x.txt")
    z[i + 2] ^= 0xFF  # flip a byte of the compressed data
    (tmp_path / "c.zip").write_bytes(bytes(z))
    with pytest.raises(DownloadError):
        extract_atomic(tmp_path / "c.zip", out / "crc", subdir="d")
    assert not (out / "crc").exists() and leftovers(out) == []


def test_extract_refuses_escaping_members(tmp_path):
    (tmp_path / "evil.tar").write_bytes(make_tar({"../evil.txt": b"x"}))
    with pytest.raises(DownloadError):
        extract_atomic(tmp_path / "evil.tar", tmp_path / "out" / "d")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "d").exists()


def test_extract_merges_into_existing_folder_and_refuses_conflicts(tmp_path):
    dest = tmp_path / "VOC2012"
    (dest / "SegmentationClassAug").mkdir(parents=True)
    (tmp_path / "a.tar").write_bytes(make_tar({"VOC2012/JPEGImages/x.jpg": b"j", "VOC2012/ImageSets/s.txt": b"s"}))
    extract_atomic(tmp_path / "a.tar", dest, subdir="VOC2012", marker="JPEGImages")
    assert sorted(p.name for p in dest.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClassAug"]
    (tmp_path / "b.tar").write_bytes(make_tar({"VOC2012/ImageSets/s.txt": b"other", "VOC2012/New/n.txt": b"n"}))
    with pytest.raises(DownloadError, match=r"1 entries exist already.*s\.txt"):
        extract_atomic(tmp_path / "b.tar", dest, subdir="VOC2012")
    assert (dest / "ImageSets" / "s.txt").read_bytes() == b"s" and not (dest / "New").exists()  # nothing moved
    assert leftovers(tmp_path) == []


# -- VOC end to end --------------------------------------------------------------------------------------


def _png(value: int, size=(10, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _jpg(size=(10, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size[::-1], 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tiny_voc_archives() -> tuple[bytes, bytes]:
    ids = ["2007_000032", "2007_000033", "2008_000002"]
    base = "VOCdevkit/VOC2012/"
    tar = make_tar(
        {base + f"JPEGImages/{i}.jpg": _jpg() for i in ids}
        | {base + "SegmentationClass/2007_000033.png": _png(1)}
        | {base + "ImageSets/Segmentation/val.txt": b"2007_000033\n", base + "ImageSets/Segmentation/train.txt": b"2007_000032\n"}
    )  # fmt: skip
    zipped = make_zip(
        {f"SegmentationClassAug/{i}.png": _png(n) for n, i in enumerate(ids)} | {"__MACOSX/._junk": b"junk"}
    )
    return tar, zipped


def loopback_resources(server: Server, tar: bytes, zipped: bytes) -> tuple[Resource, Resource]:
    server.files["/VOCtrainval.tar"] = tar
    server.files["/SegmentationClassAug.zip"] = zipped
    voc, aug = VOC_RESOURCES
    return (
        Resource(voc.name, (server.url("/VOCtrainval.tar"),), voc.filename, voc.dest, voc.subdir, voc.marker, md5=md5(tar)),
        Resource(aug.name, (server.url("/SegmentationClassAug.zip"),), aug.filename, aug.dest, aug.subdir, aug.marker),
    )  # fmt: skip


def test_download_voc_end_to_end_idempotent(server, tmp_path, capsys):
    tar, zipped = tiny_voc_archives()
    resources = loopback_resources(server, tar, zipped)
    server.drop_after["/VOCtrainval.tar"] = len(tar) // 2  # one dropped connection on the way
    voc_root = download_voc(tmp_path, resources=resources, retries=1, backoff_s=0, progress=False)
    assert voc_root == tmp_path / "VOCdevkit" / "VOC2012"
    assert (voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == [
        "2007_000032", "2008_000002"
    ]  # fmt: skip
    assert not (voc_root / "SegmentationClassAug" / "__MACOSX").exists()
    assert not list((tmp_path / "downloads").iterdir())  # archives removed after extraction
    val = build_dataset("voc", tmp_path, "val")
    assert val.ids == ["2007_000033"] and (val[0].label == 1).all()  # SegmentationClass, not the Aug copy
    aug = build_dataset("voc", tmp_path, "train_aug")
    assert (aug.load("2008_000002").label == 2).all()

    # idempotent: a second run makes no request at all
    n = len(server.requests)
    download_voc(tmp_path, resources=resources, progress=False)
    assert len(server.requests) == n
    # the CLI with the real URLs finds the data too, so it needs no network
    assert main(["voc", "--root", str(tmp_path), "--no-progress"]) == 0
    assert f"voc is ready in {voc_root}" in capsys.readouterr().out


def test_download_aug_before_voc_and_only(server, tmp_path):
    tar, zipped = tiny_voc_archives()
    resources = loopback_resources(server, tar, zipped)
    download_voc(tmp_path, only=["aug"], resources=resources, progress=False, keep_archives=True)
    voc_root = tmp_path / "VOCdevkit" / "VOC2012"
    assert sorted(p.name for p in voc_root.iterdir()) == ["SegmentationClassAug"]
    assert (tmp_path / "downloads" / "SegmentationClassAug.zip").is_file()  # kept
    download_voc(tmp_path, resources=resources, progress=False)  # the tar merges into the existing VOC2012
    assert (voc_root / "JPEGImages" / "2007_000032.jpg").is_file()
    assert len(build_dataset("voc", tmp_path, "train_aug")) == 2
    with pytest.raises(ValueError, match="unknown resource"):
        download_voc(tmp_path, only=["nope"], resources=resources)


def test_download_checksum_mismatch_leaves_no_data(server, tmp_path, caplog):
    tar, zipped = tiny_voc_archives()
    resources = loopback_resources(server, tar, zipped)
    with pytest.raises(DownloadError, match="sha256 checksum mismatch"):
        download_voc(tmp_path, only=["aug"], resources=resources, aug_sha256="f" * 64, progress=False)
    assert not (tmp_path / "VOCdevkit").exists()
    assert (tmp_path / "downloads" / "SegmentationClassAug.zip.bad").is_file()
