"""Joining the process group, or running alone on the chosen device."""

import torch

from maskcontrast.distributed import setup_distributed


def test_a_single_process_on_another_gpu_selects_it(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = setup_distributed("cuda:1")
    assert env.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    setup_distributed("cpu")
    assert len(chosen) == 1
