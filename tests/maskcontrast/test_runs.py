"""The run layer: claiming a folder, stale temporaries, the lock, falling back from a damaged checkpoint."""

import json

import pytest
import torch

from maskcontrast.models import CheckpointError, read_checkpoint
from maskcontrast.run_state import save_state
from maskcontrast.runs import (
    ChangedIdentityError,
    RunFolderError,
    RunLayout,
    claim_run_folder,
    identity_diff,
    remove_stale_temporaries,
)

TRAIN = RunLayout("run", owned=("config.yaml", "last.pt", "tb"), state=("last.pt",), resume_hint="--resume")
PROBE = RunLayout(
    "probe run",
    owned=("state.pt", "run.json", "results.json"),
    state=("state.pt",),
    identity_file="run.json",
    finished="results.json",
    writer="eval.linear",
)


def test_fresh_refused_resumed_and_overwritten(tmp_path):
    run = tmp_path / "run"
    claim = claim_run_folder(run, TRAIN)
    assert not claim.resume and not run.exists()  # nothing is touched before prepare()
    claim.prepare()
    (run / "last.pt").write_bytes(b"x")
    (run / "mine.txt").write_text("keep")
    with pytest.raises(RunFolderError, match=r"--resume.*--overwrite") as err:
        claim_run_folder(run, TRAIN)
    assert str(run) in str(err.value) and isinstance(err.value, FileExistsError)
    assert claim_run_folder(run, TRAIN, resume=True).resume
    claim = claim_run_folder(run, TRAIN, overwrite=True)
    claim.prepare()
    assert not (run / "last.pt").exists() and (run / "mine.txt").read_text() == "keep"  # only what a run owns


def test_a_run_that_failed_before_its_first_checkpoint_is_rerun_without_overwrite(tmp_path):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    claim = claim_run_folder(run, TRAIN)
    assert not claim.resume and {p.name for p in claim.remove} == {"config.yaml", "tb"}
    claim.prepare()
    assert not (run / "config.yaml").exists() and not (run / "tb").exists()


def test_identity_decides_reuse_and_names_the_changed_keys(tmp_path):
    run = tmp_path / "probe"
    claim_run_folder(run, PROBE, identity={"lr": 0.1, "epochs": 2}).prepare()
    assert json.loads((run / "run.json").read_text()) == {"lr": 0.1, "epochs": 2}
    (run / "state.pt").write_bytes(b"x")
    same = claim_run_folder(run, PROBE, identity={"epochs": 2, "lr": 0.1})
    assert same.reuse and same.resume
    with pytest.raises(ChangedIdentityError, match=r"other settings.*lr: 0\.1 -> 0\.5"):
        claim_run_folder(run, PROBE, identity={"lr": 0.5, "epochs": 2})
    (run / "results.json").write_text("{}")
    with pytest.raises(RunFolderError, match="finished"):
        claim_run_folder(run, PROBE, identity={"lr": 0.1, "epochs": 2})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"no run\.json, so it was not written by eval\.linear"):
        claim_run_folder(foreign, PROBE, identity={})
    with pytest.raises(RunFolderError, match="not a folder"):
        claim_run_folder(foreign / "notes.txt", PROBE)


def test_identity_diff_is_nested():
    assert identity_diff({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "c": 2}) == ["a.b: 1 -> 2"]
    assert identity_diff({"a": 1}, {"a": 1}) == []


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"partial" * 100)
    (tmp_path / "last.pt").write_bytes(b"good")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.pt.abc123.tmp"]
    assert (tmp_path / "last.pt").read_bytes() == b"good"
    (tmp_path / ".state.pt.x.tmp").write_bytes(b"partial")
    claim_run_folder(tmp_path, TRAIN, resume=True).prepare()
    assert not list(tmp_path.glob(".*.tmp"))


class Foo:
    pass


