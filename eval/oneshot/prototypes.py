"""Pass 1 of the few-shot evaluation: which classes are evaluated, which images hold them, and the
foreground / background prototypes of every class in every image."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from eval.stream import iter_model_outputs, require_label
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.embeddings import pixel_sums

__all__ = ["eval_classes", "present_classes", "PrototypeTable", "collect_class_prototypes"]


def eval_classes(classes: Sequence[str], background: int | None, wanted: Sequence[str] | None = None) -> list[int]:
    """The evaluated class indices: every class but ``background``, or the ``wanted`` names.

    Raises:
        ValueError: a wanted name the dataset does not have (the message lists the classes).
    """
    if wanted:
        index = {c: i for i, c in enumerate(classes)}
        unknown = [w for w in wanted if w not in index]
        if unknown:
            raise ValueError(f"--classes: unknown class(es) {unknown}; this dataset has {list(classes)}")
        return [index[w] for w in wanted]
    return [i for i in range(len(classes)) if i != background]


def present_classes(label: np.ndarray, classes: Sequence[int], ignore_index: int, min_fraction: float) -> list[int]:
    """The classes of ``classes`` whose pixels are at least ``min_fraction`` of the valid pixels
    of ``label`` (and at least one pixel). ``H x W`` int labels."""
    valid = label != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        return []
    counts = np.bincount(label[valid].ravel(), minlength=max(classes, default=0) + 1)
    return [c for c in classes if counts[c] > 0 and counts[c] >= min_fraction * n_valid]


@dataclass
class PrototypeTable:
    """What pass 1 keeps.

    Attributes:
        fg, bg: ``(image, class) -> (D,)`` unit prototypes of the class and of its complement
            (valid pixels of other classes); ``bg`` lacks the pairs whose image is all that class.
        images: ``class -> sorted image indices`` that contain it.
        kept: ``image -> 1 x D x h x w`` float16 feature-resolution embeddings (those that fit).
        labels: ``image -> H x W`` uint8 labels of the kept images (pass 2 needs no decoding then).
        seconds: wall time of the pass.
    """

    fg: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    bg: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    images: dict[int, list[int]] = field(default_factory=dict)
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def collect_class_prototypes(
    model: FeatureModel,
    ds: SegmentationDataset,
    classes: Sequence[int],
    *,
    min_fraction: float = 0.01,
    keep_mib: float = 1024.0,
    workers: int = 0,
    progress: bool = True,
) -> PrototypeTable:
    """Stream the dataset once: the foreground / background prototypes of every class in every image."""
    info = ds.info
    table = PrototypeTable(images={c: [] for c in classes})
    budget = int(keep_mib * 2**20)
    t0 = time.perf_counter()
    for i, sample, out in iter_model_outputs(model, ds, workers=workers, desc="prototypes", progress=progress):
        label = require_label(sample, "the few-shot evaluation", ds)
        present = present_classes(label, classes, info.ignore_index, min_fraction)
        if not present:
            continue
        ids = torch.from_numpy(np.where(label == info.ignore_index, -1, label).astype(np.int64))
        sums, counts = pixel_sums(out.embedding, ids, info.num_classes)
        total, n_total = sums.sum(0), int(counts.sum())
        for c in present:
            table.fg[(i, c)] = F.normalize(sums[c], dim=0)
            if n_total - int(counts[c]) > 0:
                table.bg[(i, c)] = F.normalize(total - sums[c], dim=0)
            table.images[c].append(i)
        emb = out.embedding.half()
        compact = info.num_classes <= 255 and 0 <= info.ignore_index <= 255
        cost = emb.numel() * 2 + (label.size if compact else 0)
        if compact and cost <= budget:
            table.kept[i] = emb
            table.labels[i] = label.astype(np.uint8)
            budget -= cost
    table.seconds = time.perf_counter() - t0
    return table
