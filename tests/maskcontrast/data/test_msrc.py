"""The msrc reader's two layouts: the official release (BMP images, colour-coded ``_GT.bmp``) and
the shared copy (PNG images, index-PNG ground truth), and the colour table that links them."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import DataError, build_dataset
from maskcontrast.data.check import main as check_main
from maskcontrast.data.check import open_and_check
from maskcontrast.data.msrc import MSRC_RAW_CLASSES, msrc_colour_to_index, msrc_layout

TABLE = np.array([rgb for _, _, rgb in MSRC_RAW_CLASSES], dtype=np.uint8)


def write_official(shared, ids, dest):
    """An official-layout copy of ``ids``: 24-bit ``Images/<id>.bmp`` and colour ``GroundTruth/<id>_GT.bmp``."""
    (dest / "Images").mkdir(parents=True)
    (dest / "GroundTruth").mkdir()
    for sid in ids:
        Image.open(shared / "Images" / f"{sid}.png").convert("RGB").save(dest / "Images" / f"{sid}.bmp")
        Image.open(shared / "GroundTruth" / f"{sid}_GT.png").convert("RGB").save(dest / "GroundTruth" / f"{sid}_GT.bmp")
    return dest


# 1_23_s holds horse, 18_16_s mountain (see test_readers.py); the others are spread over the categories
IDS = ["1_1_s", "1_23_s", "18_16_s", "3_5_s", "12_10_s", "13_2_s", "20_10_s"]


def test_colour_table_is_the_shared_palette(shared_root):
    """The shared GT PNGs are palette images whose palette is the MSRC colour table (SOURCES.md, section 4)."""
    root = shared_root("msrc")
    for sid in IDS:
        with Image.open(root / "GroundTruth" / f"{sid}_GT.png") as im:
            assert im.mode == "P"
            palette = np.array(im.getpalette()[: 3 * len(TABLE)], dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(palette, TABLE), sid
    assert tuple(TABLE[0]) == (0, 0, 0)  # void is black
    assert len({tuple(c) for c in TABLE}) == len(TABLE)  # one colour per class


def test_both_layouts_give_identical_samples(shared_root, tmp_path):
    shared = shared_root("msrc")
    official = write_official(shared, IDS, tmp_path / "official")
    assert (msrc_layout(official), msrc_layout(shared)) == ("official", "shared")
    for protocol in ("21", "23"):
        a = build_dataset("msrc", official, protocol=protocol)
        b = build_dataset("msrc", shared, protocol=protocol, ids=a.ids)
        assert a.layout == "official" and b.layout == "shared"
        assert sorted(a.ids) == sorted(IDS) and a.info == b.info
        for sid in a.ids:
            sa, sb = a.load(sid), b.load(sid)
            assert a.files(sid).label.name == f"{sid}_GT.bmp"
            assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.label, sb.label), (protocol, sid)
            assert (sa.label != 255).any()
    # horse and mountain really were in the copy: ignored under protocol 21, kept under 23
    raw = msrc_colour_to_index(np.asarray(Image.open(official / "GroundTruth" / "1_23_s_GT.bmp").convert("RGB")))
    assert (raw == 5).any()
    assert (build_dataset("msrc", official).load("1_23_s").label[raw == 5] == 255).all()


def test_mixed_layout_prefers_png(shared_root, tmp_path):
    shared = shared_root("msrc")
    root = write_official(shared, IDS[:2], tmp_path / "mixed")
    shutil.copy(shared / "GroundTruth" / f"{IDS[0]}_GT.png", root / "GroundTruth")
    ds = build_dataset("msrc", root)
    assert ds.layout == "mixed" and ds.files(IDS[0]).label.suffix == ".png"
    assert np.array_equal(ds.load(IDS[0]).label, build_dataset("msrc", shared, ids=[IDS[0]]).load(IDS[0]).label)


def test_data_check_reports_the_layout(shared_root, tmp_path, capsys):
    shared = shared_root("msrc")
    official = write_official(shared, IDS[:3], tmp_path / "official")
    report = open_and_check("msrc", official, progress=False)
    assert report.ok and report.images == 3
    assert any(n.startswith("layout official: Images/*.bmp, colour-coded") for n in report.notes)
    assert check_main(["--dataset", "msrc", "--root", str(shared), "--no-progress", "--workers", "1"]) == 0
    assert "layout shared: Images/*.png, index-PNG" in capsys.readouterr().out


def test_colour_to_index_and_unknown_colours(tmp_path, caplog):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, :] = (128, 0, 0)  # building
    rgb[1, :] = (192, 64, 0)  # boat
    rgb[2, :] = (0, 128, 128)  # sheep
    rgb[3, 5] = (1, 2, 3)  # not in the table
    expected = np.zeros((4, 6), np.uint8)
    expected[0], expected[1], expected[2], expected[3, 5] = 1, 23, 6, 255
    assert np.array_equal(msrc_colour_to_index(rgb), expected)
    with pytest.raises(ValueError, match="H x W x 3"):
        msrc_colour_to_index(rgb[..., 0])

    (tmp_path / "Images").mkdir()
    (tmp_path / "GroundTruth").mkdir()
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(tmp_path / "Images" / "a.bmp")
    big = np.zeros((40, 60, 3), np.uint8)
    big[:, :30] = (128, 0, 0)
    big[0, 0] = (1, 2, 3)  # one stray pixel of 2400: void, with a warning naming the file
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "Images" / "b.bmp")
    Image.fromarray(big).save(tmp_path / "GroundTruth" / "b_GT.bmp")
    Image.fromarray(rgb).save(tmp_path / "GroundTruth" / "a_GT.bmp")  # 1 of 24 pixels: over 1 %
    ds = build_dataset("msrc", tmp_path)
    with caplog.at_level(logging.WARNING):
        label = ds.load("b").label
    assert label[0, 0] == 255 and (label[1:, :30] == 0).all() and (label[:, 30:] == 255).all()
    assert "b_GT.bmp: 1 pixels of colours outside the MSRC table" in caplog.text
    with pytest.raises(DataError, match=r"a_GT\.bmp: 4\.2 % of the pixels have colours outside the MSRC colour table"):
        ds.load("a")
    # an index PNG still refuses values above 23
    Image.fromarray(np.full((4, 6), 30, np.uint8)).save(tmp_path / "GroundTruth" / "a_GT.png")
    with pytest.raises(DataError, match="MSRC class index 30 > 23"):
        ds.load("a")