def test_a_checkpoint_with_code_is_refused_without_the_unsafe_hint(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": Foo()}, path)
    with pytest.raises(CheckpointError, match="holds Python code or objects") as err:
        read_checkpoint(path)
    assert "refused" in str(err.value) and "likely succeed" not in str(err.value)
    assert "weights_only=False" not in str(err.value) and err.value.__cause__ is None


# ----------------------------------------------------------------------------------------------
# One writer per run folder
# ----------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from maskcontrast.runs import RunLayout, claim_run_folder
claim = claim_run_folder(sys.argv[1], RunLayout("test run", owned=("a.txt",), state=("a.txt",)), resume=True)
claim.prepare()
print("holding", flush=True)
time.sleep(600)
"""


def _holder(folder):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_folder_in_use_is_refused_and_a_dead_holders_lock_does_not_block(tmp_path):
    from maskcontrast.runs import LOCK_FILE, RunFolderInUse

    folder = tmp_path / "run"
    layout = RunLayout("test run", owned=("a.txt",), state=("a.txt",))
    proc = _holder(folder)
    try:
        with pytest.raises(RunFolderInUse) as info:
            claim_run_folder(folder, layout, resume=True)
        assert str(folder) in str(info.value) and f"pid {proc.pid}" in str(info.value)
        assert "-c" in str(info.value)  # the other command
        with pytest.raises(RunFolderInUse):
            claim_run_folder(folder, layout, overwrite=True)  # not even --overwrite
    finally:
        proc.kill()
        proc.wait()
    assert (folder / LOCK_FILE).is_file()  # left behind by the killed holder ...
    claim = claim_run_folder(folder, layout, resume=True)  # ... and blocks nobody
    assert not claim.resume and not claim.remove  # the lock file is not "a run"
    claim.prepare()
    claim.prepare()  # the same process may claim it again
    claim.release()


def test_training_refuses_a_folder_in_use_before_touching_it(tmp_path):
    from maskcontrast.train import train
    from maskcontrast.train_folder import RunDirError

    from .test_train import build, make_image_folder, tiny_cfg

    data = make_image_folder(tmp_path / "data", n=4)
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        (run / "a.txt").write_text("the other process's file\n")
        cfg = tiny_cfg(data, run, "trainer.max_steps=1", "trainer.overwrite=true")
        with pytest.raises(RunDirError, match=f"in use by pid {proc.pid}"):
            train(cfg, build(cfg), "pretrain")
        assert (run / "a.txt").read_text() == "the other process's file\n"
        assert not (run / "config.yaml").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_damaged_state_falls_back_to_the_previous_save_and_is_kept(tmp_path):
    from maskcontrast.models import CheckpointError
    from maskcontrast.run_state import checkpoint_problem, load_state
    from maskcontrast.runs import load_state_or_previous

    path = tmp_path / "state.pt"
    save_state(path, {"epoch": 1, "w": torch.ones(3)}, keep_previous=True)
    assert not (tmp_path / "state.prev.pt").exists()
    save_state(path, {"epoch": 2, "w": torch.full((3,), 2.0)}, keep_previous=True)
    assert load_state(tmp_path / "state.prev.pt")["epoch"] == 1 and checkpoint_problem(path) is None
    cut = path.read_bytes()[:100]
    path.write_bytes(cut)
    assert "failed" in checkpoint_problem(path) or "Error" in checkpoint_problem(path)
    assert load_state_or_previous(path)["epoch"] == 1
    assert (tmp_path / "state.damaged.pt").read_bytes() == cut and not path.exists()
    # nothing to fall back on: the error names the file and the way out, and keeps it
    other = tmp_path / "other.pt"
    other.write_bytes(cut)
    with pytest.raises(CheckpointError, match=r"other\.pt.*damaged.*--overwrite"):
        load_state_or_previous(other)
    assert other.read_bytes() == cut


def test_an_unwritable_run_folder_is_refused_by_name(tmp_path, monkeypatch):
    """(Tests run as root here, where chmod does not block: the refusal of the OS is simulated.)"""
    import os

    from maskcontrast import runs

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(runs.LOCK_FILE) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(runs.os, "open", read_only)
    folder = tmp_path / "ro"
    claim = claim_run_folder(folder, RunLayout("test run", owned=("a.txt",)))
    with pytest.raises(RunFolderError, match=r"run folder .*ro cannot be written \(Permission denied\)"):
        claim.prepare()
