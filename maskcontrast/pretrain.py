"""``python -m maskcontrast.pretrain --config configs/pretrain/<name>.yaml [key=value ...]``

MaskContrast pretraining (see docs/PRETRAIN.md). Multi-process: ``torchrun --nproc_per_node N
-m maskcontrast.pretrain ...`` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig

from maskcontrast.cli import training_main, training_parser
from maskcontrast.config import PretrainConfig
from maskcontrast.objectives import MaskContrastObjective

__all__ = ["main", "build_parser", "build_objective"]


def build_objective(cfg: DictConfig) -> MaskContrastObjective:
    """The MaskContrast objective of a :class:`PretrainConfig`."""
    return MaskContrastObjective(cfg.model, cfg.objective)


#: the command line: ``build_parser()`` and ``main()`` share it
CLI = {
    "prog": "python -m maskcontrast.pretrain",
    "description": "MaskContrast pretraining: contrast pixel embeddings with object-mask prototypes of a "
    "momentum key network (Van Gansbeke et al., ICCV 2021). Writes config.yaml, train.log, TensorBoard "
    "events and last.pt into trainer.run_dir; trainer.resume=auto continues a stopped run.",
    "schema": PretrainConfig,
    "docs": "docs/PRETRAIN.md",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m maskcontrast.pretrain``."""
    return training_parser(**CLI)


def main(argv: list[str] | None = None) -> int:
    return training_main(argv, **CLI, build_objective=build_objective, stage="pretrain")


if __name__ == "__main__":
    sys.exit(main())
