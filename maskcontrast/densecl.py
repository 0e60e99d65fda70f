"""``python -m maskcontrast.densecl --config configs/densecl/<name>.yaml [key=value ...]``

DenseCL (Wang et al., CVPR 2021): MoCo v2 plus a dense InfoNCE between matched feature locations of two views; no masks (see docs/OBJECTIVES.md). Multi-process: ``torchrun --nproc_per_node N -m maskcontrast.densecl ...``.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig

from maskcontrast.cli import training_main, training_parser
from maskcontrast.config import DenseCLConfig
from maskcontrast.objectives import DenseCLObjective

__all__ = ["main", "build_parser", "build_objective"]


def build_objective(cfg: DictConfig) -> DenseCLObjective:
    """The objective of a :class:`DenseCLConfig`."""
    return DenseCLObjective(cfg.model, cfg.objective)


#: the command line: ``build_parser()`` and ``main()`` share it
CLI = {
    "prog": "python -m maskcontrast.densecl",
    "description": "DenseCL pretraining (Wang et al., CVPR 2021): MoCo v2's global loss plus a dense loss between the most similar locations of two views (weight objective.dense_weight). Needs no masks. last.pt has the MoCo layout plus the dense head, so model.backbone.init of MaskContrast reads it.",
    "schema": DenseCLConfig,
    "docs": "docs/OBJECTIVES.md",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m maskcontrast.densecl``."""
    return training_parser(**CLI)


def main(argv: list[str] | None = None) -> int:
    return training_main(argv, **CLI, build_objective=build_objective, stage="densecl")


if __name__ == "__main__":
    sys.exit(main())
