"""Every objective learns on synthetic data (64 images of 64 px, 4 object kinds defined by shape and
texture, random colours and backgrounds, exact masks): with a fixed seed, a few dozen steps raise
the objective's own training accuracy (mean of the last 10 steps) to at least 5x chance, and for
DetCon, K-means on the trained object prototypes finds the object kinds better than the same
network at its initialisation. For MaskContrast that second check is a known negative at this
budget, kept as a strict xfail. Everything is seeded and runs on the CPU, so the tests fail only
when learning breaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.kinds import kind_accuracy
from maskcontrast.objectives.base import recording_metrics
from maskcontrast.train import train
from maskcontrast.utils import seed_everything

from .conftest import build, objective_cfg

STEPS = 40  # MaskContrast: 60, for a wider margin over 5x chance


def init_checkpoint(name, cfg, path):
    """The network at its initialisation (seeded as the trainer seeds it), as a checkpoint file."""
    seed_everything(cfg.trainer.seed)
    torch.save(build(name, cfg)().checkpoint(), path)
    return path


#: no colour augmentation: a few dozen steps from random weights cannot learn colour invariance
NO_COLOUR = ["augment.color_jitter_p=0", "augment.grayscale_p=0"]


@pytest.mark.parametrize(
    "name,extra",
    [
        ("maskcontrast", ["objective.queue_size=16", "optim.lr=0.1", "objective.key_momentum=0.9", *NO_COLOUR]),
        (
            "detcon",
            [
                "data.mask_source=grid",
                "data.regions.grid_cells=4",
                "augment.min_mask_area=0.0",
                "augment.max_mask_area=1.0",
                "optim.lr=0.1",
                "objective.key_momentum=0.9",
                *NO_COLOUR,
            ],
        ),
        ("densecl", ["objective.queue_size=32", "optim.lr=0.05", "objective.key_momentum=0.9"]),
        ("stego", ["optim.lr=0.2"]),
    ],
)
def test_objective_learns_on_synthetic_shapes(name, extra, shapes, moco_backbone, tmp_path):
    cfg = objective_cfg(
        name,
        shapes,
        tmp_path / "run",
        f"trainer.max_steps={60 if name == 'maskcontrast' else STEPS}",
        "trainer.log_every_steps=1",
        *extra,
        init=moco_backbone,
    )
    history: list[dict[str, float]] = []
    result = train(cfg, recording_metrics(build(name, cfg), history), {"maskcontrast": "pretrain"}.get(name, name))
    m = {k: float(np.mean([h[k] for h in history[-10:]])) for k in history[-1]}  # the last 10 steps
    print(name, {k: round(v, 4) for k, v in m.items()}, "first:", history[0].get("acc_top1"))
    if name == "maskcontrast":
        chance = 1.0 / (m["prototypes"] + 16)
    elif name == "detcon":
        chance = 1.0 / max(2 * m["regions"] * 8 - 1, 1)  # every valid region of both views but the row itself
    elif name == "densecl":
        chance = 1.0 / (1 + 32)
    else:
        chance = 1.0 / (4 * 4 - 1)  # 32 px views at output stride 8: 16 locations
    assert m["acc_top1"] >= 5 * chance, (name, m)
    if name == "detcon":
        before = kind_accuracy(init_checkpoint(name, cfg, tmp_path / "init.pt"), shapes)
        after = kind_accuracy(result.checkpoint, shapes)
        assert after > before, (name, before, after)


@pytest.mark.xfail(
    strict=True,
    reason="a known negative: MaskContrast steps from random weights learn to tell object "
    "instances apart (above) but not the object kinds, at 60 and at 300 steps (bench/kind_learning.py, "
    "docs/OBJECTIVES.md 'The kind check, measured beyond the test's budget'); strict, so a change "
    "that makes them learn kinds shows up here",
)
def test_maskcontrast_prototypes_find_the_kinds_better_than_at_init(shapes, tmp_path):
    cfg = objective_cfg(
        "maskcontrast",
        shapes,
        tmp_path / "run",
        f"trainer.max_steps={STEPS}",
        "objective.queue_size=16",
        "optim.lr=0.1",
        "objective.key_momentum=0.9",
        *NO_COLOUR,
    )
    result = train(cfg, build("maskcontrast", cfg), "pretrain")
    before = kind_accuracy(init_checkpoint("maskcontrast", cfg, tmp_path / "init.pt"), shapes)
    assert kind_accuracy(result.checkpoint, shapes) > before
