"""Episodes of the few-shot evaluation: support sampling, the support prototypes, and pass 2, which
scores every (query, class) pair of every episode at once; :func:`run_oneshot` is the protocol end to
end."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.metrics import binary_counts
from eval.oneshot.prototypes import PrototypeTable, collect_class_prototypes, eval_classes
from eval.stream import iter_model_outputs
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.prompt import combine_shots, prototype_score

__all__ = [
    "sample_supports",
    "episode_supports",
    "episode_prototypes",
    "predict",
    "score_queries",
    "summarize_episodes",
    "run_oneshot",
]

log = logging.getLogger("eval.oneshot")


def sample_supports(images: Sequence[int], shots: int, rng: np.random.Generator, class_name: str) -> list[int]:
    """``shots`` distinct support images out of ``images`` (sorted result).

    Raises:
        ValueError: fewer than ``shots + 1`` images (``shots`` supports and at least one query).
    """
    if shots < 1:
        raise ValueError(f"--shots must be >= 1, got {shots}")
    if len(images) < shots + 1:
        raise ValueError(
            f"class '{class_name}' is in only {len(images)} image(s), but {shots} shot(s) need at least {shots + 1} "
            f"({shots} support + 1 query); use fewer --shots, leave the class out with --classes, pass --rare skip, "
            "or lower --min-fraction"
        )
    return sorted(int(x) for x in rng.choice(np.asarray(images), size=shots, replace=False))


def episode_supports(
    images: dict[int, list[int]],
    shots: int,
    episodes: int,
    seed: int,
    class_names: Sequence[str],
    rare: str = "error",
) -> tuple[list[dict[int, list[int]]], list[int]]:
    """Support images of every (episode, class), seeded by ``(seed, episode, class)``.

    Returns ``(supports[episode][class], skipped classes)``; with ``rare="skip"`` a class with
    fewer than ``shots + 1`` images is left out (and listed) instead of raising.
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if rare not in ("error", "skip"):
        raise ValueError(f"rare must be error or skip, got {rare!r}")
    rare_classes = [c for c, imgs in images.items() if len(imgs) < shots + 1]
    if rare == "error" and len(rare_classes) > 1:
        listed = ", ".join(f"'{class_names[c]}' ({len(images[c])})" for c in rare_classes[:12])
        more = f" and {len(rare_classes) - 12} more" if len(rare_classes) > 12 else ""
        raise ValueError(
            f"{len(rare_classes)} classes are in fewer than {shots + 1} images ({shots} support + 1 query): {listed}"
            f"{more}; use fewer --shots, choose classes with --classes, pass --rare skip, or lower --min-fraction"
        )
    skipped = rare_classes if rare == "skip" else []
    kept = [c for c in images if c not in skipped]
    if not kept:
        raise ValueError(
            f"no class is in {shots + 1} or more images (needed for {shots} shot(s)); use fewer --shots "
            "or lower --min-fraction"
        )
    out = []
    for e in range(episodes):
        out.append(
            {c: sample_supports(images[c], shots, np.random.default_rng([seed, e, c]), class_names[c]) for c in kept}
        )
    return out, skipped


