"""Preemption (SIGTERM/SIGINT) and failing peers: a complete checkpoint at the current step, the
documented exit status, a bit-exact resume, and every process of a distributed run ending."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskcontrast import preemption
from maskcontrast.models import read_checkpoint
from maskcontrast.objectives import MaskContrastObjective
from maskcontrast.preemption import Preempted, exit_status
from maskcontrast.train import train

from .test_train import build, make_image_folder, state_of, tiny_cfg

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("synthetic"))


def test_exit_status_and_message():
    assert exit_status(signal.SIGTERM) == 143 and exit_status(signal.SIGINT) == 130
    err = Preempted(signal.SIGTERM, "pretrain training", step=7, saved="run/last.pt")
    assert isinstance(err, SystemExit) and not isinstance(err, Exception) and err.code == 143
    assert "SIGTERM at step 7" in str(err) and "run/last.pt" in str(err)


def test_stop_if_requested_raises_the_logged_stop_only_after_a_signal(caplog):
    import logging

    logger = logging.getLogger("t.stop")
    with pytest.raises(Preempted) as info, preemption.section("pass"):  # the stop leaves the section
        preemption.stop_if_requested("pass", step="after 3 images", logger=logger)  # no signal: goes on
        os.kill(os.getpid(), signal.SIGTERM)
        preemption.stop_if_requested("pass", step="after 4 images", saved="/x/out", logger=logger)
    assert info.value.code == 143
    assert str(info.value) == (
        "pass stopped by SIGTERM (after 4 images); progress saved in /x/out; rerun the same command (exit status 143)"
    )
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelname == "WARNING"] == [
        ("t.stop", str(info.value))
    ]


def test_section_records_the_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.section("test"):
        assert preemption.requested() is None
        os.kill(os.getpid(), signal.SIGINT)  # recorded, not a KeyboardInterrupt
        time.sleep(0.01)
        assert preemption.requested() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second one stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGTERM) == before
    assert preemption.requested() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_epoch_saves_that_step_and_resumes_bit_exactly(data, tmp_path, sig):
    """The signal arrives during step 2 (of 3 per epoch, no periodic saves): step 2 is finished,
    last.pt holds step 2, the status is 128 + signal; the resumed run equals an uninterrupted one."""
    full = tiny_cfg(data, tmp_path / "full", "trainer.max_steps=5")
    train(full, build(full), "pretrain")

    cfg = tiny_cfg(data, tmp_path / "cut", "trainer.max_steps=5")
    calls = {"n": 0}

    class SignalInStepTwo(MaskContrastObjective):
        def forward(self, views):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), sig)
            return super().forward(views)

    with pytest.raises(Preempted) as info:
        train(cfg, lambda: SignalInStepTwo(cfg.model, cfg.objective), "pretrain")
    assert info.value.code == 128 + sig and info.value.step == 2
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["trainer"]["step"] == 2
    assert f"stopped by {signal.Signals(sig).name} at step 2" in (tmp_path / "cut" / "train.log").read_text()
    assert preemption.requested() is None and signal.getsignal(sig) is not preemption._handler

    resumed = tiny_cfg(data, tmp_path / "cut", "trainer.max_steps=5", "trainer.resume=auto")
    assert train(resumed, build(resumed), "pretrain").steps == 5
    a, b = state_of(tmp_path / "full" / "last.pt"), state_of(tmp_path / "cut" / "last.pt")
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_sigterm_to_the_process_group_of_the_cli(data, tmp_path):
    """A scheduler's SIGTERM reaches the trainer and its DataLoader worker: the command ends with
    143, says at which step, and last.pt holds that step."""
    run = tmp_path / "cli"
    src = f"data.sources=[{{name: image_folder, root: {data / 'images'}, masks: {data / 'masks'}}}]"
    cmd = [
        sys.executable,
        "-m",
        "maskcontrast.pretrain",
        "--config",
        "configs/pretrain/tiny.yaml",
        src,
        f"trainer.run_dir={run}",
        "data.image_size=32",
        "trainer.max_steps=400",
        "trainer.progress=false",
        "trainer.threads=1",
        "data.num_workers=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / "last.pt").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)  # the first epoch (3 steps) ended
        assert proc.poll() is None, proc.stderr.read()
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    step = read_checkpoint(run / "last.pt")["trainer"]["step"]
    assert 3 <= step < 400
    assert f"stopped by SIGTERM at step {step}" in err and "--resume" in err


# ----------------------------------------------------------------------------------------------
# A damaged checkpoint
# ----------------------------------------------------------------------------------------------


def test_a_truncated_last_pt_resumes_from_the_previous_complete_one_and_is_kept(data, tmp_path, caplog):
    from maskcontrast.train_folder import RunDirError

    run = tmp_path / "run"
    cfg = tiny_cfg(data, run, "trainer.max_steps=4", "trainer.save_every_steps=1")
    train(cfg, build(cfg), "pretrain")
    assert read_checkpoint(run / "last.prev.pt")["trainer"]["step"] == 3  # the save before the last one
    good = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(good[: len(good) // 2])  # a copy cut short
    more = tiny_cfg(data, run, "trainer.max_steps=5", "trainer.save_every_steps=1", "trainer.resume=auto")
    assert train(more, build(more), "pretrain").steps == 5
    assert (run / "last.damaged.pt").read_bytes() == good[: len(good) // 2]  # kept, never deleted
    assert "last.pt is damaged" in caplog.text and "resuming from" in caplog.text and "last.prev.pt" in caplog.text
    assert read_checkpoint(run / "last.pt")["trainer"]["step"] == 5

    # nothing complete left: one error naming the files and the way out; nothing is deleted
    for p in (run / "last.pt", run / "last.prev.pt"):
        p.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(RunDirError, match=r"last\.pt is damaged.*--overwrite"):
        train(more, build(more), "pretrain")
    assert (run / "last.pt").read_bytes() == b"PK\x03\x04 not a whole zip"


def test_a_corrupted_member_is_found_and_the_epoch_checkpoint_is_used(data, tmp_path, caplog):
    run = tmp_path / "run"
    cfg = tiny_cfg(data, run, "trainer.max_steps=4", "trainer.save_every_epochs=1")
    train(cfg, build(cfg), "pretrain")
    raw = bytearray((run / "last.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside a tensor: the file still opens as a zip
    (run / "last.pt").write_bytes(bytes(raw))
    (run / "last.prev.pt").unlink()
    more = tiny_cfg(data, run, "trainer.max_steps=4", "trainer.resume=auto")
    res = train(more, build(more), "pretrain")
    assert res.steps == 4  # resumed at step 3 (epoch_0001.pt) and ran step 4 again
    assert "epoch_0001.pt" in caplog.text and (run / "last.damaged.pt").is_file()


# ----------------------------------------------------------------------------------------------
# A failing or dying process of a distributed run (2 gloo processes)
# ----------------------------------------------------------------------------------------------

RANK = """
import os, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]  # this checkout's code, and the helpers of test_train
import torch, torch.distributed as dist
from test_train import tiny_cfg, build
from pathlib import Path
import maskcontrast.train as T
rank = int(sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK=str(rank), LOCAL_RANK=str(rank),
                  WORLD_SIZE="2", MASKCONTRAST_PEER_TIMEOUT="10")
