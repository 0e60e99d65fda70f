"""What every objective promises the trainer (parametrised over MaskContrast, DetCon, DenseCL and
STEGO): resume after SIGKILL is bit-exact, and 2 gloo DDP processes end with the same weights."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from maskcontrast.models import read_checkpoint
from maskcontrast.train import train

from .conftest import OBJECTIVES, build, objective_cfg

NEW = ["detcon", "densecl", "stego"]


def _stage(name):
    return OBJECTIVES[name][3]


def _tensors(obj):
    """Every tensor of a checkpoint dict, flattened to dotted keys (the optimizer and trainer RNG left out)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                if prefix == "" and k in ("trainer", "optimizer"):
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    walk("", obj)
    return out


def _killed_run(name, shapes, run_dir, init):
    """Child process: 4 steps saving every 2; SIGKILL itself inside step 4 (last.pt holds step 2)."""
    torch.set_num_threads(1)
    cfg = objective_cfg(name, shapes, run_dir, "trainer.max_steps=4", "trainer.save_every_steps=2", init=init)
    calls = {"n": 0}

    def factory():
        obj = build(name, cfg)()
        forward = obj.forward

        def forward_then_die(views):
            calls["n"] += 1
            if calls["n"] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(views)

        obj.forward = forward_then_die
        return obj

    train(cfg, factory, _stage(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_resume_after_sigkill_is_bit_exact(name, shapes, moco_backbone, tmp_path):
    full = objective_cfg(name, shapes, tmp_path / "full", "trainer.max_steps=4", init=moco_backbone)
    train(full, build(name, full), _stage(name))
    child = multiprocessing.get_context("spawn").Process(
        target=_killed_run, args=(name, shapes, tmp_path / "killed", moco_backbone)
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert read_checkpoint(tmp_path / "killed" / "last.pt")["trainer"]["step"] == 2
    resumed = objective_cfg(
        name, shapes, tmp_path / "killed", "trainer.max_steps=4", "trainer.resume=auto", init=moco_backbone
    )
    assert train(resumed, build(name, resumed), _stage(name)).steps == 4
    a = _tensors(read_checkpoint(tmp_path / "full" / "last.pt"))
    b = _tensors(read_checkpoint(tmp_path / "killed" / "last.pt"))
    assert a.keys() == b.keys() and len(a) > 10
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{name}: resumed run differs in {bad[:5]}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, port, name, shapes, run_dir, init, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    cfg = objective_cfg(name, shapes, run_dir, "trainer.max_steps=2", "trainer.device=cpu", init=init)
    holder = {}

    def factory():
        holder["obj"] = build(name, cfg)()
        return holder["obj"]

    result = train(cfg, factory, _stage(name))
    state = {k: v.detach().clone() for k, v in holder["obj"].state_dict().items()}
    torch.save({"state": state, "metrics": result.metrics}, f"{out}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_ddp_two_gloo_processes_agree(name, shapes, moco_backbone, tmp_path):
    mp.spawn(
        _ddp_worker,
        args=(_free_port(), name, shapes, tmp_path / "ddp", moco_backbone, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)["state"]
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)["state"]
    params = [k for k in r0 if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(r0[k], r1[k]) for k in params)
    assert read_checkpoint(tmp_path / "ddp" / "last.pt")["trainer"]["world_size"] == 2
