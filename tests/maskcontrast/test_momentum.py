"""Momentum update, memory bank and the distributed helpers (one process and 2 gloo processes)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from maskcontrast.momentum import (
    MemoryBank,
    average_batchnorm_stats,
    batch_shuffle,
    batch_unshuffle,
    concat_all_gather,
    make_momentum_copy,
    update_momentum,
)


def test_update_momentum_is_an_ema_of_parameters_only():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = make_momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online[1].running_mean.fill_(5.0)
    before = [p.clone() for p in target.parameters()]
    update_momentum(online, target, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
    assert torch.all(target[1].running_mean == 0)  # buffers untouched
    update_momentum(online, target, 0.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(online, target, 1.5)
    with pytest.raises(ValueError, match="differ"):
        update_momentum(online, nn.Linear(3, 4), 0.5)


def test_memory_bank_wraps_around_and_keeps_newest():
    bank = MemoryBank(5, 2)
    assert torch.allclose(bank.queue.norm(dim=1), torch.ones(5))
    a = torch.arange(6.0).view(3, 2)
    bank.enqueue(a)
    assert int(bank.ptr) == 3 and torch.equal(bank.queue[:3], a)
    b = torch.arange(100.0, 106.0).view(3, 2)
    bank.enqueue(b)
    assert int(bank.ptr) == 1
    assert torch.equal(bank.queue[3:], b[:2]) and torch.equal(bank.queue[0], b[2])
    assert torch.equal(bank.queue[1:3], a[1:])
    many = torch.arange(14.0).view(7, 2)
    bank.enqueue(many)
    assert sorted(bank.queue[:, 0].tolist()) == [4.0, 6.0, 8.0, 10.0, 12.0]  # the newest 5
    bank.enqueue(torch.zeros(0, 2))  # nothing to add
    with pytest.raises(ValueError, match="dim"):
        bank.enqueue(torch.zeros(2, 3))
    clone = MemoryBank(5, 2)
    clone.load_state_dict(bank.state_dict())
    assert torch.equal(clone.queue, bank.queue) and int(clone.ptr) == int(bank.ptr)


def test_single_process_helpers_are_no_ops():
    x = torch.randn(4, 3)
    assert concat_all_gather(x) is x
    y, order = batch_shuffle(x)
    assert y is x and order is None
    assert batch_unshuffle(y, order) is x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different shuffles would break agreement; the helpers broadcast rank 0's
    x = torch.arange(4.0).view(4, 1) + 10 * rank
    gathered = concat_all_gather(torch.full((rank + 1, 2), float(rank)))  # ranks send 1 and 2 rows
    shuffled, order = batch_shuffle(x)
    back = batch_unshuffle(shuffled, order)
    torch.manual_seed(0)  # the trainer seeds every rank alike, so the banks start equal
    bank = MemoryBank(4, 3)
    bank.enqueue(x[:1].expand(1, 3))
    torch.save(
        {"gathered": gathered, "shuffled": shuffled, "back": back, "x": x, "queue": bank.queue, "ptr": bank.ptr},
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_two_process_gather_shuffle_and_queue(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert r[0]["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert torch.equal(r[0]["gathered"], r[1]["gathered"])
    for i in range(2):
        assert torch.equal(r[i]["back"], r[i]["x"])  # unshuffle inverts shuffle
    both = sorted(torch.cat([r[0]["shuffled"], r[1]["shuffled"]]).flatten().tolist())
    assert both == sorted(torch.cat([r[0]["x"], r[1]["x"]]).flatten().tolist())  # a permutation of the global batch
    assert torch.equal(r[0]["queue"], r[1]["queue"]) and int(r[0]["ptr"]) == 2  # keys of both ranks enqueued
    assert r[0]["queue"][:2, 0].tolist() == [0.0, 10.0]


def _layout_and_stats_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = (torch.arange(4 * 3 * 5 * 6.0).view(4, 3, 5, 6) + 1000 * rank).contiguous(memory_format=torch.channels_last)
    shuffled, order = batch_shuffle(x)
    back = batch_unshuffle(shuffled, order)
    bn = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    bn[1].running_mean.fill_(float(rank))  # rank 0: 0, rank 1: 1
    bn[1].running_var.fill_(2.0 + 2 * rank)  # 2 and 4
    average_batchnorm_stats(bn)
    torch.save(
        {
            "x": x.contiguous(),
            "back": back.contiguous(),
            "shuffled": shuffled.contiguous(),
            "cl": [
                shuffled.is_contiguous(memory_format=torch.channels_last),
                back.is_contiguous(memory_format=torch.channels_last),
            ],
            "mean": bn[1].running_mean,
            "var": bn[1].running_var,
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_shuffle_keeps_channels_last_and_batchnorm_stats_are_averaged(tmp_path):
    """The key views stay channels_last through the shuffle across ranks (a copy back to NCHW would
    cost a transposition per step), and the ranks' BatchNorm running statistics become their mean."""
    mp.spawn(_layout_and_stats_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    for i in range(2):
        assert r[i]["cl"] == [True, True]
        assert torch.equal(r[i]["back"], r[i]["x"])
        assert r[i]["mean"].tolist() == [0.5, 0.5] and r[i]["var"].tolist() == [3.0, 3.0]
    both = torch.cat([r[0]["shuffled"], r[1]["shuffled"]])
    assert sorted(both[:, 0, 0, 0].tolist()) == sorted(torch.cat([r[0]["x"], r[1]["x"]])[:, 0, 0, 0].tolist())
    # one process: nothing changes
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    average_batchnorm_stats(bn)
    assert bn.running_mean.tolist() == [3.0, 3.0]
