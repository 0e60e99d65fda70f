"""bench/train_step_ab.py: the R50-OS8 presets and a one-round A/B at toy size (times nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import train_step_ab  # bench/ is on sys.path: tests/bench/conftest.py

REPO = Path(__file__).resolve().parents[2]


def test_r50_os8_presets_at_128_and_224_px() -> None:
    for size in (128, 224):
        overrides, n_images, height = train_step_ab.PRESETS[f"r50os8-{size}"]
        assert {
            "model.backbone.arch=resnet50",
            "model.backbone.output_stride=8",
            f"data.image_size={size}",
            "optim.batch_size=8",
            "trainer.precision=fp32",
        } <= set(overrides)
        assert n_images == 16 * 8 and height == size * 3 // 2  # 16 steps per epoch: no save among the timed steps
    assert train_step_ab.PRESETS["tiny"][0] == []


@pytest.mark.slow
def test_one_tiny_round_of_both_trees(capsys) -> None:
    args = [
        "--a",
        str(REPO),
        "--b",
        str(REPO),
        "--rounds",
        "1",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--b-set",
        "trainer.channels_last=false",
    ]
    assert train_step_ab.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["wall"]["ratio_b_over_a_median"] > 0 and len(summary["cpu"]["a_ms"]) == 1
