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
    cmd = [sys.executable, "-m", "maskcontrast.pretrain", "--config", "configs/pretrain/tiny.yaml", src,
           f"trainer.run_dir={run}", "data.image_size=32", "trainer.max_steps=400", "trainer.progress=false",
           "trainer.threads=1", "data.num_workers=1"]  # fmt: skip
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
    from maskcontrast.train import RunDirError

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
