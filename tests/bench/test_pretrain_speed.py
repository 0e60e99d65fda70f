"""bench/pretrain_speed.py: the floor of a step is printed beside it (checked at toy size; times nothing)."""

from __future__ import annotations

import pretrain_speed  # bench/ is on sys.path: tests/bench/conftest.py
import pytest


@pytest.mark.slow
def test_tiny_prints_the_floor_beside_the_step(capsys) -> None:
    assert pretrain_speed.main(["--tiny", "--precisions", "fp32_cl"]) == 0
    out = capsys.readouterr().out
    assert "| floor wall s | full / floor" in out
    row = next(line for line in out.splitlines() if line.startswith("| resnet18-OS8 | fp32_cl |"))
    full, floor, ratio = (float(c) for c in row.split("|")[3:6])
    assert full > 0 and floor > 0 and ratio > 0


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(SystemExit, match="fp32_cl"):
        pretrain_speed.run_one("resnet18", 8, "fp16", 32, 2, 1, 0, 1)
