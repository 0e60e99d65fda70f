"""``python -m saliency.refine``: the argument parser and the command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import add_config_arguments, load_config
from maskcontrast.data import DataError, build_dataset
from maskcontrast.models.checkpoint import CheckpointError
from maskcontrast.utils import setup_logging
from saliency.refine.config import RefineConfig
from saliency.refine.training import train_refiner

log = logging.getLogger("saliency.refine")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m saliency.refine",
        description="Train the self-supervised saliency refiner on unlabelled images (fused classical "
        "pseudo-labels, confident pixels only, several rounds of moving-average targets).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--images", action="append", default=[], help="a folder of images (repeatable; searched recursively)"
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=ROOT",
        help="images of a maskcontrast.data reader, e.g. weizmann=/data/weizmann_horse (repeatable; labels unused)",
    )
    p.add_argument("--out", required=True, help="run folder (config, cached pseudo-labels, checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    add_config_arguments(p, default=None)
    p.epilog = "Config keys (saliency.refine.RefineConfig): " + ", ".join(
        f.name for f in dataclasses.fields(RefineConfig)
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    sources: list[tuple[str, str]] = [("image_folder", d) for d in args.images]
    for item in args.dataset:
        if "=" not in item:
            log.error("--dataset expects NAME=ROOT, got %r", item)
            return 2
        name, root = item.split("=", 1)
        sources.append((name, root))
    if not sources:
        log.error("give at least one --images DIR or --dataset NAME=ROOT")
        return 2
    try:
        cfg = load_config(RefineConfig, args.config, args.overrides)
        for name, root in sources:
            build_dataset(name, root)  # fail early on a bad source
        summary = train_refiner(sources, args.out, cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, DataError, OSError, CheckpointError, ValueError) as err:
        log.error("%s", err)
        return 2
    log.info(
        "trained on %d images in %.0f s (pseudo-labels %.0f s, training %.0f s)",
        summary["n_images"],
        summary["seconds"],
        summary["pseudo_label_seconds"],
        summary["train_seconds"],
    )
    print(f"refiner written to {Path(summary['checkpoint']).resolve()}")
    return 0
