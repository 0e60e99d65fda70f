"""bench/gpu_quality.py: the pack of the shared images, its unpacking, and the --tiny run of the
whole protocol on a CPU (bench/ is on sys.path: tests/bench/conftest.py)."""

from __future__ import annotations

import json
import os
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


def test_bundle_fetches_pinned_wheels_packs_small_and_respects_the_size_limit(tmp_path: Path, monkeypatch) -> None:
    from importlib import metadata

    calls: list[list[str]] = []
    packed: list = []

    def fake_pip(args: list[str]) -> None:
        calls.append(args)
        dest = Path(args[args.index("-d") + 1])
        (dest / f"w{len(calls)}.whl").write_bytes(b"w" * 1000)

    def fake_pack(args) -> Path:
        packed.append(args)
        Path(args.pack).write_bytes(b"p" * 1000)
        return Path(args.pack)

    monkeypatch.setattr(gpu_quality, "pip", fake_pip)
    monkeypatch.setattr(gpu_quality, "pack", fake_pack)
    target = tmp_path / "bundle"
    gpu_quality.main(["--bundle", str(target), "--bundle-python", "3.11", "3.12"])
    info = json.loads((target / "bundle.json").read_text())
    assert set(info["packages"]) == {"kornia", "omegaconf", "kornia_rs", "PyYAML"}  # no faiss unless asked
    assert calls[0][:3] == ["download", "--no-deps", "--only-binary=:all:"]
    assert f"kornia=={metadata.version('kornia')}" in calls[0]  # the versions tested here
    assert [c[c.index("--python-version") + 1] for c in calls[1:]] == ["3.11", "3.12"]
    assert f"kornia_rs=={metadata.version('kornia_rs')}" in calls[1]
    assert (packed[0].pack_size, packed[0].jpeg_quality) == (192, 85)
    assert (target / "pack.tar").is_file() and len(list((target / "wheels").iterdir())) == 3
    with pytest.raises(SystemExit, match="exists"):
        gpu_quality.main(["--bundle", str(target)])
    with pytest.raises(SystemExit, match=r"over --max-mib 0\.5"):  # the repository alone is larger
        gpu_quality.main(["--bundle", str(tmp_path / "small"), "--max-mib", "0.5"])
    assert not (tmp_path / "small").exists() and not (tmp_path / "small.partial").exists()


def _wheel(folder: Path, name: str, module: str) -> None:
    """A minimal pure-Python wheel of ``module`` (pip installs it offline)."""
    import zipfile

    dist = f"{name}-0.1.dist-info"
    files = {
        f"{module}/__init__.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-0.1-py3-none-any.whl", "w") as z:
        for f, text in files.items():
            z.writestr(f, text)


def test_from_bundle_installs_only_what_is_missing_offline_and_runs_the_pack(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    folder = tmp_path / "bundle"
    (folder / "wheels").mkdir(parents=True)
    _wheel(folder / "wheels", "mcdummy", "mcdummy_mod")
    packages = {
        "mcdummy": {"version": "0.1", "module": "mcdummy_mod", "binary": False},
        "present": {"version": "1.0", "module": "json", "binary": False},
    }  # importable: not installed
    (folder / "bundle.json").write_text(json.dumps({"packages": packages}))
    real_run = subprocess.run
    runs: list = []

    def run(command, *a, **k):
        if command[1:3] == ["-m", "pip"]:
            return real_run(command, *a, **k)  # pip itself, with --no-index: no network
        runs.append((command, k["env"]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(gpu_quality.subprocess, "run", run)
    out = tmp_path / "out"
    gpu_quality.main(["--from-bundle", str(folder), "--out", str(out), "--until", "masks", "--tiny"])
    site = folder / "site"
    assert (site / "mcdummy_mod" / "__init__.py").is_file() and not (site / "json").exists()
    command, env = runs[0]
    assert command[2:] == ["--from-pack", str(folder / "pack.tar"), "--out", str(out), "--until", "masks", "--tiny"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(site)
    mtime = (site / ".installed.json").stat().st_mtime
    gpu_quality.main(["--from-bundle", str(folder), "--out", str(out)])  # installed before: pip is not run again
    assert (site / ".installed.json").stat().st_mtime == mtime and len(runs) == 2
    with pytest.raises(SystemExit, match=r"no bundle\.json"):
        gpu_quality.main(["--from-bundle", str(tmp_path), "--out", str(out)])
