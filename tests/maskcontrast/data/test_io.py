"""Decoding of every image mode, mask reading/writing, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import DataError, list_images, read_binary_mask, read_image, read_index_png, write_mask

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    assert np.array_equal(out, RGB)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = RGB[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (12, 16, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], gray)


def test_bilevel_image(tmp_path):
    Image.fromarray(RGB[..., 0] > 127).save(tmp_path / "b.png")  # mode "1"
    out = read_image(tmp_path / "b.png")
    assert set(np.unique(out).tolist()) <= {0, 255}
    assert np.array_equal(out[..., 1] == 255, RGB[..., 0] > 127)


def test_rgba_opaque_drops_alpha_and_transparent_is_black(tmp_path):
    alpha = np.full((12, 16, 1), 255, dtype=np.uint8)
    alpha[:3] = 0  # top rows fully transparent
    Image.fromarray(np.concatenate([RGB, alpha], axis=2), mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (12, 16, 3)
    assert np.array_equal(out[3:], RGB[3:])
    assert (out[:3] == 0).all()


def test_gray_alpha(tmp_path):
    la = np.stack([RGB[..., 0], np.full((12, 16), 255, np.uint8)], axis=2)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert np.array_equal(out[..., 2], RGB[..., 0])


def test_palette_image_gives_palette_colours(tmp_path):
    idx = (RGB[..., 0] % 4).astype(np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(colours.reshape(-1).tolist() + [0] * (768 - 12))
    img.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), colours[idx])
    # read as a label, the same file gives the indices
    assert np.array_equal(read_index_png(tmp_path / "p.png"), idx)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    flat = np.zeros((16, 16, 3), dtype=np.uint8)
    flat[:, :8] = (200, 30, 40)
    flat[:, 8:] = (20, 160, 220)
    Image.fromarray(flat).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # away from the block edge (JPEG ringing) the colours come back
    assert np.abs(out[:, 1:5].astype(int) - (200, 30, 40)).max() <= 8
    assert np.abs(out[:, 11:15].astype(int) - (20, 160, 220)).max() <= 8


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    v16 = np.linspace(0, 65535, 12 * 16).reshape(12, 16).astype(np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.abs(out[..., 0].astype(int) - np.rint(v16 / 257.0)).max() <= 1
    # the gradient survives (a clipping conversion would saturate almost everything)
    assert len(np.unique(out[..., 0])) > 100


def test_16bit_label_png_keeps_values(tmp_path):
    v = np.array([[0, 1, 300], [1000, 2, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "l16.png")
    assert np.array_equal(read_index_png(tmp_path / "l16.png"), v.astype(np.int64))


def test_rgb_label_is_refused_with_the_file_name(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "colour_label.png")
    with pytest.raises(DataError, match=r"colour_label\.png"):
        read_index_png(tmp_path / "colour_label.png")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jpg.*not found") as err:
        read_image(tmp_path / "nope.jpg")
    assert err.value.path == str(tmp_path / "nope.jpg")


def test_truncated_jpeg_names_the_file(tmp_path):
    Image.fromarray(RGB).resize((160, 120)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jpg: cannot decode") as err:
        read_image(tmp_path / "t.jpg")
    assert err.value.path == str(tmp_path / "t.jpg")


def test_not_an_image_names_the_file(tmp_path):
    (tmp_path / "x.png").write_text("hello, I am not a PNG")
    with pytest.raises(DataError, match=r"x\.png: cannot decode"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"x\.png: cannot decode"):
        read_index_png(tmp_path / "x.png")


def test_binary_mask_variants(tmp_path):
    m = RGB[..., 0] > 127
    Image.fromarray((m * 255).astype(np.uint8)).save(tmp_path / "m255.png")
    Image.fromarray(m.astype(np.uint8)).save(tmp_path / "m01.png")
    Image.fromarray(m).save(tmp_path / "m1.png")
    big = Image.fromarray((m * 255).astype(np.uint8)).resize((160, 120), Image.NEAREST)
    big.save(tmp_path / "mj.jpg", quality=90)
    for name in ("m255.png", "m01.png", "m1.png"):
        out = read_binary_mask(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, m.astype(np.uint8)), name
    jpg = read_binary_mask(tmp_path / "mj.jpg")
    assert set(np.unique(jpg).tolist()) == {0, 1}
    ref = np.asarray(big) > 127
    assert (jpg.astype(bool) != ref).mean() < 0.02  # JPEG ringing only


def test_write_mask_plain_and_palette(tmp_path):
    m = (RGB[..., 0] % 5).astype(np.int64)
    write_mask(tmp_path / "sub" / "plain.png", m)
    assert np.array_equal(read_index_png(tmp_path / "sub" / "plain.png"), m)
    pal = np.zeros((256, 3), np.uint8)
    pal[1] = (255, 0, 0)
    write_mask(tmp_path / "pal.png", m, palette=pal)
    img = Image.open(tmp_path / "pal.png")
    assert img.mode == "P"
    assert np.array_equal(read_index_png(tmp_path / "pal.png"), m)
    assert tuple(np.asarray(img.convert("RGB"))[m == 1][0]) == (255, 0, 0)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_write_mask_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="H x W"):
        write_mask(tmp_path / "x.png", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        write_mask(tmp_path / "x.png", np.full((2, 2), 300))
    assert not (tmp_path / "x.png").exists()


def test_list_images(tmp_path):
    for name in ("b.JPG", "a.png", ".hidden.png", "notes.txt", "sub/c.jpeg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.png", "b.JPG", "c.jpeg"]
    with pytest.raises(DataError, match=r"missing.*folder not found"):
        list_images(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# Decompression bombs
# ----------------------------------------------------------------------------------------------


def forged_png(path, width=100_000, height=100_000):
    """A 60-byte PNG whose header claims ``width x height`` 8-bit grey pixels (10 gigapixels by default)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def forged_jpeg(path, width=65_000, height=65_000):
    """A small real JPEG whose start-of-frame header is patched to claim ``width x height``."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("forge", [forged_png, forged_jpeg])
def test_a_decompression_bomb_is_refused_by_name_before_decoding(tmp_path, forge):
    import resource
    import time

    from maskcontrast.data.io import MAX_IMAGE_PIXELS, image_size, open_image

    bomb = forge(tmp_path / ("bomb.png" if forge is forged_png else "bomb.jpg"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for read in (read_image, read_index_png, read_binary_mask, image_size, open_image):
        with pytest.raises(DataError, match=r"bomb\.(png|jpg): refused, the image is too large") as info:
            read(bomb)
        assert f"{MAX_IMAGE_PIXELS:,}" in str(info.value) and "MASKCONTRAST_MAX_IMAGE_PIXELS" in str(info.value)
    assert time.perf_counter() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB: nothing was decoded
    # any other PIL.Image.open in the process refuses it too (the policy is set in one place)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb).load()


def test_the_limit_applies_to_real_pixels_and_can_be_raised(tmp_path, monkeypatch):
    from maskcontrast.data import io as image_io

    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 1999)
    with pytest.raises(DataError, match=r"50 x 40 = 2,000 pixels; the limit is 1,999"):
        read_image(path)
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 2000)
    assert read_image(path).shape == (40, 50, 3)


def test_every_reader_and_the_mask_generator_refuse_or_skip_a_bomb_by_name(tmp_path):
    import json

    from maskcontrast.data import build_dataset
    from saliency.generate import generate

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        img = np.zeros((48, 64, 3), np.uint8)
        img[10:30, 20:40] = 200
        Image.fromarray(img).save(images / f"ok{i}.png")
    forged_png(images / "bomb.png")
    ds = build_dataset("image_folder", images)
    with pytest.raises(DataError, match=r"bomb\.png: refused"):
        ds.load("bomb")
    with pytest.raises(DataError, match=r"bomb\.png: refused"):
        ds.image_size("bomb")
    counts = generate(tmp_path / "masks", "rbd", images=images, progress=False)
    assert counts["unreadable"] == 1 and counts["written"] + counts["skipped"] == 2
    skipped = (tmp_path / "masks" / "skipped.txt").read_text()
    assert "bomb\tunreadable:" in skipped and "too large" in skipped
    assert json.loads((tmp_path / "masks" / "saliency.json").read_text())["counts"]["unreadable"] == 1
