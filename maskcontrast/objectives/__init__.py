"""Training objectives: each turns a batch of :class:`~maskcontrast.data.views.Views` into
``(loss, metrics)``. The trainer (``maskcontrast.train``) owns the optimizer, the files and the
processes; an objective only declares its momentum pairs and how its state is checkpointed.

Example::

    objective = MaskContrastObjective(cfg.model, cfg.objective)
    for online, target in objective.momentum_pairs():
        update_momentum(online, target, objective.momentum)
    loss, metrics = objective(views)
"""

from maskcontrast.objectives.base import Objective
from maskcontrast.objectives.densecl import DenseCLObjective
from maskcontrast.objectives.detcon import DetConObjective
from maskcontrast.objectives.maskcontrast import MaskContrastObjective
from maskcontrast.objectives.moco import MocoObjective, moco_encoder
from maskcontrast.objectives.stego import StegoObjective

__all__ = [
    "Objective",
    "MaskContrastObjective",
    "MocoObjective",
    "moco_encoder",
    "DetConObjective",
    "DenseCLObjective",
    "StegoObjective",
]
