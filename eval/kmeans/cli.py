"""The command line of ``python -m eval.kmeans`` (docs/EVAL.md)."""

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
from eval.caches import checkpoint_fingerprint
from eval.clustering import BACKENDS, faiss_gpu, resolve_backend
from eval.kmeans.protocols import KMeansProtocol, PixelProtocol, PrototypeProtocol
from eval.kmeans.results import array_digest, summarize_seeds
from eval.outputs import add_output_arguments, ensure_new_file, quiet_faiss, vis_folder, write_json
from eval.saliency_source import SaliencySource
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.data.base import read_id_list
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.runs import identity_digest
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = ["build_parser", "main", "fit_on_other_split"]

log = logging.getLogger("eval.kmeans")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.kmeans",
        description="K-means + Hungarian evaluation of a checkpoint's pixel embeddings (docs/EVAL.md).",
    )
    add_model_arguments(p)
    add_dataset_arguments(p)
    add_saliency_arguments(p)
    g = p.add_argument_group("clustering")
    g.add_argument(
        "--protocol",
        default="prototype",
        choices=("prototype", "pixel"),
        help="prototype: the paper's (one prototype per image, k-1 clusters + background); "
        "pixel: K-means over pixel embeddings (default: prototype)",
    )
    g.add_argument(
        "--k",
        type=int,
        default=None,
        help="number of clusters, background included for the prototype "
        "protocol (default: the number of classes, e.g. 21 on VOC)",
    )
    g.add_argument("--seeds", type=int, default=5, help="K-means runs with seeds first-seed.. (default 5)")
    g.add_argument("--first-seed", type=int, default=0, help="seed of the first K-means run (default 0)")
    g.add_argument(
        "--pca-dim", type=int, default=32, help="PCA-whitening dimension before K-means; 0 = off (default 32)"
    )
    g.add_argument("--niter", type=int, default=100, help="K-means iterations per restart (default 100)")
    g.add_argument("--nredo", type=int, default=10, help="K-means restarts, the best objective is kept (default 10)")
    g.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="K-means implementation: auto = faiss when installed, else torch (on CUDA when present); "
        "sklearn = the reference (default auto)",
    )
    g.add_argument(
        "--fit-pixels",
        type=int,
        default=100_000,
        help="pixel protocol: pixels sampled (evenly over images) to fit K-means (default 100000)",
    )
    g.add_argument(
        "--fit-split",
        default=None,
        help="fit the clustering and the cluster -> class matching on this split and score --split "
        "with them (e.g. --fit-split train --split val). Default: fit and score on the same "
        "images, the paper's protocol (docs/EVAL.md)",
    )
    g.add_argument(
        "--matching",
        default=None,
        choices=("auto", "hungarian", "majority"),
        help="cluster -> class mapping (default: hungarian for prototype; auto for pixel = hungarian "
        "when k <= classes, majority vote when k > classes)",
    )
    o = add_output_arguments(p, vis="write N pictures (image | ground truth | prediction)")
    o.add_argument(
        "--vis-ids",
        default=None,
        help="text file of image ids: picture the first --vis of these (default: the first --vis images)",
    )
    o.add_argument(
        "--cache", default=None, help="folder for resumable per-image results (re-runs with other k/seeds reuse them)"
    )
    o.add_argument("--save-every", type=int, default=100, help="cache every N images (default 100)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    quiet_faiss()
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.k is not None and args.k < 2:  # checked before any model is loaded or image is run
        raise ValueError(f"--k must be >= 2 (clusters, background included for the prototype protocol), got {args.k}")
    ensure_new_file(args.json, args.overwrite)
    vis_dir = vis_folder(args)
    masks = args.saliency_dir if args.saliency_source == "folder" else None
    if args.saliency_source == "folder" and not masks:
        raise ValueError("--saliency-source folder needs --saliency-dir DIR")
    model = model_from_args(args)
    ds = dataset_from_args(args, masks=masks)
    ds_fit = dataset_from_args(args, split=args.fit_split, masks=masks) if args.fit_split else None
    if ds_fit is not None and ds_fit.split == ds.split and ds_fit.ids == ds.ids:
        raise ValueError(
            f"--fit-split {args.fit_split} is the scored split itself; leave --fit-split out for the "
            "paper's protocol, or pass another split"
        )
    info = ds.info
    if info.num_classes == 0:
        raise ValueError(f"dataset '{args.dataset}' has no labels; K-means evaluation needs ground truth")
    k = args.k if args.k is not None else info.num_classes
    fit_ds = ds_fit if ds_fit is not None else ds
    if args.protocol == "prototype" and k - 1 > len(fit_ds):
        raise ValueError(
            f"--k {k} needs at least {k - 1} images (one prototype per image), and {args.dataset} "
            f"has {len(fit_ds)} here; use a smaller --k or more images"
        )
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    km = {"niter": args.niter, "nredo": args.nredo, "backend": resolve_backend(args.backend)}
    settings = {
        "checkpoint": checkpoint_fingerprint(args.checkpoint, getattr(args, "init_key", "teacher")),
        "output_stride": args.output_stride,
        "size": args.size,
        "dataset": args.dataset,
        "root": str(ds.root),
        "split": ds.split,
        "dataset_args": parse_key_values(args.dataset_arg),
        "ids": ds.ids,
        "protocol": args.protocol,
    }
    cache_dir = Path(args.cache) if args.cache else None
    progress = not args.no_progress
    log.info("K-means backend: %s", km["backend"])
    log.info(
        "evaluating %s on %s/%s (%d images, %d classes), %s protocol, k=%d",
        args.checkpoint,
        args.dataset,
        ds.split,
        len(ds),
        info.num_classes,
        args.protocol,
        k,
    )
    common = {"k": k, "seeds": seeds, "pca_dim": args.pca_dim, "matching": args.matching, "km": km}
    protocol: KMeansProtocol
    if args.protocol == "prototype":
        protocol = PrototypeProtocol(SaliencySource(args.saliency_source, args.saliency_threshold), **common)
        settings.update(saliency=[args.saliency_source, args.saliency_dir, args.saliency_threshold])
    else:
        protocol = PixelProtocol(fit_pixels=args.fit_pixels, first_seed=args.first_seed, **common)
    protocol.check(model, info)
    if ds_fit is None:
        result = protocol.fit(
            model,
            ds,
            workers=args.workers,
            cache_dir=cache_dir,
            settings=settings,
            save_every=args.save_every,
            progress=progress,
        )
    else:
        result = fit_on_other_split(
            protocol,
            model,
            ds_fit,
            ds,
            workers=args.workers,
            cache_dir=cache_dir,
            settings=settings,
            save_every=args.save_every,
            progress=progress,
        )
    result = {
        **result,
        "protocol": args.protocol,
        "k": k,
        "n_images": len(ds),
        "dataset": args.dataset,
        "split": ds.split,
        "fit_split": ds_fit.split if ds_fit is not None else ds.split,
        "fitted_on": "the scored images (the paper's protocol)"
        if ds_fit is None
        else f"split {ds_fit.split} ({len(ds_fit)} images): clustering and matching, scored on {ds.split}",
        "checkpoint": str(args.checkpoint),
        "layout": model.layout,
        "saliency_source": protocol.describe()["saliency_source"],
        "matching": protocol.matching,
        "pca_dim": args.pca_dim,
        "kmeans": {**km, "gpu": _kmeans_on_gpu(km["backend"])},
        "size": args.size,
        "units": "fractions in [0, 1]",
        "peak_rss_mib": peak_rss_mib(),
    }
    log.info(
        "%s protocol, k=%d, %d images: mIoU %.2f +- %.2f %% over %d seeds, pixel accuracy %.2f %%",
        args.protocol,
        k,
        len(ds),
        100 * result["miou_mean"],
        100 * result["miou_std"],
        len(seeds),
        100 * result["pixel_acc"],
    )
    if args.json:
        write_json(args.json, result)
        print(f"wrote results to {args.json}")
    if vis_dir is not None:
        mapping = np.asarray(result["seeds"][0]["mapping"])
        n = protocol.pictures(
            vis_dir, args.vis, model, ds, mapping, vis_ids=read_id_list(Path(args.vis_ids)) if args.vis_ids else None
        )
        print(f"wrote {n} pictures to {vis_dir}")
    if not args.json:
        print(f"mIoU {100 * result['miou_mean']:.2f} +- {100 * result['miou_std']:.2f} (no --json: nothing written)")
    return result


def fit_on_other_split(
    protocol: KMeansProtocol,
    model: FeatureModel,
    ds_fit: SegmentationDataset,
    ds: SegmentationDataset,
    *,
    workers: int = 0,
    cache_dir: Path | None = None,
    settings: dict[str, Any] | None = None,
    save_every: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """``--fit-split``: fit the clustering (PCA, K-means per seed) and each seed's cluster -> class
    matching on ``ds_fit``, then score ``ds`` with both, unchanged. Nothing of ``ds`` is seen
    before it is scored. The result has the scores of ``ds`` and, under ``"fit"``, those of the
    fit split (matched on itself, as the paper's protocol would score it)."""
    settings = dict(settings or {})
    fit_settings = {**settings, "split": ds_fit.split, "ids": ds_fit.ids}
    fit_result = protocol.fit(
        model,
        ds_fit,
        workers=workers,
        cache_dir=cache_dir / "fit" if cache_dir else None,
        settings=fit_settings,
        save_every=save_every,
        progress=progress,
    )
    fitted = getattr(protocol, "fitted", None)
    eval_settings = {
        **settings,
        "fit_split": ds_fit.split,
        "fit_ids": identity_digest(ds_fit.ids),
        "fit": array_digest(fitted.centroids) if fitted is not None else None,
    }
    confs = protocol.confusions(
        model,
        ds,
        workers=workers,
        cache_dir=cache_dir / "scored" if cache_dir else None,
        settings=eval_settings,
        save_every=save_every,
        progress=progress,
    )
    mappings = [np.asarray(s["mapping"]) for s in fit_result["seeds"]]
    result = summarize_seeds(
        confs,
        protocol.seeds,
        ds.info.classes,
        protocol.matching,
        [s["objective"] for s in fit_result["seeds"]],
        mappings=mappings,
    )
    result["fit"] = {
        "split": ds_fit.split,
        "n_images": len(ds_fit),
        "miou_mean": fit_result["miou_mean"],
        "miou_std": fit_result["miou_std"],
        "pixel_acc": fit_result["pixel_acc"],
        **{k: v for k, v in fit_result.items() if k in ("n_prototypes", "n_without_mask", "fit_pixels")},
    }
    return result


def _kmeans_on_gpu(backend: str) -> bool:
    if backend == "faiss":
        return faiss_gpu()
    return backend == "torch" and torch.cuda.is_available()
