"""What ``eval.segment`` shows: label colours, overlays, segment thumbnails, contact sheets and the
offline ``index.html``."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from maskcontrast.data.record import default_palette
from maskcontrast.utils import atomic_write_bytes

__all__ = ["cluster_palette", "overlay_image", "write_jpeg", "thumbnail", "contact_sheet", "index_html"]


def cluster_palette() -> np.ndarray:
    """``256 x 3`` uint8: 0 (background) black, clusters in the VOC colour map."""
    return np.asarray(default_palette(256), dtype=np.uint8)


def overlay_image(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``H x W x 3`` uint8: cluster colours blended over the image, background dimmed."""
    img = image.astype(np.float32)
    out = img * 0.55
    fg = labels > 0
    out[fg] = (1 - alpha) * img[fg] + alpha * palette[labels[fg]].astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, arr: np.ndarray, quality: int = 88) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())


def thumbnail(image: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """The segment's bounding box (plus a margin), the rest of the image dimmed, fitted in ``side x side``."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(ys):
        m = max(2, int(0.1 * max(ys.max() - ys.min(), xs.max() - xs.min())))
        y0, y1, x0, x1 = max(0, ys.min() - m), min(h, ys.max() + m + 1), max(0, xs.min() - m), min(w, xs.max() + m + 1)
    else:
        y0, y1, x0, x1 = 0, h, 0, w
    crop = np.where(mask[..., None], image, (image * 0.3).astype(np.uint8))[y0:y1, x0:x1]
    scale = side / max(crop.shape[0], crop.shape[1])  # small segments are enlarged, large ones shrunk
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    pil = Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR)
    tile = np.full((side, side, 3), 255, np.uint8)
    arr = np.asarray(pil)
    oy, ox = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
    tile[oy : oy + arr.shape[0], ox : ox + arr.shape[1]] = arr
    return tile


def contact_sheet(
    most: list[np.ndarray], least: list[np.ndarray], per_row: int, side: int, colour: np.ndarray
) -> np.ndarray:
    """Two rows of ``side`` px tiles (most typical, least typical) with a band in the cluster's colour."""
    gap, band = 4, 6
    width = per_row * side + (per_row + 1) * gap
    rows = [r for r in (most, least) if r]
    sheet = np.full((band + len(rows) * (side + gap) + gap, width, 3), 255, np.uint8)
    sheet[:band] = colour
    for r, tiles in enumerate(rows):
        y = band + gap + r * (side + gap)
        for j, tile in enumerate(tiles[:per_row]):
            x = gap + j * (side + gap)
            sheet[y : y + side, x : x + side] = tile
    return sheet


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}.sw{display:inline-block;width:1em;height:1em;
vertical-align:middle;border:1px solid #888;margin-right:.4em}img.sheet{max-width:100%;border:1px solid #ccc}
.links a{margin-right:.6em;font-size:.9em}table{border-collapse:collapse}td,th{padding:2px 8px;
border-bottom:1px solid #ddd;font-size:.9em;text-align:left}.note{color:#666;font-size:.9em}"""


def _href(rel: str) -> str:
    return html.escape(quote(rel))


def index_html(summary: dict[str, Any], palette: np.ndarray) -> str:
    """The offline page: each cluster's contact sheet and links to its images' overlays, then a
    table of every image (no external scripts, styles or fonts)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>eval.segment: {summary['k']} clusters</title><style>{_CSS}</style></head><body>",
        f"<h1>{summary['n_segmented']} images in {summary['k']} clusters ({e(summary['protocol'])} protocol)</h1>",
        f"<p class=note>Model: {e(str(summary['model']))}. Object masks: {e(str(summary['saliency_source']))}. "
        "Each sheet shows the cluster's most typical segments (nearest its centroid, top row) and its least "
        "typical ones (bottom row).</p>",
    ]
    scores = summary.get("scores")
    if scores:
        parts.append(
            f"<p>With the labels of {e(str(summary.get('dataset')))}: mIoU {100 * scores['miou']:.1f} %, "
            f"pixel accuracy {100 * scores['pixel_acc']:.1f} % (clusters matched to classes).</p>"
        )
    for cl in summary["clusters"]:
        c = cl["cluster"]
        r, g, b = (int(v) for v in palette[c])
        parts.append(
            f'<h2 id="c{c}"><span class=sw style="background:rgb({r},{g},{b})"></span>cluster {c} '
            f"({cl['segments']} segments)</h2>"
        )
        if cl["sheet"]:
            parts.append(f'<img class=sheet src="{_href(cl["sheet"])}" alt="cluster {c}">')
        links = " ".join(
            f'<a href="{_href(summary["images"][i]["overlay"])}">{e(summary["images"][i]["id"])}</a>'
            for i in cl["members"]
        )
        parts.append(f"<div class=links>{links or '<span class=note>no segment</span>'}</div>")
    parts.append("<h2>All images</h2><table><tr><th>image</th><th>clusters</th><th>label map</th></tr>")
    for im in summary["images"]:
        cls = ", ".join(f'<a href="#c{c}">{c}</a>' for c in im["clusters"]) or "background only"
        parts.append(
            f'<tr><td><a href="{_href(im["overlay"])}">{e(im["id"])}</a></td><td>{cls}</td>'
            f'<td><a href="{_href(im["labels"])}">png</a></td></tr>'
        )
    parts.append("</table>")
    if summary["skipped"]:
        parts.append("<h2>Skipped (unreadable)</h2><ul>")
        parts += [f"<li>{e(k)}: {e(v)}</li>" for k, v in summary["skipped"].items()]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
