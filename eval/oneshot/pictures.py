"""Pictures of the few-shot evaluation: ``support (mask tinted) | query | prediction | ground truth``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.oneshot.episodes import episode_prototypes, predict
from eval.oneshot.prototypes import PrototypeTable
from eval.outputs import safe_name
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.data.io import write_panel

__all__ = ["write_vis"]


def _tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = 0.5 * out[mask] + 0.5 * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def _binary(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), np.uint8)
    out[mask] = (255, 0, 0)
    out[~valid] = (255, 255, 255)
    return out


def _fit(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def write_vis(
    vis_dir: Path,
    n: int,
    model: FeatureModel,
    ds: SegmentationDataset,
    table: PrototypeTable,
    supports: list[dict[int, list[int]]],
) -> int:
    """Panels ``support (mask tinted) | query | prediction | ground truth`` of episode 0: the
    first query of every class in turn, then the second, ..., ``n`` in all."""
    vis_dir.mkdir(parents=True, exist_ok=True)
    ep = supports[0]
    queues = {c: [i for i in table.images[c] if i not in ep[c]] for c in sorted(ep)}
    chosen: list[tuple[int, int]] = []
    depth = 0
    while len(chosen) < n and any(len(q) > depth for q in queues.values()):
        chosen += [(c, q[depth]) for c, q in queues.items() if len(q) > depth]
        depth += 1
    info = ds.info
    for k, (c, i) in enumerate(chosen[:n]):
        sup = ds[ep[c][0]]
        query = ds[i]
        fg, bg, _ = episode_prototypes(table, [ep], c)
        _, out, _ = next(iter(model.run([query.image])))
        pred = predict(out.embedding, fg.to(model.device), bg.to(model.device), query.size)[0].cpu().numpy()
        valid = query.label != info.ignore_index
        hw = query.size
        parts = [
            _fit(_tint(sup.image, sup.label == c), hw),
            query.image,
            _binary(pred, valid),
            _binary(query.label == c, valid),
        ]
        write_panel(vis_dir / f"{k:04d}_{safe_name(info.classes[c])}_{safe_name(query.id)}.png", parts)
    return min(n, len(chosen))
