"""Do a model's object prototypes find the object kinds of the synthetic shapes set?

The set (:mod:`maskcontrast.data.synthetic`) knows each object's kind (shape + texture; colours are
random). :func:`kind_accuracy` embeds every image, takes one prototype per object (the mask mean of
the L2-normalised embedding, as MaskContrast's prototypes are made), clusters the prototypes with
K-means (k = the number of kinds) and matches clusters to kinds with the Hungarian method. It is the
readout of the learning test (``tests/maskcontrast/objectives/test_learning.py``) and of
``bench/kind_learning.py``.

Example::

    from maskcontrast.data.synthetic import write_shapes_folder
    folder = write_shapes_folder("/tmp/shapes", n=64, size=64)
    kind_accuracy("runs/pretrain/tiny/last.pt", folder)  # 0.25-0.35 for a random network
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from maskcontrast.api import load_model
from maskcontrast.data.synthetic import KINDS

__all__ = ["MIN_OBJECT_PIXELS", "READOUTS", "kind_accuracy", "linear_kind_accuracy", "object_prototypes"]

#: objects with fewer visible pixels (mostly covered by a later object) are left out
MIN_OBJECT_PIXELS = 20


#: what a prototype is the mask mean of: the model's embedding (MaskContrast: its 32-d head) or its
#: features (MaskContrast: the 256-d decoder; a backbone-only checkpoint such as DetCon's: layer4)
READOUTS = ("embed", "features")


def object_prototypes(
    checkpoint: str | Path, folder: str | Path, gray: bool = False, readout: str = "embed"
) -> tuple[np.ndarray, np.ndarray]:
    """One prototype per visible object of the synthetic ``folder`` (``images/``, ``masks/``,
    ``kinds/``), the mask mean of the model's ``readout`` (:data:`READOUTS`) at the input resolution.

    Returns ``(prototypes, kinds)``: N x D float32 (unit rows) and N int64 in ``0..len(KINDS)-1``.
    ``gray``: the images are converted to grayscale first (for a network trained on grayscale views).
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    folder = Path(folder)
    model = load_model(checkpoint, device="cpu")
    protos, kinds = [], []
    for path in sorted((folder / "images").glob("*.png")):
        image = Image.open(path).convert("L").convert("RGB") if gray else Image.open(path)
        emb = getattr(model, readout)(image, resolution="input")[0]  # D x H x W
        objects = torch.from_numpy(np.asarray(Image.open(folder / "masks" / path.name)).astype(np.int64))
        kind_map = np.asarray(Image.open(folder / "kinds" / path.name))
        for obj in objects.unique().tolist():
            sel = objects == obj
            if obj == 0 or int(sel.sum()) < MIN_OBJECT_PIXELS:
                continue
            protos.append(torch.nn.functional.normalize(emb[:, sel].mean(1), dim=0).numpy())
            kinds.append(int(np.bincount(kind_map[sel.numpy()]).argmax()) - 1)
    return np.stack(protos).astype(np.float32), np.array(kinds, dtype=np.int64)


def kind_accuracy(checkpoint: str | Path, folder: str | Path, gray: bool = False, readout: str = "embed") -> float:
    """The share of objects whose K-means cluster (k = number of kinds, seeded) is matched to their
    kind by the Hungarian method; about 0.25-0.35 for a random network on 64-256 images."""
    x, y = object_prototypes(checkpoint, folder, gray, readout)
    k = len(KINDS)
    pred = KMeans(k, n_init=10, random_state=0).fit_predict(x)
    table = np.zeros((k, k))
    np.add.at(table, (pred, y), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(y))


def linear_kind_accuracy(
    checkpoint: str | Path, folder: str | Path, gray: bool = False, folds: int = 5, readout: str = "embed"
) -> float:
    """A diagnostic beside :func:`kind_accuracy`: the ``folds``-fold cross-validated accuracy of a
    logistic regression from prototype to kind (chance about 0.25). It tells whether the kinds are
    in the prototypes at all, even where they are not what K-means clusters by."""
    x, y = object_prototypes(checkpoint, folder, gray, readout)
    probe = LogisticRegression(max_iter=2000)
    return float(cross_val_score(probe, x, y, cv=folds).mean())
