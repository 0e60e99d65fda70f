"""The command line of ``python -m eval.oneshot`` (docs/EVAL.md)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

from eval.arguments import (
    add_dataset_arguments,
    add_model_arguments,
    dataset_from_args,
    model_from_args,
)
from eval.oneshot.episodes import run_oneshot
from eval.oneshot.pictures import write_vis
from eval.outputs import add_output_arguments, ensure_new_file, vis_folder, write_json
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = ["build_parser", "main"]

log = logging.getLogger("eval.oneshot")


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
