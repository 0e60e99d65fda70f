"""maskcontrast.data.download against a loopback HTTP server (Range support, dropped connections).

Nothing here reaches the internet: every URL points at 127.0.0.1 (the ``server`` fixture of
tests/maskcontrast/conftest.py). The MSRC tests build official-layout archives (BMP images,
colour-coded ``_GT.bmp``) from shared images and skip without MASKCONTRAST_DATA; the Pet tests
use small generated tar.gz archives.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import build_dataset
from maskcontrast.data.download import (
    MSRC_MD5,
    MSRC_RESOURCES,
    PET_RESOURCES,
    VOC_RESOURCES,
    ChecksumMismatch,
    DownloadError,
    Resource,
    check_msrc_folder,
    download_msrc,
    download_pet,
    download_voc,
    extract_atomic,
    fetch,
    main,
    select_resources,
)
from maskcontrast.data.msrc import msrc_layout


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


def test_a_web_page_instead_of_the_file_tries_the_next_mirror(server, tmp_path):
    server.files["/good.bin"] = PAYLOAD
    server.files["/retired.zip"] = b"<html>this page has moved</html>"
    server.content_types["/retired.zip"] = "text/html; charset=utf-8"
    urls = [server.url("/retired.zip"), server.url("/good.bin")]
    assert fetch(urls, tmp_path / "x.bin", md5=md5(PAYLOAD), retries=2, progress=False).read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/retired.zip", "/good.bin"]  # a page is not retried
    with pytest.raises(DownloadError, match=r"retired\.zip: the server sent a web page \(text/html"):
        fetch(urls[:1], tmp_path / "y.bin", retries=0, progress=False)
    assert not list(tmp_path.glob("y.bin*"))  # nothing written


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
        | {
            base + "ImageSets/Segmentation/val.txt": b"2007_000033\n",
            base + "ImageSets/Segmentation/train.txt": b"2007_000032\n",
        }
    )
    zipped = make_zip(
        {f"SegmentationClassAug/{i}.png": _png(n) for n, i in enumerate(ids)} | {"__MACOSX/._junk": b"junk"}
    )
    return tar, zipped


def loopback_resources(server, tar: bytes, zipped: bytes) -> tuple[Resource, Resource]:
    server.files["/VOCtrainval.tar"] = tar
    server.files["/SegmentationClassAug.zip"] = zipped
    voc, aug = VOC_RESOURCES
    return (
        Resource(
            voc.name, (server.url("/VOCtrainval.tar"),), voc.filename, voc.dest, voc.subdir, voc.marker, md5=md5(tar)
        ),
        Resource(aug.name, (server.url("/SegmentationClassAug.zip"),), aug.filename, aug.dest, aug.subdir, aug.marker),
    )


def test_download_voc_end_to_end_idempotent(server, tmp_path, capsys):
    tar, zipped = tiny_voc_archives()
    resources = loopback_resources(server, tar, zipped)
    server.drop_after["/VOCtrainval.tar"] = len(tar) // 2  # one dropped connection on the way
    voc_root = download_voc(tmp_path, resources=resources, retries=1, backoff_s=0, progress=False)
    assert voc_root == tmp_path / "VOCdevkit" / "VOC2012"
    assert (voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == [
        "2007_000032",
        "2008_000002",
    ]
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


# -- --url / --md5 / --only ---------------------------------------------------------------------------------


def test_select_resources_urls_md5_and_only():
    (msrc,) = select_resources(MSRC_RESOURCES, urls=["http://a/x.zip", "http://b/x.zip"])
    assert msrc.urls == ("http://a/x.zip", "http://b/x.zip") and msrc.md5 == MSRC_MD5  # mirrors replaced, md5 kept
    (images,) = select_resources(PET_RESOURCES, ["images"], md5="A" * 32)
    assert images.md5 == "a" * 32 and images.urls == PET_RESOURCES[0].urls
    with pytest.raises(ValueError, match=r"apply to one archive.*--only \(images or annotations\)"):
        select_resources(PET_RESOURCES, urls=["http://a/x"])
    with pytest.raises(ValueError, match="32 hex digits"):
        select_resources(PET_RESOURCES, ["images"], md5="abc")
    with pytest.raises(ValueError, match="unknown resource"):
        select_resources(PET_RESOURCES, ["nope"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["voc", "--url", "http://127.0.0.1:9/x.tar"], "name one with --only"),
        (["msrc", "--only", "aug"], "single archive"),
        (["pet", "--only", "aug"], "pet has the parts"),
        (["msrc", "--md5", "xyz"], "32 hex digits"),
        (["pet", "--aug-sha256", "0" * 64], "--aug-sha256 is for voc"),
    ],
)
def test_cli_refuses_bad_combinations(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        main([*argv, "--root", str(tmp_path)])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


# -- MSRC-v2, official layout ----------------------------------------------------------------------------


def test_msrc_resume_after_dropped_connection(server, tmp_path, msrc_official_zip, shared_root, caplog):
    archive = msrc_official_zip(6)
    server.files["/msrc.zip"] = archive
    server.drop_after["/msrc.zip"] = len(archive) // 3
    argv = ["msrc", "--root", str(tmp_path), "--url", server.url("/msrc.zip"), "--md5", md5(archive)]
    assert main([*argv, "--retries", "0", "--no-progress"]) == 1  # the connection drops, nothing is retried
    part = tmp_path / "downloads" / "msrc_objcategimagedatabase_v2.zip.part"
    assert part.stat().st_size == len(archive) // 3 and not (tmp_path / "msrc_v2").exists()
    assert "run again to resume" in caplog.text
    assert main([*argv, "--no-progress"]) == 0  # resumes where it stopped
    assert server.requests[-1] == ("/msrc.zip", f"bytes={len(archive) // 3}-")
    root = tmp_path / "msrc_v2"
    assert msrc_layout(root) == "official" and len(list((root / "Images").glob("*.bmp"))) == 6
    assert not any((tmp_path / "downloads").iterdir())  # archive deleted after extraction
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "msrc_v2"]  # no temporary folder left
    ds = build_dataset("msrc", root)
    shared = build_dataset("msrc", shared_root("msrc"), ids=ds.ids)
    for sid in ds.ids:  # the BMPs decode to the shared pixels and labels
        a, b = ds.load(sid), shared.load(sid)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    # idempotent, without network
    n = len(server.requests)
    assert download_msrc(tmp_path, urls=["http://127.0.0.1:9/none.zip"], progress=False) == root
    assert len(server.requests) == n


def test_msrc_md5_mismatch_is_refused_then_accepted_with_md5(server, tmp_path, msrc_official_zip, caplog):
    archive = msrc_official_zip(4)
    server.files["/msrc.zip"] = archive
    argv = ["msrc", "--root", str(tmp_path), "--url", server.url("/msrc.zip"), "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 1  # checked against the official MD5
    actual = md5(archive)
    msg = caplog.text
    assert f"expected {MSRC_MD5}, got {actual}" in msg  # both digests
    assert f"--md5 {actual}" in msg  # how to override
    bad = tmp_path / "downloads" / "msrc_objcategimagedatabase_v2.zip.bad"
    assert bad.is_file() and str(bad) in msg and not (tmp_path / "msrc_v2").exists()
    # accepting it: the file moved aside is used, no second download; 4 images are fine with --md5
    n = len(server.requests)
    assert main([*argv, "--md5", actual]) == 0
    assert len(server.requests) == n and not bad.exists()
    assert len(build_dataset("msrc", tmp_path / "msrc_v2")) == 4


def test_msrc_fetch_raises_checksum_mismatch_with_digests(server, tmp_path):
    server.files["/m.zip"] = PAYLOAD
    with pytest.raises(ChecksumMismatch) as err:
        fetch(server.url("/m.zip"), tmp_path / "m.zip", md5=MSRC_MD5, retries=0, progress=False)
    assert (err.value.expected, err.value.actual, err.value.bad) == (MSRC_MD5, md5(PAYLOAD), tmp_path / "m.zip.bad")


def test_msrc_content_checks_leave_nothing_in_place(server, tmp_path, msrc_official_zip):
    every = msrc_official_zip(3)
    with zipfile.ZipFile(io.BytesIO(every)) as zf:
        sid = Path(next(n for n in zf.namelist() if n.endswith("_GT.bmp"))).name.removesuffix("_GT.bmp")
    broken = msrc_official_zip(3, drop_gt=[sid])
    server.files["/broken.zip"] = broken
    with pytest.raises(DownloadError, match=rf"1 of 3 images have no GroundTruth.*{sid}"):
        download_msrc(tmp_path, urls=[server.url("/broken.zip")], md5=md5(broken), progress=False)
    assert not (tmp_path / "msrc_v2").exists() and not [p for p in tmp_path.iterdir() if ".extract-" in p.name]
    # the bad archive is moved aside, so that the next run does not find and use it again
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["msrc_objcategimagedatabase_v2.zip.rejected"]
    # the official archive must hold 591 images (here forced, since only the official MD5 implies it)
    server.files["/three.zip"] = every
    with pytest.raises(DownloadError, match="holds 3 images, the official release 591"):
        download_msrc(tmp_path, urls=[server.url("/three.zip")], md5=md5(every), expected_images=591, progress=False)
    assert not (tmp_path / "msrc_v2").exists()


def test_check_msrc_folder_without_images(tmp_path):
    (tmp_path / "Images").mkdir()
    with pytest.raises(DownloadError, match=r"no Images/\*\.bmp"):
        check_msrc_folder(tmp_path)


def test_extract_locates_the_content_folder(tmp_path):
    (tmp_path / "a.zip").write_bytes(
        make_zip({"Some Name/Images/x.bmp": b"i", "Some Name/GroundTruth/x_GT.bmp": b"g", "readme.txt": b"r"})
    )
    dest = extract_atomic(tmp_path / "a.zip", tmp_path / "out", locate=("Images", "GroundTruth"))
    assert sorted(p.name for p in dest.iterdir()) == ["GroundTruth", "Images"]
    with pytest.raises(DownloadError, match=r"expected a folder holding \['Images', 'Labels'\]"):
        extract_atomic(tmp_path / "a.zip", tmp_path / "out2", locate=("Images", "Labels"))
    assert not (tmp_path / "out2").exists()


# -- Oxford-IIIT Pet ---------------------------------------------------------------------------------------


def make_targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tiny_pet_archives() -> tuple[bytes, bytes]:
    """The two official archives' layout (``images/``, ``annotations/``) for 3 pets."""
    names = ["Abyssinian_1", "Bengal_2", "american_bulldog_3"]
    trimap = np.full((8, 10), 2, np.uint8)
    trimap[2:6, 3:7] = 1
    trimap[2, 3] = 3
    buf = io.BytesIO()
    Image.fromarray(trimap).save(buf, format="PNG")
    listing = b"".join(f"{n} {i + 1} {1 + (n[0].islower())} 1\n".encode() for i, n in enumerate(names))
    images = make_targz({f"images/{n}.jpg": _jpg() for n in names})
    annotations = make_targz(
        {f"annotations/trimaps/{n}.png": buf.getvalue() for n in names}
        | {
            "annotations/list.txt": listing,
            "annotations/trainval.txt": listing[: listing.index(b"\n") + 1],
            "annotations/test.txt": listing[listing.index(b"\n") + 1 :],
            "annotations/README": b"readme",
        }
    )
    return images, annotations


