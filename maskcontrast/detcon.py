"""``python -m maskcontrast.detcon --config configs/detcon/<name>.yaml [key=value ...]``

DetCon (Hénaff et al., ICCV 2021): contrast mask-pooled ResNet features of the same regions across two views; region masks from saliency masks, Felzenszwalb segments or a grid (see docs/OBJECTIVES.md). Multi-process: ``torchrun --nproc_per_node N -m maskcontrast.detcon ...``.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig

from maskcontrast.cli import training_main, training_parser
from maskcontrast.config import DetConConfig
from maskcontrast.objectives import DetConObjective

__all__ = ["main", "build_parser", "build_objective"]


def build_objective(cfg: DictConfig) -> DetConObjective:
    """The objective of a :class:`DetConConfig`."""
    return DetConObjective(cfg.model, cfg.objective)


#: the command line: ``build_parser()`` and ``main()`` share it
CLI = {
    "prog": "python -m maskcontrast.detcon",
    "description": "DetCon pretraining (Henaff et al., ICCV 2021): mask-pooled features of the same regions are contrasted across two views (objective.variant: s = SimCLR-style, b = BYOL-style). Regions: data.mask_source masks | felzenszwalb | grid. last.pt has the MoCo layout, so model.backbone.init of MaskContrast reads it.",
    "schema": DetConConfig,
    "docs": "docs/OBJECTIVES.md",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m maskcontrast.detcon``."""
    return training_parser(**CLI)


def main(argv: list[str] | None = None) -> int:
    return training_main(argv, **CLI, build_objective=build_objective, stage="detcon")


if __name__ == "__main__":
    sys.exit(main())
