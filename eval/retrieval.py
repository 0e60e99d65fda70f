"""Semantic segment retrieval: ``python -m eval.retrieval``.

The paper's retrieval experiment. Every image's object mask (the predicted saliency > 0.5, or
the ground-truth foreground / a mask folder, as in ``eval.kmeans``) is one segment, described by
its prototype: the mean of the unit embeddings inside it, re-normalised.

* Database (``--db-split``, e.g. VOC ``train``): each segment is labelled with the majority
  ground-truth class of its pixels.
* Queries (``--query-split``, e.g. VOC ``val``): each query segment takes the majority label
  of its ``--topk`` nearest database segments (cosine similarity; ties go to the class of the
  most similar neighbour). Its pixels are predicted as that class, all other pixels as
  background (datasets without a background class: not predicted, they count as misses).
* Scores: the confusion over all valid query pixels gives the mIoU over all classes
  (21 on VOC). For the class subset (``--subset``; VOC default: bus, aeroplane, car, person,
  cat, cow, bottle) the database keeps only segments labelled with a subset class, only query
  images whose own segment's majority class is in the subset are scored, pixels of other
  object classes are ignored, and the mIoU is the mean IoU over the subset classes.

Example::

    python -m eval.retrieval --checkpoint run/checkpoint.pt --dataset voc --root VOCdevkit --json retrieval.json
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.arguments import (
    add_dataset_arguments,
    add_model_arguments,
    add_saliency_arguments,
    dataset_from_args,
    model_from_args,
)
from eval.caches import StreamCache, checkpoint_fingerprint
from eval.kmeans.prototype import PrototypeStats, collect_image_prototypes
from eval.metrics import segmentation_scores
from eval.outputs import add_output_arguments, ensure_new_file, write_json
from eval.saliency_source import SaliencySource
from eval.splits import resolve_split
from maskcontrast.cli import run_main
from maskcontrast.data import DatasetInfo
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = ["VOC_SUBSET", "segment_labels", "knn_vote", "retrieval_confusion", "retrieval_scores", "main"]

log = logging.getLogger("eval.retrieval")

#: the 7-class subset of the paper's retrieval table
VOC_SUBSET = ("bus", "aeroplane", "car", "person", "cat", "cow", "bottle")


def segment_labels(fg_hist: np.ndarray) -> np.ndarray:
    """``n x C`` class counts inside each segment -> ``(n,)`` majority class; ``-1`` for segments
    without a valid pixel."""
    fg_hist = np.asarray(fg_hist)
    labels = fg_hist.argmax(1).astype(np.int64)
    labels[fg_hist.sum(1) == 0] = -1
    return labels


def knn_vote(query: torch.Tensor, database: torch.Tensor, db_labels: torch.Tensor, topk: int) -> torch.Tensor:
    """Majority label of the ``topk`` most similar database vectors (dot product of unit vectors).

    Args:
        query: ``m x D``; database: ``n x D``; db_labels: ``(n,)`` int64 (all >= 0).
        topk: neighbours per query (clipped to ``n``).

    Returns:
        ``(m,)`` int64; a tie between classes goes to the class of the most similar neighbour.
    """
    if database.shape[0] == 0:
        raise ValueError("the retrieval database is empty (no database image has a segment)")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    k = min(topk, database.shape[0])
    _, idx = (query @ database.T).topk(k, dim=1)  # m x k, sorted by similarity
    labels = db_labels[idx]  # m x k
    n_classes = int(db_labels.max()) + 1
    votes = torch.zeros(query.shape[0], n_classes, dtype=torch.float64)
    votes.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float64))
    # tie-break: the earliest (most similar) neighbour among the top-voted classes wins
    best = votes.max(1, keepdim=True).values
    is_top = votes.gather(1, labels) == best  # m x k
    first = is_top.float().argmax(1)
    return labels.gather(1, first[:, None])[:, 0]


def retrieval_confusion(
    pred: np.ndarray,
    fg_hist: np.ndarray,
    bg_hist: np.ndarray,
    num_classes: int,
    background: int | None,
) -> np.ndarray:
    """``(C + 1) x C`` class confusion: each query's segment pixels predicted as ``pred`` (``-1``:
    no segment), its other pixels as ``background`` (None: the extra "no prediction" row C)."""
    conf = np.zeros((num_classes + 1, num_classes), np.int64)
    rows = np.where(np.asarray(pred) < 0, num_classes, pred)
    np.add.at(conf, rows, np.asarray(fg_hist, np.int64))
    conf[num_classes if background is None else background] += np.asarray(bg_hist, np.int64).sum(0)
    return conf


def retrieval_scores(
    db: PrototypeStats,
    queries: PrototypeStats,
    info: DatasetInfo,
    topk: int,
    subset: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Retrieve for every query segment and score (see the module docstring)."""
    c = info.num_classes
    db_lab = segment_labels(db.fg_hist)
    q_lab = segment_labels(queries.fg_hist)
    keep_db = db.has_proto & (db_lab >= 0)
    q_mask = np.ones(len(queries.ids), dtype=bool)
    ignore_cols = np.zeros(c, dtype=bool)
    if subset is not None:
        unknown = [name for name in subset if name not in info.classes]
        if unknown:
            raise ValueError(f"--subset classes {unknown} are not classes of {info.name}: {list(info.classes)}")
        ids = np.array([info.classes.index(name) for name in subset])
        keep_db &= np.isin(db_lab, ids)
        q_mask = np.isin(q_lab, ids)
        ignore_cols = ~np.isin(np.arange(c), ids)
        if info.background is not None:
            ignore_cols[info.background] = False
    dbx = torch.from_numpy(db.prototypes[keep_db]).float()
    dby = torch.from_numpy(db_lab[keep_db])
    pred = np.full(len(queries.ids), -1, dtype=np.int64)
    has = queries.has_proto & q_mask
    if has.any():
        pred[has] = knn_vote(torch.from_numpy(queries.prototypes[has]).float(), dbx, dby, topk).numpy()
    fg = queries.fg_hist[q_mask].copy()
    bg = queries.bg_hist[q_mask].copy()
    fg[:, ignore_cols] = 0
    bg[:, ignore_cols] = 0
    conf = retrieval_confusion(pred[q_mask], fg, bg, c, info.background)
    scores = segmentation_scores(conf)
    per_class = dict(zip(info.classes, scores.per_class_iou.tolist()))
    if subset is not None:
        values = np.array([per_class[name] for name in subset], dtype=np.float64)
        miou = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        per_class = {name: per_class[name] for name in subset}
    else:
        miou = scores.miou
    return {
        "miou": miou,
        "per_class": per_class,
        "pixel_acc": scores.pixel_acc,
        "n_queries": int(q_mask.sum()),
        "n_database": int(keep_db.sum()),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.retrieval",
        description="Semantic segment retrieval: nearest database segments label the query segments (docs/EVAL.md).",
    )
    add_model_arguments(p)
    add_dataset_arguments(p, with_split=False)
    add_saliency_arguments(p)
    g = p.add_argument_group("retrieval")
    g.add_argument(
        "--db-split",
        default=None,
        help="database split (voc: train). Without --db-split and "
        "--query-split, a seeded split of the default split is used",
    )
    g.add_argument("--query-split", default=None, help="query split (voc: val)")
    g.add_argument("--query-fraction", type=float, default=0.5, help="seeded split: share of queries (default 0.5)")
    g.add_argument("--split-seed", type=int, default=0, help="seeded split: seed (default 0)")
    g.add_argument(
        "--split-dir",
        default=None,
        help="seeded split: folder for split_train.txt (database) and "
        "split_val.txt (queries), reused when present (default: the --json folder)",
    )
    g.add_argument("--topk", type=int, default=1, help="neighbours that vote for a query's class (default 1)")
    g.add_argument(
        "--subset",
        default=None,
        help="comma-separated class subset scored separately ('none': no "
        "subset; default for voc: " + ",".join(VOC_SUBSET) + ")",
    )
    o = add_output_arguments(p)
    o.add_argument("--cache", default=None, help="folder for resumable per-image prototypes")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    ensure_new_file(args.json, args.overwrite)
    masks = args.saliency_dir if args.saliency_source == "folder" else None
    if args.saliency_source == "folder" and not masks:
        raise ValueError("--saliency-source folder needs --saliency-dir DIR")
    if (args.db_split is None) != (args.query_split is None):
        raise ValueError("give both --db-split and --query-split, or neither (seeded split)")
    model = model_from_args(args)
    if args.db_split is not None:
        db_ds = dataset_from_args(args, split=args.db_split, masks=masks)
        q_ds = dataset_from_args(args, split=args.query_split, masks=masks)
    else:
        split_dir = Path(args.split_dir) if args.split_dir else (Path(args.json).parent if args.json else None)
        if split_dir is None:
            raise ValueError("a seeded split needs --split-dir DIR (or --json) to save its lists")
        full = dataset_from_args(args, masks=masks)
        db_ids, q_ids = resolve_split(full.ids, split_dir, args.query_fraction, args.split_seed)
        db_ds = dataset_from_args(args, ids=db_ids, masks=masks)
        q_ds = dataset_from_args(args, ids=q_ids, masks=masks)
    info = db_ds.info
    if info.num_classes == 0:
        raise ValueError(f"dataset '{args.dataset}' has no labels; retrieval needs ground truth")
    if args.subset is None:
        subset = list(VOC_SUBSET) if args.dataset == "voc" else None
    elif args.subset.strip().lower() == "none":
        subset = None
    else:
        subset = [s.strip() for s in args.subset.split(",") if s.strip()]
    source = SaliencySource(args.saliency_source, args.saliency_threshold)
    source.check(model, info)
    progress = not args.no_progress
    base = {
        "checkpoint": checkpoint_fingerprint(args.checkpoint, getattr(args, "init_key", "teacher")),
        "output_stride": args.output_stride,
        "size": args.size,
        "dataset": args.dataset,
        "dataset_args": parse_key_values(args.dataset_arg),
        "saliency": [args.saliency_source, args.saliency_dir, args.saliency_threshold],
    }
    stats = []
    for name, ds in (("database", db_ds), ("queries", q_ds)):
        cache = (
            StreamCache(Path(args.cache) / f"{name}.pt", {**base, "split": ds.split, "ids": ds.ids})
            if args.cache
            else None
        )
        log.info("%s: %d images of %s/%s", name, len(ds), args.dataset, ds.split)
        stats.append(collect_image_prototypes(model, ds, source, workers=args.workers, cache=cache, progress=progress))
    db, queries = stats
    result: dict[str, Any] = {"protocol": "retrieval", **retrieval_scores(db, queries, info, args.topk)}
    if subset is not None:
        result["subset"] = {"classes": subset, **retrieval_scores(db, queries, info, args.topk, subset)}
    result.update(
        topk=args.topk,
        dataset=args.dataset,
        db_split=db_ds.split,
        query_split=q_ds.split,
        n_db_images=len(db_ds),
        n_query_images=len(q_ds),
        checkpoint=str(args.checkpoint),
        layout=model.layout,
        saliency_source=args.saliency_source,
        units="fractions in [0, 1]",
        peak_rss_mib=peak_rss_mib(),
    )
    msg = f"retrieval (top-{args.topk}): mIoU {100 * result['miou']:.2f} % over {info.num_classes} classes"
    if subset is not None:
        msg += f", {100 * result['subset']['miou']:.2f} % over the {len(subset)}-class subset"
    log.info(msg)
    if args.json:
        write_json(args.json, result)
        print(f"wrote results to {args.json}")
    else:
        print(msg + " (no --json: nothing written)")
    return result


if __name__ == "__main__":
    run_main(main, "eval.retrieval")