def test_download_pet_layout_the_reader_reads(server, tmp_path):
    images, annotations = tiny_pet_archives()
    server.files["/images.tar.gz"], server.files["/annotations.tar.gz"] = images, annotations
    server.drop_after["/annotations.tar.gz"] = len(annotations) // 2
    resources = [
        Resource(r.name, (server.url(f"/{r.filename}"),), r.filename, r.dest, r.subdir, r.marker, md5=md5(data))
        for r, data in zip(PET_RESOURCES, (images, annotations))
    ]
    out = download_pet(tmp_path, resources=resources, retries=1, backoff_s=0, progress=False)
    assert out == tmp_path / "oxford-iiit-pet"
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "images"]  # torchvision's layout
    assert ("/annotations.tar.gz", f"bytes={len(annotations) // 2}-") in server.requests  # resumed
    for root in (tmp_path, out):  # the reader takes the install root or the dataset folder
        ds = build_dataset("pet", root, target="species")
        assert ds.ids == ["Abyssinian_1", "Bengal_2", "american_bulldog_3"]
        label = ds.load("american_bulldog_3").label
        assert (label[2:6, 4:7] == 2).all() and label[2, 3] == 255 and (label[0] == 0).all()
    assert build_dataset("pet", tmp_path, "trainval").ids == ["Abyssinian_1"]
    n = len(server.requests)
    download_pet(tmp_path, resources=resources, progress=False)  # idempotent
    assert len(server.requests) == n


