"""maskcontrast: unsupervised semantic segmentation by contrasting object mask proposals.

The public API (imported on first use, so ``import maskcontrast`` stays light)::

    import maskcontrast
    model = maskcontrast.load_model("checkpoint.pt")     # maskcontrast, MoCo or torchvision file
    emb = model.embed(image)                               # B x D x H x W, L2-normalised
    ds = maskcontrast.build_dataset("msrc", "/data/msrc_v2")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_model",
    "FeatureModel",
    "FeatureOutput",
    "NoSaliencyHeadError",
    "build_dataset",
    "fit_clusters",
]

_LAZY = {
    "load_model": "maskcontrast.api",
    "FeatureModel": "maskcontrast.api",
    "FeatureOutput": "maskcontrast.api",
    "NoSaliencyHeadError": "maskcontrast.api",
    "build_dataset": "maskcontrast.data",
    "fit_clusters": "eval.segment",
}

if TYPE_CHECKING:  # pragma: no cover
    from maskcontrast.api import FeatureModel, FeatureOutput, NoSaliencyHeadError, load_model
    from maskcontrast.data import build_dataset


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'maskcontrast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
