"""``python -m maskcontrast.moco --config configs/moco/<name>.yaml [key=value ...]``

MoCo v2 on any image collection (see docs/MOCO.md). Its ``last.pt`` has the official MoCo layout,
so ``model.backbone.init=<run_dir>/last.pt`` starts a MaskContrast pretraining from it.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig

from maskcontrast.cli import training_main, training_parser
from maskcontrast.config import MocoConfig
from maskcontrast.objectives import MocoObjective

__all__ = ["main", "build_parser", "build_objective"]


def build_objective(cfg: DictConfig) -> MocoObjective:
    """The MoCo v2 objective of a :class:`MocoConfig`."""
    return MocoObjective(cfg.model, cfg.objective)


#: the command line: ``build_parser()`` and ``main()`` share it
CLI = {
    "prog": "python -m maskcontrast.moco",
    "description": "MoCo v2 self-supervised pretraining of a ResNet (the initialisation of MaskContrast) on any "
    "image collection; labels and masks are not used. last.pt is in the official MoCo checkpoint layout.",
    "schema": MocoConfig,
    "docs": "docs/MOCO.md",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m maskcontrast.moco``."""
    return training_parser(**CLI)


def main(argv: list[str] | None = None) -> int:
    return training_main(argv, **CLI, build_objective=build_objective, stage="moco")


if __name__ == "__main__":
    sys.exit(main())
