"""bench/quality.py: presets, reusing another run's (b) (--moco-run) and evaluating a subset (--eval-models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import quality  # bench/quality.py (bench/ is on sys.path: tests/bench/conftest.py)


def test_presets_fill_defaults_and_flags_win() -> None:
    args = quality.parse_args(["--preset", "cpu", "--pretrain-steps", "7"])
    assert args.image_size == 64 and args.pretrain_steps == 7 and args.train_seeds == [0]
    assert quality.parse_args(["--preset", "gpu"]).arch == "resnet50"
    assert quality.steps(720, 0.125) == 90 and quality.steps(3, 0.01) == 1
    with pytest.raises(SystemExit):
        quality.parse_args(["--models", "d"])  # (d) needs (b)
    with pytest.raises(SystemExit):
        quality.parse_args(["--pretrain-set", "no_equals_sign"])


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


def test_a_failed_evaluation_is_recorded_and_the_others_still_run(tmp_path: Path, monkeypatch) -> None:
    from maskcontrast.stages import StageFailed

    monkeypatch.setenv("MASKCONTRAST_DATA", str(tmp_path))
    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--models", "a", "b"]
    q = quality.Quality(quality.parse_args(argv), argv)
    ran: list[str] = []

    def run(name, command, done=None):
        ran.append(name)
        if name == "eval:a:pet:prototype-folder":  # e.g. eval.kmeans without faiss
            raise StageFailed(f"stage '{name}' failed (exit 1); command:\n  python -m eval.kmeans ...")

    monkeypatch.setattr(q.runner, "run", run)
    q.evaluate({"a": tmp_path / "a.pt", "b": tmp_path / "b.pt"})
    assert ran[0] == "eval:a:pet:prototype-folder" and len(ran) == 4  # the linear probes and (b) still ran
    assert list(q.failed) == ["eval:a:pet:prototype-folder"]
    report = q.report(["a", "b"])
    assert report["failed_stages"] == q.failed
    assert "### Failed stages" in (tmp_path / "run" / "quality.md").read_text()


def test_eval_models_restricts_the_evaluations(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASKCONTRAST_DATA", str(tmp_path))
    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--models", "b", "d", "--eval-models", "d"]
    q = quality.Quality(quality.parse_args(argv), argv)
    ran: list[str] = []
    monkeypatch.setattr(q.runner, "run", lambda name, command, done=None: ran.append(name))
    q.evaluate({"b": tmp_path / "b.pt", "d_seed0": tmp_path / "d.pt"})
    assert ran and all(name.startswith("eval:d_seed0:") for name in ran)
    with pytest.raises(SystemExit):
        quality.parse_args(["--eval-models", "z"])
