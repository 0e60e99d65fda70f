"""The learning-rate schedules: their shapes, and bit-equality with the torch schedulers they replaced."""

import math

import pytest
import torch

from maskcontrast.schedules import LrSchedule, lr_at, multistep_lr, schedule_step


def test_lr_schedules():
    assert lr_at(0, 10, 1.0, "poly") == 1.0
    assert lr_at(5, 10, 1.0, "poly", power=1.0) == pytest.approx(0.5)
    assert lr_at(5, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(10, 10, 1.0, "cosine") == pytest.approx(0.0)
    assert lr_at(0, 10, 1.0, "constant", warmup_steps=4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 10, 1.0, "step")


def test_schedule_step_holds_the_rate_for_an_epoch():
    assert [schedule_step(s, 3, "epoch") for s in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    assert [schedule_step(s, 3, "step") for s in range(4)] == [0, 1, 2, 3]


def test_the_table_holds_lr_at_of_every_step_and_clamps_past_the_end():
    table = LrSchedule.steps(7, 0.1, "poly", 0.9, warmup_steps=2, steps_per_epoch=3, unit="epoch")
    assert len(table) == 7
    assert [table[s] for s in range(7)] == [
        lr_at(schedule_step(s, 3, "epoch"), 7, 0.1, "poly", 0.9, 2) for s in range(7)
    ]
    assert table[100] == table[6] and table[-1] == table[0]
    with pytest.raises(ValueError, match=r"optim\.schedule_unit"):
        LrSchedule.steps(7, 0.1, unit="iteration")


def test_multistep_equals_torch_multistep_lr_bit_for_bit():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    milestones, gamma = [3, 5, 5, 9], 0.1
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    table = LrSchedule.multistep(12, 0.1, milestones, gamma)
    for epoch in range(13):
        assert table[epoch] == opt.param_groups[0]["lr"] == multistep_lr(epoch, 0.1, milestones, gamma), epoch
        opt.step()
        sched.step()


def test_cosine_equals_the_refiners_former_lambda_lr_to_rounding():
    """The refiner's former LambdaLR computed pi * s / T, lr_at computes pi * (s / T): the last bit may differ."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    total = 37
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    table = LrSchedule.steps(total, 3e-3, "cosine", length=total + 1)
    for step in range(total + 1):
        assert table[step] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-14, abs=1e-18), step
        opt.step()
        sched.step()
