"""maskcontrast.demo: where its data comes from (``--data``, ``MASKCONTRAST_DATA``, the cache, a
download) and the download path end to end, against a loopback server (tests/maskcontrast/conftest.py).

The end-to-end test runs every stage at the ``--tiny`` preset on 24 shared images served as an
official-layout archive (about 80 s on a loaded 2-core machine); it skips without MASKCONTRAST_DATA.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from maskcontrast import demo
from maskcontrast.data import build_dataset
from maskcontrast.data.download import MSRC_MD5, MSRC_RESOURCES


@pytest.fixture
def fresh_env(monkeypatch, tmp_path):
    """No MASKCONTRAST_DATA, the cache in tmp_path/cache, no mirror or digest set."""
    monkeypatch.delenv("MASKCONTRAST_DATA", raising=False)
    monkeypatch.delenv("MASKCONTRAST_MSRC_URL", raising=False)
    monkeypatch.delenv("MASKCONTRAST_MSRC_MD5", raising=False)
    monkeypatch.setenv("MASKCONTRAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_find_data_precedence(fresh_env, monkeypatch, tmp_path):
    assert demo.find_data(None) is None
    (tmp_path / "shared" / "msrc_v2").mkdir(parents=True)
    monkeypatch.setenv("MASKCONTRAST_DATA", str(tmp_path / "shared"))
    assert demo.find_data(None) == (tmp_path / "shared" / "msrc_v2").resolve()
    (tmp_path / "mine").mkdir()
    assert demo.find_data(str(tmp_path / "mine")) == (tmp_path / "mine").resolve()  # --data wins
    assert demo.find_data(str(tmp_path / "missing")) is None
    assert demo.cache_dir() == fresh_env.resolve()
    monkeypatch.delenv("MASKCONTRAST_CACHE")
    assert str(demo.cache_dir()).endswith(".cache/maskcontrast")
    monkeypatch.setenv("MASKCONTRAST_MSRC_URL", " http://a/x.zip  http://b/x.zip\n")
    monkeypatch.setenv("MASKCONTRAST_MSRC_MD5", "ab" * 16)
    assert demo.msrc_sources() == (["http://a/x.zip", "http://b/x.zip"], "ab" * 16)


def test_missing_data_folder_is_an_error(fresh_env, tmp_path):
    with pytest.raises(SystemExit, match=r"--data .*missing: folder not found"):
        demo.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert not fresh_env.exists()  # no download was tried


def test_no_network_one_clear_message_nothing_written(fresh_env, monkeypatch, tmp_path, closed_port_url, capsys):
    urls = [closed_port_url("/a.zip"), closed_port_url("/b.zip")]
    monkeypatch.setenv("MASKCONTRAST_MSRC_URL", " ".join(urls))
    monkeypatch.setattr(demo, "download_msrc", _no_retries(demo.download_msrc))
    with pytest.raises(SystemExit) as err:
        demo.main(["--tiny", "--out", str(tmp_path / "out")])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "no demo data found, and downloading MSRC-v2 failed" in msg
    assert msg.index(urls[0]) < msg.index(urls[1])  # the URLs tried, in order
    for alternative in (
        "--data DIR",
        "MASKCONTRAST_DATA",
        "python -m maskcontrast.data.download msrc --root DIR",
        "MASKCONTRAST_MSRC_URL",
    ):
        assert alternative in msg
    assert f"Nothing was written under {fresh_env.resolve()}" in msg
    assert not fresh_env.exists() and not (tmp_path / "out").exists()


def test_default_mirrors_are_named_when_they_fail(fresh_env, monkeypatch, tmp_path, closed_port_url, capsys):
    """Without MASKCONTRAST_MSRC_URL the two official mirrors are tried (redirected here to a closed port)."""
    offline = _no_retries(demo.download_msrc)

    def official_urls_offline(root, *, urls=None, **kw):
        assert urls is None  # the demo asked for the official mirrors
        return offline(root, urls=[closed_port_url("/x.zip")], **kw)

    monkeypatch.setattr(demo, "download_msrc", official_urls_offline)
    with pytest.raises(SystemExit):
        demo.fetch_demo_data(demo.cache_dir())
    msg = capsys.readouterr().err
    assert closed_port_url("/x.zip") in msg
    assert len(MSRC_RESOURCES[0].urls) == 2 and all(
        u.endswith("msrc_objcategimagedatabase_v2.zip") for u in MSRC_RESOURCES[0].urls
    )


def test_md5_mismatch_names_both_digests_and_the_override(fresh_env, monkeypatch, server, capsys):
    payload = b"not the MSRC archive" * 1000
    server.files["/m.zip"] = payload
    monkeypatch.setenv("MASKCONTRAST_MSRC_URL", server.url("/m.zip"))
    with pytest.raises(SystemExit) as err:
        demo.fetch_demo_data(demo.cache_dir(), progress=False)
    assert err.value.code == 2
    actual = hashlib.md5(payload).hexdigest()
    msg = capsys.readouterr().err
    assert f"expected {MSRC_MD5}, got {actual}" in msg and f"MASKCONTRAST_MSRC_MD5={actual}" in msg
    assert not (fresh_env / "msrc_v2").exists()
    assert sorted(p.name for p in (fresh_env / "downloads").iterdir()) == ["msrc_objcategimagedatabase_v2.zip.bad"]


def _no_retries(fn):
    def call(*args, **kwargs):
        return fn(*args, **{**kwargs, "retries": 0, "timeout": 5.0})

    return call


@pytest.mark.slow
@pytest.mark.data
def test_demo_downloads_the_data_and_runs_end_to_end(
    msrc_official_zip, fresh_env, monkeypatch, server, tmp_path, capsys
):
    """MASKCONTRAST_DATA is unset here (fresh_env) once the archive fixture has read the shared images."""
    archive = msrc_official_zip(24, scale=0.4)  # the prototype protocol (k = 21) needs >= 20 salient images
    server.files["/msrc.zip"] = archive
    server.drop_after["/msrc.zip"] = len(archive) // 2  # a dropped connection on the way, resumed
    monkeypatch.setenv("MASKCONTRAST_MSRC_URL", server.url("/msrc.zip"))
    monkeypatch.setenv("MASKCONTRAST_MSRC_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # faiss and torch threads spin against each other on a busy CPU
    monkeypatch.setattr(demo, "download_msrc", _backoff_0(demo.download_msrc))
    out = tmp_path / "out"
    headline = demo.main(["--tiny", "--out", str(out), "--threads", "1"])
    err = capsys.readouterr().err
    data = fresh_env.resolve() / "msrc_v2"
    assert "msrc_objcategimagedatabase_v2.zip: 100%" in err  # the progress bar
    assert [r for _, r in server.requests] == [None, f"bytes={len(archive) // 2}-"]
    assert build_dataset("msrc", data).layout == "official" and len(build_dataset("msrc", data)) == 24
    assert json.loads((out / "demo.json").read_text())["settings"]["data"] == str(data)
    summary = (out / "report" / "summary.md").read_text()
    assert f"Data: MSRC-v2 at `{data}` (24 images" in summary
    assert set(headline) >= {"kmeans_prototype_miou", "kmeans_prototype_fused_miou", "kmeans_pixel_miou", "linear_miou"}
    assert all(np.isfinite(v) for v in headline.values())
    # both saliency sources named, the segment page linked and copied into the report
    assert "the model's saliency head" in summary and "fused masks of `saliency.generate`" in summary
    assert "(segment/index.html)" in summary and (out / "report" / "segment" / "index.html").is_file()
    assert len(list((out / "report" / "overlays").glob("*.png"))) >= 1
    # a second run finds the data in the cache: no request, every stage skipped
    n = len(server.requests)
    demo.main(["--tiny", "--out", str(out), "--threads", "1"])
    assert len(server.requests) == n


def _backoff_0(fn):
    def call(*args, **kwargs):
        return fn(*args, **{**kwargs, "backoff_s": 0.0})

    return call


@pytest.mark.data
def test_report_names_both_saliency_sources_and_links_the_segment_page(shared_root, tmp_path):
    """write_report on hand-made stage outputs (the stages themselves: the end-to-end test)."""
    from maskcontrast.data import write_mask

    data = shared_root("msrc")
    ds = build_dataset("msrc", data)
    sid = ds.ids[0]
    h, w = ds.load(sid).image.shape[:2]
    d = demo.Demo(out=tmp_path / "out", data=data, budget=demo.PRESETS["tiny"])
    classes = list(ds.info.classes)

    def km(miou):
        return {
            "miou_mean": miou,
            "miou_std": 0.01,
            "pixel_acc": 0.5,
            "k": 21,
            "seeds": [{}],
            "n_images": 5,
            "per_class": {c: miou for c in classes},
        }

    for name, miou in (("prototype", 0.1), ("prototype_fused", 0.2), ("pixel", 0.05)):
        (d.eval_dir).mkdir(parents=True, exist_ok=True)
        (d.eval_dir / f"kmeans_{name}.json").write_text(json.dumps(km(miou)))
    (d.eval_dir / "linear").mkdir()
    (d.eval_dir / "linear" / "results.json").write_text(
        json.dumps({"miou": 0.3, "per_class": {c: 0.3 for c in classes}, "n_train": 4, "n_val": 1})
    )
    d.segment_dir.mkdir()
    (d.segment_dir / "segment.json").write_text(
        json.dumps({"n_segmented": 1, "k": 2, "scores": {"miou": 0.25, "pixel_acc": 0.6}})
    )
    (d.segment_dir / "index.html").write_text("<html></html>")
    label = np.zeros((h, w), np.uint8)
    for folder in ("linear/vis/pred", "kmeans_prototype_vis/pred", "kmeans_prototype_fused_vis/pred"):
        write_mask(d.eval_dir / folder / f"0000_{sid}.png", label)
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 255
    write_mask(d.masks / f"{sid}.png", mask)
    headline = demo.write_report(d)
    summary = (d.report_dir / "summary.md").read_text()
    assert headline["kmeans_prototype_fused_miou"] == 0.2 and headline["kmeans_prototype_miou"] == 0.1
    assert "object masks = the model's saliency head | 10.0 ± 1.0" in summary
    assert "object masks = the fused masks of `saliency.generate` | 20.0 ± 1.0" in summary
    assert "[segment/index.html](segment/index.html)" in summary and "mIoU 25.0" in summary
    assert (d.report_dir / "segment" / "index.html").is_file()
    from PIL import Image

    panel = Image.open(d.report_dir / "overlays" / f"{sid}.png")
    assert panel.size == (6 * w + 5 * 4, h)  # image | gt | fused mask | K-means x 2 | linear
