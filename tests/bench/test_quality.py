"""bench/quality.py: reusing another run's (b) (--moco-run) and evaluating a subset (--eval-models)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_quality():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("quality", BENCH / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _load_quality()


def test_moco_run_is_used_as_b_without_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASKCONTRAST_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    other = tmp_path / "other" / "train" / "moco"
    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--models", "b", "--moco-run", str(other)]
    q = quality.Quality(quality.parse_args(argv), argv)
    with pytest.raises(SystemExit, match="no finished MoCo stage"):  # not finished: refused, nothing trained
        q.train()
    other.mkdir(parents=True)
    (other / "last.pt").write_bytes(b"weights")
    (other / "done").touch()
    models = q.train()
    assert models == {"b": other / "last.pt"}
    assert (tmp_path / "run" / "models" / "b.pt").read_bytes() == b"weights"
    assert not (tmp_path / "run" / "train" / "moco").exists()  # no MoCo of its own
    assert "train:moco" not in q.runner.finished


def test_eval_models_restricts_the_evaluations(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASKCONTRAST_DATA", str(tmp_path))
    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--models", "b", "d", "--eval-models", "d"]
    q = quality.Quality(quality.parse_args(argv), argv)
    ran: list[str] = []
    monkeypatch.setattr(q.runner, "run", lambda name, command, done=None: ran.append(name))
    q.evaluate({"b": tmp_path / "b.pt", "d_seed0": tmp_path / "d.pt"})
    assert ran and all(name.startswith("eval:d_seed0:") for name in ran)
    with pytest.raises(SystemExit):
        quality.parse_args(["--eval-models", "e"])