torch.set_num_threads(1)
dist.init_process_group("gloo")  # kept open by this process: a hung peer would wait on it for 30 minutes
cfg = tiny_cfg(Path(sys.argv[3]), Path(sys.argv[4]), "trainer.max_steps=200", "trainer.save_every_steps=2",
               "trainer.device=cpu")
real, calls = T.save_state, dict(n=0)
def failing_save(path, state, **kw):
    calls["n"] += 1
    if calls["n"] == 2 and sys.argv[5] == "raise":
        raise OSError(28, "No space left on device (simulated)")
    real(path, state, **kw)
    print("saved", state["trainer"]["step"], flush=True)
T.save_state = failing_save
try:
    T.train(cfg, build(cfg), "pretrain")
except OSError as err:
    print("rank", rank, "failed:", err, flush=True)
    time.sleep(300)  # a process that lingers (a notebook, a wrapper): its peer must still end
"""


def _two_ranks(data, tmp_path, mode):
    from .test_train import _free_port

    script = tmp_path / "rank.py"
    script.write_text(RANK.format(repo=str(REPO), tests=str(Path(__file__).parent)))
    port, run = str(_free_port()), tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(r), port, str(data), str(run), mode],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ], run


@pytest.mark.slow
def test_rank0_save_raising_ends_the_other_rank_within_seconds(data, tmp_path):
    (r0, r1), run = _two_ranks(data, tmp_path, "raise")
    try:
        assert r0.stdout.readline().startswith("saved 2")
        assert "failed" in r0.stdout.readline()
        t_fail = time.time()
        _, err = r1.communicate(timeout=90)
        waited = time.time() - t_fail
        assert r1.returncode == preemption.PEER_FAILED_STATUS, err
        assert waited < 30, f"rank 1 ended {waited:.0f} s after rank 0 failed"
        assert "process 0 failed: OSError" in err and "No space left" in err
        assert read_checkpoint(run / "last.pt")["trainer"]["step"] == 2  # the last complete checkpoint
    finally:
        for p in (r0, r1):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_a_killed_rank_ends_the_other_one_and_keeps_the_checkpoint(data, tmp_path):
    (r0, r1), run = _two_ranks(data, tmp_path, "keep")
    try:
        assert r0.stdout.readline().startswith("saved 2")
        r1.kill()
        t_kill = time.time()
        r0.communicate(timeout=90)
        assert r0.returncode != 0 and time.time() - t_kill < 60
        step = read_checkpoint(run / "last.pt")["trainer"]["step"]
        assert step >= 2 and step % 2 == 0
    finally:
        for p in (r0, r1):
            p.kill()
            p.wait()


# ----------------------------------------------------------------------------------------------
# A resume with a changed config
# ----------------------------------------------------------------------------------------------


def test_resume_with_a_changed_model_or_objective_is_refused_before_anything_changes(data, tmp_path):
    from maskcontrast.config_checks import ConfigError

    run = tmp_path / "run"
    cfg = tiny_cfg(data, run, "trainer.max_steps=2")
    train(cfg, build(cfg), "pretrain")
    before = (run / "last.pt").read_bytes()
    for change, key in (
        ("model.embed_dim=16", "model.embed_dim"),
        ("objective.temperature=0.2", "objective.temperature"),
        ("data.image_size=48", "data.image_size"),
    ):
        bad = tiny_cfg(data, run, "trainer.max_steps=3", "trainer.resume=auto", change)
        with pytest.raises(ConfigError, match=rf"{key}: .*trainer\.max_steps"):
            train(bad, build(bad), "pretrain")
    assert (run / "last.pt").read_bytes() == before
    ok = tiny_cfg(
        data,
        run,
        "trainer.max_steps=3",
        "trainer.resume=auto",
        "trainer.log_every_steps=5",
        "data.num_workers=0",
        "trainer.threads=1",
    )
    assert train(ok, build(ok), "pretrain").steps == 3
