"""``python -m maskcontrast.stego --config configs/stego/<name>.yaml [key=value ...]``

A STEGO-style head (Hamilton et al., ICLR 2022) on a frozen backbone: its output correlates where the frozen features correlate, over self, nearest-neighbour and random pairs (see docs/OBJECTIVES.md). Multi-process: ``torchrun --nproc_per_node N -m maskcontrast.stego ...``.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig

from maskcontrast.cli import training_main, training_parser
from maskcontrast.config import StegoConfig
from maskcontrast.objectives import StegoObjective

__all__ = ["main", "build_parser", "build_objective"]


def build_objective(cfg: DictConfig) -> StegoObjective:
    """The objective of a :class:`StegoConfig`."""
    return StegoObjective(cfg.model, cfg.objective)


#: the command line: ``build_parser()`` and ``main()`` share it
CLI = {
    "prog": "python -m maskcontrast.stego",
    "description": "Train a STEGO-style head (Hamilton et al., ICLR 2022) on a frozen backbone (model.backbone.init=FILE, any layout load_model reads) with the feature-correspondence loss over self, nearest-neighbour and random pairs. last.pt is a maskcontrast checkpoint: eval.kmeans and the other eval commands read it.",
    "schema": StegoConfig,
    "docs": "docs/OBJECTIVES.md",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m maskcontrast.stego``."""
    return training_parser(**CLI)


def main(argv: list[str] | None = None) -> int:
    return training_main(argv, **CLI, build_objective=build_objective, stage="stego")


if __name__ == "__main__":
    sys.exit(main())
