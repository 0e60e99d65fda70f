"""StageRunner: runs ``python -m`` stages, records them, skips finished ones, reports failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcontrast.stages import StageFailed, StageRunner


def test_runs_records_and_skips_finished_stages(tmp_path: Path) -> None:
    times = tmp_path / "stages.json"
    runner = StageRunner(times, cwd=tmp_path)
    rec = runner.run("plat", ["platform"])
    assert not rec.skipped and rec.seconds > 0
    assert rec.shell == "python -m platform"
    saved = json.loads(times.read_text())
    assert saved["plat"]["command"] == "python -m platform"

    again = StageRunner(times, cwd=tmp_path)  # a resumed run: same command -> skipped, time kept
    rec2 = again.run("plat", ["platform"])
    assert rec2.skipped and rec2.seconds == pytest.approx(saved["plat"]["seconds"])
    assert again.finished == saved
    changed = again.run("plat", ["platform", "--terse"])  # a changed command runs again
    assert not changed.skipped
    assert json.loads(times.read_text())["plat"]["command"] == "python -m platform --terse"


def test_done_file_skips_and_failure_names_the_stage(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path / "stages.json", cwd=tmp_path)
    done = tmp_path / "result.json"
    done.write_text("{}")
    assert runner.run("eval", ["no_such_module_xyz"], done=done).skipped
    with pytest.raises(StageFailed, match="stage 'broken' failed"):
        runner.run("broken", ["no_such_module_xyz"])
    assert "broken" not in runner.finished  # a failed stage is not recorded as finished


def test_records_the_cpu_time_of_the_stage(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path / "stages.json", cwd=tmp_path)
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    (tmp_path / "busy.py").write_text(busy)
    rec = runner.run("busy", ["busy"])
    assert 0.25 < rec.cpu_seconds < rec.seconds + 1.0  # the child's own CPU time, not this process's
    assert runner.finished["busy"]["cpu_seconds"] == pytest.approx(rec.cpu_seconds)
    assert StageRunner(tmp_path / "stages.json", cwd=tmp_path).run("busy", ["busy"]).cpu_seconds == rec.cpu_seconds
