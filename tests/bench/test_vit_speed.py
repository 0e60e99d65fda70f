"""bench/vit_speed.py runs end to end on tiny models (the measurement itself needs a quiet machine)."""

import vit_speed


def test_tiny_run_interleaves_three_backbones_and_reports_them(capsys, tmp_path):
    rows = vit_speed.main(["--tiny", "--threads", "1", "--json", str(tmp_path / "r.json")])
    assert [r["config"] for r in rows] == ["vit_small_patch16_224", "vit_small_patch8_224", "resnet18:8"]
    for r in rows:
        assert r["images_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["params"] > 0
    assert rows[0]["params"] < rows[2]["params"]  # the tiny ViT is much smaller than ResNet-18
    out = capsys.readouterr().out
    assert "| vit_small_patch8_224 |" in out and (tmp_path / "r.json").is_file()