def episode_prototypes(
    table: PrototypeTable, supports: list[dict[int, list[int]]], c: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``E x D`` foreground and background prototypes of class ``c`` in every episode (shots
    averaged), and the number of episodes whose shots had no background pixel (their background
    prototype is zero: a pixel is foreground when its cosine to the foreground prototype is > 0)."""
    fgs, bgs, missing = [], [], 0
    for ep in supports:
        shots = ep[c]
        fg = combine_shots([table.fg[(i, c)] for i in shots])
        bg_list = [table.bg[(i, c)] for i in shots if (i, c) in table.bg]
        if bg_list:
            bg = combine_shots(bg_list)
        else:
            bg, missing = torch.zeros_like(fg), missing + 1
        fgs.append(fg)
        bgs.append(bg)
    return torch.stack(fgs), torch.stack(bgs), missing


def predict(embedding: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``E`` foreground masks (``E x H x W`` bool) of one image: the score upsampled bilinearly to
    ``size`` is > 0 (soft map > 0.5 at any temperature)."""
    score = prototype_score(embedding.float(), fg, bg)  # 1 x E x h x w
    if tuple(score.shape[-2:]) != tuple(size):
        score = F.interpolate(score, size=tuple(size), mode="bilinear", align_corners=False)
    return score[0] > 0


def score_queries(
    model: FeatureModel,
    ds: SegmentationDataset,
    table: PrototypeTable,
    supports: list[dict[int, list[int]]],
    *,
    workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, list[int], dict[str, Any]]:
    """Every (query, class) pair of every episode.

    Returns ``(counts, classes, stats)``: ``counts`` is ``E x C' x 4`` int64 ``(tp, fp, fn, tn)``
    per episode and evaluated class (in the order of ``classes``), ``stats`` holds timings and
    the numbers of queries.
    """
    from torch.utils.data import Subset

    classes = sorted(supports[0])
    col = {c: j for j, c in enumerate(classes)}
    n_ep = len(supports)
    counts = np.zeros((n_ep, len(classes), 4), dtype=np.int64)
    protos = {}
    no_bg = 0
    for c in classes:
        fg, bg, missing = episode_prototypes(table, supports, c)
        protos[c] = (fg.to(model.device), bg.to(model.device))
        no_bg += missing
    support_sets = [{c: set(ep[c]) for c in classes} for ep in supports]
    contains = {c: set(table.images[c]) for c in classes}
    wanted = sorted({i for c in classes for i in table.images[c]})
    info = ds.info
    t0 = time.perf_counter()
    n_pairs = 0

    def score(i: int, label: np.ndarray, emb: torch.Tensor) -> None:
        nonlocal n_pairs
        valid = torch.from_numpy(label != info.ignore_index).to(model.device)
        lab = torch.from_numpy(label).to(model.device)
        for c in classes:
            if i not in contains[c]:
                continue
            eps = [e for e in range(n_ep) if i not in support_sets[e][c]]
            if not eps:
                continue
            fg, bg = protos[c]
            pred = predict(emb, fg[eps], bg[eps], tuple(label.shape))
            gt = lab == c
            for k, e in enumerate(eps):
                counts[e, col[c]] += binary_counts(pred[k], gt, valid)
            n_pairs += len(eps)

    kept = [i for i in wanted if i in table.kept]
    todo = [i for i in wanted if i not in table.kept]
    for i in kept:
        score(i, table.labels[i].astype(np.int64), table.kept[i].to(model.device))
    if todo:
        log.info("pass 2: %d images did not fit in --keep-mib and run through the network again", len(todo))
        sub = Subset(ds, todo)
        for j, sample, out in iter_model_outputs(model, sub, workers=workers, desc="queries", progress=progress):  # type: ignore[arg-type]
            score(todo[j], sample.label, out.embedding)
    seconds = time.perf_counter() - t0
    stats = {
        "score_seconds": seconds,
        "n_scored": n_pairs,
        "episodes_without_background": no_bg,
        "score_ms_per_query": 1000 * seconds / max(1, n_pairs),
    }
    return counts, classes, stats


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    union = tp + fp + fn
    return np.divide(tp, union, out=np.full(np.shape(tp), np.nan), where=union > 0)


def summarize_episodes(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Scores of ``E x C x 4`` ``(tp, fp, fn, tn)`` counts.

    Per episode ``e``: ``IoU_{e,c} = tp / (tp + fp + fn)``, ``mIoU_e`` = their mean over classes;
    ``FB-IoU_e`` = the mean of the foreground IoU ``sum tp / sum (tp + fp + fn)`` and the
    background IoU ``sum tn / sum (tn + fn + fp)``, sums over the episode's classes. Returns the
    means over episodes, sample stds (0 for one episode), ``per_class`` (mean IoU per class),
    ``per_class_std`` and ``per_episode``. Fractions in [0, 1].

    Example: one episode, one class with ``tp=2, fp=1, fn=1, tn=4``: mIoU 0.5, FB-IoU
    ``(2/4 + 4/6) / 2``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    tp, fp, fn, tn = (counts[..., k] for k in range(4))
    iou = _iou(tp, fp, fn)  # E x C
    miou = np.nanmean(iou, axis=1)
    fg = _iou(tp.sum(1), fp.sum(1), fn.sum(1))
    bg = _iou(tn.sum(1), fn.sum(1), fp.sum(1))
    fb = (fg + bg) / 2

    def std(x: np.ndarray) -> float:
        return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0

    return {
        "miou": float(miou.mean()),
        "miou_std": std(miou),
        "fb_iou": float(fb.mean()),
        "fb_iou_std": std(fb),
        "per_class": {name: float(v) for name, v in zip(class_names, np.nanmean(iou, axis=0))},
        "per_class_std": {name: std(iou[:, j]) for j, name in enumerate(class_names)},
        "per_episode": [
            {
                "episode": e,
                "miou": float(miou[e]),
                "fb_iou": float(fb[e]),
                "fg_iou": float(fg[e]),
                "bg_iou": float(bg[e]),
            }
            for e in range(len(miou))
        ],
    }


def run_oneshot(
    model: FeatureModel,
    ds: SegmentationDataset,
    *,
    shots: int = 1,
    episodes: int = 5,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    min_fraction: float = 0.01,
    rare: str = "error",
    keep_mib: float = 1024.0,
    workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], PrototypeTable, list[dict[int, list[int]]]]:
    """The protocol end to end. Returns (result dict, pass-1 table, supports per episode)."""
    info = ds.info
    if info.num_classes == 0:
        raise ValueError(f"dataset '{info.name}' has no labels; the few-shot evaluation needs ground truth")
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"--min-fraction must lie in [0, 1), got {min_fraction}")
    wanted = eval_classes(info.classes, info.background, classes)
    if shots < 1:
        raise ValueError(f"--shots must be >= 1, got {shots}")
    table = collect_class_prototypes(
        model, ds, wanted, min_fraction=min_fraction, keep_mib=keep_mib, workers=workers, progress=progress
    )
    supports, skipped = episode_supports(table.images, shots, episodes, seed, info.classes, rare)
    if skipped:
        log.warning(
            "left out %d class(es) in fewer than %d images: %s",
            len(skipped),
            shots + 1,
            ", ".join(info.classes[c] for c in skipped),
        )
    counts, cls, stats = score_queries(model, ds, table, supports, workers=workers, progress=progress)
    result = summarize_episodes(counts, [info.classes[c] for c in cls])
    result.update(
        shots=shots,
        episodes=episodes,
        seed=seed,
        n_images=len(ds),
        min_fraction=min_fraction,
        classes=[info.classes[c] for c in cls],
        skipped_classes=[info.classes[c] for c in skipped],
        class_images={info.classes[c]: len(table.images[c]) for c in wanted},
        n_queries=stats["n_scored"],
        episodes_without_background=stats["episodes_without_background"],
        timing={
            "pass1_seconds": table.seconds,
            "ms_per_image": 1000 * table.seconds / max(1, len(ds)),
            "score_seconds": stats["score_seconds"],
            "score_ms_per_query": stats["score_ms_per_query"],
        },
    )
    return result, table, supports