def test_download_pet_cli_one_part_with_url_and_md5(server, tmp_path, caplog):
    _, annotations = tiny_pet_archives()
    server.files["/mirror/annotations.tar.gz"] = annotations
    base = ["pet", "--root", str(tmp_path), "--only", "annotations", "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert main([*base, "--url", server.url("/mirror/annotations.tar.gz")]) == 1  # torchvision's md5 differs
    assert "expected 95a8c909bbe2e81eed6a22bccdf3f68f" in caplog.text and f"--md5 {md5(annotations)}" in caplog.text
    assert main([*base, "--url", server.url("/mirror/annotations.tar.gz"), "--md5", md5(annotations)]) == 0
    assert (tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps" / "Bengal_2.png").is_file()
    assert not (tmp_path / "oxford-iiit-pet" / "images").exists()
    # an archive without the expected folder content is refused before anything is moved into place
    server.files["/empty.tar.gz"] = make_targz({"images/readme.txt": b"no pictures"})
    assert (
        main(
            [
                "pet",
                "--root",
                str(tmp_path),
                "--only",
                "images",
                "--url",
                server.url("/empty.tar.gz"),
                "--md5",
                md5(server.files["/empty.tar.gz"]),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "no images (*.jpg)" in caplog.text and not (tmp_path / "oxford-iiit-pet" / "images").exists()
