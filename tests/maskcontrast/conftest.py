"""Fixtures of the download and demo tests: a loopback HTTP server and official-layout MSRC-v2 archives.

Nothing here reaches the internet: every URL points at 127.0.0.1.
"""

from __future__ import annotations

import io
import re
import threading
import zipfile
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: the top folder of the official zip
MSRC_TOP = "MSRC_ObjCategImageDatabase_v2"


class LoopbackServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 with HTTP Range support and fault injection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.honour_range = True
        self.content_types: dict[str, str] = {}  # path -> Content-Type (default application/octet-stream)
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
                self.send_header("Content-Type", server.content_types.get(self.path, "application/octet-stream"))
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
    s = LoopbackServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def closed_port_url() -> Callable[[str], str]:
    """``url("/x.zip")`` -> a 127.0.0.1 URL on a port nobody listens on (connection refused: "no network")."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return lambda path: f"http://127.0.0.1:{port}{path}"


def _bmp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()


def official_msrc_members(
    shared: Path, ids: Sequence[str], *, scale: float = 1.0, top: str = MSRC_TOP
) -> dict[str, bytes]:
    """The official release's members for ``ids`` of the shared copy: ``<top>/Images/<id>.bmp``
    (24-bit) and ``<top>/GroundTruth/<id>_GT.bmp`` (24-bit, colour-coded through the palette of the
    shared index PNG, which is the MSRC colour table). ``scale`` < 1 shrinks both (labels nearest)."""
    members = {}
    for sid in ids:
        image = Image.open(shared / "Images" / f"{sid}.png").convert("RGB")
        gt = Image.open(shared / "GroundTruth" / f"{sid}_GT.png").convert("RGB")
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image, gt = image.resize(size, Image.BILINEAR), gt.resize(size, Image.NEAREST)
        members[f"{top}/Images/{sid}.bmp"] = _bmp(np.asarray(image))
        members[f"{top}/GroundTruth/{sid}_GT.bmp"] = _bmp(np.asarray(gt))
    return members


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def msrc_official_zip(shared_root) -> Callable[..., bytes]:
    """``msrc_official_zip(n, scale=1.0)`` -> the bytes of an official-layout MSRC-v2 zip built
    from ``n`` shared images spread over the categories (skips without MASKCONTRAST_DATA)."""
    shared = shared_root("msrc")

    def build(n: int, *, scale: float = 1.0, drop_gt: Sequence[str] = ()) -> bytes:
        every = sorted(p.stem for p in (shared / "Images").glob("*.png"))
        ids = [every[i * len(every) // n] for i in range(n)]  # spread over the categories
        members = official_msrc_members(shared, ids, scale=scale)
        for sid in drop_gt:
            del members[f"{MSRC_TOP}/GroundTruth/{sid}_GT.bmp"]
        return make_zip(members)

    return build
