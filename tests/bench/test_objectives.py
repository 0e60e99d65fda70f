"""bench/objectives.py: rows (e)-(h) of the quality protocol (the commands are checked, not run)."""

from __future__ import annotations

import json
from pathlib import Path

import objectives
import pytest
import quality


def _setup(tmp_path: Path, monkeypatch, *models: str):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("MASKCONTRAST_DATA", str(data))
    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--models", *models]
    q = quality.Quality(quality.parse_args(argv), argv)
    ran: list[tuple[str, list[str]]] = []

    def fake_run(name, command, done=None):
        ran.append((name, command))
        Path(done).parent.mkdir(parents=True, exist_ok=True)
        (Path(done).parent / "last.pt").write_bytes(name.encode())

    monkeypatch.setattr(q.runner, "run", fake_run)
    return q, ran


def test_the_cpu_preset_trains_every_row_and_dependencies_are_checked() -> None:
    args = quality.parse_args(["--preset", "cpu"])
    assert args.models == ["a", "b", "d", "e", "f", "g", "h"]
    assert (args.detcon_steps, args.densecl_steps, args.stego_steps) == (1200, 975, 600)
    for bad in (["--models", "h"], ["--models", "e", "g"], ["--models", "f", "g"]):
        with pytest.raises(SystemExit):
            quality.parse_args(bad)


def test_g_waits_for_e_and_f_and_starts_from_the_better(tmp_path: Path, monkeypatch) -> None:
    q, ran = _setup(tmp_path, monkeypatch, "b", "e", "f", "g", "h")
    models = {"b": tmp_path / "b.pt"}
    out = objectives.train_rows(q, models, "efgh")
    assert [n for n, _ in ran] == ["train:e", "train:f", "train:h"]  # (g): (e) and (f) not evaluated yet
    assert ran[0][1][0] == "maskcontrast.detcon" and ran[1][1][0] == "maskcontrast.densecl"
    assert f"model.backbone.init={models['b']}" in ran[2][1]  # (h) on the frozen (b)
    assert set(out) == {"e", "f", "h"}
    for row, score in (("e", 0.20), ("f", 0.30)):
        for ev in q.args.eval_sets:
            js = q.out / "eval" / row / ev / "kmeans_prototype_folder.json"
            js.parent.mkdir(parents=True, exist_ok=True)
            js.write_text(json.dumps({"miou_mean": score}))
    assert objectives.choose_start(q) == "f"
    ran.clear()
    out = objectives.train_rows(q, models, "efgh")
    g = next(c for n, c in ran if n == "train:g")
    assert g[0] == "maskcontrast.pretrain" and f"model.backbone.init={out['f']}" in g
    assert (q.out / "train" / "g_start.txt").read_text().strip() == "f"
