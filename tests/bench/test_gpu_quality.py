"""bench/gpu_quality.py: the pack of the shared images, its unpacking, and the --tiny run of the
whole protocol on a CPU (bench/ is on sys.path: tests/bench/conftest.py)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import gpu_quality
import numpy as np
import pytest
from PIL import Image


def test_resize_keeps_labels_exact_and_never_upsamples() -> None:
    label = Image.fromarray(np.kron(np.array([[0, 5], [7, 255]], np.uint8), np.ones((100, 150), np.uint8)), "L")
    small = gpu_quality.resized(label, 50, label=True)
    assert small.size == (75, 50)  # 300 x 200 (w x h): shorter side 200 -> 50, aspect kept
    assert set(np.unique(np.asarray(small))) == {0, 5, 7, 255}  # nearest: no new values
    assert gpu_quality.resized(label, 400, label=True) is label


def test_id_lists_are_filtered_and_other_lines_kept() -> None:
    text = "# header\na 1 1\nb 2 1\nc 3 2\n"
    assert gpu_quality.filter_id_lines(text, {"a", "c"}, {"a", "b", "c"}) == "# header\na 1 1\nc 3 2\n"
    assert gpu_quality.filter_id_lines("cat\ndog\n", {"a"}, {"a", "b"}) == "cat\ndog\n"  # not an id list
    assert gpu_quality.select_ids(list("abcdefgh"), 4) == ["a", "c", "e", "g"]
    assert gpu_quality.select_ids(list("abc"), 0) == ["a", "b", "c"]


@pytest.mark.data
@pytest.mark.slow
def test_pack_unpack_and_tiny_run(shared_root, tmp_path: Path, monkeypatch) -> None:
    msrc = shared_root("msrc")
    shared_root("pet")
    monkeypatch.setenv("MASKCONTRAST_DATA", str(msrc.parent))
    pack = tmp_path / "pack.tar"
    gpu_quality.main(["--pack", str(pack), "--sets", "msrc", "pet", "--limit", "8", "--pack-size", "64"])
    with pytest.raises(SystemExit, match="exists"):  # never overwritten
        gpu_quality.main(["--pack", str(pack), "--sets", "msrc"])
    with tarfile.open(pack) as tar:
        names = tar.getnames()
    assert not any(n.endswith(".mat") for n in names)
    assert sum(n.startswith("msrc_v2/Images/") for n in names) == 8

    out = tmp_path / "run"
    result = gpu_quality.run(gpu_quality.parse_args(["--from-pack", str(pack), "--out", str(out), "--tiny"]))
    from maskcontrast import load_model
    from maskcontrast.data import build_dataset

    ds = build_dataset("msrc", out / "data" / "msrc_v2")
    assert len(ds.ids) == 8 and ds[0].image.shape[0] == 64  # photos back in the reader's PNG layout
    assert (out / "data" / "msrc_v2" / "Images" / f"{ds.ids[0]}.png").is_file()
    assert result["device"]["amp_bf16"]["grad_finite"]
    report = json.loads((out / "quality" / "quality.json").read_text())
    for model in ("a", "b", "c", "d"):
        assert report["datasets"]["pet"][model]["prototype_folder"], model  # every model evaluated
        load_model(out / "quality" / "models" / f"{model}.pt", device="cpu")
    assert json.loads((out / "quality" / "models" / "eval.json").read_text())["size"] == 48
    assert set(report["training"]) == {"c_seed0", "d_seed0"}
