"""Few-shot segmentation by example: ``python -m eval.oneshot``.

The usual few-shot protocol on a labelled dataset, with the prototypes of
:meth:`maskcontrast.FeatureModel.segment_like` (the math is :mod:`maskcontrast.prompt`):

* a class "is in" an image when its pixels are at least ``--min-fraction`` of the image's valid
  (not ignored) pixels; the evaluated classes are every class except the dataset's background
  (``--classes`` picks some);
* an episode samples, for every class, ``--shots K`` support images that contain it (seeded by
  ``(seed, episode, class)``) and segments that class in **every other** image that contains it;
  the support's foreground prototype is the mean of its shots' class prototypes, its background
  prototype the mean of their "valid and not this class" prototypes; a query pixel is foreground
  when it is closer (cosine) to the foreground prototype;
* per episode: the IoU of every class (its true / false positives and false negatives summed
  over its queries), their mean (mIoU), and FB-IoU, the mean of the foreground and background
  IoU summed over all the episode's queries; reported as mean and sample std over ``--episodes``.

Two passes over the data whatever the number of episodes: pass 1 keeps, per (image, class), the
two prototypes (and the feature-resolution embeddings and labels while they fit in ``--keep-mib``); pass 2
scores every (query, class) pair for all episodes at once. Predictions are scored at label
resolution; ``--size`` only resizes the network input.

Example::

    python -m eval.oneshot --checkpoint run/last.pt --dataset pet --dataset-arg target=species --shots 1 \\
        --episodes 5 --seed 0 --json oneshot_pet.json
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.arguments import (
    add_dataset_arguments,
    add_model_arguments,
    dataset_from_args,
    model_from_args,
)
from eval.metrics import binary_counts
from eval.outputs import add_output_arguments, ensure_new_file, safe_name, vis_folder, write_json
from eval.stream import iter_model_outputs
from maskcontrast.api import FeatureModel
from maskcontrast.cli import run_main
from maskcontrast.data import DataError, SegmentationDataset
from maskcontrast.data.io import write_panel
from maskcontrast.embeddings import pixel_sums
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.prompt import combine_shots, prototype_score
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = [
    "PrototypeTable",
    "eval_classes",
    "present_classes",
    "prototype_pass",
    "sample_supports",
    "episode_supports",
    "episode_prototypes",
    "score_queries",
    "summarize_episodes",
    "run_oneshot",
    "main",
]

log = logging.getLogger("eval.oneshot")


# ----------------------------------------------------------------------------------------------
# Which classes, which images
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Pass 1: prototypes per (image, class)
# ----------------------------------------------------------------------------------------------


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


def prototype_pass(
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
        if sample.label is None:
            raise DataError(
                f"{ds.files(sample.id).label or sample.id}: no ground-truth label; the few-shot "
                "evaluation needs labelled images",
                sample_id=sample.id,
            )
        label = sample.label
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


# ----------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Pass 2: scoring
# ----------------------------------------------------------------------------------------------


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
    table = prototype_pass(
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


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.oneshot",
        description="Few-shot segmentation by example with mask-mean prototypes (docs/EVAL.md).",
    )
    add_model_arguments(p)
    add_dataset_arguments(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--shots", type=int, default=1, help="support images per class and episode (default 1)")
    g.add_argument("--episodes", type=int, default=5, help="episodes; scores are mean +- std over them (default 5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the support sampling (default 0)")
    g.add_argument(
        "--classes", default=None, help="comma-separated class names to evaluate (default: all but the background)"
    )
    g.add_argument(
        "--min-fraction",
        type=float,
        default=0.01,
        help="a class is in an image when it covers at least this fraction of its valid pixels (default 0.01)",
    )
    g.add_argument(
        "--rare",
        default="error",
        choices=("error", "skip"),
        help="a class in fewer than shots + 1 images: stop with an error (default) or leave it out",
    )
    g.add_argument(
        "--keep-mib",
        type=float,
        default=1024.0,
        help="memory for the feature-resolution embeddings and labels "
        "kept between the two passes; images beyond it are run again (default 1024)",
    )
    add_output_arguments(p, vis="write N panels (support | query | prediction | ground truth)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    ensure_new_file(args.json, args.overwrite)
    vis_dir = vis_folder(args)
    model = model_from_args(args)
    ds = dataset_from_args(args)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    log.info(
        "few-shot evaluation of %s on %s/%s (%d images): %d shot(s), %d episode(s), seed %d",
        args.checkpoint,
        args.dataset,
        ds.split,
        len(ds),
        args.shots,
        args.episodes,
        args.seed,
    )
    t0 = time.perf_counter()
    result, table, supports = run_oneshot(
        model,
        ds,
        shots=args.shots,
        episodes=args.episodes,
        seed=args.seed,
        classes=classes,
        min_fraction=args.min_fraction,
        rare=args.rare,
        keep_mib=args.keep_mib,
        workers=args.workers,
        progress=not args.no_progress,
    )
    result = {
        **result,
        "dataset": args.dataset,
        "split": ds.split,
        "dataset_args": parse_key_values(args.dataset_arg),
        "checkpoint": str(args.checkpoint),
        "layout": model.layout,
        "embedding": "embeddings" if model.kind == "maskcontrast" else "backbone features",
        "size": args.size,
        "device": str(model.device),
        "seconds": time.perf_counter() - t0,
        "units": "fractions in [0, 1]",
        "peak_rss_mib": peak_rss_mib(),
    }
    log.info(
        "%d-shot, %d episode(s), %d queries: mIoU %.2f +- %.2f %%, FB-IoU %.2f +- %.2f %%",
        args.shots,
        args.episodes,
        result["n_queries"],
        100 * result["miou"],
        100 * result["miou_std"],
        100 * result["fb_iou"],
        100 * result["fb_iou_std"],
    )
    if args.json:
        write_json(args.json, result)
        print(f"wrote results to {args.json}")
    if vis_dir is not None:
        n = write_vis(vis_dir, args.vis, model, ds, table, supports)
        print(f"wrote {n} pictures to {vis_dir}")
    if not args.json:
        print(
            f"mIoU {100 * result['miou']:.2f} +- {100 * result['miou_std']:.2f}, FB-IoU {100 * result['fb_iou']:.2f} "
            "(no --json: nothing written)"
        )
    return result


if __name__ == "__main__":
    run_main(main, "eval.oneshot")
